"""Background work that must run once per deployment: the daily phone-number billing (02:15 UTC).

`run_once(name)` takes a lock for the run: Redis (SET NX with expiry) when REDIS_URL is set, else a
PostgreSQL advisory lock, else an in-process lock (the embedded default has one process). The
postings themselves are idempotent per number and period as well, so a lost lock, a rerun, two
runners or a restart never bill twice, and days missed while down are caught up on the next run.
"""

from __future__ import annotations

import asyncio
import calendar
import functools
import hashlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .budgets import count_posted
from .db import as_utc, writer
from .ledger import InsufficientCredits, Ledger, Posting, get_account
from .models import EntryType, PhoneNumber
from .money import from_units

log = logging.getLogger(__name__)
PHONE_BILLING_AT = time(2, 15, tzinfo=UTC)
_local_locks: dict[str, threading.Lock] = {}
T = TypeVar("T")


def add_months(moment: datetime, months: int) -> datetime:
    """Same day-of-month `months` later, clamped to the month's last day (Jan 31 -> Feb 28)."""
    month0 = moment.month - 1 + months
    year, month = moment.year + month0 // 12, month0 % 12 + 1
    return moment.replace(year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1]))


def format_number(number: str) -> str:
    """'+14155550100' -> '+1 415 555 0100' (North American numbers); others as given."""
    digits = "".join(ch for ch in number if ch.isdigit())
    if number.startswith("+1") and len(digits) == 11:
        return f"+1 {digits[1:4]} {digits[4:7]} {digits[7:]}"
    return number


@dataclass
class PhoneBillingRun:
    billed: list[str] = field(default_factory=list)  # descriptions of new entries
    already_billed: int = 0
    refused: list[str] = field(default_factory=list)  # not enough credit: retried on the next run


def bill_phone_numbers(engine: Engine, ledger: Ledger, today: date) -> PhoneBillingRun:
    """Bills every period that started on or before `today` and is not billed yet."""
    run = PhoneBillingRun()
    end_of_day = datetime.combine(today, time.max, tzinfo=UTC)
    with engine.connect() as conn:
        numbers = conn.execute(sa.select(PhoneNumber).where(PhoneNumber.released_at.is_(None))).all()
    for number in numbers:
        acquired = as_utc(number.acquired_at)
        period = 0
        if number.last_billed_at is not None:  # periods up to the last one billed need no attempt
            last = as_utc(number.last_billed_at)
            while add_months(acquired, period) <= last:
                period += 1
        while (start := add_months(acquired, period)) <= end_of_day:
            period += 1
            with engine.connect() as conn:
                account_id = get_account(conn, organization_id=number.organization_id).id
            description = f"Phone number rental - {format_number(number.number)} - {start:%b %Y}"
            posting = Posting(
                account_id,
                EntryType.usage,
                -from_units(number.monthly_cost),
                description,
                category="phone_rental",
                metadata={
                    "provider": "orcapulse",
                    "feature": "phone_rental",
                    "phone_number": number.number,
                    "period_start": start.date().isoformat(),
                },
                idempotency_key=f"phone:{number.id}:{start.date().isoformat()}",
                created_at=datetime.now(UTC),
            )
            try:
                entry = _post_rental(ledger, posting, number.monthly_cost)
            except InsufficientCredits:
                run.refused.append(description)
                break  # later periods wait for this one
            if entry.replayed:
                run.already_billed += 1
            else:
                run.billed.append(description)
            with writer(engine).begin() as conn:
                conn.execute(
                    sa.update(PhoneNumber)
                    .where(
                        PhoneNumber.id == number.id,
                        sa.or_(PhoneNumber.last_billed_at.is_(None), PhoneNumber.last_billed_at < start),
                    )
                    .values(last_billed_at=start)
                )
    return run


def _post_rental(ledger: Ledger, posting: Posting, units: int):
    """A rental counts for the organization's spend budgets (alerts included) but is never refused by one:
    the number was kept, and a hard stop refuses new usage, not a rent already owed."""
    with ledger.transaction() as conn:
        entry = ledger.post_in(conn, posting)
        if not entry.replayed:
            count_posted(conn, posting.account_id, units, at=entry.created_at, enforce=False)
    return entry


@contextmanager
def run_once(engine: Engine, name: str, redis_url: str | None = None, ttl_seconds: int = 3600) -> Iterator[bool]:
    """Yields True to the one runner that holds `name` now, False to the others. With Redis it fails
    closed: a Redis that is down or does not answer within its timeouts yields False (the round is
    skipped and logged; the next one catches up)."""
    if redis_url:
        import redis

        from .redis_client import redis_client

        client = redis_client(redis_url, retries=0)
        key = f"orcapulse:job:{name}"
        try:
            got = bool(client.set(key, "1", nx=True, ex=ttl_seconds))
        except redis.RedisError as exc:
            log.warning("job %s skipped: Redis did not answer for its lock (%s)", name, exc)
            got = None
        try:
            yield bool(got)
        finally:
            try:
                if got:
                    client.delete(key)
            except redis.RedisError as exc:  # the lock expires on its own after ttl_seconds
                log.warning("job %s: releasing its Redis lock failed (%s)", name, exc)
            finally:
                client.close()
        return
    if engine.dialect.name == "postgresql":
        lock_id = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        with engine.connect() as conn:
            got = bool(conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_id}).scalar())
            try:
                yield got
            finally:
                if got:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": lock_id})
                    conn.commit()
        return
    lock = _local_locks.setdefault(name, threading.Lock())
    got = lock.acquire(blocking=False)
    try:
        yield got
    finally:
        if got:
            lock.release()


def seconds_until(at: time, now: datetime) -> float:
    target = datetime.combine(now.date(), at)
    if target <= now:
        target += timedelta(days=1)
    return (target - now).total_seconds()


def _locked_round(
    engine: Engine, name: str, redis_url: str | None, work: Callable[[Engine], T], ttl: int = 3600
) -> T | None:
    """One round of a lifespan job on a worker thread, lock and all: taking the lock talks to Redis
    or the database, which must never hold the event loop (the backend would not even start)."""
    with run_once(engine, name, redis_url, ttl_seconds=ttl) as mine:
        return work(engine) if mine else None


async def phone_billing_loop() -> None:
    """Lifespan task: catch up at start, then every day at 02:15 UTC, once per deployment."""
    from .config import get_settings
    from .db import get_engine
    from .services import get_ledger

    def bill(engine: Engine) -> PhoneBillingRun:
        return bill_phone_numbers(engine, get_ledger(engine), datetime.now(UTC).date())

    while True:
        try:
            run = await asyncio.to_thread(_locked_round, get_engine(), "phone-billing", get_settings().redis_url, bill)
            if run is not None:
                log.info(
                    "phone billing: %d billed, %d already billed, %d refused",
                    len(run.billed),
                    run.already_billed,
                    len(run.refused),
                )
        except Exception:  # keep the schedule; the next run catches up
            log.exception("phone billing failed")
        await asyncio.sleep(seconds_until(PHONE_BILLING_AT, datetime.now(UTC)))


async def auto_recharge_sweep_loop(
    every_seconds: int | None = None, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
) -> None:
    """Lifespan task: the safety net for auto-recharge triggers that were missed (a worker died
    mid-way, a card came back): every SWEEP_INTERVAL_SECONDS (5 minutes), once per deployment."""
    from .config import get_settings
    from .db import get_engine
    from .services import get_auto_recharger

    every_seconds = every_seconds or get_settings().sweep_interval_seconds
    while True:
        await sleep(every_seconds)
        try:
            await asyncio.to_thread(
                _locked_round,
                get_engine(),
                "auto-recharge-sweep",
                get_settings().redis_url,
                lambda engine: get_auto_recharger(engine).sweep(),
                every_seconds,
            )
        except Exception:
            log.exception("auto-recharge sweep failed")


async def notice_sweep_loop(
    every_seconds: int | None = None, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
) -> None:
    """Lifespan task: the safety net for the notices of committed postings that no listener wrote (a
    worker died between a commit and its listeners: notice_sweep.py), every SWEEP_INTERVAL_SECONDS
    (5 minutes), once per deployment."""
    from .config import get_settings
    from .db import get_engine
    from .services import sweep_notices

    every_seconds = every_seconds or get_settings().sweep_interval_seconds
    while True:
        await sleep(every_seconds)
        try:
            run = await asyncio.to_thread(
                _locked_round, get_engine(), "notice-sweep", get_settings().redis_url, sweep_notices, every_seconds
            )
            if run is not None and (run.failed or run.crossings or run.documents):
                log.info(
                    "notice sweep: %d accounts, %d crossings and %d documents judged, %d accounts failed",
                    run.accounts,
                    run.crossings,
                    run.documents,
                    run.failed,
                )
        except Exception:
            log.exception("notice sweep failed")


async def reconcile_loop(
    every_seconds: int | None = None, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
) -> None:
    """Lifespan task: at start-up and every SWEEP_INTERVAL_SECONDS (5 minutes), once per deployment,
    credit every paid charge whose posting was lost and settle the charges awaiting confirmation
    (payments/reconcile.py)."""
    from .config import get_settings
    from .db import get_engine
    from .payments.reconcile import Reconciler
    from .payments.stripe_gateway import PaymentError
    from .services import get_stripe_purchases

    every_seconds = every_seconds or get_settings().sweep_interval_seconds
    while True:
        try:
            await asyncio.to_thread(
                _locked_round,
                get_engine(),
                "reconcile",
                get_settings().redis_url,
                lambda engine: Reconciler(get_stripe_purchases(engine)).run(),
                every_seconds,
            )
        except PaymentError as exc:  # Stripe not configured or not answering: the next round tries again
            log.warning("reconcile skipped: %s", exc.message)
        except Exception:
            log.exception("reconcile failed")
        await sleep(every_seconds)


async def webhook_delivery_loop(every_seconds: float = 5.0) -> None:
    """Lifespan task: every 5 seconds, send the outbound webhooks that are due (webhooks/). Every
    worker runs it: each message is claimed by one sender, so no deployment-wide lock is needed."""
    from .db import get_engine
    from .webhooks import deliver_due

    while True:
        try:
            run = await asyncio.to_thread(deliver_due, get_engine())
            if run.delivered or run.retrying or run.failed:
                log.info("webhooks: %d delivered, %d to retry, %d failed", run.delivered, run.retrying, run.failed)
        except Exception:
            log.exception("webhook delivery failed")
        await asyncio.sleep(every_seconds)


async def webhook_retention_loop(
    every_seconds: float = 3600.0, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
) -> None:
    """Lifespan task: every hour, once per deployment, delete the outbound webhook messages that finished
    more than WEBHOOK_RETENTION_DAYS ago, with their attempts (webhooks/retention.py)."""
    from .config import get_settings
    from .db import get_engine
    from .webhooks import prune_finished

    while True:
        await sleep(every_seconds)
        days = get_settings().webhook_retention_days
        try:
            pruned = await asyncio.to_thread(
                _locked_round,
                get_engine(),
                "webhook-retention",
                get_settings().redis_url,
                functools.partial(prune_finished, older_than=timedelta(days=days)),
                int(every_seconds),
            )
            if pruned:
                log.info("webhooks: %d messages older than %d days deleted", pruned, days)
        except Exception:
            log.exception("webhook retention failed")


def add_phone_number(
    engine: Engine, organization_id: int, number: str, monthly_cost: Decimal, acquired_at: datetime | None = None
) -> int:
    from .money import to_units

    digits = "".join(ch for ch in number if ch.isdigit())
    if not number.startswith("+") or not 8 <= len(digits) <= 15:
        raise ValueError(f"not an E.164 phone number: {number!r} (like +14155550100)")
    if monthly_cost <= 0:
        raise ValueError("the monthly cost must be positive")
    with writer(engine).begin() as conn:
        if conn.execute(sa.select(PhoneNumber.id).where(PhoneNumber.number == "+" + digits)).first():
            raise ValueError(f"{number} is already rented")
        return conn.execute(
            sa.insert(PhoneNumber)
            .values(
                organization_id=organization_id,
                number="+" + digits,
                monthly_cost=to_units(monthly_cost),
                acquired_at=acquired_at or datetime.now(UTC),
            )
            .returning(PhoneNumber.id)
        ).scalar()
