"""API read-path benchmark: history pages, balance and usage summary on ONE account with 1,000,000 entries.

A fresh PostgreSQL database `opb_bench_api_<random>` (admin URL from TEST_POSTGRES_URL, default
postgresql+psycopg://postgres@127.0.0.1:5432/postgres) is created, migrated, and dropped at the end WITH
(FORCE), even on error. One organization (no welcome credit) gets a member with an API key; its account is
filled by one server-side INSERT ... SELECT FROM generate_series: ~5% purchases (+50), ~90% usage (-0.01 to
-2.00, categories ai_call/sms/whatsapp/tts/email/chat), ~3% bonuses (+5), ~1% refunds (+1), ~1% adjustments
(-0.25), created_at spread over the last 365 days in seq order, balances chained by a window SUM over seq.
The account row's aggregates are then set from the entries, the table is VACUUM ANALYZEd (what autovacuum
would do within a minute of such an insert) and `check_invariants` is run.

Each case is timed through the real FastAPI app (TestClient, `Authorization: Bearer <key>`): a few warm-up
calls, then --repeat timed calls; and again as the bare service call (history_page / usage_summary /
get_account) on one open connection, to separate HTTP/auth overhead from database time. EXPLAIN (ANALYZE,
BUFFERS) summaries of the statements behind the slow-prone cases follow.

Run by hand; it prints figures and never asserts them:
    .venv/bin/python bench/api.py [--entries 1000000] [--repeat 200]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa
from _support import print_table, temporary_postgres  # bench/, next to this script
from sqlalchemy import event

from orcapulse_billing import config
from orcapulse_billing.accounts import account_id_for, add_user, create_api_key, create_organization
from orcapulse_billing.auth import principal_for_api_key
from orcapulse_billing.db import get_engine, upgrade
from orcapulse_billing.history import HistoryQuery, history_page, usage_summary
from orcapulse_billing.ledger import Ledger, check_invariants, get_account
from orcapulse_billing.models import LedgerEntry

WARMUP = 5
TARGET_MS = 20.0

# r = ((seq - 1) * 37) % 100 permutes 0..99 in every block of 100 seqs: r<5 purchase, r<8 bonus, r=8 refund,
# r=9 adjustment, else usage. seq 1 is a purchase, so the balance starts (and stays) positive.
LOAD_SQL = """
INSERT INTO ledger_entry (account_id, seq, kind, kind_seq, type, source, amount, balance_before, balance_after,
                          description, category, metadata, created_at)
SELECT :account_id, seq, kind, ROW_NUMBER() OVER (PARTITION BY kind ORDER BY seq), type, source, amount,
       (SUM(amount) OVER w)::bigint - amount, (SUM(amount) OVER w)::bigint,
       description, category, '{}'::jsonb, CAST(:t0 AS timestamptz) + make_interval(secs => (seq - 1) * :step)
  FROM (SELECT seq, k.*
          FROM (SELECT s AS seq, ((s - 1) * 37) % 100 AS r,
                       (ARRAY['ai_call','sms','whatsapp','tts','email','chat'])[1 + s % 6] AS cat
                  FROM generate_series(1, CAST(:n AS bigint)) AS s) g,
       LATERAL (SELECT
           CASE WHEN r < 5 THEN 'purchase' WHEN r < 8 THEN 'bonus' WHEN r = 8 THEN 'refund'
                WHEN r = 9 THEN 'adjustment' ELSE 'usage' END AS type,
           CASE WHEN r < 8 THEN 'topup' WHEN r = 8 THEN 'refund' WHEN r = 9 THEN 'adjustment' ELSE 'usage' END AS kind,
           CASE WHEN r < 5 THEN 'purchase' WHEN r < 8 THEN 'bonus' WHEN r = 8 THEN 'refund' END AS source,
           CASE WHEN r < 5 THEN 500000 WHEN r < 8 THEN 50000 WHEN r = 8 THEN 10000 WHEN r = 9 THEN -2500
                ELSE -(100 + (seq * 7919) % 19901) END::bigint AS amount,
           CASE WHEN r < 5 THEN 'Credit purchase' WHEN r < 8 THEN 'Bonus credits' WHEN r = 8 THEN 'Refund'
                WHEN r = 9 THEN 'Manual adjustment' ELSE cat || ' usage' END AS description,
           CASE WHEN r >= 10 THEN cat END AS category) k) e
WINDOW w AS (ORDER BY seq ROWS UNBOUNDED PRECEDING)
ORDER BY seq
"""

ACCOUNT_SQL = """
UPDATE credit_account a
   SET balance = t.total, lifetime_added = t.added, lifetime_consumed = t.consumed,
       transaction_count = t.n, version = t.n, updated_at = t.last,
       topup_count = t.topups, usage_count = t.usages, refund_count = t.refunds, adjustment_count = t.adjustments
  FROM (SELECT COALESCE(SUM(amount), 0) AS total, COUNT(*) AS n, MAX(created_at) AS last,
               COUNT(*) FILTER (WHERE kind = 'topup') AS topups, COUNT(*) FILTER (WHERE kind = 'usage') AS usages,
               COUNT(*) FILTER (WHERE kind = 'refund') AS refunds,
               COUNT(*) FILTER (WHERE kind = 'adjustment') AS adjustments,
               COALESCE(SUM(amount) FILTER (WHERE amount > 0), 0) AS added,
               COALESCE(-SUM(amount) FILTER (WHERE amount < 0), 0) AS consumed
          FROM ledger_entry WHERE account_id = :account_id) t
 WHERE a.id = :account_id
"""

# the daily usage rollup the ledger keeps with each usage posting
ROLLUP_SQL = """
INSERT INTO usage_rollup (account_id, day, category, amount, count)
SELECT account_id, CAST(created_at AT TIME ZONE 'UTC' AS DATE), COALESCE(category, 'other'), SUM(-amount), COUNT(*)
  FROM ledger_entry WHERE account_id = :account_id AND kind = 'usage'
 GROUP BY account_id, CAST(created_at AT TIME ZONE 'UTC' AS DATE), COALESCE(category, 'other')
"""


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]  # nearest rank


def _timed(fn, repeat: int) -> tuple[float, float]:
    for _ in range(WARMUP):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return _percentile(samples, 0.50), _percentile(samples, 0.95)


def load(url: str, entries: int) -> tuple[int, str]:
    """The organization, its member's API key, and `entries` ledger entries. Returns (account id, key)."""
    engine = get_engine(url)
    ledger = Ledger(engine, grace_limit=Decimal(5))
    org = create_organization(engine, ledger, "Bench API Org", welcome_credit=Decimal(0))
    add_user(engine, org, "member@bench.test", "member", "bench-password-123")
    key = create_api_key(engine, "member@bench.test").key
    account_id = account_id_for(engine, org.id)
    t0 = time.perf_counter()
    start = datetime.now(UTC) - timedelta(days=365)
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL work_mem = '256MB'"))
        conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
        conn.execute(sa.text(LOAD_SQL), dict(account_id=account_id, n=entries, t0=start, step=365 * 86400 / entries))
        conn.execute(sa.text(ACCOUNT_SQL), {"account_id": account_id})
        conn.execute(sa.text(ROLLUP_SQL), {"account_id": account_id})
    loaded = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM (ANALYZE) ledger_entry"))
        conn.execute(sa.text("ANALYZE credit_account"))
        conn.execute(sa.text("ANALYZE usage_rollup"))
    print(
        f"  loaded {entries:,} entries in {loaded - t0:.1f} s, vacuum/analyze {time.perf_counter() - loaded:.1f} s",
        flush=True,
    )
    t0 = time.perf_counter()
    with engine.connect() as conn:
        problems = check_invariants(conn, account_id)
        acct = get_account(conn, account_id=account_id)
        mix = conn.execute(sa.text("SELECT type, COUNT(*) FROM ledger_entry GROUP BY type ORDER BY 2 DESC")).all()
    print(
        f"  invariants: {'hold' if not problems else 'BROKEN: ' + '; '.join(problems)} "
        f"({time.perf_counter() - t0:.1f} s); balance {acct.balance}, {acct.transaction_count:,} entries; "
        + ", ".join(f"{t} {n:,}" for t, n in mix),
        flush=True,
    )
    return account_id, key


def summary_by_scan(conn, account_id: int, start: datetime | None) -> list:
    """The usage summary as a GROUP BY over the entries, as it was before the daily rollup: a reference."""
    e = LedgerEntry.__table__.c
    cat = sa.func.coalesce(e.category, sa.literal_column("'other'"))
    where = HistoryQuery("usage", start, None).where(account_id)
    return conn.execute(sa.select(cat, sa.func.sum(-e.amount), sa.func.count()).where(*where).group_by(cat)).all()


def cases(since: datetime, key: str) -> list[tuple[str, str | None, dict, object]]:
    """(name, API path or None for a service-only reference, query params, service call on a connection)."""

    def page(type_: str, n: int):
        return lambda conn, a: history_page(conn, a, HistoryQuery(type_), page=n, page_size=50)

    return [
        ("history page 1", "/api/credits/history", {"page": 1, "page_size": 50}, page("all", 1)),
        ("history page 10,000", "/api/credits/history", {"page": 10000, "page_size": 50}, page("all", 10000)),
        ("history type=usage page 1", "/api/credits/history", {"type": "usage", "page": 1}, page("usage", 1)),
        (
            "history type=topup page 500",
            "/api/credits/history",
            {"type": "topup", "page": 500, "page_size": 50},
            page("topup", 500),
        ),
        ("balance", "/api/credits/balance", {}, lambda conn, a: get_account(conn, account_id=a)),
        (
            "usage-summary last 30 days",
            "/api/credits/usage-summary",
            {"from": since.isoformat()},
            lambda conn, a: usage_summary(conn, a, since, None),
        ),
        (
            "usage-summary all time",
            "/api/credits/usage-summary",
            {},
            lambda conn, a: usage_summary(conn, a, None, None),
        ),
        ("  ref: summary 30 d by scan", None, {}, lambda conn, a: summary_by_scan(conn, a, since)),
        ("  ref: summary all time by scan", None, {}, lambda conn, a: summary_by_scan(conn, a, None)),
        ("  ref: API-key auth per request", None, {}, lambda conn, a: principal_for_api_key(conn.engine, key)),
    ]


def explain(engine, account_id: int, name: str, call) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) every statement the service call issues, except the account-row read."""
    captured = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "FROM credit_account" not in statement:
            captured.append((statement, parameters))

    with engine.connect() as conn:
        event.listen(engine, "before_cursor_execute", capture)
        try:
            call(conn, account_id)
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        for statement, parameters in captured:
            plan = [r[0] for r in conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)]
            low = statement.lower()
            kind = "count" if low.lstrip().startswith("select count") else "group by" if "group by" in low else "rows"
            scans = [p.strip() for p in plan[1:] if "Scan" in p][:2]
            print(f"  {name} [{kind}]: {plan[0].strip()}", flush=True)
            for line in scans + [p for p in plan if p.startswith("Execution Time")]:
                print(f"      {line}", flush=True)


def measure(url: str, account_id: int, key: str, repeat: int) -> list[dict]:
    os.environ["DATABASE_URL"] = url
    config.get_settings.cache_clear()
    logging.getLogger("orcapulse_billing.api").setLevel(logging.CRITICAL)  # a 500 is reported as one line below
    warnings.filterwarnings("ignore", message="Using `httpx`")
    from fastapi.testclient import TestClient

    from orcapulse_billing import api

    api_app = api.create_api_app() if hasattr(api, "create_api_app") else api.api_app  # the factory is newer

    engine = get_engine(url)
    rows = []
    since = datetime.now(UTC) - timedelta(days=30)
    with TestClient(api_app, raise_server_exceptions=False) as client, engine.connect() as conn:
        headers = {"Authorization": f"Bearer {key}"}
        for name, path, params, call in cases(since, key):
            row = dict(case=name.strip(), api=None, svc=None, api_error=None if path else "n/a", svc_error=None)
            if path:
                response = client.get(path, params=params, headers=headers)
                if response.status_code == 200:
                    row["api"] = _timed(
                        lambda path=path, params=params: client.get(path, params=params, headers=headers), repeat
                    )
                else:
                    row["api_error"] = f"HTTP {response.status_code}"
                    print(f"  {row['case']}: HTTP {response.status_code} {response.text[:120]}", flush=True)

            def service(call=call):
                try:
                    call(conn, account_id)
                finally:
                    conn.rollback()  # one transaction per call, as per request

            try:
                row["svc"] = _timed(service, repeat)
            except sa.exc.DBAPIError as exc:
                row["svc_error"] = type(exc.orig).__name__
                print(f"  {row['case']}: service call failed: {str(exc.orig).splitlines()[0]}", flush=True)
            rows.append(row)
    print("\nEXPLAIN (ANALYZE, BUFFERS): top plan line, scan nodes, execution time")
    for name, _path, _params, call in cases(since, key):
        if name.startswith(("history page 10", "history type")) or "GROUP BY" in name:
            explain(engine, account_id, name.strip(), call)
    return rows


def print_results(rows: list[dict]) -> None:
    header = ["case", "p50 ms", "p95 ms (API)", "p50 ms (service only)", "p95 ms (service only)", "API p95 < 20 ms"]

    def cells(pair, error):
        return [error or "-", error or "-"] if pair is None else [f"{pair[0]:.2f}", f"{pair[1]:.2f}"]

    print_table(
        header,
        [
            [
                r["case"],
                *cells(r["api"], r["api_error"]),
                *cells(r["svc"], r["svc_error"]),
                "n/a" if r["api_error"] == "n/a" else "MISS" if r["api"] is None or r["api"][1] >= TARGET_MS else "yes",
            ]
            for r in rows
        ],
    )
    print(
        f"target (information only): every case < {TARGET_MS:g} ms p95 through the API; "
        "'ref' rows are service-only reference queries, not endpoints"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--entries", type=int, default=1_000_000, help="ledger entries in the account (default 1,000,000)"
    )
    parser.add_argument("--repeat", type=int, default=200, help="timed calls per case (default 200)")
    args = parser.parse_args()
    with temporary_postgres("opb_bench_api") as url:
        print(
            f"API benchmark: {args.entries:,} entries, {args.repeat} timed calls per case, {os.cpu_count()} CPUs "
            f"({sa.engine.make_url(url).database})",
            flush=True,
        )
        try:
            upgrade(url)
            account_id, key = load(url, args.entries)
            print_results(measure(url, account_id, key, args.repeat))
        finally:
            get_engine(url).dispose()


if __name__ == "__main__":
    main()
