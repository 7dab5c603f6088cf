"""Ledger throughput against a bare-SQL baseline: usage debits, same run, same database, same writers.

Scenarios (the issue's three):
  1. SQLite: one temp file, migrated, one writer process;
  2. PostgreSQL: 8 writer processes, all on ONE hot account (every posting queues on one row lock);
  3. PostgreSQL: 8 writer processes, each posting to a random one of 1,000 accounts.

Each scenario runs for every layout of `--callers` (default 1,4,8): every writer process runs C caller
threads, each posting one debit after another. In each scenario and layout two contenders run in turn,
for `--seconds` each (default 10), with the same processes-and-threads layout:

  baseline  the plain posting loop, written here without the package: each caller thread has its own
            connection, and each posting is one transaction of two statements:
              UPDATE credit_account SET balance = balance + <amount>, transaction_count = transaction_count + 1
               WHERE id = <account> RETURNING balance, transaction_count
              INSERT INTO ledger_entry (account_id, seq, kind, kind_seq, type, amount, balance_before,
                                        balance_after, description, category, metadata, idempotency_key,
                                        created_at) VALUES (..., seq and balances from that RETURNING, ...)
            then COMMIT. PostgreSQL: psycopg 3 directly (its implicit BEGIN, statements prepared by psycopg
            after five uses). SQLite: the `sqlite3` module, WAL, synchronous=FULL, foreign_keys=ON (as the
            package's engine), BEGIN IMMEDIATE; SQLite has one writer per file, so a process's caller threads
            take turns on an in-process lock (as the ledger's do) rather than sleeping in the busy handler.
            No floor, no idempotency check, no counters, rollup, grants or event: the database work the
            ledger adds is the price of its guarantees, the rest is client overhead.
  ledger    the real `Ledger.post` (orcapulse_billing.ledger): each writer process has one engine and one
            Ledger that its C caller threads share (so postings that arrive together in one process can be
            grouped into one transaction by the ledger: group commit).

Both post the same debits: writer n's caller threads draw from fixed seeds, so both contenders pick the
same accounts and amounts (0.0001 to 0.5000 credits), every other posting with a fresh idempotency key (so
both maintain the key's unique index), category ai_call. The rate is the postings that succeeded divided
by the longest writer's time from the common start (a barrier across processes, then one across a
process's threads) to its last posting's return; latency is each call's own (p50 / p99, nearest rank).
Every writer is a process ('spawn'; on two cores the GIL would otherwise make threads measure Python),
started once per database and reused by every run there: baseline and ledger run in the very same
processes, and the seconds each process spends importing the package are paid once, outside the clock.
The baseline runs first, then the ledger, on the same tables and indexes (one ledger_entry table, which
both make grow).

The two contenders never share an account: the set-up makes organizations `ledger-NNNN` and, apart,
`baseline-NNNN` (SQLite: one of each; PostgreSQL: 1 hot + 1,000 of each), and funds every account with
three credit grants through the ledger (a promotional credit expiring in a year, a bonus, a purchase), so
each ledger debit goes through the burn order and records the grant it consumed. After each ledger run,
`check_invariants` runs on every ledger account touched, and "zero drift" checks that the ledger accounts'
balances moved by exactly the sum of the debits posted and that one entry was written per posting; the
baseline's accounts get the drift check too (balances and entry count), never the ledger's invariants,
which its bare rows do not keep (no counters, rollup or grants).

Printed per scenario and layout: baseline postings/s, ledger postings/s, their ratio (ledger / baseline;
the issue's target is >= 1.0 in all three scenarios), ledger p50/p99, invariants ok/FAIL; then a table of
the three ratios per layout. Last, the batch ingestion rate from bench/ingest.py (`measure_ingestion`,
events per second through POST /api/credits/usage/batch; `--no-ingest` skips it; a missing module is
reported, not fatal).

PostgreSQL: the admin URL comes from TEST_POSTGRES_URL (default
postgresql+psycopg://postgres@127.0.0.1:5432/postgres); a fresh database `opb_bench_<random>` is
created, migrated and dropped at the end, even on error. After the set-up the database is ANALYZEd:
without planner statistics PostgreSQL probes the idempotency key through the wrong index, scanning
all of the account's entries on every posting, until autovacuum first analyzes the tables
(`--no-analyze` measures that fresh-database case).

Run by hand (5 to 6 minutes with the defaults on 2 cores: 18 runs of 10 s, the set-up and the checks,
plus the ingestion measurement); it prints figures and never asserts them:
    .venv/bin/python bench/ledger.py [--seconds N] [--callers 1,4,8] [--no-analyze] [--no-ingest]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import random
import sqlite3
import tempfile
import threading
import time
import traceback
import uuid
from array import array
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import sqlalchemy as sa
from _support import print_table, temporary_postgres  # bench/, next to this script

from orcapulse_billing.accounts import account_id_for, create_organization
from orcapulse_billing.db import make_engine, upgrade
from orcapulse_billing.ledger import Ledger, LedgerError, Posting, check_invariants
from orcapulse_billing.money import from_units

GRACE = Decimal("5")
FUNDING = Decimal("100000000")  # per account: debits never reach the floor
PROMOTION = Decimal("1000000")  # the promotional grant every debit consumes (never spent in a run)
PG_WRITERS, SPREAD_ACCOUNTS = 8, 1000
START_TIMEOUT = 120  # seconds a writer may take to start (imports, connecting)
TARGET_RATIO, INGEST_TARGET = 1.0, 10_000
SCENARIOS = ("sqlite, one writer", "postgres, hot account", "postgres, spread")

# The baseline's two statements; {p} is the driver's placeholder (psycopg %s, sqlite3 ?).
BASELINE_UPDATE = (
    "UPDATE credit_account SET balance = balance + {p}, transaction_count = transaction_count + 1 "
    "WHERE id = {p} RETURNING balance, transaction_count"
)
BASELINE_INSERT = (
    "INSERT INTO ledger_entry (account_id, seq, kind, kind_seq, type, amount, balance_before, balance_after, "
    "description, category, metadata, idempotency_key, created_at) "
    "VALUES ({p}, {p}, 'usage', {p}, 'usage', {p}, {p}, {p}, 'bench usage', 'ai_call', '{{}}', {p}, {p})"
)


# -- the contenders: what one caller thread calls for each posting --------------------------------------
#
# A contender is built once per writer process (`Contender(url, callers)`); each caller thread then asks it
# for `caller()`: a `post(account_id, units, key)` that posts a debit of `units` (positive) or raises one of
# `errors`, and a `close()`.


class LedgerContender:
    errors: tuple[type[BaseException], ...] = (LedgerError, sa.exc.DBAPIError)

    def __init__(self, url: str, callers: int):
        self.engine = make_engine(url)
        self.ledger = Ledger(self.engine, grace_limit=GRACE)
        conns = [self.engine.connect() for _ in range(callers)]  # pool one connection per caller before the clock
        for conn in conns:
            conn.execute(sa.text("SELECT 1"))
        for conn in conns:
            conn.close()

    def caller(self):
        ledger = self.ledger

        def post(account_id: int, units: int, key: str | None) -> None:
            amount = from_units(-units)  # exact
            ledger.post(Posting(account_id, "usage", amount, "bench usage", category="ai_call", idempotency_key=key))

        return post, lambda: None

    def close(self) -> None:
        self.engine.dispose()


class PostgresBaseline:
    errors: tuple[type[BaseException], ...] = (psycopg.Error,)
    UPDATE, INSERT = BASELINE_UPDATE.format(p="%s"), BASELINE_INSERT.format(p="%s")

    def __init__(self, url: str, callers: int):
        self.dsn = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    def caller(self):
        conn = psycopg.connect(self.dsn)
        cur = conn.cursor()

        def post(account_id: int, units: int, key: str | None) -> None:
            try:
                balance, seq = cur.execute(self.UPDATE, (-units, account_id)).fetchone()
                cur.execute(
                    self.INSERT, (account_id, seq, seq, -units, balance + units, balance, key, datetime.now(UTC))
                )
                conn.commit()
            except BaseException:
                conn.rollback()
                raise

        return post, conn.close

    def close(self) -> None:
        pass


class SqliteBaseline:
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
    UPDATE, INSERT = BASELINE_UPDATE.format(p="?"), BASELINE_INSERT.format(p="?")

    def __init__(self, url: str, callers: int):
        self.path = sa.engine.make_url(url).database
        self.lock = threading.Lock()  # one writer per file: the process's callers take turns here

    def caller(self):
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
            conn.execute(f"PRAGMA {pragma}")
        lock = self.lock

        def post(account_id: int, units: int, key: str | None) -> None:
            stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")  # as SQLAlchemy stores it on SQLite
            with lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    [(balance, seq)] = conn.execute(self.UPDATE, (-units, account_id)).fetchall()
                    conn.execute(self.INSERT, (account_id, seq, seq, -units, balance + units, balance, key, stamp))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise

        return post, conn.close

    def close(self) -> None:
        pass


CONTENDERS = {"ledger": LedgerContender, "pg-baseline": PostgresBaseline, "sqlite-baseline": SqliteBaseline}


# -- one run: writer processes x caller threads ----------------------------------------------------------


def _caller(contender, account_ids: list[int], seed: int, ready, go, deadline: list[float], out: dict) -> None:
    """One caller thread: post debits from the common start until the deadline."""
    try:
        post, close = contender.caller()
        rng = random.Random(seed)
        latencies_ms = array("d")
        posted, touched, errors, first_error = 0, set(), 0, None
        ready.wait(timeout=START_TIMEOUT)
        go.wait()
        end, stop = time.perf_counter(), deadline[0]
        while end < stop:
            account_id = rng.choice(account_ids)
            units = rng.randint(1, 5000)  # 0.0001 .. 0.5000 credits
            key = str(uuid.uuid4()) if len(latencies_ms) % 2 else None
            t0 = time.perf_counter()
            try:
                post(account_id, units, key)
            except contender.errors as exc:
                errors += 1
                first_error = first_error or repr(exc)
                end = time.perf_counter()
                continue
            end = time.perf_counter()
            latencies_ms.append((end - t0) * 1000)
            posted += units
            touched.add(account_id)
        close()
        out.update(
            latencies=latencies_ms, posted=posted, touched=touched, end=end, errors=errors, first_error=first_error
        )
    except BaseException:
        out["crash"] = traceback.format_exc()
        ready.abort()  # release the others instead of leaving them waiting


def _writer(name: str, url: str, account_ids: list[int], seconds: float, callers: int, seed: int, barrier, results):
    """One writer process: C caller threads, started together with every other process's."""
    outs: list[dict] = [{} for _ in range(callers)]
    go = threading.Event()
    try:
        contender = CONTENDERS[name](url, callers)
        ready, deadline = threading.Barrier(callers + 1), [0.0]
        threads = [
            threading.Thread(
                target=_caller,
                args=(contender, account_ids, seed * 1000 + i, ready, go, deadline, outs[i]),
                daemon=True,
            )
            for i in range(callers)
        ]
        for t in threads:
            t.start()
        ready.wait(timeout=START_TIMEOUT)
        barrier.wait(timeout=START_TIMEOUT)
        start = time.perf_counter()
        deadline[0] = start + seconds
        go.set()
        for t in threads:
            t.join()
        contender.close()
        crash = next((o["crash"] for o in outs if "crash" in o), None)
        if crash:
            raise RuntimeError(crash)
        latencies = array("d")
        for o in outs:
            latencies.extend(o["latencies"])
        results.put(
            dict(
                latencies=latencies,
                posted=sum(o["posted"] for o in outs),
                touched=set().union(*(o["touched"] for o in outs)),
                elapsed=max(o["end"] for o in outs) - start,
                errors=sum(o["errors"] for o in outs),
                first_error=next((o["first_error"] for o in outs if o["errors"]), None),
            )
        )
    except BaseException:
        barrier.abort()  # release the other processes
        go.set()
        results.put(dict(crash=next((o["crash"] for o in outs if "crash" in o), None) or traceback.format_exc()))


def _writer_loop(jobs, barrier, results) -> None:
    """A writer process: one run after another, until None."""
    for job in iter(jobs.get, None):
        _writer(*job, barrier, results)


class Writers:
    """`count` writer processes ('spawn'), started once for all the runs on one database: importing the
    package takes seconds per process on two cores, which would otherwise be paid again on every run."""

    def __init__(self, count: int):
        ctx = mp.get_context("spawn")
        self.barrier, self.results = ctx.Barrier(count), ctx.Queue()
        self.jobs = [ctx.Queue() for _ in range(count)]
        self.procs = [
            ctx.Process(target=_writer_loop, args=(q, self.barrier, self.results), daemon=True) for q in self.jobs
        ]
        for p in self.procs:
            p.start()

    def run(self, name: str, url: str, account_ids: list[int], seconds: float, callers: int) -> list[dict]:
        """Every process runs `callers` threads of contender `name`; one result per process. Writer n
        draws the same debits (seed n) whichever the contender."""
        for n, q in enumerate(self.jobs):
            q.put((name, url, account_ids, seconds, callers, n))
        outs = [self.results.get(timeout=seconds + 2 * START_TIMEOUT) for _ in self.jobs]
        crashes = [o["crash"] for o in outs if "crash" in o]
        if crashes:
            raise RuntimeError(f"{name}: {len(crashes)} writer(s) failed:\n{crashes[0]}")
        return outs

    def __enter__(self) -> Writers:
        return self

    def __exit__(self, *exc) -> None:
        for q in self.jobs:
            q.put(None)
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():  # stuck after a failure: these are our own processes
                p.terminate()
                p.join()


def _totals(engine, account_ids: list[int]) -> tuple[int, int]:
    """Sum of these accounts' balances, and how many entries they have."""
    ids = {"ids": list(account_ids)}
    with engine.connect() as conn:
        balance = conn.execute(
            sa.text("SELECT COALESCE(SUM(balance), 0) FROM credit_account WHERE id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)
            ),
            ids,
        ).scalar()
        entries = conn.execute(
            sa.text("SELECT COUNT(*) FROM ledger_entry WHERE account_id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)
            ),
            ids,
        ).scalar()
    return int(balance), int(entries)


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]  # nearest rank


def run_contender(writers: Writers, name: str, url: str, account_ids: list[int], callers: int, seconds: float) -> dict:
    """Every writer process x `callers` threads of one contender for `seconds`; then the checks (the ledger's
    invariants on every account touched, and zero drift on these accounts)."""
    engine = make_engine(url)
    try:
        balance_before, entries_before = _totals(engine, account_ids)
        outs = writers.run(name, url, account_ids, seconds, callers)
        latencies = sorted(x for o in outs for x in o["latencies"])
        posted = sum(o["posted"] for o in outs)
        problems = []
        t0 = time.perf_counter()
        if name == "ledger":
            with engine.connect() as conn:
                for account_id in sorted(set().union(*(o["touched"] for o in outs))):
                    problems += [f"account {account_id}: {p}" for p in check_invariants(conn, account_id)]
        balance_after, entries_after = _totals(engine, account_ids)
    finally:
        engine.dispose()
    if balance_before - balance_after != posted:
        problems.append(f"drift: balances moved {balance_after - balance_before} units, postings {-posted}")
    if entries_after - entries_before != len(latencies):
        problems.append(f"entries grew by {entries_after - entries_before}, {len(latencies)} postings succeeded")
    return dict(
        postings=len(latencies),
        rate=len(latencies) / max(o["elapsed"] for o in outs),
        p50=_percentile(latencies, 0.50),
        p99=_percentile(latencies, 0.99),
        errors=sum(o["errors"] for o in outs),
        first_error=next((o["first_error"] for o in outs if o["errors"]), None),
        problems=problems,
        check_seconds=time.perf_counter() - t0,
    )


def compare(
    writers: Writers, scenario: str, url: str, ids: dict[str, list[int]], baseline: str, callers: int, seconds: float
) -> dict:
    """The baseline, then the ledger, same writers and layout; prints one line each, returns the comparison."""
    layout = f"{len(writers.procs)} x {callers}"
    row = dict(scenario=scenario, layout=layout, callers=callers, accounts=len(ids["ledger"]))
    for who, name in (("baseline", baseline), ("ledger", "ledger")):
        r = row[who] = run_contender(writers, name, url, ids[who], callers, seconds)
        checks = "drift" if who == "baseline" else "invariants + drift"
        print(
            f"  {scenario}, {layout}, {who}: {r['postings']:,} postings, {r['rate']:,.0f}/s, "
            f"p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, refused {r['errors']}, "
            f"{checks} {'ok' if not r['problems'] else 'FAIL'} ({r['check_seconds']:.1f} s)",
            flush=True,
        )
        if r["first_error"]:
            print(f"    first refusal: {r['first_error']}", flush=True)
        for problem in r["problems"][:10]:
            print(f"    ! {who}: {problem}", flush=True)
    row["ratio"] = row["ledger"]["rate"] / row["baseline"]["rate"] if row["baseline"]["rate"] else float("nan")
    print(f"  {scenario}, {layout}: ratio {row['ratio']:.2f}", flush=True)
    return row


# -- set-up ----------------------------------------------------------------------------------------------


def _funding(account_id: int) -> list[Posting]:
    """Three grants per account, so every debit goes through the burn order: a promotional credit
    that expires in a year (spent first: every debit consumes it), a bonus and one big purchase."""
    expires = datetime.now(UTC) + timedelta(days=365)
    return [
        Posting(account_id, "adjustment", PROMOTION, "bench promotion", source="promotional", expires_at=expires),
        Posting(account_id, "bonus", PROMOTION, "bench bonus"),
        Posting(account_id, "purchase", FUNDING, "bench funding"),
    ]


def create_accounts(url: str, count: int, analyze: bool) -> dict[str, list[int]]:
    """`count` organizations for each contender (`ledger-NNNN`, `baseline-NNNN`), without welcome credit,
    each account funded with three grants; then ANALYZE unless told not to."""
    engine = make_engine(url)
    ledger = Ledger(engine, grace_limit=GRACE)
    ids: dict[str, list[int]] = {}
    for who in ("ledger", "baseline"):
        ids[who] = []
        for n in range(count):
            org = create_organization(engine, ledger, f"{who}-{n:04d}", welcome_credit=Decimal(0))
            ids[who].append(account_id_for(engine, org.id))
    everyone = ids["ledger"] + ids["baseline"]
    for i in range(0, len(everyone), 250):  # a few postings per transaction keep the set-up quick
        ledger.post_many([posting for a in everyone[i : i + 250] for posting in _funding(a)])
    if analyze:  # planner statistics, as a live database has them (see the module docstring)
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
    engine.dispose()
    return ids


def _part(ids: dict[str, list[int]], part: slice) -> dict[str, list[int]]:
    return {who: accounts[part] for who, accounts in ids.items()}


def run_sqlite(seconds: float, callers: list[int], analyze: bool) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="opb_bench_") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        ids = create_accounts(url, 1, analyze)
        with Writers(1) as writers:
            return [compare(writers, SCENARIOS[0], url, ids, "sqlite-baseline", c, seconds) for c in callers]


def run_postgres(seconds: float, callers: list[int], analyze: bool) -> list[dict]:
    rows = []
    with temporary_postgres("opb_bench") as url:
        upgrade(url)
        t0 = time.perf_counter()
        ids = create_accounts(url, 1 + SPREAD_ACCOUNTS, analyze)
        print(
            f"  set-up: 2 x {1 + SPREAD_ACCOUNTS} funded accounts in {time.perf_counter() - t0:.1f} s "
            f"({sa.engine.make_url(url).database}, {'analyzed' if analyze else 'no planner statistics'})",
            flush=True,
        )
        with Writers(PG_WRITERS) as writers:
            for scenario, part in ((SCENARIOS[1], slice(0, 1)), (SCENARIOS[2], slice(1, None))):
                for c in callers:
                    rows.append(compare(writers, scenario, url, _part(ids, part), "pg-baseline", c, seconds))
    return rows


# -- batch ingestion (bench/ingest.py, written apart) ----------------------------------------------------


def run_ingestion(seconds: float) -> dict:
    """`measure_ingestion(seconds)` from bench/ingest.py, imported only now; {'missing': why} or
    {'failed': why} instead of raising, so the summary still prints."""
    try:
        from ingest import measure_ingestion  # bench/, next to this script
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == "ingest":
            return dict(missing="bench/ingest.py is not there yet")
        return dict(failed=f"cannot import bench/ingest.py: {exc!r}")
    try:
        return measure_ingestion(seconds)
    except Exception:
        return dict(failed=traceback.format_exc())


def _ingestion_line(result: dict | None) -> str:
    if result is None:
        return "batch ingestion: skipped (--no-ingest)"
    if "missing" in result:
        return f"batch ingestion: not measured, {result['missing']}"
    if "failed" in result:
        return f"batch ingestion: FAILED: {result['failed'].strip().splitlines()[-1]}"
    problems = result.get("problems") or []
    count = len(problems) if isinstance(problems, list | tuple | set) else int(problems)
    return (
        f"batch ingestion (POST /api/credits/usage/batch, PostgreSQL): {result['rate']:,.0f} events/s over "
        f"{result['events']:,} events, {'no problems' if not count else f'{count} PROBLEMS'}"
        f" (target >= {INGEST_TARGET:,} events/s)"
    )


# -- report ----------------------------------------------------------------------------------------------


def _invariants(row: dict) -> str:
    problems = row["ledger"]["problems"] + row["baseline"]["problems"]
    return "ok" if not problems else f"FAIL ({len(problems)})"


def print_results(rows: list[dict], callers: list[int], ingestion: dict | None) -> None:
    header = ["scenario", "writers x callers", "accounts", "baseline/s", "ledger/s", "ratio", "p50 ms", "p99 ms"]
    print_table(
        [*header, "invariants"],
        [
            [
                r["scenario"],
                r["layout"],
                f"{r['accounts']:,}",
                f"{r['baseline']['rate']:,.0f}",
                f"{r['ledger']['rate']:,.0f}",
                f"{r['ratio']:.2f}",
                f"{r['ledger']['p50']:.2f}",
                f"{r['ledger']['p99']:.2f}",
                _invariants(r),
            ]
            for r in rows
        ],
    )
    print("(p50/p99: the ledger's; ratio: ledger / baseline postings per second)")
    ratio = {(r["scenario"], r["callers"]): r["ratio"] for r in rows}
    print_table(
        ["ratio (ledger / bare SQL)", "sqlite one writer", "pg hot", "pg spread"],
        [
            [f"{c} caller{'s' if c > 1 else ''} per writer"]
            + [f"{ratio[s, c]:.2f}" if (s, c) in ratio else "-" for s in SCENARIOS]
            for c in callers
        ],
    )
    print(f"target: ratio >= {TARGET_RATIO:.1f} in all three scenarios, invariants ok")
    print(_ingestion_line(ingestion))
    problems = (ingestion or {}).get("problems")
    for problem in problems[:10] if isinstance(problems, list | tuple) else ():
        print(f"  ! ingestion: {problem}")


def _callers(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("callers per writer: positive integers, comma-separated (e.g. 1,4)")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each run (default 10)")
    parser.add_argument(
        "--callers", type=_callers, default=[1, 4, 8], help="caller threads per writer process (default 1,4,8)"
    )
    parser.add_argument("--no-analyze", dest="analyze", action="store_false", help="skip ANALYZE after set-up")
    parser.add_argument("--no-ingest", dest="ingest", action="store_false", help="skip the batch ingestion rate")
    args = parser.parse_args()
    print(
        f"ledger benchmark, {args.seconds:g} s per run, callers per writer {','.join(map(str, args.callers))}, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    rows = run_sqlite(args.seconds, args.callers, args.analyze)
    try:
        rows += run_postgres(args.seconds, args.callers, args.analyze)
    except Exception as exc:  # still print what was measured
        print(f"  PostgreSQL scenarios failed: {exc!r}", flush=True)
    ingestion = None
    if args.ingest:
        print("  batch ingestion ...", flush=True)
        ingestion = run_ingestion(args.seconds)
    print_results(rows, args.callers, ingestion)


if __name__ == "__main__":
    main()
