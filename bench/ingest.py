"""Bulk usage ingestion through the API: events per second through POST /api/credits/usage/batch on PostgreSQL.

A fresh PostgreSQL database `opb_bench_ingest_<random>` (admin URL from TEST_POSTGRES_URL) is created,
migrated, and dropped at the end WITH (FORCE), even on error. --accounts organizations (1,000) are made in
bulk (the rows the account services write), each with an owner whose API key has `usage:write` (no
password: these users only use their keys) and a welcome credit posted by the ledger. The API is served
for real: the app's
FastAPI application (`orcapulse_billing.api:create_api_app`, the same routes the Reflex backend mounts
under /api) served by uvicorn (`--server granian`: the server the deployment runs), with
--workers worker processes on a free loopback port, the database as DATABASE_URL and no Redis (events
go to the worker's own listeners).

--clients threads each keep one HTTP connection and send batches of --batch events (1,000) for a random
organization, back to back, for --seconds: metered operations, OpenAI tokens (many below one ledger unit,
so they are carried), calls with their sessions. Request bodies are encoded before the clock starts; the
answers are decoded and checked (every event charged or carried, none refused). Reported: events per
second (events in the answers / wall time), requests, p50 and p95 request latency.

Afterwards, exactly: per organization the balance went down by exactly the sum of the amounts of the
charged events' entries in the answers, their entries and the `usage_report` keys of the carried ones
are all there, and `check_invariants` holds for a sample of accounts.

Run by hand (short: the machine is shared); it prints figures and never asserts them:
    .venv/bin/python bench/ingest.py [--seconds 5] [--clients 4] [--workers 2] [--accounts 1000] [--batch 1000]
                                     [--server granian|uvicorn]
`measure_ingestion(seconds)` is what bench/ledger.py calls.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import httpx
import sqlalchemy as sa
from _support import bulk_organizations, temporary_postgres  # bench/, next to this script

from orcapulse_billing.db import make_engine, upgrade
from orcapulse_billing.ledger import check_invariants
from orcapulse_billing.money import to_units

ROOT = Path(__file__).resolve().parent.parent
WELCOME = Decimal(1_000_000)  # far above what a run spends: no low-balance mail, no auto-recharge
INVARIANT_SAMPLE = 25
TARGET = 10_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_organizations(url: str, count: int) -> list[tuple[int, int, str]]:
    """(organization id, account id, API key with usage:write) for `count` new organizations, made in bulk
    (`_support.bulk_organizations`), each with a welcome credit far above what a run spends."""
    made = bulk_organizations(url, "ingest", count, lambda n: WELCOME)
    return list(zip(made.organization_ids, made.account_ids, made.api_keys, strict=True))


SERVERS = ("uvicorn", "granian")


def _server_command(server: str, port: int, workers: int) -> list[str]:
    """uvicorn (with h11, as installed here); or granian, what the deployment serves the app with (Reflex's
    production backend), which this bench measured slower (3,642 against 4,831 events/s in one sitting,
    with half the CPUs idle)."""
    common = ["--factory", "orcapulse_billing.api:create_api_app", "--host", "127.0.0.1", "--port", str(port)]
    if server == "granian":
        return [sys.executable, "-m", "granian", "--interface", "asgi", *common, "--workers", str(workers), "--no-log"]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        *common,
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
    ]


class Server:
    """The API in a subprocess of `server` (granian or uvicorn) with `workers` processes."""

    def __init__(self, url: str, workers: int, server: str = SERVERS[0]):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
        env.pop("REDIS_URL", None)
        self.process = subprocess.Popen(_server_command(server, self.port, workers), cwd=ROOT, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the API server exited with {self.process.returncode}")
            try:
                if httpx.get(self.base + "/api/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("the API did not answer /api/health within 60 s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _events(rng: random.Random, prefix: str, size: int) -> list[dict]:
    """A platform's mix: SMS and e-mail, TTS characters, OpenAI tokens (often below one ledger unit),
    voice calls with their sessions."""
    events = []
    for i in range(size):
        key = f"{prefix}-{i}"
        roll = rng.random()
        if roll < 0.25:
            event = {"operation": "sms_twilio", "quantity": str(rng.randint(1, 3))}
        elif roll < 0.35:
            event = {"operation": "email", "quantity": "1"}
        elif roll < 0.45:
            event = {"operation": "tts_elevenlabs", "quantity": str(rng.randint(100, 2000))}
        elif roll < 0.85:
            operation = rng.choice(["openai_input_tokens", "openai_output_tokens"])
            event = {"operation": operation, "quantity": str(rng.randint(50, 5000)), "model": "gpt-4o-mini"}
        else:
            event = {
                "operation": "voice_pipeline",
                "quantity": f"{rng.randint(1, 600) / 100:.2f}",
                "session": {"id": key, "agent_id": "agent_bench"},
            }
        events.append({**event, "status": "completed", "idempotency_key": key})
    return events


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))] if ordered else 0.0


class Client(threading.Thread):
    """Sends pre-encoded batches for random organizations: its first one before the clock starts (the
    workers' connections and caches warm up), then back to back until the deadline; keeps what came back."""

    def __init__(self, n: int, base: str, orgs: list[tuple[int, int, str]], bodies: list[tuple[int, bytes]]):
        super().__init__(name=f"client-{n}", daemon=True)
        self.base, self.orgs, self.bodies = base, orgs, bodies
        self.latencies: list[float] = []
        self.events = 0
        self.charged: Counter[int] = Counter()  # account id -> units charged in the answers
        self.entries: Counter[int] = Counter()  # account id -> entries posted
        self.carried: list[tuple[int, str]] = []  # (account id, key) of events carried, not charged
        self.problems: list[str] = []
        self.deadline = 0.0
        self.warm, self.start_gate = threading.Event(), threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=120) as http:
            self._send(http, *self.bodies[0])
            self.warm.set()
            self.start_gate.wait()
            for org_index, body in self.bodies[1:]:
                if time.perf_counter() >= self.deadline:
                    return
                t0 = time.perf_counter()
                self.events += self._send(http, org_index, body)
                self.latencies.append(time.perf_counter() - t0)
            self.problems.append("a client ran out of prepared batches before the deadline")

    def _send(self, http: httpx.Client, org_index: int, body: bytes) -> int:
        """Sends one batch and books its answer; the number of events answered."""
        _, account_id, key = self.orgs[org_index]
        response = http.post(
            "/api/credits/usage/batch",
            content=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        if response.status_code != 200:
            self.problems.append(f"HTTP {response.status_code}: {response.text[:200]}")
            return 0
        answer = json.loads(response.content, parse_float=Decimal)
        for result in answer["results"]:
            if result["status"] == "charged":
                self.charged[account_id] -= to_units(Decimal(result["entry"]["amount"]))
                self.entries[account_id] += 1
            elif result["status"] == "not_charged":
                self.carried.append((account_id, result["idempotency_key"]))
            else:
                self.problems.append(f"event {result['idempotency_key']}: {result['status']} {result['error']}")
        return len(answer["results"])


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (those that are gone count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _processes(url: str, server: Server) -> dict[str, list[int]]:
    """The API's worker processes, and the PostgreSQL backends serving this database."""
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            backends = conn.execute(
                sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalars()
            return {"api": [server.process.pid, *map(int, children)], "postgres": list(backends)}
    finally:
        engine.dispose()


def _bodies(n: int, orgs: int, batch: int, count: int) -> list[tuple[int, bytes]]:
    rng = random.Random(n)
    return [
        (index, json.dumps({"events": _events(rng, f"c{n}-r{r}", batch)}, separators=(",", ":")).encode())
        for r, index in enumerate(rng.randrange(orgs) for _ in range(count))
    ]


def check_books(url: str, orgs: list[tuple[int, int, str]], clients: list[Client]) -> list[str]:
    """Every balance moved by exactly what the answers charged; every entry and carried key is there."""
    charged: Counter[int] = Counter()
    entries: Counter[int] = Counter()
    carried: dict[int, set[str]] = {}
    for c in clients:
        charged.update(c.charged)
        entries.update(c.entries)
        for account_id, key in c.carried:
            carried.setdefault(account_id, set()).add(key)
    problems = []
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT a.id, a.balance, a.usage_count, "
                    "(SELECT COUNT(*) FROM usage_report r WHERE r.account_id = a.id) FROM credit_account a"
                )
            ).all()
            start = to_units(WELCOME)
            moved = 0
            for account_id, balance, usage_count, reports in rows:
                moved += start - balance
                if start - balance != charged[account_id]:
                    problems.append(
                        f"account {account_id}: balance moved {start - balance}, answers charged {charged[account_id]}"
                    )
                if usage_count != entries[account_id] or reports != len(carried.get(account_id, ())):
                    problems.append(
                        f"account {account_id}: {usage_count} usage entries and {reports} carried keys, "
                        f"answers: {entries[account_id]} and {len(carried.get(account_id, ()))}"
                    )
            if moved != sum(charged.values()):
                problems.append(f"balances moved {moved} units in all, the answers charged {sum(charged.values())}")
            touched = sorted(charged)
            for account_id in random.Random(1).sample(touched, min(INVARIANT_SAMPLE, len(touched))):
                problems += [f"account {account_id}: {p}" for p in check_invariants(conn, account_id)]
    finally:
        engine.dispose()
    return problems


def measure_ingestion(
    seconds: float,
    *,
    clients: int = 4,
    workers: int = 2,
    accounts_count: int = 1000,
    batch: int = 1000,
    server_name: str = SERVERS[0],
) -> dict:
    """Events per second through the batch endpoint for `seconds`; keys: rate, events, problems,
    requests, p50_ms, p95_ms (and the set-up)."""
    with temporary_postgres("opb_bench_ingest") as url:
        upgrade(url)
        t0 = time.perf_counter()
        orgs = make_organizations(url, accounts_count)
        setup = time.perf_counter() - t0
        # enough prepared batches for 40,000 events/s in all, four times the target
        per_client = max(4, int(seconds * 40_000 / batch / clients) + 2)
        bodies = [_bodies(n, len(orgs), batch, per_client) for n in range(clients)]
        server = Server(url, workers, server_name)
        try:
            threads = [Client(n, server.base, orgs, bodies[n]) for n in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.warm.wait(120)
            pids = _processes(url, server)
            cpu_before = {name: _cpu_seconds(p) for name, p in pids.items()} | {"clients": time.process_time()}
            start = time.perf_counter()
            for t in threads:
                t.deadline = start + seconds
                t.start_gate.set()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            cpu = {name: _cpu_seconds(p) - cpu_before[name] for name, p in pids.items()}
            cpu["clients"] = time.process_time() - cpu_before["clients"]
        finally:
            server.stop()
        latencies = sorted(x for t in threads for x in t.latencies)
        events = sum(t.events for t in threads)
        problems = [p for t in threads for p in t.problems]
        problems += check_books(url, orgs, threads)
    return {
        "rate": events / wall if wall else 0.0,
        "events": events,
        "problems": problems,
        "requests": len(latencies),
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p95_ms": _percentile(latencies, 0.95) * 1000,
        "seconds": wall,
        "clients": clients,
        "workers": workers,
        "server": server_name,
        "accounts": accounts_count,
        "batch": batch,
        "setup_seconds": setup,
        # CPU seconds per 1,000 events: the API's workers, PostgreSQL's backends of this database, the clients
        "cpu_per_1000": {name: 1000 * used / events if events else 0.0 for name, used in cpu.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the clients send (default 5)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients (default 4)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    parser.add_argument("--server", choices=SERVERS, default=SERVERS[0], help="HTTP server (default uvicorn)")
    parser.add_argument("--accounts", type=int, default=1000, help="organizations, one API key each (default 1000)")
    parser.add_argument("--batch", type=int, default=1000, help="events per request (default 1000)")
    args = parser.parse_args()
    print(
        f"batch ingestion: {args.accounts:,} organizations, batches of {args.batch:,}, {args.clients} clients, "
        f"{args.workers} {args.server} workers, {os.cpu_count()} CPUs, {args.seconds:g} s",
        flush=True,
    )
    r = measure_ingestion(
        args.seconds,
        clients=args.clients,
        workers=args.workers,
        accounts_count=args.accounts,
        batch=args.batch,
        server_name=args.server,
    )
    print(f"  set-up: {r['accounts']:,} organizations with keys in {r['setup_seconds']:.1f} s")
    print(
        f"  {r['rate']:,.0f} events/s ({r['events']:,} events in {r['requests']} requests over {r['seconds']:.1f} s); "
        f"request p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms; target >= {TARGET:,} events/s"
    )
    print(
        "  CPU seconds per 1,000 events: "
        + ", ".join(f"{name} {used:.3f}" for name, used in r["cpu_per_1000"].items())
        + f" ({sum(r['cpu_per_1000'].values()) * r['rate'] / 1000:.2f} of {os.cpu_count()} CPUs busy)"
    )
    if r["problems"]:
        print(f"  {len(r['problems'])} PROBLEMS:")
        for problem in r["problems"][:20]:
            print(f"    {problem}")
    else:
        print("  books: exact (each balance moved by exactly what its answers charged; invariants hold on a sample)")


if __name__ == "__main__":
    main()
