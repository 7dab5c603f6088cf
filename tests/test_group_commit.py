"""Group commit: several postings written in one transaction, each still refused or replayed on its own.

On SQLite and PostgreSQL: `post_batch` with refused, replayed, conflicting, invalid and orphan postings
commits the others; many threads posting through one Ledger share commits (fewer groups than postings)
and end exact; a writer killed at random moments leaves each of its batches whole or absent. PostgreSQL
only: a group whose backend is terminated half-way writes nothing; a group that fails as a whole on
one posting's data is written posting by posting; a group that waits on a row lock held by one of its
own callers (who waits for the group) gives up after `group_lock_wait` and is written posting by posting.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from orcapulse_billing.db import make_engine
from orcapulse_billing.ledger import (
    AccountNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidPosting,
    Ledger,
    PostedEntry,
    Posting,
    check_invariants,
    get_account,
)

from .conftest import GRACE


def _entries(engine, account_id: int) -> list:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT description, amount, idempotency_key FROM ledger_entry WHERE account_id = :a ORDER BY seq"),
            {"a": account_id},
        ).all()


def _sound(engine, *account_ids: int) -> None:
    with engine.connect() as conn:
        for account_id in account_ids:
            assert check_invariants(conn, account_id) == []


def test_a_batch_commits_the_others_when_one_is_refused_replayed_or_invalid(engine, ledger, new_account):
    a, b = new_account(), new_account()
    first = ledger.post(Posting(a, "purchase", "10", "first", idempotency_key="k1"))
    results = ledger.post_batch(
        [
            Posting(a, "usage", "-2", "call", category="ai_call"),
            Posting(a, "usage", "-100", "too big", category="ai_call"),  # passes the floor: refused alone
            Posting(a, "purchase", "10", "first", idempotency_key="k1"),  # a replay
            Posting(a, "purchase", "11", "first", idempotency_key="k1"),  # the same key, other amount
            Posting(a, "usage", "0", "nothing", category="sms"),  # invalid
            Posting(999_999_999, "purchase", "1", "nobody's"),  # no such account
            Posting(b, "bonus", "3", "b's bonus", idempotency_key="b1"),
            Posting(a, "usage", "-1.5", "sms", category="sms", idempotency_key="k2"),
            Posting(b, "bonus", "3", "b's bonus", idempotency_key="b1"),  # its key, earlier in this batch
        ]
    )
    kinds = [type(r) for r in results]
    assert kinds == [
        PostedEntry,
        InsufficientCredits,
        PostedEntry,
        IdempotencyConflict,
        InvalidPosting,
        AccountNotFound,
        PostedEntry,
        PostedEntry,
        PostedEntry,
    ]
    assert results[2].replayed and results[2].id == first.id
    assert results[8].replayed and results[8].id == results[6].id
    assert [r.balance_after for r in (results[0], results[7])] == [Decimal(8), Decimal("6.5")]
    assert results[1].balance == Decimal(8)  # refused against the balance the batch had reached
    assert [(d, amt) for d, amt, _ in _entries(engine, a)] == [("first", 100_000), ("call", -20_000), ("sms", -15_000)]
    assert [(d, amt) for d, amt, _ in _entries(engine, b)] == [("b's bonus", 30_000)]
    _sound(engine, a, b)


def test_many_threads_share_commits_and_end_exact(engine, new_account):
    accounts = [new_account() for _ in range(3)]
    ledger = Ledger(engine, grace_limit=GRACE)
    for account_id in accounts:
        ledger.post(Posting(account_id, "purchase", "20", "seed"))
    threads_n, per_thread = 12, 25
    barrier = threading.Barrier(threads_n)
    outcomes: list[list] = [[] for _ in range(threads_n)]
    errors: list[BaseException] = []

    def caller(n: int) -> None:
        rng = random.Random(n)
        barrier.wait()
        try:
            for i in range(per_thread):
                account_id = rng.choice(accounts)
                if i % 5 == 0:  # every thread races to post the same keyed credits
                    p = Posting(account_id, "bonus", "0.25", f"shared {i}", idempotency_key=f"shared-{i}")
                else:
                    p = Posting(account_id, "usage", -Decimal(rng.randint(1, 30_000)) / 10_000, "u", category="sms")
                try:
                    outcomes[n].append(ledger.post(p))
                except InsufficientCredits as exc:
                    outcomes[n].append(exc)
        except BaseException as exc:
            errors.append(exc)

    groups_before, items_before = ledger._group.groups, ledger._group.items
    threads = [threading.Thread(target=caller, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    groups, items = ledger._group.groups - groups_before, ledger._group.items - items_before
    assert items == threads_n * per_thread
    assert groups < items, "no two postings shared a commit"
    flat = [o for out in outcomes for o in out]
    new = [o for o in flat if isinstance(o, PostedEntry) and not o.replayed]
    assert any(isinstance(o, InsufficientCredits) for o in flat), "the floor should refuse some debits"
    with engine.connect() as conn:
        total = sum(get_account(conn, account_id=a).balance_units for a in accounts)
        keyed = conn.execute(
            sa.text("SELECT COUNT(*) FROM ledger_entry WHERE account_id IN :ids AND idempotency_key LIKE 'shared-%'")
            .bindparams(sa.bindparam("ids", expanding=True))
            .params(ids=accounts)
        ).scalar()
    assert total == 3 * 200_000 + sum(o.amount_units for o in new)
    assert keyed == len({(o.account_id, o.idempotency_key) for o in new if o.idempotency_key})
    _sound(engine, *accounts)


# A writer process that posts batches of BATCH postings over three accounts until it is killed; each
# batch's postings share the key prefix "<run>-<batch>-". It prints the number of each committed batch.
_WRITER = """
import sys
from decimal import Decimal
from orcapulse_billing.db import make_engine
from orcapulse_billing.ledger import Ledger, Posting
url, run, accounts = sys.argv[1], sys.argv[2], [int(a) for a in sys.argv[3].split(",")]
ledger = Ledger(make_engine(url), grace_limit=Decimal(5))
batch = 0
print("ready", flush=True)
while True:
    postings = []
    for i in range(BATCH):
        account = accounts[i % len(accounts)]
        if i % 4 == 0:
            postings.append(Posting(account, "purchase", "1", "crash test", idempotency_key=f"{run}-{batch}-{i}"))
        else:
            postings.append(Posting(account, "usage", "-0.3", "crash test", category="ai_call",
                                    idempotency_key=f"{run}-{batch}-{i}"))
    ledger.post_batch(postings)
    print(batch, flush=True)
    batch += 1
"""
BATCH = 40


def test_a_writer_killed_at_any_moment_leaves_each_batch_whole_or_absent(engine, db_url, new_account, ledger):
    accounts = [new_account() for _ in range(3)]
    for account_id in accounts:
        ledger.post(Posting(account_id, "purchase", "1000", "seed"))
    rng = random.Random(17)
    committed: dict[str, int] = {}
    for run in ("r0", "r1", "r2", "r3"):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER.replace("BATCH", str(BATCH)), db_url, run, ",".join(map(str, accounts))],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.stdout.readline()  # at least one batch committed: the kill lands while later ones are written
        time.sleep(rng.uniform(0.01, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        committed[run] = len(proc.stdout.read().split()) + 1
    if engine.dialect.name == "postgresql":  # a killed client's statement may still be running on the server
        _wait_until(lambda: _busy_backends(engine) == 0, "the killed writers' statements end")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT idempotency_key FROM ledger_entry WHERE account_id IN :ids AND description = 'crash test'")
            .bindparams(sa.bindparam("ids", expanding=True))
            .params(ids=accounts)
        ).all()
    per_batch: dict[str, int] = {}
    for (key,) in rows:
        run, batch, _ = key.split("-")
        per_batch[f"{run}-{batch}"] = per_batch.get(f"{run}-{batch}", 0) + 1
    assert set(per_batch.values()) == {BATCH}, "a batch was written in part"
    for run, printed in committed.items():
        written = sum(1 for b in per_batch if b.startswith(f"{run}-"))
        # every batch the writer saw committed is there; at most one more (committed, not yet printed)
        assert printed <= written <= printed + 1
    _sound(engine, *accounts)


@pytest.fixture
def pg_engine(pg_url):
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


def _wait_until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


def _in_thread(fn, *args) -> tuple[threading.Thread, list]:
    out: list = []

    def run() -> None:
        try:
            out.append(fn(*args))
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def _lock_waiters(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar()


def _busy_backends(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state = 'active'"
            )
        ).scalar()


def _hold_account_lock(engine, account_id: int):
    conn = engine.connect()
    conn.begin()
    conn.execute(sa.text("SELECT id FROM credit_account WHERE id = :a FOR UPDATE"), {"a": account_id})
    return conn


def test_postgres_a_group_terminated_half_way_writes_nothing(pg_engine):
    from orcapulse_billing.accounts import account_id_for, create_organization

    ledger = Ledger(pg_engine, grace_limit=GRACE)
    first, second = (
        account_id_for(
            pg_engine,
            create_organization(pg_engine, ledger, f"half-{n}-{time.time_ns()}", welcome_credit=Decimal(0)).id,
        )
        for n in range(2)
    )
    holder = _hold_account_lock(pg_engine, second)
    try:
        thread, out = _in_thread(
            ledger.post_batch,
            [Posting(first, "purchase", "5", "half way"), Posting(second, "purchase", "5", "half way")],
        )
        _wait_until(lambda: _lock_waiters(pg_engine) == 1, "the group waits for the second account's row")
        with pg_engine.connect() as conn:  # the first account's entry is written, not committed: end it there
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        thread.join(timeout=30)
    finally:
        holder.rollback()
        holder.close()
    assert isinstance(out[0], OperationalError)
    assert _entries(pg_engine, first) == [] and _entries(pg_engine, second) == []
    _sound(pg_engine, first, second)


def _queue_behind_a_locked_leader(pg_engine, ledger, blocked_account: int, postings: list[Posting]):
    """Holds `blocked_account`'s row, lets one caller lead a group that waits for it, queues `postings`
    from threads of their own behind it, and returns (leader, the others) once they all queued."""
    holder = _hold_account_lock(pg_engine, blocked_account)
    leader = _in_thread(ledger.post, Posting(blocked_account, "purchase", "1", "leader"))
    _wait_until(lambda: _lock_waiters(pg_engine) == 1, "the leader waits for the row")
    others = [_in_thread(ledger.post, p) for p in postings]
    _wait_until(lambda: ledger._group.pending() == len(postings), "the others queue for the next group")
    return holder, leader, others


def test_postgres_a_group_failing_on_one_postings_data_is_written_posting_by_posting(pg_engine):
    from orcapulse_billing.accounts import account_id_for, create_organization

    ledger = Ledger(pg_engine, grace_limit=GRACE)
    blocked, other = (
        account_id_for(
            pg_engine, create_organization(pg_engine, ledger, f"fk-{n}-{time.time_ns()}", welcome_credit=Decimal(0)).id
        )
        for n in range(2)
    )
    postings = [Posting(other, "purchase", "1", f"p{n}") for n in range(4)]
    postings.insert(2, Posting(other, "purchase", "1", "bad actor", actor_user_id=987_654_321))  # no such user
    holder, leader, others = _queue_behind_a_locked_leader(pg_engine, ledger, blocked, postings)
    largest_before = ledger._group.largest
    holder.rollback()
    holder.close()
    for thread, _ in (leader, *others):
        thread.join(timeout=30)
    assert isinstance(leader[1][0], PostedEntry)
    results = [out[0] for _, out in others]
    assert isinstance(results[2], IntegrityError)  # the bad one alone
    assert all(isinstance(r, PostedEntry) for n, r in enumerate(results) if n != 2)
    assert ledger._group.largest == max(largest_before, 5)  # they were tried as one group first
    assert sorted(d for d, _, _ in _entries(pg_engine, other)) == ["p0", "p1", "p2", "p3"]  # each in its own thread
    _sound(pg_engine, blocked, other)


def test_postgres_a_group_waiting_on_its_own_callers_lock_gives_up_and_goes_one_by_one(pg_engine):
    """A caller posts while its own open transaction holds an account row that another posting of its
    group needs: the group would wait for that caller forever (a wait PostgreSQL cannot see). The group
    gives up after `group_lock_wait`; alone, the caller's posting goes through, its transaction ends,
    and the other posting follows."""
    from orcapulse_billing.accounts import account_id_for, create_organization

    ledger = Ledger(pg_engine, grace_limit=GRACE, group_lock_wait="300ms")
    blocked, held, free = (
        account_id_for(
            pg_engine, create_organization(pg_engine, ledger, f"own-{n}-{time.time_ns()}", welcome_credit=Decimal(0)).id
        )
        for n in range(3)
    )
    in_transaction = threading.Event()
    posted_inside: list = []

    def caller_with_open_transaction() -> None:
        with ledger.transaction() as conn:
            ledger.post_in(conn, Posting(held, "purchase", "2", "inside"))  # holds `held`'s row until the end
            in_transaction.set()
            posted_inside.append(ledger.post(Posting(free, "purchase", "3", "from inside")))

    holder = _hold_account_lock(pg_engine, blocked)
    leader = _in_thread(ledger.post, Posting(blocked, "purchase", "1", "leader"))
    _wait_until(lambda: _lock_waiters(pg_engine) == 1, "the leader waits for the row")
    inner = threading.Thread(target=caller_with_open_transaction)
    inner.start()
    in_transaction.wait(10)
    other = _in_thread(ledger.post, Posting(held, "purchase", "4", "needs the held row"))
    _wait_until(lambda: ledger._group.pending() == 2, "both queue for the next group")
    holder.rollback()
    holder.close()
    inner.join(timeout=30)
    other[0].join(timeout=30)
    leader[0].join(timeout=30)
    assert not inner.is_alive(), "the caller never got its posting back"
    assert isinstance(posted_inside[0], PostedEntry) and isinstance(other[1][0], PostedEntry)
    assert [d for d, _, _ in _entries(pg_engine, held)] == ["inside", "needs the held row"]
    _sound(pg_engine, blocked, held, free)


def test_postgres_a_group_connection_that_died_while_idle_is_not_used_again(pg_url):
    """Group commit keeps its connection between groups (no pool ping per posting), but only for
    GROUP_CONNECTION_LINGER: after that the next group checks one out, pinged, so a connection whose
    server went away while idle (a restart, an idle timeout) costs the next posting nothing."""
    from orcapulse_billing.accounts import account_id_for, create_organization
    from orcapulse_billing.ledger import GROUP_CONNECTION_LINGER

    # make_engine's pool (pre-ping), with a name that finds this ledger's connections on the server
    engine = sa.create_engine(
        pg_url, pool_size=10, pool_pre_ping=True, connect_args={"application_name": "opb-group-linger"}
    )
    try:
        ledger = Ledger(engine, grace_limit=GRACE)
        account = account_id_for(
            engine, create_organization(engine, ledger, f"linger-{time.time_ns()}", welcome_credit=Decimal(0)).id
        )
        ledger.post(Posting(account, "purchase", "5", "before the idle"))
        with make_engine(pg_url).connect() as conn:
            killed = conn.execute(
                sa.text(
                    "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'opb-group-linger'"
                )
            ).scalar()
        assert killed >= 1  # the kept group connection among them
        time.sleep(GROUP_CONNECTION_LINGER + 0.3)
        entry = ledger.post(Posting(account, "usage", "-1.25", "after the idle", category="sms"))
        assert entry.balance_after == Decimal("3.7500")
        _sound(engine, account)
    finally:
        engine.dispose()
