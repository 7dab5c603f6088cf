"""Credit grants: burn order, what each debit consumed, debt, a purchase's own grants on refund and
dispute, expiry (and its 7-day email), the CLI, the API and the migration of existing balances.

Real parts throughout: the ledger on a SQLite file and on PostgreSQL, the payment take-backs on
their own tables, the CLI as a process, the REST API over ASGI, Alembic upgrading real databases.
`check_invariants` (which holds balance == sum of grant remainders - debt, and every consumption to
its debit) runs after every step.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alembic import command
from orcapulse_billing.accounts import account_id_for, add_user, create_organization
from orcapulse_billing.db import alembic_config, make_engine, writer
from orcapulse_billing.grants import consumed_by, end_of_day, expire_credits, list_grants
from orcapulse_billing.ledger import InvalidPosting, Ledger, Posting, check_invariants, get_account
from orcapulse_billing.models import CheckoutSession, CreditGrant, EmailOutbox, GrantConsumption
from orcapulse_billing.money import to_units
from orcapulse_billing.payments import takebacks
from orcapulse_billing.payments.flow import credit_checkout

from .conftest import GRACE

NOW = datetime.now(UTC).replace(microsecond=0)


def credit(ledger, account, amount, source, *, expires_at=None, key=None, cs=None, entry_type="adjustment"):
    return ledger.post(
        Posting(
            account,
            entry_type,
            Decimal(amount),
            f"{source} {amount}",
            source=source,
            expires_at=expires_at,
            idempotency_key=key,
            checkout_session_id=cs,
        )
    )


def debit(ledger, account, amount, *, key=None, floor=None):
    return ledger.post(
        Posting(account, "usage", -Decimal(amount), f"usage {amount}", category="sms", idempotency_key=key, floor=floor)
    )


def grant_of(engine, entry) -> dict:
    with engine.connect() as conn:
        row = conn.execute(sa.select(CreditGrant).where(CreditGrant.entry_id == entry.id)).one()
    return dict(row._mapping)


def remaining(engine, *entries) -> list[int]:
    return [grant_of(engine, e)["remaining"] for e in entries]


def used(engine, entry) -> list[tuple[int, int]]:
    """(grant's entry id, units) for each grant the debit consumed, in burn order."""
    g, c = CreditGrant.__table__, GrantConsumption.__table__
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(g.c.entry_id, c.c.amount, g.c.priority, g.c.expires_at, g.c.id)
            .join(g, g.c.id == c.c.grant_id)
            .where(c.c.entry_id == entry.id)
        ).all()
    rows.sort(key=lambda r: (r.priority, r.expires_at is None, r.expires_at or NOW, r.id))
    return [(r.entry_id, r.amount) for r in rows]


def sound(engine, account) -> None:
    with engine.connect() as conn:
        assert check_invariants(conn, account) == []


# -- the ledger --------------------------------------------------------------------------------


def test_a_debit_burns_promotional_then_bonus_then_paid_earliest_expiry_first(engine, ledger, new_account):
    account = new_account(Decimal("1"))  # the welcome credit: class 0, no expiry, oldest
    purchase = credit(ledger, account, "10", "purchase", entry_type="purchase")
    bonus_late = credit(ledger, account, "2", "bonus", expires_at=NOW + timedelta(days=90))
    bonus = credit(ledger, account, "5", "bonus", entry_type="bonus")
    promo_late = credit(ledger, account, "3", "promotional", expires_at=NOW + timedelta(days=30))
    promo_soon = credit(ledger, account, "2", "promotional", expires_at=NOW + timedelta(days=10))
    promo_forever = credit(ledger, account, "4", "promotional")
    with engine.connect() as conn:
        welcome_grant = next(g for g in list_grants(conn, account) if g.source == "welcome")
        welcome_entry = conn.execute(sa.select(CreditGrant.entry_id).where(CreditGrant.id == welcome_grant.id)).scalar()
    sound(engine, account)

    first = debit(ledger, account, "7.5")  # class 0: soonest expiry, later expiry, then no expiry by age
    assert used(engine, first) == [(promo_soon.id, 20000), (promo_late.id, 30000), (welcome_entry, 10000)] + [
        (promo_forever.id, 15000)
    ]
    second = debit(ledger, account, "6")  # the rest of class 0, then bonus: the expiring one first
    assert used(engine, second) == [(promo_forever.id, 25000), (bonus_late.id, 20000), (bonus.id, 15000)]
    third = debit(ledger, account, "4")  # bonus, then purchased
    assert used(engine, third) == [(bonus.id, 35000), (purchase.id, 5000)]
    assert remaining(engine, purchase, bonus, bonus_late, promo_soon, promo_late, promo_forever) == [
        95000,
        0,
        0,
        0,
        0,
        0,
    ]
    sound(engine, account)


def test_a_debit_split_across_grants_is_recorded_to_the_unit(engine, ledger, new_account):
    account = new_account()
    a = credit(ledger, account, "0.3333", "promotional")
    b = credit(ledger, account, "0.6667", "promotional")
    c = credit(ledger, account, "1.0001", "purchase")
    entry = debit(ledger, account, "1.00005")  # rounds half-up to 1.0001
    assert entry.amount_units == -10001
    assert used(engine, entry) == [(a.id, 3333), (b.id, 6667), (c.id, 1)]
    assert remaining(engine, a, b, c) == [0, 0, 10000]
    with engine.connect() as conn:
        assert consumed_by(conn, entry.id) == [
            "$0.33 from promotional credits",
            "$0.67 from promotional credits",
            "$0.00 from purchased credits",
        ]
    sound(engine, account)


def test_what_no_grant_covers_is_debt_and_the_next_credit_pays_it_first(engine, ledger, new_account):
    account = new_account()
    first = credit(ledger, account, "1", "promotional")
    short = debit(ledger, account, "3")  # grace: the balance goes to -2
    assert short.balance_after_units == -20000
    assert used(engine, short) == [(first.id, 10000)]  # the uncovered 2 is debt, consumed from nothing
    sound(engine, account)
    small = credit(ledger, account, "1.5", "purchase")  # all of it pays debt: nothing left to spend
    assert grant_of(engine, small)["remaining"] == 0 and grant_of(engine, small)["amount"] == 15000
    sound(engine, account)
    big = credit(ledger, account, "10", "bonus")  # pays the last 0.5 of debt, 9.5 remain
    assert grant_of(engine, big)["remaining"] == 95000
    after = debit(ledger, account, "0.25")
    assert used(engine, after) == [(big.id, 2500)]
    sound(engine, account)


def test_replays_create_no_grant_and_consume_nothing_twice(engine, ledger, new_account):
    account = new_account()
    first = credit(ledger, account, "5", "promotional", key="promo-1", expires_at=NOW + timedelta(days=3))
    again = credit(ledger, account, "5", "promotional", key="promo-1", expires_at=NOW + timedelta(days=3))
    assert again.replayed and again.id == first.id
    spent = debit(ledger, account, "2", key="use-1")
    assert debit(ledger, account, "2", key="use-1").replayed
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(CreditGrant.account_id == account)).scalar() == 1
        assert conn.execute(sa.select(sa.func.count()).where(GrantConsumption.entry_id == spent.id)).scalar() == 1
    assert remaining(engine, first) == [30000]
    sound(engine, account)


def test_bad_grant_postings_are_refused_and_write_nothing(engine, ledger, new_account):
    account = new_account(Decimal("3"))
    with pytest.raises(InvalidPosting, match="only credits expire"):
        ledger.post(Posting(account, "usage", Decimal("-1"), "x", category="sms", expires_at=NOW))
    with pytest.raises(InvalidPosting, match="expiry"):
        ledger.post(Posting(account, "expiry", Decimal("-1"), "x"))
    with pytest.raises(InvalidPosting, match="debit"):
        ledger.post(Posting(account, "expiry", Decimal("1"), "x", from_grant=1))
    with engine.connect() as conn:
        assert get_account(conn, account_id=account).transaction_count == 1
    sound(engine, account)


# -- a purchase's own grants on refund and dispute ---------------------------------------------


def _paid_purchase(engine, ledger, account, credits: str, bonus: str) -> int:
    """A completed checkout credited through the payment flow (its purchase and bonus grants)."""
    with engine.connect() as conn:
        organization_id = get_account(conn, account_id=account).organization_id
    with writer(engine).begin() as conn:
        org_user = conn.execute(sa.text("SELECT id FROM app_user ORDER BY id LIMIT 1")).scalar()
        row_id = conn.execute(
            sa.insert(CheckoutSession)
            .values(
                organization_id=organization_id,
                user_id=org_user,
                provider="stripe",
                provider_id=f"cs_{uuid.uuid4().hex}",
                mode="payment",
                amount=to_units(Decimal(credits)),
                bonus=to_units(Decimal(bonus)),
                status="open",
                created_at=NOW,
            )
            .returning(CheckoutSession.id)
        ).scalar()
    with ledger.transaction() as conn:
        row = takebacks.lock_purchase(conn, row_id)
        assert credit_checkout(ledger, conn, row, provider_reference=None, metadata={})
    return row_id


def _grants_of_purchase(engine, row_id) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(CreditGrant.source, CreditGrant.remaining).where(CreditGrant.checkout_session_id == row_id)
        ).all()
    return {r.source: r.remaining for r in rows}


@pytest.fixture
def buyer(engine, ledger):
    org = create_organization(engine, ledger, f"buyer-{uuid.uuid4().hex[:10]}", welcome_credit=Decimal(0))
    add_user(engine, org, f"owner-{uuid.uuid4().hex[:8]}@example.test", "owner", "a-long-test-password")
    return account_id_for(engine, org.id)


def test_a_refund_takes_what_remains_of_its_own_grants_first(engine, ledger, buyer):
    older = credit(ledger, buyer, "50", "purchase", entry_type="purchase")  # another purchase, older
    promo = credit(ledger, buyer, "5", "promotional", expires_at=NOW + timedelta(days=5))
    row_id = _paid_purchase(engine, ledger, buyer, "200", "4")
    assert _grants_of_purchase(engine, row_id) == {"purchase": 2_000_000, "bonus": 40_000}
    debit(ledger, buyer, "7")  # promo 5, then the bonus class: this purchase's bonus 2
    assert _grants_of_purchase(engine, row_id) == {"purchase": 2_000_000, "bonus": 20_000}
    with ledger.transaction() as conn:
        row = takebacks.lock_purchase(conn, row_id)
        takebacks.refund_to(ledger, conn, row, 20_000, key="re_1", metadata={})  # all $200 back
    # 200 credits + the whole 4 bonus: the purchase's own 202 remaining, then 2 more in burn order
    assert _grants_of_purchase(engine, row_id) == {"purchase": 0, "bonus": 0}
    assert remaining(engine, older, promo) == [480_000, 0]
    sound(engine, buyer)


def test_a_dispute_takes_its_purchases_grants_first_and_a_won_one_returns_them_as_its_grants(engine, ledger, buyer):
    older = credit(ledger, buyer, "30", "purchase", entry_type="purchase")
    row_id = _paid_purchase(engine, ledger, buyer, "50", "0")
    with ledger.transaction() as conn:
        row = takebacks.lock_purchase(conn, row_id)
        takebacks.open_dispute(
            ledger, conn, row, dispute_id="dp_1", amount_cents=2_000, status="needs_response", metadata={}
        )
    assert _grants_of_purchase(engine, row_id) == {"purchase": 300_000}  # 20 of its own 50
    assert remaining(engine, older) == [300_000]  # the older purchase untouched
    sound(engine, buyer)
    with ledger.transaction() as conn:
        row = takebacks.lock_purchase(conn, row_id)
        takebacks.close_dispute(ledger, conn, row, dispute_id="dp_1", status="won", metadata={})
    with engine.connect() as conn:
        back = conn.execute(
            sa.select(CreditGrant.source, CreditGrant.priority, CreditGrant.remaining)
            .where(CreditGrant.checkout_session_id == row_id)
            .order_by(CreditGrant.id)
        ).all()
    assert [tuple(r) for r in back] == [("purchase", 2, 300_000), ("purchase", 2, 200_000)]
    sound(engine, buyer)


# -- expiry ------------------------------------------------------------------------------------


def _outbox(engine, key_prefix: str) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(sa.select(EmailOutbox.subject).where(EmailOutbox.dedupe_key.like(f"{key_prefix}%"))).scalars()
        )


def test_expiry_posts_exactly_the_remainder_once_and_warns_the_owners_once(engine, ledger, buyer):
    expires = NOW + timedelta(days=30)
    paid = credit(ledger, buyer, "10", "purchase", entry_type="purchase")
    promo = credit(ledger, buyer, "3", "promotional", expires_at=expires)
    later = credit(ledger, buyer, "1", "promotional", expires_at=expires + timedelta(days=30))
    debit(ledger, buyer, "1.2345")
    promo_grant = grant_of(engine, promo)
    key = f"grant-expiry:{promo_grant['id']}:"

    expire_credits(engine, ledger, now=expires - timedelta(days=8))  # not yet (the job sees every account)
    assert grant_of(engine, promo)["expiry_notified_at"] is None and _outbox(engine, key) == []
    for days in (6, 5):  # within 7 days: emailed once
        expire_credits(engine, ledger, now=expires - timedelta(days=days))
    assert _outbox(engine, key) == [
        f"$1.77 of promotional credits expire on {expires:%b} {expires.day}, {expires.year}"
    ]
    assert grant_of(engine, promo)["expiry_notified_at"] is not None
    expire_credits(engine, ledger, now=expires - timedelta(seconds=1))
    assert grant_of(engine, promo)["expired_at"] is None

    with engine.connect() as conn:
        balance_before = get_account(conn, account_id=buyer).balance_units
    run = expire_credits(engine, ledger, now=expires + timedelta(minutes=1))
    assert f"Expired credits - promotional grant of $3.00 from {NOW:%b} {NOW.day}, {NOW.year}" in run.expired
    expire_credits(engine, ledger, now=expires + timedelta(minutes=2))  # twice: posted once (below)
    with engine.connect() as conn:
        entries = conn.execute(
            sa.text("SELECT id, amount, type, kind FROM ledger_entry WHERE account_id = :a AND type = 'expiry'"),
            {"a": buyer},
        ).all()
        assert [(r.amount, r.kind) for r in entries] == [(-17655, "adjustment")]
        assert get_account(conn, account_id=buyer).balance_units == balance_before - 17655
        consumption = conn.execute(
            sa.select(GrantConsumption.grant_id, GrantConsumption.amount).where(
                GrantConsumption.entry_id == entries[0].id
            )
        ).all()
    assert [tuple(r) for r in consumption] == [(promo_grant["id"], 17655)]
    assert grant_of(engine, promo)["expired_at"] is not None and remaining(engine, promo, later, paid) == [
        0,
        10000,
        100000,
    ]
    sound(engine, buyer)


def test_a_grant_spent_before_it_expires_posts_nothing_and_an_unexpired_one_is_refused(engine, ledger, new_account):
    account = new_account()
    expires = NOW + timedelta(days=1)
    promo = credit(ledger, account, "1", "promotional", expires_at=expires)
    debit(ledger, account, "1")
    grant_id = grant_of(engine, promo)["id"]
    with pytest.raises(InvalidPosting, match="has not expired"):
        ledger.expire_grant(grant_id, now=NOW)
    assert ledger.expire_grant(grant_id, now=expires + timedelta(seconds=1)) is None
    assert grant_of(engine, promo)["expired_at"] is not None
    sound(engine, account)


# -- burn order, property-based ----------------------------------------------------------------

SOURCES = ["promotional", "welcome", "bonus", "purchase", "manual", "refund"]
grant_specs = st.lists(
    st.tuples(
        st.sampled_from(SOURCES),
        st.integers(min_value=1, max_value=50_000),  # units
        st.one_of(st.none(), st.integers(min_value=1, max_value=5)),  # expires in N days
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(specs=grant_specs, debits=st.lists(st.integers(min_value=1, max_value=60_000), min_size=1, max_size=5))
def test_property_debits_consume_grants_exactly_in_burn_order(engine, ledger, new_account, specs, debits):
    """Against a plain-Python model: each debit takes from the grants sorted by (class, expiry with
    none last, age), all of each before the next, and the uncovered rest is debt."""
    account = new_account()
    model = []  # [sort key, entry id, remaining]
    for n, (source, units, days) in enumerate(specs):
        expires = NOW + timedelta(days=days) if days else None
        entry = credit(ledger, account, Decimal(units) / 10_000, source, expires_at=expires)
        priority = {"promotional": 0, "welcome": 0, "bonus": 1}.get(source, 2)
        model.append([(priority, expires is None, expires or NOW, n), entry.id, units])
    model.sort()
    for units in debits:
        entry = debit(ledger, account, Decimal(units) / 10_000, floor=Decimal(-(10**6)))
        expected, need = [], units
        for grant in model:
            take = min(grant[2], need)
            if take:
                expected.append((grant[1], take))
                grant[2] -= take
                need -= take
        assert used(engine, entry) == expected
    assert [grant_of(engine, type("E", (), {"id": g[1]})())["remaining"] for g in model] == [g[2] for g in model]
    sound(engine, account)


# -- concurrency on PostgreSQL -----------------------------------------------------------------


def test_twenty_concurrent_debits_on_postgres_leave_exact_remainders(pg_url):
    engine = make_engine(pg_url)
    ledger = Ledger(engine, grace_limit=GRACE)
    try:
        org = create_organization(engine, ledger, f"race-{uuid.uuid4().hex[:10]}", welcome_credit=Decimal("1.5"))
        account = account_id_for(engine, org.id)
        grants = [
            credit(ledger, account, "2.5", "promotional", expires_at=NOW + timedelta(days=3)),
            credit(ledger, account, "3", "bonus"),
            credit(ledger, account, "4", "purchase", entry_type="purchase"),
        ]  # 11 credits in four grants
        barrier = threading.Barrier(20)
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                barrier.wait()
                debit(ledger, account, "0.4321", key=f"race-{n}")
            except BaseException as exc:  # noqa: BLE001 (reported below)
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        # 20 x 0.4321 = 8.642: welcome 1.5 and promo 2.5, bonus 3, then 1.642 of the purchase
        assert remaining(engine, *grants) == [0, 0, 40_000 - 16_420]
        with engine.connect() as conn:
            assert (
                conn.execute(
                    sa.select(sa.func.count()).where(CreditGrant.account_id == account, CreditGrant.remaining < 0)
                ).scalar()
                == 0
            )
            assert get_account(conn, account_id=account).balance_units == 23_580
            assert check_invariants(conn, account) == []
    finally:
        engine.dispose()


# -- the migration -----------------------------------------------------------------------------


def _legacy_account(conn, name: str, entries: list[tuple[str, str, str | None, int]]) -> int:
    org_id = conn.execute(
        sa.text("INSERT INTO organization (name, created_at) VALUES (:n, :t) RETURNING id"), {"n": name, "t": NOW}
    ).scalar()
    balance = sum(e[3] for e in entries)
    account_id = conn.execute(
        sa.text(
            "INSERT INTO credit_account (organization_id, currency, balance, lifetime_added, lifetime_consumed, "
            "transaction_count, topup_count, adjustment_count, created_at, updated_at) "
            "VALUES (:o, 'USD', :b, :added, :consumed, :n, :topups, :adjustments, :t, :t) RETURNING id"
        ),
        {
            "o": org_id,
            "b": balance,
            "added": sum(e[3] for e in entries if e[3] > 0),
            "consumed": -sum(e[3] for e in entries if e[3] < 0),
            "n": len(entries),
            "topups": sum(e[1] == "topup" for e in entries),
            "adjustments": sum(e[1] == "adjustment" for e in entries),
            "t": NOW,
        },
    ).scalar()
    running, seen = 0, {}
    for seq, (entry_type, kind, source, amount) in enumerate(entries, start=1):
        seen[kind] = seen.get(kind, 0) + 1
        conn.execute(
            sa.text(
                "INSERT INTO ledger_entry (account_id, seq, kind, kind_seq, type, source, amount, balance_before, "
                "balance_after, description, metadata, created_at) "
                "VALUES (:a, :seq, :kind, :ks, :type, :source, :amount, :before, :after, 'legacy', '{}', :t)"
            ),
            {
                "a": account_id,
                "seq": seq,
                "kind": kind,
                "ks": seen[kind],
                "type": entry_type,
                "source": source,
                "amount": amount,
                "before": running,
                "after": running + amount,
                "t": NOW,
            },
        )
        running += amount
    return account_id


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_upgrading_from_0009_makes_one_grant_of_each_positive_balance(kind, tmp_path, pg_database_factory):
    url = f"sqlite:///{tmp_path / 'old.db'}" if kind == "sqlite" else pg_database_factory()
    cfg = alembic_config(url)
    command.upgrade(cfg, "0009")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:  # accounts as 0009 knew them: entries, no grants
            ids = [
                _legacy_account(conn, "rich", [("purchase", "topup", "purchase", 123_4567)]),
                _legacy_account(conn, "broke", [("adjustment", "adjustment", None, -2_0000)]),
                _legacy_account(conn, "empty", []),
            ]
        command.upgrade(cfg, "head")
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT account_id, source, priority, amount, remaining, expires_at FROM credit_grant")
            ).all()
        assert [tuple(r) for r in rows] == [(ids[0], "migrated", 2, 123_4567, 123_4567, None)]
        # and the migrated grant is spent like any other, after which the debt rule applies
        ledger = Ledger(engine, grace_limit=GRACE)
        entry = debit(ledger, ids[0], "124")
        assert used(engine, entry) == [(None, 123_4567)]
        credit(ledger, ids[1], "5", "manual")
        for account in ids:
            sound(engine, account)
    finally:
        engine.dispose()


def test_an_expiry_date_is_the_end_of_that_day_utc_and_must_be_in_the_future():
    assert end_of_day("2027-01-31", now=NOW.replace(year=2026)) == datetime(2027, 1, 31, 23, 59, 59, tzinfo=UTC)
    with pytest.raises(ValueError, match="not a date"):
        end_of_day("2027-02-30")
    with pytest.raises(ValueError, match="not in the future"):
        end_of_day("2020-01-01")


# -- the CLI -----------------------------------------------------------------------------------


def test_cli_grants_promotional_credits_that_expire_and_the_job_expires_them(tmp_path):
    from .test_cli import _make_cli

    cli = _make_cli(tmp_path)
    try:
        cli("create-org", "Acme")  # with a 5.00 welcome credit
        out = cli("grant", "Acme", "12.5", "--type", "promotional", "--expires", "2099-01-31").stdout
        assert "posted adjustment 12.5000 to 'Acme', expiring Jan 31, 2099 (end of day, UTC); balance 17.5000" in out
        with cli.engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT source, priority, amount, remaining, expires_at FROM credit_grant ORDER BY id")
            ).all()
        assert [tuple(r[:4]) for r in rows] == [("welcome", 0, 50_000, 50_000), ("promotional", 0, 125_000, 125_000)]
        assert rows[1][4].startswith("2099-01-31 23:59:59")

        before = _cli_snapshot(cli.engine)
        for args, message in [
            (["--expires", "2099-02-30"], "not a date"),
            (["--expires", "2001-01-01"], "not in the future"),
            (["--expires", "tomorrow"], "not a date"),
        ]:
            result = cli("grant", "Acme", "1", "--type", "promotional", *args, ok=False)
            assert result.returncode == 2 and message in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        bad = cli(
            "grant", "Acme", "-1", "--type", "adjustment", "--description", "x", "--expires", "2099-01-01", ok=False
        )
        assert bad.returncode == 2 and "only credits expire" in bad.stderr
        bad = cli("expire-credits", "--now", "yesterday", ok=False)
        assert bad.returncode == 2 and "not an ISO 8601 instant" in bad.stderr
        assert _cli_snapshot(cli.engine) == before

        assert cli("expire-credits", "--now", "2099-01-31T23:59:58").stdout.endswith(
            "0 grant(s) expired, 1 expiry warning(s) emailed\n"  # within 7 days: warned, not expired
        )
        out = cli("expire-credits", "--now", "2099-02-01T00:00:00").stdout
        assert "expired: Expired credits - promotional grant of $12.50 from" in out and "1 grant(s) expired" in out
        assert "0 grant(s) expired" in cli("expire-credits", "--now", "2099-02-01T00:05:00").stdout
        assert "balance $5.00 (5.0000 credits), added 17.5000, consumed 12.5000" in cli("balance", "Acme").stdout
    finally:
        cli.engine.dispose()


def _cli_snapshot(engine):
    with engine.connect() as conn:
        return [
            conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar()
            for t in ("ledger_entry", "credit_grant", "grant_consumption", "email_outbox")
        ]


# -- the API -----------------------------------------------------------------------------------


def test_grants_through_the_api_for_owners_and_members_active_first(client, org, app_engine, app_ledger, other):
    expires = NOW + timedelta(days=20)
    credit(app_ledger, org.account_id, "10", "purchase", entry_type="purchase")
    credit(app_ledger, org.account_id, "3", "promotional", expires_at=expires)
    spent = credit(app_ledger, org.account_id, "1", "bonus")
    debit(app_ledger, org.account_id, "4")  # promotional 3, then bonus 1: both spent
    answers = [client.get("/api/credits/grants", headers=org.auth(role)) for role in ("owner", "member")]
    assert [a.status_code for a in answers] == [200, 200] and answers[0].json() == answers[1].json()
    grants = answers[0].json()["grants"]
    assert [(g["source"], g["priority"], g["amount"], g["remaining"], g["active"]) for g in grants] == [
        ("purchase", 2, "10.0000", "10.0000", True),
        ("bonus", 1, "1.0000", "0.0000", False),
        ("promotional", 0, "3.0000", "0.0000", False),
    ]
    assert grants[2]["expires_at"].startswith(expires.strftime("%Y-%m-%dT%H:%M:%S"))
    assert grants[0]["expires_at"] is None and grants[0]["expired_at"] is None
    assert grant_of(app_engine, spent)["id"] == grants[1]["id"]
    # another organization sees its own grants only; no credentials is 401
    assert client.get("/api/credits/grants", headers=other.auth("owner")).json() == {"grants": []}
    assert client.get("/api/credits/grants").status_code == 401
    with app_engine.connect() as conn:
        assert check_invariants(conn, org.account_id) == []


# -- the page's data ---------------------------------------------------------------------------


def test_the_page_shows_the_soonest_expiry_and_the_row_detail_the_grants_a_debit_used(org, app_ledger):
    from orcapulse_billing.pages.billing import data

    assert data._load(org.id, "all", 1, 50)["expiring"] == ""
    soon, later = NOW + timedelta(days=9), NOW + timedelta(days=40)
    credit(app_ledger, org.account_id, "2", "purchase", entry_type="purchase")
    credit(app_ledger, org.account_id, "1.25", "promotional", expires_at=soon)
    credit(app_ledger, org.account_id, "0.5", "welcome", expires_at=soon)
    credit(app_ledger, org.account_id, "7", "promotional", expires_at=later)
    spent = debit(app_ledger, org.account_id, "1.5")  # promo 1.25 (soon, older), welcome 0.25 (soon)
    assert data._load(org.id, "all", 1, 50)["expiring"] == f"0.25 credits expire on {soon:%b} {soon.day}, {soon.year}"
    refs = data._load_entry(org.id, spent.id)["refs"]
    day = f"{soon:%b} {soon.day}, {soon.year}"
    assert refs == [
        {"label": "Credits used", "value": f"$1.25 from promotional credits expiring {day}"},
        {"label": "Credits used", "value": f"$0.25 from welcome credits expiring {day}"},
    ]
    debit(app_ledger, org.account_id, "0.25")  # the soon ones are spent: the later grant is next
    assert (
        data._load(org.id, "all", 1, 50)["expiring"] == f"7.00 credits expire on {later:%b} {later.day}, {later.year}"
    )


def test_the_page_shows_expiring_credits_and_which_grants_a_debit_used(app, page, app_engine, app_ledger):
    """In Chromium: "x credits expire on DATE" under the header, and the row detail of a debit lists
    the grants it used, in burn order (the promotional grant first)."""
    import re as _re
    from datetime import UTC, datetime, timedelta

    from playwright.sync_api import expect

    from orcapulse_billing.ledger import Posting as _Posting

    from .apiutil import PASSWORD
    from .apiutil import Org as _Org
    from .browser import sign_in

    org = _Org(app_engine, app_ledger, roles=("owner",))
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=20)
    app_ledger.post(_Posting(org.account_id, "purchase", Decimal(30), "top-up", source="purchase"))
    app_ledger.post(
        _Posting(org.account_id, "adjustment", Decimal(10), "promo", source="promotional", expires_at=expires)
    )
    app_ledger.post(_Posting(org.account_id, "usage", Decimal(-4), "Voice call session", category="ai_call"))
    sign_in(page, app.base_url, org.emails["owner"], PASSWORD)
    expect(page).to_have_url(_re.compile(r"/billing$"), timeout=30_000)
    expect(page.get_by_test_id("balance-value")).to_have_text("$36.00", timeout=30_000)
    notice = page.get_by_test_id("credits-expiring")
    expect(notice).to_contain_text("6.00 credits expire on")
    page.locator("[data-testid=history-row]:visible").first.click()
    panel = page.get_by_test_id("session-panel")
    expect(panel).to_contain_text("Credits used")
    expect(panel).to_contain_text("promotional")
