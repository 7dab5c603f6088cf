"""Ledger throughput benchmark: usage debits through the real `Ledger.post`.

Scenarios (each runs for a fixed duration, default 10 s):
  1. SQLite file in a temp dir, one writer;
  2. PostgreSQL, 8 writer processes on ONE hot account;
  3. PostgreSQL, 8 writer processes spread over 1,000 accounts.

Every writer is its own process (multiprocessing, 'spawn') with its own engine and Ledger: on two
cores the GIL would make threads measure Python, not the ledger. Writers meet at a barrier, post
debits of 0.0001 to 0.5 credits (every other one with a fresh idempotency key, so the keyed path is
measured too) until the time is up, and report each `post` latency. Every account is funded with
three credit grants (a promotional credit expiring in a year, a bonus, a purchase), so each debit
goes through the burn order and records the grant it consumed (on PostgreSQL a debit is then a
transaction of two statements: the posting, then the burn). Afterwards `check_invariants`
runs on every account touched, and "zero drift" checks that the sum of all balances moved by exactly
the sum of the debits posted and that one entry was written per posting.

PostgreSQL: the admin URL comes from TEST_POSTGRES_URL (default
postgresql+psycopg://postgres@127.0.0.1:5432/postgres); a fresh database `opb_bench_<random>` is
created, migrated and dropped at the end, even on error. After the set-up the database is ANALYZEd:
without planner statistics PostgreSQL probes the idempotency key through the wrong index, scanning
all of the account's entries on every posting, until autovacuum first analyzes the tables
(`--no-analyze` measures that fresh-database case).

Run by hand; it prints figures and never asserts them:
    .venv/bin/python bench/ledger.py [--seconds N] [--no-analyze]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import random
import tempfile
import time
import traceback
import uuid
from array import array
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from _support import print_table, temporary_postgres  # bench/, next to this script

from orcapulse_billing.accounts import account_id_for, create_organization
from orcapulse_billing.db import make_engine, upgrade
from orcapulse_billing.ledger import Ledger, LedgerError, Posting, check_invariants
from orcapulse_billing.money import to_units

GRACE = Decimal("5")
FUNDING = Decimal("100000000")  # per account: debits never reach the floor
PROMOTION = Decimal("1000000")  # the promotional grant every debit consumes (never spent in a run)
PG_WRITERS, SPREAD_ACCOUNTS = 8, 1000
START_TIMEOUT = 120  # seconds a writer may take to start (imports, connecting)
TARGETS = "targets (information only): >= 2,000 postings/s on one hot account, >= 4,000/s spread, PostgreSQL"


def _writer(url: str, account_ids: list[int], seconds: float, seed: int, barrier, results) -> None:
    """One writer process: post debits until `seconds` after the barrier, then report."""
    try:
        engine = make_engine(url)
        ledger = Ledger(engine, grace_limit=GRACE)
        with engine.connect() as conn:  # open the pooled connection before the clock starts
            conn.execute(sa.text("SELECT 1"))
        rng = random.Random(seed)
        latencies_ms = array("d")
        posted, touched, errors, first_error = Decimal(0), set(), 0, None
        barrier.wait(timeout=START_TIMEOUT)
        start = end = time.perf_counter()
        deadline = start + seconds
        while end < deadline:
            account_id = rng.choice(account_ids)
            amount = -Decimal(rng.randint(1, 5000)).scaleb(-4)  # 0.0001 .. 0.5000, exact
            key = str(uuid.uuid4()) if len(latencies_ms) % 2 else None
            posting = Posting(account_id, "usage", amount, "bench usage", category="ai_call", idempotency_key=key)
            t0 = time.perf_counter()
            try:
                ledger.post(posting)
            except (LedgerError, sa.exc.DBAPIError) as exc:
                errors += 1
                first_error = first_error or repr(exc)
                end = time.perf_counter()
                continue
            end = time.perf_counter()
            latencies_ms.append((end - t0) * 1000)
            posted += amount
            touched.add(account_id)
        engine.dispose()
        results.put(
            dict(
                latencies=latencies_ms,
                posted=posted,
                touched=touched,
                elapsed=end - start,
                errors=errors,
                first_error=first_error,
            )
        )
    except BaseException:
        barrier.abort()  # release the others instead of leaving them waiting
        results.put(dict(crash=traceback.format_exc()))


def _totals(engine) -> tuple[int, int]:
    with engine.connect() as conn:
        balance = conn.execute(sa.text("SELECT COALESCE(SUM(balance), 0) FROM credit_account")).scalar()
        entries = conn.execute(sa.text("SELECT COUNT(*) FROM ledger_entry")).scalar()
    return int(balance), int(entries)


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]  # nearest rank


def run_scenario(name: str, url: str, account_ids: list[int], writers: int, seconds: float) -> dict:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(writers), ctx.Queue()
    engine = make_engine(url)
    balance_before, entries_before = _totals(engine)
    procs = [
        ctx.Process(target=_writer, args=(url, account_ids, seconds, n, barrier, results), daemon=True)
        for n in range(writers)
    ]
    for p in procs:
        p.start()
    outs = [results.get(timeout=seconds + 2 * START_TIMEOUT) for _ in procs]
    for p in procs:
        p.join()
    crashes = [o["crash"] for o in outs if "crash" in o]
    if crashes:
        engine.dispose()
        raise RuntimeError(f"{name}: {len(crashes)} writer(s) failed:\n{crashes[0]}")

    latencies = sorted(x for o in outs for x in o["latencies"])
    posted = sum((o["posted"] for o in outs), Decimal(0))
    touched = set().union(*(o["touched"] for o in outs))
    errors = sum(o["errors"] for o in outs)
    first_error = next((o["first_error"] for o in outs if o["errors"]), None)
    problems = []
    with engine.connect() as conn:
        for account_id in sorted(touched):
            problems += [f"account {account_id}: {p}" for p in check_invariants(conn, account_id)]
    balance_after, entries_after = _totals(engine)
    engine.dispose()
    if balance_after - balance_before != to_units(posted):
        problems.append(f"drift: balances moved {balance_after - balance_before} units, postings {to_units(posted)}")
    if entries_after - entries_before != len(latencies):
        problems.append(f"entries grew by {entries_after - entries_before}, {len(latencies)} postings succeeded")
    row = dict(
        scenario=name,
        writers=writers,
        accounts=len(account_ids),
        postings=len(latencies),
        rate=len(latencies) / max(o["elapsed"] for o in outs),
        p50=_percentile(latencies, 0.50),
        p99=_percentile(latencies, 0.99),
        invariants="ok" if not problems else f"FAIL ({len(problems)})",
    )
    print(
        f"  {name}: {row['postings']} postings, {row['rate']:,.0f}/s, p50 {row['p50']:.2f} ms, "
        f"p99 {row['p99']:.2f} ms, invariants {row['invariants']}, refused {errors}",
        flush=True,
    )
    if first_error:
        print(f"    first refusal: {first_error}", flush=True)
    for problem in problems[:10]:
        print(f"    ! {problem}", flush=True)
    return row


def _funding(account_id: int) -> list[Posting]:
    """Three grants per account, so every debit goes through the burn order: a promotional credit
    that expires in a year (spent first: every debit consumes it), a bonus and one big purchase."""
    expires = datetime.now(UTC) + timedelta(days=365)
    return [
        Posting(account_id, "adjustment", PROMOTION, "bench promotion", source="promotional", expires_at=expires),
        Posting(account_id, "bonus", PROMOTION, "bench bonus"),
        Posting(account_id, "purchase", FUNDING, "bench funding"),
    ]


def create_accounts(url: str, count: int, analyze: bool) -> list[int]:
    """`count` organizations without welcome credit, each account funded with three grants."""
    engine = make_engine(url)
    ledger = Ledger(engine, grace_limit=GRACE)
    ids = []
    for n in range(count):
        org = create_organization(engine, ledger, f"bench-{n:04d}", welcome_credit=Decimal(0))
        ids.append(account_id_for(engine, org.id))
    for i in range(0, len(ids), 250):  # a few postings per transaction keep the set-up quick
        ledger.post_many([posting for a in ids[i : i + 250] for posting in _funding(a)])
    if analyze:  # planner statistics, as a live database has them (see the module docstring)
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
    engine.dispose()
    return ids


def run_postgres(seconds: float, analyze: bool) -> list[dict]:
    with temporary_postgres("opb_bench") as url:
        upgrade(url)
        t0 = time.perf_counter()
        ids = create_accounts(url, 1 + SPREAD_ACCOUNTS, analyze)
        print(
            f"  set-up: {len(ids)} funded accounts in {time.perf_counter() - t0:.1f} s "
            f"({sa.engine.make_url(url).database}, {'analyzed' if analyze else 'no planner statistics'})",
            flush=True,
        )
        return [
            run_scenario("postgres, hot account", url, ids[:1], PG_WRITERS, seconds),
            run_scenario("postgres, spread", url, ids[1:], PG_WRITERS, seconds),
        ]


def print_results(rows: list[dict]) -> None:
    header = ["scenario", "writers", "accounts", "postings", "postings/s", "p50 ms", "p99 ms", "invariants"]
    print_table(
        header,
        [
            [
                r["scenario"],
                str(r["writers"]),
                f"{r['accounts']:,}",
                f"{r['postings']:,}",
                f"{r['rate']:,.0f}",
                f"{r['p50']:.2f}",
                f"{r['p99']:.2f}",
                r["invariants"],
            ]
            for r in rows
        ],
    )
    print(TARGETS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each scenario (default 10)")
    parser.add_argument("--no-analyze", dest="analyze", action="store_false", help="skip ANALYZE after set-up")
    args = parser.parse_args()
    rows = []
    print(f"ledger benchmark, {args.seconds:g} s per scenario, {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="opb_bench_") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        rows.append(run_scenario("sqlite file", url, create_accounts(url, 1, args.analyze), 1, args.seconds))
    try:
        rows += run_postgres(args.seconds, args.analyze)
    except Exception as exc:  # still print what was measured
        print(f"  PostgreSQL scenarios failed: {exc!r}", flush=True)
    print_results(rows)


if __name__ == "__main__":
    main()
