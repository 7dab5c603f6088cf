"""Auto-recharge: settings through the API, exactly one charge for a burst of concurrent debits
(SQLite and PostgreSQL), and the failure path (emails, off after 3 failures). Charges go to the
offline Stripe sandbox (localstripe) over real HTTP."""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from decimal import Decimal

import sqlalchemy as sa

from orcapulse_billing.accounts import account_id_for, add_user, create_organization
from orcapulse_billing.auth import Principal
from orcapulse_billing.ledger import Ledger, Posting, check_invariants
from orcapulse_billing.notifications import Notifier
from orcapulse_billing.payments.auto_recharge import AutoRecharger
from orcapulse_billing.services import get_stripe_purchases

from .conftest import GRACE


def _card(engine, organization_id: int, number: str) -> None:
    purchases = get_stripe_purchases(engine)
    sdk = purchases.gateway.client
    pm = sdk.v1.payment_methods.create(
        params={"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"}}
    )
    sdk.v1.payment_methods.attach(pm["id"], params={"customer": purchases.customer_for(organization_id)})
    purchases.save_card(organization_id, purchases.gateway.card(pm["id"]))


def _setup(engine, card: str, funds: str, clock=None, threshold: str = "10", amount: str = "20"):
    """An organization with `funds`, a saved `card` and auto-recharge on (below `threshold`, add `amount`),
    and a ledger whose listener runs the recharger on the posting's thread (so bursts really race).
    `clock`: what the recharger takes as now (the backoff and the daily limit are judged by it)."""
    from orcapulse_billing.config import get_settings

    ledger = Ledger(engine, grace_limit=GRACE)
    tag = uuid.uuid4().hex[:8]
    org = create_organization(engine, ledger, f"Auto {tag}", welcome_credit=Decimal(0))
    owner, _ = add_user(engine, org, f"owner-{tag}@example.test", "owner", "a-long-password")
    account_id = account_id_for(engine, org.id)
    ledger.post(Posting(account_id, "purchase", funds, "funds"))
    _card(engine, org.id, card)
    recharger = AutoRecharger(
        engine,
        lambda: get_stripe_purchases(engine),
        Notifier(engine, get_settings()),
        **({"clock": clock} if clock else {}),
    )
    principal = Principal(owner.id, owner.email, org.id, "owner", "session")
    recharger.update(
        principal,
        enabled=True,
        threshold=Decimal(threshold),
        amount=Decimal(amount),
        monthly_cap=None,
        ip="127.0.0.1",
    )
    ledger.add_listener(recharger.on_postings)  # synchronous here, so the burst really races
    return ledger, recharger, org, account_id


def _auto_purchases(engine, account_id):
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT amount, metadata FROM ledger_entry WHERE account_id = :a AND type = 'purchase'"),
            {"a": account_id},
        ).all()
    import json

    return [
        r.amount
        for r in rows
        if (json.loads(r.metadata) if isinstance(r.metadata, str) else r.metadata).get("autoRecharge")
    ]


def test_a_burst_of_50_concurrent_debits_causes_exactly_one_charge(engine, app_database):
    ledger, recharger, org, account_id = _setup(engine, "4242424242424242", "30")
    barrier = threading.Barrier(50)
    errors = []

    def debit():
        try:
            barrier.wait()
            ledger.post(Posting(account_id, "usage", "-0.5", "call", category="ai_call"))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=debit) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _auto_purchases(engine, account_id) == [200_000]  # one recharge of $20.00
    with engine.connect() as conn:
        assert check_invariants(conn, account_id) == []
        balance = conn.execute(sa.text("SELECT balance FROM credit_account WHERE id = :a"), {"a": account_id}).scalar()
        emails = conn.execute(
            sa.text("SELECT kind FROM email_outbox WHERE organization_id = :o AND kind LIKE 'auto%'"), {"o": org.id}
        ).all()
        charges = conn.execute(
            sa.text("SELECT COUNT(*) FROM checkout_session WHERE organization_id = :o AND mode = 'auto'"), {"o": org.id}
        ).scalar()
    assert balance == 250_000 and charges == 1  # 30 - 50 x 0.50 + 20
    assert [e[0] for e in emails] == ["auto_recharge_succeeded"]
    assert recharger.maybe_recharge(org.id) == "not_needed"


def test_wants_any_debit_of_a_batch_below_its_accounts_threshold(engine, app_database):
    """The posting thread's check: judged per account by its lowest balance after a debit, wherever that
    debit is in a thousand entries; credits, and accounts without a policy, never want a recharge."""
    ledger, recharger, org, account_id = _setup(engine, "4242424242424242", "30")  # below 10.00: recharge
    entry = ledger.post(Posting(account_id, "usage", "-1", "call", category="ai_call"))  # 29.00 left
    above = [replace(entry, seq=entry.seq + n, balance_after_units=entry.balance_after_units - n) for n in range(1000)]
    below = replace(entry, seq=entry.seq + 1000, balance_after_units=99_999)  # 9.9999
    at = replace(below, balance_after_units=100_000)  # 10.0000: not below
    assert not recharger.wants([entry]) and not recharger.wants(above) and not recharger.wants([*above, at])
    assert recharger.wants([*above[:500], below, *above[500:]])
    assert recharger.wants([below, *above])
    credit = replace(below, amount_units=10_000)
    unknown = replace(below, account_id=account_id + 10**6)  # an account without a policy
    assert not recharger.wants([*above, credit, unknown])
    assert recharger.wants([unknown, *above, below])


def test_auto_recharge_api(client, org):
    assert client.get("/api/credits/auto-recharge", headers=org.auth("member")).json()["enabled"] is False
    body = {"enabled": True, "threshold": "10", "amount": "25"}
    r = client.put("/api/credits/auto-recharge", json=body, headers=org.auth("owner"))
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_saved_card"
    assert client.put("/api/credits/auto-recharge", json=body, headers=org.auth("member")).status_code == 403
    for bad in (
        {**body, "threshold": "4.99"},
        {**body, "amount": "19.99"},
        {**body, "amount": "25.001"},
        {**body, "monthly_cap": "10"},
        {"enabled": True},
    ):
        r = client.put("/api/credits/auto-recharge", json={**bad, "enabled": False}, headers=org.auth("owner"))
        assert r.status_code == 400, bad
    _card(org.engine, org.id, "4242424242424242")
    org.post("purchase", "30")  # above the threshold: saving it charges nothing now
    r = client.put("/api/credits/auto-recharge", json={**body, "monthly_cap": "100"}, headers=org.auth("owner"))
    assert r.status_code == 200 and r.json() == {
        "enabled": True,
        "threshold": "10.0000",
        "amount": "25.0000",
        "monthly_cap": "100.0000",
        "consecutive_failures": 0,
        "disabled_reason": None,
        "last_error": None,
        "next_attempt_at": None,
        "charges_last_24h": 0,
        "daily_limit": 4,
        "action_url": None,
        "recharge": None,
    }
    assert client.get("/api/credits/auto-recharge", headers=org.auth("member")).json()["enabled"] is True
    with org.engine.connect() as conn:
        action = conn.execute(
            sa.text("SELECT action FROM audit_log WHERE organization_id = :o ORDER BY id DESC"), {"o": org.id}
        ).scalar()
    assert action == "auto_recharge_updated"
