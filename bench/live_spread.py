"""The spread shape of bench/live.py (run it as `bench/live.py --shape spread`): a busy deployment,
many organizations with a few clients each and postings arriving all the time.

Made in bulk, with no password hashed and no sign-in request: the rows that
`accounts.create_organization`, `add_user`, `create_api_key` and `auth.login` write (without their
audit entries), and each organization's welcome credit through the ledger (`post_batch`):
- --orgs organizations; organization n (from 0) gets a welcome credit of (n + 1) x WELCOME_STEP
  credits. That is far more than the postings spend, and it keeps the organizations' balances apart:
  organization n's balance stays within (n x WELCOME_STEP, (n + 1) x WELCOME_STEP], so any balance
  a client receives tells which organization it belongs to (an update of another organization is
  counted as "foreign": it must be 0);
- per organization, an owner whose API key has usage:write (who reports the usage) and --per-org
  members, each with a sign-in session of their own (the token's hash as `login` stores it) and one
  lightweight client connected with that session's cookie, a fresh client token, and the Socket.IO
  connect payload of a real tab on /billing (captured once from a Chromium tab signed in through
  the form, in an organization of its own, closed before the clients connect).

Postings: --rate a second for --minutes, each to a random organization (POST /api/credits/usage with
its owner's key and an Idempotency-Key of its own), each sent at its planned time by one of SENDERS
senders (coroutines of an asyncio httpx client, on a thread of its own) that waits for its answer:
when the server answers too slowly for the pace, postings go out late. A posting is measured from
when it was sent; how late they were is printed, with the time the POSTs took to answer.

When a client has seen a posting: the postings here are all usage, so an organization's balance only
goes down, each posting by more than a cent (the display's precision). The server folds a burst of
an organization's postings into one update, and a reload may show a balance newer than the event's,
so a client need not ever show a given posting's own balance. Posting P is seen by a client of its
organization at the first update that arrives after P was sent with a balance at or below P's (P's
own or a later posting's). Missed: not seen within 30 s of P's send.

Also printed: the connect time (all clients, and each connect), each server worker's RSS (the
granian worker processes under the deployment's process) before the clients connect, when the
postings start and after the last update, with its growth over the postings and the CPU it used
meanwhile (this bench's own too: it must not be what limits), the clients disconnected by the end,
and the server log's warnings and errors during the connects and during the postings.
"""

from __future__ import annotations

import asyncio
import bisect
import re
import secrets
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from random import Random

import psutil
import sqlalchemy as sa
from _support import bulk_organizations, print_table
from live import LightClients, now_ms, percentiles, signed_in_tab

WELCOME_STEP = 100_000  # credits; 30,000 postings of voice_pipeline spend about 2,600
WINDOW_MS = 30_000  # a posting not seen by a client within this is missed
SENDERS = 64  # postings awaiting their answer at most: at 50 a second, answers within 1.3 s keep the pace
USAGE = {"operation": "voice_pipeline", "quantity": "1", "status": "completed"}


@dataclass
class SpreadOrg:
    id: int
    key: str  # the owner's API key, with usage:write
    cookies: list[str]  # one sign-in session per member


@dataclass
class Post:
    org: int  # index into the organizations
    planned: float  # ms, when it was due
    sent: float  # ms, just before the POST
    answered: float = 0.0  # ms, when its answer came
    balance: Decimal | None = None  # the balance it left, as the page shows it; None: it failed
    error: str = ""


def displayed(text: str) -> Decimal | None:
    """'$1,234.56' or '-$2.50' -> Decimal; None for anything else."""
    try:
        return Decimal(text.replace("$", "").replace(",", ""))
    except InvalidOperation:
        return None


def make_spread_orgs(url: str, count: int, per_org: int) -> list[SpreadOrg]:
    """`count` organizations in bulk (`_support.bulk_organizations`): organization n with a welcome credit of
    (n + 1) x WELCOME_STEP, an owner whose API key posts, and `per_org` members, each signed in with a
    session of their own (the clients' cookies)."""
    from orcapulse_billing.auth import SESSION_COOKIE, _token_hash
    from orcapulse_billing.db import make_engine
    from orcapulse_billing.models import AuthSession

    made = bulk_organizations(url, "live", count, lambda n: Decimal(WELCOME_STEP * (n + 1)), per_org)
    tokens = [[secrets.token_urlsafe(32) for _ in range(per_org)] for _ in range(count)]
    if per_org:  # (--per-org 0: the postings alone, no clients)
        now = datetime.now(UTC)
        engine = make_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(
                    sa.insert(AuthSession),
                    [
                        {
                            "token_hash": _token_hash(token),
                            "user_id": user_id,
                            "organization_id": o,
                            "created_at": now,
                            "expires_at": now + timedelta(days=1),
                            "user_agent": "bench/live.py",
                        }
                        for o, mine, theirs in zip(made.organization_ids, made.member_ids, tokens, strict=True)
                        for user_id, token in zip(mine, theirs, strict=True)
                    ],
                )
        finally:
            engine.dispose()
    return [
        SpreadOrg(o, key, [f"{SESSION_COOKIE}={token}" for token in theirs])
        for o, key, theirs in zip(made.organization_ids, made.api_keys, tokens, strict=True)
    ]


def server_workers(root_pid: int) -> list[psutil.Process]:
    """The granian worker processes: under the deployment's process, the children of the one process
    with the most children (granian's main process), leaving out multiprocessing's helpers."""
    tree = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
    children = defaultdict(list)
    for proc in tree[1:]:
        try:
            if "multiprocessing.resource_tracker" not in " ".join(proc.cmdline()):
                children[proc.ppid()].append(proc)
        except psutil.Error:
            pass
    return max(children.values(), key=len, default=[])


def rss_cpu(procs: list[psutil.Process]) -> list[tuple[float, float] | None]:
    """Each process's RSS (MB) and CPU time so far (s); None for one that is gone (granian replaces a
    worker that dies)."""

    def one(proc):
        try:
            with proc.oneshot():
                cpu = proc.cpu_times()
                return proc.memory_info().rss / 2**20, cpu.user + cpu.system
        except psutil.Error:
            return None

    return [one(proc) for proc in procs]


def send_postings(base_url: str, orgs: list[SpreadOrg], rate: float, seconds: float, rng: Random) -> list[Post]:
    """rate postings a second for seconds, each to a random organization, each sent at its planned time
    by the first of SENDERS senders that is free (a sender waits for its answer: when all of them are
    waiting, the next posting goes out late); returns once every answer is in."""
    import httpx

    from orcapulse_billing.money import fmt_balance, to_units

    total = int(rate * seconds)
    targets = [rng.randrange(len(orgs)) for _ in range(total)]
    run = uuid.uuid4().hex[:8]
    posts: list[Post] = []
    start = now_ms() + 100
    due = iter(range(total))

    async def sender(client) -> None:
        for k in due:  # shared: each posting goes to one sender
            planned = start + k * 1000 / rate
            if (wait := planned - now_ms()) > 0:
                await asyncio.sleep(wait / 1000)
            post = Post(targets[k], planned, now_ms())
            posts.append(post)
            try:
                r = await client.post(
                    "/api/credits/usage",
                    headers={"Authorization": f"Bearer {orgs[post.org].key}", "Idempotency-Key": f"spread-{run}-{k}"},
                    json=USAGE,
                )
                post.answered = now_ms()
                r.raise_for_status()
                post.balance = displayed(fmt_balance(to_units(r.json()["balance"])))
            except Exception as e:  # counted and shown, the run goes on
                post.error = f"{type(e).__name__}: {e}"[:200]

    async def go() -> None:
        limits = httpx.Limits(max_connections=SENDERS, max_keepalive_connections=SENDERS)
        async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
            await asyncio.gather(*(sender(client) for _ in range(SENDERS)))

    failed: list[BaseException] = []

    def send() -> None:  # an event loop of its own, away from the clients'
        try:
            asyncio.run(go())
        except BaseException as e:
            failed.append(e)

    thread = threading.Thread(target=send, daemon=True)  # daemon: an interrupted run does not wait for it
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return posts


def own_updates(conns: list[tuple[int, list]], orgs: int) -> tuple[list[list], int, int]:
    """Per client, its organization's balances it received as (ms, balance), in arrival order; and the
    count of balances of another organization, and of values that are no organization's."""
    result, foreign, unknown = [], 0, 0
    for org, records in conns:
        own = []
        for t, text in list(records):
            value = displayed(text) if text else None
            if value is not None and WELCOME_STEP * org < value <= WELCOME_STEP * (org + 1):
                own.append((t, value))
            elif value is not None and 0 < value <= WELCOME_STEP * orgs:
                foreign += 1
            elif text:
                unknown += 1
        result.append(own)
    return result, foreign, unknown


def seen_latencies(posts: list[Post], conns: list[tuple[int, list]], updates: list[list]) -> tuple[list[float], int]:
    """Per posting and client of its organization: ms from the send to the first update arriving after
    it with a balance at or below the posting's (see the module's docstring); and the count missed."""
    clients_of = defaultdict(list)
    for (org, _), own in zip(conns, updates, strict=True):
        clients_of[org].append(([t for t, _ in own], own))
    latencies, missed = [], 0
    for post in posts:
        if post.balance is None:
            continue
        for times, own in clients_of[post.org]:
            start = bisect.bisect_left(times, post.sent)
            seen = next((t for t, value in own[start:] if value <= post.balance), None)
            if seen is not None and seen - post.sent <= WINDOW_MS:
                latencies.append(seen - post.sent)
            else:
                missed += 1
    return latencies, missed


def log_lines(path, start: int, end: int | None = None) -> Counter:
    """Warnings, errors, tracebacks and expired locks in the server's log between two offsets (a traceback:
    its first and last lines; Reflex's messages, wrapped at 80 columns, joined again), tokens and
    numbers folded so that repeats count together."""
    found, entry = Counter(), []
    with open(path, "rb") as log:
        log.seek(start)
        for line in [*log.read(-1 if end is None else end - start).decode(errors="replace").splitlines(), ""]:
            wrapped = entry and (entry[-1].endswith(" ") or len(entry[-1]) >= 80)
            if entry and (line.startswith((" ", "\t")) if entry[0].startswith("Traceback") else wrapped and line):
                entry.append(line)
                continue
            if entry:
                text = f"{entry[0]} ... {entry[-1].strip()}" if entry[0].startswith("Traceback") else "".join(entry)
                text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}\S*", "TOKEN", text)
                found[re.sub(r"\d+(\.\d+)?", "N", text)[:300]] += 1
            entry = [line] if re.search(r"warn|error|traceback|exception|expired", line, re.I) else []
    return found


def run_spread(label: str, url: str, redis_url: str | None, workers: int, args, pw) -> None:
    from orcapulse_billing.db import make_engine, upgrade
    from orcapulse_billing.ledger import Ledger
    from tests.apiutil import PASSWORD, Org
    from tests.deployment import LOGS, start_deployment

    n_clients = args.orgs * args.per_org
    print(
        f"\nlive updates, spread, {label}: {n_clients:,} clients over {args.orgs:,} organizations "
        f"({args.per_org} each, each its own user and session), {args.rate:g} postings/s for {args.minutes:g} min"
    )
    upgrade(url)
    engine = make_engine(url)
    tab_org = Org(engine, Ledger(engine, grace_limit=Decimal(5)), roles=("member",))  # for the connect payload
    started = time.monotonic()
    orgs = make_spread_orgs(url, args.orgs, args.per_org)
    print(f"  made the organizations, users, sessions and keys in {time.monotonic() - started:.1f} s")
    deployment = start_deployment(url, redis_url, shape="shared", workers=workers)
    light = LightClients()
    try:
        log = LOGS / "scale-out-worker-0.log"
        log_start = log.stat().st_size
        procs = [*server_workers(deployment.workers[0].proc.pid), psutil.Process()]  # and this bench
        browser, _, auth = signed_in_tab(pw, deployment.page_url, tab_org.emails["member"], PASSWORD)
        browser.close()
        rss = {"idle": rss_cpu(procs)}

        conns = [(n, cookie) for n, org in enumerate(orgs) for cookie in org.cookies]
        started = time.monotonic()
        done = light.connect(deployment.page_url, [cookie for _, cookie in conns], auth)
        connected = time.monotonic() - started
        failed = [c for c in done if isinstance(c, BaseException)]
        conns = [(n, c[1]) for (n, _), c in zip(conns, done, strict=True) if not isinstance(c, BaseException)]
        while time.monotonic() - started < 120 and not all(any(text for _, text in r) for _, r in conns):
            time.sleep(0.2)
        showing = sum(any(text for _, text in r) for _, r in conns)
        shown = time.monotonic() - started
        print(
            f"  connect: {len(conns):,} of {n_clients:,} clients in {connected:.1f} s "
            f"(each: {percentiles([c[2] * 1000 for c in done if not isinstance(c, BaseException)])}); "
            f"{showing:,} showing their balance {shown:.1f} s after the first connect"
        )
        if failed:
            print(f"  {len(failed)} clients failed to connect, e.g. {failed[0]!r}")
        time.sleep(5)  # every listener subscribes

        rss["start"], posting_s, log_posting = rss_cpu(procs), time.monotonic(), log.stat().st_size
        posts = send_postings(deployment.page_url, orgs, args.rate, args.minutes * 60, Random(18))
        final = {}
        for post in posts:
            if post.balance is not None:
                final[post.org] = min(post.balance, final.get(post.org, post.balance))
        deadline = max(p.sent for p in posts) + WINDOW_MS if posts else 0
        while (
            now_ms() < deadline
            and any(  # the last updates arrive, until every client shows its last balance
                n in final and not any(displayed(text) == final[n] for _, text in list(r)[-3:]) for n, r in conns
            )
        ):
            time.sleep(0.5)
        rss["end"], posting_s = rss_cpu(procs), time.monotonic() - posting_s

        updates, foreign, unknown = own_updates(conns, len(orgs))
        latencies, missed = seen_latencies(posts, conns, updates)
        errors = [p.error for p in posts if p.balance is None]
        sent = [p.sent for p in posts]
        span = (max(sent) - min(sent)) / 1000 if len(sent) > 1 else 0
        print(
            f"  postings: {len(posts):,} sent over {span:.1f} s ({(len(posts) - 1) / span if span else 0:.1f}/s), "
            f"{len(errors)} failed; answered in {percentiles([p.answered - p.sent for p in posts if p.answered])}; "
            f"sent after their planned time: {percentiles([p.sent - p.planned for p in posts])}"
        )
        if errors:
            print(f"    e.g. {errors[0]}")
        print(f"  POST to the new balance in each client of its organization: {percentiles(latencies)}")
        print(
            f"  missed updates (not seen within {WINDOW_MS // 1000} s): {missed:,} of {len(latencies) + missed:,}; "
            f"balances of another organization: {foreign}; values that are no organization's balance: {unknown}"
        )
        print(f"  clients disconnected by the end: {light.disconnected()} of {len(conns):,}")
        body = []
        for i, proc in enumerate(procs):
            idle, start, end = (rss[when][i] for when in ("idle", "start", "end"))
            name = f"worker {proc.pid}" if i < len(procs) - 1 else "this bench (clients, sender)"
            cells = [f"{v[0]:.0f}" if v else "-" for v in (idle, start, end)]
            if start and end:
                cpu = end[1] - start[1]
                cells += [f"{(end[0] / start[0] - 1) * 100:+.1f}%", f"{cpu:.0f}", f"{cpu / posting_s * 100:.0f}%"]
            body.append([name, *cells] if start and end else [name, *cells, "gone", "-", "-"])
        print_table(["RSS (MB)", "before connects", "postings start", "end", "growth", "CPU s", "of a core"], body)
        print(f"\n  server log ({log}), warnings and errors:")
        for when, found in [
            ("connects", log_lines(log, log_start, log_posting)),
            ("postings", log_lines(log, log_posting)),
        ]:
            print(f"    during the {when}: {sum(found.values())}")
            for line, count in found.most_common(5):
                print(f"      {count} x {line}")
        print("  target (information only): p95 <= 500 ms, no update missed, RSS growth under 10 %")
    finally:
        light.close()
        deployment.stop()
        engine.dispose()
