"""Receipt and credit note numbers: gapless per deployment under concurrency (PostgreSQL and SQLite, with
rolled-back transactions and duplicate deliveries), and the receipts migration 0014 issues for purchases
completed before it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from orcapulse_billing import receipts
from orcapulse_billing.ledger import check_invariants

from .apiutil import Org
from .test_receipts import _numbers


def test_number_parsing_and_display():
    assert receipts.display_number("receipt", 12) == "R-000012"
    assert receipts.display_number("credit_note", 3) == "CN-000003"
    assert receipts.parse_number("R-000012") == ("receipt", 12)
    assert receipts.parse_number("cn3") == ("credit_note", 3)
    assert receipts.parse_number("R-0") is None and receipts.parse_number("X-1") is None


def _open_purchases(engine, org: Org, count: int) -> list[int]:
    """`count` hosted checkouts of ours, open (as if their buyers were paying now)."""
    ids = []
    with engine.begin() as conn:
        for _ in range(count):
            ids.append(
                conn.execute(
                    sa.text(
                        "INSERT INTO checkout_session (organization_id, user_id, provider, provider_id, mode, package_id,"
                        " amount, bonus, currency, status, refunded, created_at) VALUES (:o, :u, 'stripe', :p, 'payment',"
                        " 'pkg_50', 500000, 0, 'usd', 'open', 0, CURRENT_TIMESTAMP) RETURNING id"
                    ),
                    {"o": org.id, "u": org.user_ids["owner"], "p": f"cs_{uuid.uuid4().hex}"},
                ).scalar_one()
            )
    return ids


def _concurrently(jobs: list[int], work) -> None:
    """`work(job)` for every job on 16 threads, started together; a RuntimeError is a transaction that
    rolled back (the process died before its commit)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    go = threading.Event()

    def run(job: int) -> None:
        go.wait(timeout=10)
        try:
            work(job)
        except RuntimeError:
            pass

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(run, job) for job in jobs]
        go.set()
        for future in futures:
            future.result()


def _complete_concurrently(ledger, purchase_ids: list[int], *, deliveries: int, fail) -> None:
    """Every purchase completed by `deliveries` threads at once (as duplicate webhooks and the reconcile
    job would); a transaction for which `fail(purchase_id)` is true rolls back after issuing."""
    from orcapulse_billing.payments.flow import credit_checkout

    def complete(pid: int) -> None:
        with ledger.transaction() as conn:
            row = conn.execute(sa.text("SELECT * FROM checkout_session WHERE id = :i"), {"i": pid}).one()
            credit_checkout(ledger, conn, row, provider_reference=f"pi_{pid}", metadata={"feature": "checkout"})
            if fail(pid):
                raise RuntimeError("the process died before the commit")

    _concurrently([pid for pid in purchase_ids for _ in range(deliveries)], complete)


@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_concurrent_completions_are_numbered_one_to_n_without_gaps(kind, pg_database_factory, tmp_path):
    """A fresh deployment: 24 purchases, each completed by two threads at once, a quarter of the
    transactions rolled back after taking their number; then those completed again. The receipts are
    numbered exactly 1..24 (none lost to a rollback, none twice), one per purchase, each credited once."""
    from decimal import Decimal

    from orcapulse_billing.db import make_engine, upgrade
    from orcapulse_billing.ledger import Ledger

    url = pg_database_factory() if kind == "postgres" else f"sqlite:///{tmp_path / 'receipts.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        ledger = Ledger(engine, grace_limit=Decimal(5))
        orgs = [Org(engine, ledger, roles=("owner",)) for _ in range(3)]
        purchases = [pid for org in orgs for pid in _open_purchases(engine, org, 8)]
        unlucky = set(purchases[::4])
        _complete_concurrently(ledger, purchases, deliveries=2, fail=lambda pid: pid in unlucky)
        assert _numbers(engine) == list(range(1, len(purchases) - len(unlucky) + 1))
        _complete_concurrently(ledger, sorted(unlucky), deliveries=2, fail=lambda pid: False)
        assert _numbers(engine) == list(range(1, len(purchases) + 1))
        with engine.connect() as conn:
            per_purchase = conn.execute(
                sa.text("SELECT checkout_session_id, COUNT(*) FROM receipt GROUP BY checkout_session_id")
            ).all()
            assert sorted(p for p, _ in per_purchase) == sorted(purchases) and {n for _, n in per_purchase} == {1}
            last = conn.execute(sa.text("SELECT last_number FROM document_counter WHERE series = 'receipt'")).scalar()
            assert last == len(purchases)
            for org in orgs:
                assert org.account().balance == Decimal(50 * 8)
                check_invariants(conn, org.account_id)
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_concurrent_refunds_get_credit_notes_numbered_without_gaps(kind, pg_database_factory, tmp_path):
    """16 purchases refunded at once, each refund delivered twice, a quarter of the transactions rolled
    back, then delivered again: credit notes CN-1..CN-16, one per refund, each referring to its receipt."""
    from decimal import Decimal

    from orcapulse_billing.db import make_engine, upgrade
    from orcapulse_billing.ledger import Ledger
    from orcapulse_billing.payments.takebacks import refund_to

    url = pg_database_factory() if kind == "postgres" else f"sqlite:///{tmp_path / 'notes.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        ledger = Ledger(engine, grace_limit=Decimal(5))
        orgs = [Org(engine, ledger, roles=("owner",)) for _ in range(2)]
        purchases = [pid for org in orgs for pid in _open_purchases(engine, org, 8)]
        _complete_concurrently(ledger, purchases, deliveries=1, fail=lambda pid: False)
        unlucky = set(purchases[1::4])

        def refund(pid: int, *, fail: bool) -> None:
            with ledger.transaction() as conn:
                row = conn.execute(sa.text("SELECT * FROM checkout_session WHERE id = :i"), {"i": pid}).one()
                refund_to(ledger, conn, row, 2000, key=f"refund:{pid}", metadata={})  # $20 of the $50
                if fail:
                    raise RuntimeError("the process died before the commit")

        _concurrently([p for p in purchases for _ in range(2)], lambda pid: refund(pid, fail=pid in unlucky))
        assert _numbers(engine, "credit_note") == list(range(1, len(purchases) - len(unlucky) + 1))
        _concurrently([p for p in sorted(unlucky) for _ in range(2)], lambda pid: refund(pid, fail=False))
        assert _numbers(engine, "credit_note") == list(range(1, len(purchases) + 1))
        with engine.connect() as conn:
            notes = conn.execute(
                sa.text(
                    "SELECT n.checkout_session_id, n.amount, r.checkout_session_id AS receipt_of FROM receipt n"
                    " JOIN receipt r ON r.id = n.refers_to_id WHERE n.kind = 'credit_note'"
                )
            ).all()
            assert sorted(n.checkout_session_id for n in notes) == sorted(purchases)
            assert all(n.receipt_of == n.checkout_session_id and n.amount == 200_000 for n in notes)
            for org in orgs:
                assert org.account().balance == Decimal(30 * 8)
                check_invariants(conn, org.account_id)
    finally:
        engine.dispose()


def _org_as_of_0013(engine) -> SimpleNamespace:
    """An organization with its account and owner, written as the schema of migration 0013 has them."""
    now = {"now": datetime(2026, 1, 1, tzinfo=UTC)}
    with engine.begin() as conn:
        org_id = conn.execute(
            sa.text("INSERT INTO organization (name, created_at) VALUES ('Before the upgrade', :now) RETURNING id"), now
        ).scalar_one()
        account_id = conn.execute(
            sa.text(
                "INSERT INTO credit_account (organization_id, created_at, updated_at) VALUES (:o, :now, :now) "
                "RETURNING id"
            ),
            {"o": org_id, **now},
        ).scalar_one()
        user_id = conn.execute(
            sa.text(
                "INSERT INTO app_user (email, password_hash, created_at) VALUES ('owner@before.test', 'x', :now) "
                "RETURNING id"
            ),
            now,
        ).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO membership (user_id, organization_id, role, created_at) VALUES (:u, :o, 'owner', :now)"
            ),
            {"u": user_id, "o": org_id, **now},
        )
    return SimpleNamespace(
        id=org_id, account_id=account_id, user_ids={"owner": user_id}, org=SimpleNamespace(name="Before the upgrade")
    )


def test_purchases_completed_before_the_upgrade_get_their_receipts(tmp_path):
    """Migration 0014 issues receipts for what was bought before it, in completion order; new ones follow."""
    from decimal import Decimal

    from alembic import command
    from orcapulse_billing.db import alembic_config, make_engine
    from orcapulse_billing.ledger import Ledger, Posting

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0013")
    engine = make_engine(url)
    ledger = Ledger(engine, grace_limit=Decimal(5))
    org = _org_as_of_0013(engine)  # today's services write today's columns: the old schema lacks them
    with engine.begin() as conn:
        for n, provider_id in enumerate(("cs_second", "cs_first", "cs_never_paid")):
            conn.execute(
                sa.text(
                    "INSERT INTO checkout_session (organization_id, user_id, provider, provider_id, mode, package_id,"
                    " amount, bonus, currency, status, refunded, created_at, completed_at, payment_intent_id)"
                    " VALUES (:o, :u, 'stripe', :p, 'payment', 'pkg_200', 2000000, 40000, 'usd', :s, 0,"
                    " CURRENT_TIMESTAMP, :c, :pi)"
                ),
                {
                    "o": org.id,
                    "u": org.user_ids["owner"],
                    "p": provider_id,
                    "s": "open" if n == 2 else "completed",
                    "c": None if n == 2 else f"2026-0{2 - n}-01 10:00:00",
                    "pi": f"pi_{provider_id}",
                },
            )
    for key in ("stripe:cs_second", "stripe:cs_first"):
        ledger.post(
            Posting(org.account_id, "purchase", Decimal(200), "Credit top-up", source="purchase", idempotency_key=key)
        )
    command.upgrade(alembic_config(url), "head")
    with engine.connect() as conn:
        docs = receipts.list_documents(conn, org.id)
    assert [(d.display_number, d.provider_reference) for d in docs] == [
        ("R-000002", "pi_cs_second"),
        ("R-000001", "pi_cs_first"),
    ]
    assert docs[0].billing.name == org.org.name and docs[0].description == "Prepaid credits - $200 package"
    assert docs[0].payment_method == "Card via Stripe Checkout" and docs[0].bonus == 40000
    (fresh,) = _open_purchases(engine, org, 1)
    _complete_concurrently(ledger, [fresh], deliveries=1, fail=lambda pid: False)
    assert _numbers(engine) == [1, 2, 3]
    engine.dispose()
