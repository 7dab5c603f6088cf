"""The daily phone-number billing job, on SQLite and PostgreSQL, and the run-once locks
(in-process, PostgreSQL advisory, Redis)."""

from __future__ import annotations

import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from orcapulse_billing.jobs import add_months, add_phone_number, bill_phone_numbers, run_once
from orcapulse_billing.ledger import Ledger, Posting, check_invariants

from .conftest import GRACE


def _number() -> str:
    return "+1415" + str(uuid.uuid4().int % 10**7).zfill(7)


def _phone_entries(engine, account_id):
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT description, amount, category FROM ledger_entry WHERE account_id = :a AND category = 'phone_rental' "
                    "ORDER BY seq"
                ),
                {"a": account_id},
            )
        ]


def _org_of(engine, account_id):
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT organization_id FROM credit_account WHERE id = :a"), {"a": account_id}
        ).scalar()


def test_month_arithmetic_clamps_to_month_end():
    start = datetime(2026, 1, 31, 10, 0, tzinfo=UTC)
    assert [add_months(start, k).date() for k in range(4)] == [
        date(2026, 1, 31),
        date(2026, 2, 28),
        date(2026, 3, 31),
        date(2026, 4, 30),
    ]


def test_catches_up_missed_periods_and_reruns_bill_nothing(engine, ledger, new_account):
    account_id = new_account(welcome=Decimal(20))
    number = _number()
    add_phone_number(engine, _org_of(engine, account_id), number, Decimal("1.15"), datetime(2026, 8, 31, 9, tzinfo=UTC))
    first = bill_phone_numbers(engine, ledger, date(2026, 11, 23))  # down since August: three periods due
    pretty = f"+1 {number[2:5]} {number[5:8]} {number[8:]}"
    assert [e for e in _phone_entries(engine, account_id)] == [
        (f"Phone number rental - {pretty} - {m} 2026", -11_500, "phone_rental") for m in ("Aug", "Sep", "Oct")
    ]
    assert len([d for d in first.billed if pretty in d]) == 3
    again = bill_phone_numbers(engine, ledger, date(2026, 11, 23))
    assert [d for d in again.billed if pretty in d] == [] and len(_phone_entries(engine, account_id)) == 3
    bill_phone_numbers(engine, ledger, date(2026, 11, 30))  # the next anniversary (Nov 30)
    assert len(_phone_entries(engine, account_id)) == 4
    with engine.connect() as conn:
        assert check_invariants(conn, account_id) == []
        last = conn.execute(
            sa.text("SELECT last_billed_at FROM phone_number WHERE number = :n"), {"n": number}
        ).scalar()
    assert str(last).startswith("2026-11-30")


def test_two_concurrent_runners_bill_each_period_once(engine, new_account):
    account_id = new_account(welcome=Decimal(100))
    org_id = _org_of(engine, account_id)
    for _ in range(5):
        add_phone_number(engine, org_id, _number(), Decimal("2"), datetime(2026, 6, 15, tzinfo=UTC))
    barrier = threading.Barrier(2)
    errors = []

    def runner():
        try:
            barrier.wait()
            bill_phone_numbers(engine, Ledger(engine, grace_limit=GRACE), date(2026, 11, 23))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=runner) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(_phone_entries(engine, account_id)) == 5 * 6  # Jun..Nov, each once
    with engine.connect() as conn:
        assert check_invariants(conn, account_id) == []


def test_without_credit_a_period_waits_for_the_next_run(engine, ledger, new_account):
    account_id = new_account()
    number = _number()
    add_phone_number(engine, _org_of(engine, account_id), number, Decimal("4"), datetime(2026, 9, 1, tzinfo=UTC))
    run = bill_phone_numbers(engine, ledger, date(2026, 11, 2))
    mine = number[-4:]
    assert [d[-8:] for d in run.billed if mine in d] == ["Sep 2026"]  # into the grace period
    assert [d[-8:] for d in run.refused if mine in d] == ["Oct 2026"]  # past it: waits
    ledger.post(Posting(account_id, "purchase", "50", "top-up"))
    run = bill_phone_numbers(engine, ledger, date(2026, 11, 2))
    assert [d[-8:] for d in run.billed if mine in d] == ["Oct 2026", "Nov 2026"]
    assert len(_phone_entries(engine, account_id)) == 3


def test_bad_numbers_are_refused(engine, new_account):
    org_id = _org_of(engine, new_account())
    for number, cost in (("555", Decimal(1)), ("+1415555", Decimal(1)), (_number(), Decimal(0))):
        with pytest.raises(ValueError):
            add_phone_number(engine, org_id, number, cost)


def test_run_once_admits_one_runner(engine):
    name = f"job-{uuid.uuid4().hex[:6]}"
    with run_once(engine, name) as first:
        with run_once(engine, name) as second:
            assert (first, second) == (True, False)
    with run_once(engine, name) as again:
        assert again


def test_run_once_with_redis():
    import redis

    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is needed at {url}: {exc}")
    name = f"job-{uuid.uuid4().hex[:6]}"
    with run_once(None, name, url) as first:
        with run_once(None, name, url) as second:
            assert (first, second) == (True, False)
    with run_once(None, name, url) as again:
        assert again


@pytest.mark.parametrize("loop_name", ["auto_recharge_sweep_loop", "reconcile_loop", "notice_sweep_loop"])
def test_the_safety_nets_run_every_sweep_interval_seconds(loop_name, monkeypatch, sqlite_url):
    """The 5-minute rounds wait SWEEP_INTERVAL_SECONDS between runs (the test suite's app server sets a
    day, so that a round never lands in the middle of a test); a value that is not a positive number of
    seconds is refused at start-up. The loop's wait is handed in, never patched: this process may run the
    app server, whose own loops must keep their asyncio."""
    import asyncio

    from orcapulse_billing import jobs
    from orcapulse_billing.config import ConfigError, get_settings, load_settings

    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # the loop's wait: recorded, then the loop is stopped
        waits.append(seconds)
        raise asyncio.CancelledError

    # The reconcile round runs first, for real: with Stripe unconfigured it is skipped (a warning) and writes
    # nothing, where the sandbox's payments of other tests would otherwise reach this database
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.delenv("STRIPE_SECRET_KEY", raising=False)
    monkeypatch.setenv("SWEEP_INTERVAL_SECONDS", "7")
    get_settings.cache_clear()
    try:
        # on a thread of its own: in the suite's app part, Playwright's sync API keeps a loop running on this one
        with ThreadPoolExecutor(1) as thread, pytest.raises(asyncio.CancelledError):
            thread.submit(asyncio.run, getattr(jobs, loop_name)(sleep=sleep)).result()
        assert waits == [7]
        monkeypatch.setenv("SWEEP_INTERVAL_SECONDS", "0")
        with pytest.raises(ConfigError, match="SWEEP_INTERVAL_SECONDS"):
            load_settings()
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_the_webhook_retention_round_deletes_what_finished_before_the_retention(monkeypatch, sqlite_url):
    """One round of the hourly loop, for real on SQLite, with WEBHOOK_RETENTION_DAYS=7: a message that
    finished 8 days ago goes with its attempts, one that finished 6 days ago stays."""
    import asyncio
    from datetime import timedelta

    from orcapulse_billing import jobs, webhooks
    from orcapulse_billing.config import get_settings
    from orcapulse_billing.db import make_engine, writer
    from orcapulse_billing.models import WebhookAttempt, WebhookMessage

    from .apiutil import Org

    engine = make_engine(sqlite_url)
    org = Org(engine, Ledger(engine, grace_limit=GRACE), roles=("owner",))
    webhooks.add_endpoint(
        engine, org.id, "http://127.0.0.1:9/hook", ["credits.added"], production=False, user_id=org.user_ids["owner"]
    )
    ids = []
    for key, days in (("eight", 8), ("six", 6)):
        with writer(engine).begin() as conn:
            webhooks.emit(conn, org.id, "credits.added", {"amount": "1.0000"}, key=key)
            message = conn.execute(sa.select(sa.func.max(WebhookMessage.id))).scalar_one()
            finished = datetime.now(UTC) - timedelta(days=days)
            conn.execute(
                sa.update(WebhookMessage)
                .where(WebhookMessage.id == message)
                .values(status="delivered", finished_at=finished, attempts=1)
            )
            conn.execute(
                sa.insert(WebhookAttempt).values(
                    message_id=message, attempt=1, status_code=200, duration_ms=5, attempted_at=finished
                )
            )
        ids.append(message)
    rounds: list[float] = []

    async def sleep(seconds: float) -> None:  # the first wait passes, the second stops the loop
        rounds.append(seconds)
        if len(rounds) > 1:
            raise asyncio.CancelledError

    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("WEBHOOK_RETENTION_DAYS", "7")
    get_settings.cache_clear()
    try:
        # on a thread of its own: in the suite's app part, Playwright's sync API keeps a loop running on this one
        with ThreadPoolExecutor(1) as thread, pytest.raises(asyncio.CancelledError):
            thread.submit(asyncio.run, jobs.webhook_retention_loop(sleep=sleep)).result()
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert rounds == [3600.0, 3600.0]
    with engine.connect() as conn:
        kept = conn.execute(sa.select(WebhookMessage.id).where(WebhookMessage.organization_id == org.id)).scalars()
        attempts = conn.execute(sa.select(WebhookAttempt.message_id).where(WebhookAttempt.message_id.in_(ids)))
        assert list(kept) == [ids[1]] and list(attempts.scalars()) == [ids[1]]
    engine.dispose()
