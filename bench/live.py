"""Live-update latency: from the POST that records usage to the new balance in every open tab.

For each deployment (both by default), started as real processes in production mode (see
tests/deployment.py):
- embedded: one worker, SQLite, in-process events, Reflex's own state (no Redis);
- scale-out: the README's command, GRANIAN_WORKERS=3 behind one port, on PostgreSQL + Redis.

Two shapes (--shape; one-org by default, as before the spread shape existed; `both` runs one, then
the other, each on a fresh database and deployment):

- one-org: --tabs Chromium tabs (Debian's chromium) signed in to one organization and, for each N in
  --clients, N lightweight clients as well: Socket.IO clients that speak to Reflex as a tab does (the
  tab's cookie, and the connect payload captured from a real tab), each with its own session state
  and live listener on the server. It then posts usage over HTTP --posts times, one at a time.
  A Chromium tab's latency is when a MutationObserver saw the balance change to the new value; a
  lightweight client's is when the state update carrying the new balance arrived; both measured from
  just before the POST. Prints p50, p95 and max.
- spread (bench/live_spread.py): a busy deployment. --orgs organizations with --per-org lightweight
  clients each, every client its own user and its own sign-in session; usage posted at --rate per
  second for --minutes to a random organization each time. Prints latency from each POST to each of
  that organization's clients, missed updates, updates of another organization (must be 0), connect
  time, and each server worker's RSS at the start and the end of the postings. The issue's figures
  (1,000 connections over 500 organizations, 50 postings a second for 10 minutes) are the defaults,
  on the scale-out deployment (with --deployment both, spread runs there only).

Run by hand; it asserts nothing:

    .venv/bin/python bench/live.py [--deployment embedded|scale-out|both] [--shape one-org|spread|both]
                                   [--tabs 10] [--posts 20] [--clients 0,100,1000]          (one-org)
                                   [--orgs 500] [--per-org 2] [--rate 50] [--minutes 10]    (spread)
    e.g. .venv/bin/python bench/live.py --deployment scale-out --shape spread

Needs the test extras (scripts/test installs them), PostgreSQL and Redis for the scale-out run
(TEST_POSTGRES_URL, and --redis-url).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _support import temporary_postgres  # noqa: E402  (bench/, next to this script)

OBSERVE = """() => {
  window.__changes = [];
  const el = document.querySelector('[data-testid=balance-value]');
  new MutationObserver(() => window.__changes.push([Date.now(), el.textContent]))
    .observe(el, {childList: true, characterData: true, subtree: true});
}"""
BALANCE_FIELD = "balance_rx_state_"  # BillingState.balance as Reflex sends it


def now_ms() -> float:
    return time.time() * 1000


class LightClients:
    """Socket.IO clients on an event loop of their own (Playwright holds the main thread's). Each
    client keeps (arrival in ms, value) for every state update carrying the balance."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.clients: list[tuple[object, list]] = []

    def _run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _connect_one(self, url: str, cookie: str, auth: dict):
        import socketio

        records: list[tuple[float, str]] = []

        async def on_event(update):
            for name, fields in (update.get("delta") or {}).items():
                if name.endswith("billing_state") and isinstance(fields, dict) and BALANCE_FIELD in fields:
                    records.append((now_ms(), fields[BALANCE_FIELD]))

        client = socketio.AsyncClient(reconnection=False)
        client.on("event", on_event, namespace="/_event")
        started = time.monotonic()
        await client.connect(
            f"{url}?token={uuid.uuid4()}",
            headers={"Cookie": cookie},
            auth=auth,
            transports=["websocket"],
            namespaces=["/_event"],
            socketio_path="_event",
            wait_timeout=120,
        )
        return client, records, time.monotonic() - started

    def connect(self, url: str, cookies: list[str], auth: dict, batch: int = 25) -> list:
        """One client per cookie, `batch` at a time. Per cookie, in order: (client, records, seconds
        its connect took), or the exception its connect raised."""

        async def go():
            done = []
            for start in range(0, len(cookies), batch):
                done += await asyncio.gather(
                    *(self._connect_one(url, cookie, auth) for cookie in cookies[start : start + batch]),
                    return_exceptions=True,
                )
            return done

        done = self._run(go())
        self.clients += [(c[0], c[1]) for c in done if not isinstance(c, BaseException)]
        return done

    def arrivals(self, expected: str, since: float) -> list[float | None]:
        return [
            next((t - since for t, value in list(records) if t >= since and value == expected), None)
            for _, records in self.clients
        ]

    def disconnected(self) -> int:
        return sum(not client.connected for client, _ in self.clients)

    def close(self) -> None:
        async def go():
            await asyncio.gather(*(client.disconnect() for client, _ in self.clients), return_exceptions=True)

        self._run(go(), timeout=120)
        self.clients.clear()


def signed_in_tab(pw, page_url: str, email: str, password: str):
    """A Chromium tab signed in through the form and showing /billing, and the Socket.IO connect
    payload it sent for /billing (which the lightweight clients send too): (browser, page, auth)."""
    from tests.browser import CHROMIUM_ARGS, chromium_path, sign_in

    browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
    page = browser.new_context().new_page()
    frames: list[str] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: frames.append(payload)))
    sign_in(page, page_url, email, password)
    page.get_by_test_id("balance-value").wait_for()
    for _ in range(200):
        connect = [f for f in frames if f.startswith("40/_event,") and '"pathname":"/billing' in f]
        if connect:
            return browser, page, json.loads(connect[0].split(",", 1)[1])
        page.wait_for_timeout(50)
    raise RuntimeError("the tab sent no Socket.IO connect for /billing")


def percentiles(values: list[float]) -> str:
    if not values:
        return "no updates seen"
    values = sorted(values)
    p95 = values[min(len(values) - 1, max(0, int(len(values) * 0.95 + 0.5) - 1))]
    return f"p50 {statistics.median(values):.0f} ms, p95 {p95:.0f} ms, max {values[-1]:.0f} ms"


def run_one_org(label: str, url: str, redis_url: str | None, workers: int, args, pw) -> None:
    import httpx

    from orcapulse_billing.db import make_engine, upgrade
    from orcapulse_billing.ledger import Ledger
    from orcapulse_billing.money import fmt_balance, to_units
    from tests.apiutil import PASSWORD, Org
    from tests.deployment import start_deployment

    upgrade(url)
    engine = make_engine(url)
    org = Org(engine, Ledger(engine, grace_limit=Decimal(5)), roles=("owner", "member"), welcome=Decimal(10_000))
    deployment = start_deployment(url, redis_url, shape="shared", workers=workers)
    try:
        browser, first, auth = signed_in_tab(pw, deployment.page_url, org.emails["member"], PASSWORD)
        tabs = [first]
        for _ in range(1, args.tabs):
            tab = first.context.new_page()
            tab.goto(deployment.page_url + "/billing")
            tab.get_by_test_id("balance-value").wait_for()
            tabs.append(tab)
        cookie = "; ".join(f"{c['name']}={c['value']}" for c in first.context.cookies())
        # usage is reported with the owner's key (usage:write); members' keys read only
        api = httpx.Client(base_url=deployment.page_url, headers=org.auth("owner"), timeout=60)
        light = LightClients()
        print(f"\nlive updates, {label}: {args.tabs} Chromium tabs, {args.posts} posts each run")
        for n_clients in args.clients:
            started = time.monotonic()
            failed = [
                c
                for c in light.connect(deployment.page_url, [cookie] * n_clients, auth)
                if isinstance(c, BaseException)
            ]
            connected = time.monotonic() - started
            time.sleep(3)  # every listener subscribes
            tab_latencies, light_latencies, missed_tabs, missed_light = [], [], 0, 0
            for i in range(args.posts):
                for tab in tabs:
                    tab.evaluate(OBSERVE)
                posted = now_ms()
                r = api.post(
                    "/api/credits/usage",
                    headers={"Idempotency-Key": f"live-{n_clients}-{i}"},
                    json={"operation": "voice_pipeline", "quantity": "1", "status": "completed"},
                )
                r.raise_for_status()
                expected = fmt_balance(to_units(r.json()["balance"]))
                deadline = time.monotonic() + 30
                for tab in tabs:
                    seen = None
                    while seen is None and time.monotonic() < deadline:
                        seen = next((t for t, text in tab.evaluate("window.__changes") if text == expected), None)
                        if seen is None:
                            tab.wait_for_timeout(10)
                    if seen is None:
                        missed_tabs += 1
                    else:
                        tab_latencies.append(seen - posted)
                arrivals = light.arrivals(expected, posted)
                while None in arrivals and time.monotonic() < deadline:
                    time.sleep(0.05)
                    arrivals = light.arrivals(expected, posted)
                light_latencies += [a for a in arrivals if a is not None]
                missed_light += arrivals.count(None)
            print(f"  with {n_clients} lightweight clients (connected in {connected:.1f} s):")
            if failed:
                print(f"    {len(failed)} clients failed to connect, e.g. {failed[0]!r}")
            print(f"    Chromium tabs:       {percentiles(tab_latencies)}; {missed_tabs} updates missed")
            if n_clients:
                print(f"    lightweight clients: {percentiles(light_latencies)}; {missed_light} updates missed")
            light.close()
        browser.close()
    finally:
        deployment.stop()
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployment", choices=["embedded", "scale-out", "both"], default="both")
    parser.add_argument("--shape", choices=["one-org", "spread", "both"], default="one-org")
    parser.add_argument("--tabs", type=int, default=10, help="one-org: Chromium tabs")
    parser.add_argument("--posts", type=int, default=20, help="one-org: posts, one at a time")
    parser.add_argument(
        "--clients",
        default="0,100,1000",
        type=lambda v: [int(n) for n in v.split(",")],
        help="one-org: comma-separated lightweight client counts",
    )
    parser.add_argument("--orgs", type=int, default=500, help="spread: organizations")
    parser.add_argument("--per-org", type=int, default=2, help="spread: clients per organization")
    parser.add_argument("--rate", type=float, default=50, help="spread: postings per second")
    parser.add_argument("--minutes", type=float, default=10, help="spread: how long the postings go on")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from tests.browser import reflex_environment

    reflex_environment()
    shapes = []
    if args.shape in ("one-org", "both"):
        shapes.append(run_one_org)
    if args.shape in ("spread", "both"):
        from live_spread import run_spread  # bench/, next to this script

        shapes.append(run_spread)
    with sync_playwright() as pw:
        for run in shapes:
            # The spread shape is the scale-out deployment's (issue 18); on the embedded default it
            # runs only when asked for by name.
            embedded = args.deployment == "embedded" or (args.deployment == "both" and run is run_one_org)
            if embedded:
                run(
                    "1 worker, embedded default (SQLite, in-process events)",
                    f"sqlite:///{tempfile.mkdtemp(prefix='opb-live-')}/live.db",
                    None,
                    1,
                    args,
                    pw,
                )
            if args.deployment in ("scale-out", "both"):
                with temporary_postgres("opb_bench_live") as url:
                    run("3 workers (GRANIAN_WORKERS=3), PostgreSQL + Redis", url, args.redis_url, 3, args, pw)
    print(
        "\ntargets (information only): 10 tabs p95 <= 150 ms; 1,000 clients on one organization p95 <= 1,000 ms;"
        " 1,000 clients connect in <= 5 s; spread p95 <= 500 ms, nothing missed, RSS growth < 10 %"
    )


if __name__ == "__main__":
    main()
