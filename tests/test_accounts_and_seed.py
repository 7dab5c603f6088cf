from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from orcapulse_billing.accounts import (
    WELCOME_DESCRIPTION,
    AccountsError,
    account_id_for,
    add_user,
    create_organization,
)
from orcapulse_billing.ledger import check_invariants, get_account
from orcapulse_billing.seed import DEMO_MEMBER, DEMO_OWNER, seed_demo


def test_new_organization_gets_its_welcome_credit_once(engine, ledger):
    org = create_organization(engine, ledger, f"w-{uuid.uuid4().hex[:8]}", welcome_credit=Decimal("5.00"))
    with engine.connect() as conn:
        acct = get_account(conn, organization_id=org.id)
        entry = conn.execute(
            sa.text("SELECT type, source, amount, description FROM ledger_entry WHERE account_id = :a"), {"a": acct.id}
        ).one()
    assert acct.balance == Decimal("5.0000")
    assert tuple(entry) == ("bonus", "welcome", 50_000, WELCOME_DESCRIPTION)


def test_welcome_credit_zero_turns_it_off(engine, ledger):
    org = create_organization(engine, ledger, f"z-{uuid.uuid4().hex[:8]}", welcome_credit=Decimal(0))
    with engine.connect() as conn:
        assert get_account(conn, organization_id=org.id).transaction_count == 0


def test_duplicate_organization_and_membership_are_refused(engine, ledger):
    name = f"d-{uuid.uuid4().hex[:8]}"
    org = create_organization(engine, ledger, name, welcome_credit=Decimal(1))
    with pytest.raises(AccountsError, match="already exists"):
        create_organization(engine, ledger, name, welcome_credit=Decimal(1))
    email = f"{uuid.uuid4().hex[:8]}@example.test"
    add_user(engine, org, email, "admin", "a-long-password")
    with pytest.raises(AccountsError, match="already a member"):
        add_user(engine, org, email, "member")


def test_demo_seed_runs_once_and_leaves_a_sound_ledger(tmp_path):
    from orcapulse_billing.db import make_engine, upgrade
    from orcapulse_billing.ledger import Ledger

    url = f"sqlite:///{tmp_path / 'demo.db'}"
    upgrade(url)
    engine = make_engine(url)
    ledger = Ledger(engine, grace_limit=Decimal(5))
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    first = seed_demo(engine, ledger, welcome_credit=Decimal(5), now=now)
    second = seed_demo(engine, ledger, welcome_credit=Decimal(5), now=now)
    assert first.created and not second.created and first.organization_id == second.organization_id
    account_id = account_id_for(engine, first.organization_id)
    with engine.connect() as conn:
        assert check_invariants(conn, account_id) == []
        acct = get_account(conn, account_id=account_id)
        kinds = dict(conn.execute(sa.text("SELECT type, COUNT(*) FROM ledger_entry GROUP BY type")).all())
        categories = {
            r[0] for r in conn.execute(sa.text("SELECT DISTINCT category FROM ledger_entry WHERE type='usage'"))
        }
        span = conn.execute(sa.text("SELECT MIN(created_at), MAX(created_at) FROM ledger_entry")).one()
        emails = {r[0] for r in conn.execute(sa.text("SELECT email FROM app_user"))}
        # history, not news: the notice sweep starts after it
        watermark = conn.execute(
            sa.text("SELECT judged_seq FROM notice_watermark WHERE account_id = :a"), {"a": account_id}
        ).scalar_one()
    assert watermark == acct.transaction_count
    assert acct.transaction_count == first.entries + 1 and acct.balance > 0
    assert kinds["purchase"] == 3 and kinds["bonus"] == 1 and kinds["usage"] > 50
    assert {"ai_call", "sms", "chat"} <= categories
    assert (datetime.fromisoformat(str(span[1])) - datetime.fromisoformat(str(span[0]))).days >= 20
    assert emails == {DEMO_OWNER[0], DEMO_MEMBER[0]}
    engine.dispose()
