"""Redis outages: a Redis that accepts connections and never answers (a "black hole" on a local TCP
port), and one whose connections go dead and come back (a relay to the real Redis that can freeze).
Postings never wait on it, the backend starts and serves, job locks fail closed, and events flow
again once Redis answers. Real parts throughout: the ledger with its publisher on SQLite, a real
Redis behind the relay, the app as its own process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from orcapulse_billing import services
from orcapulse_billing.config import get_settings
from orcapulse_billing.db import make_engine, upgrade
from orcapulse_billing.events import EventBus
from orcapulse_billing.jobs import run_once
from orcapulse_billing.ledger import Ledger, Posting, get_account

from .apiutil import Org
from .conftest import GRACE

ROOT = Path(__file__).resolve().parents[1]
REAL_REDIS = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


class RedisRelay:
    """A TCP port in front of the real Redis. `black_hole()`: new connections are accepted and never
    answered, and the open ones stop carrying bytes in either direction (they stay open, dead, as
    after a network partition). `restore()`: new connections reach Redis again; the dead ones stay
    dead, so a client must notice and reconnect."""

    def __init__(self, forwarding: bool = True):
        from redis.connection import parse_url

        target = parse_url(REAL_REDIS)
        self.target = (target.get("host", "127.0.0.1"), target.get("port", 6379))
        self.db = target.get("db", 0)
        self.forwarding = forwarding
        self._epoch = 0  # connections of an earlier epoch are frozen by black_hole()
        self._sockets: list[socket.socket] = []
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = self._server.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{self.db}"

    def black_hole(self) -> None:
        self.forwarding = False
        self._epoch += 1

    def restore(self) -> None:
        self.forwarding = True

    def close(self) -> None:
        self._closed = True
        for sock in [self._server, *self._sockets]:
            try:
                sock.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._sockets.append(client)  # held open, answered or not
            if self.forwarding:
                upstream = socket.create_connection(self.target)
                self._sockets.append(upstream)
                epoch = self._epoch
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(a, b, epoch), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, epoch: int) -> None:
        try:
            while data := source.recv(65536):
                if self._epoch != epoch:
                    return  # frozen: the bytes go nowhere, the sockets stay open
                sink.sendall(data)
        except OSError:
            pass


@pytest.fixture
def black_hole():
    relay = RedisRelay(forwarding=False)
    yield relay
    relay.close()


@pytest.fixture
def relay():
    import redis

    try:
        redis.Redis.from_url(REAL_REDIS).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is needed at {REAL_REDIS}: {exc}")
    relay = RedisRelay(forwarding=True)
    yield relay
    relay.close()


@pytest.fixture
def redis_url_env(monkeypatch):
    """Sets REDIS_URL for this process's settings, event bus and ledgers, and forgets them after."""

    def forget() -> None:
        get_settings.cache_clear()
        services.get_event_bus.cache_clear()
        services._ledger_for.cache_clear()

    def use(url: str) -> None:
        monkeypatch.setenv("REDIS_URL", url)
        forget()

    yield use
    monkeypatch.undo()
    forget()


def within(seconds: float, fn, *args):
    """fn(*args) on a daemon thread; its result, or a failure when it takes longer than `seconds`
    (a call stuck on a socket forever must not hang the test run)."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} did not return within {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _ledger_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'outage.db'}"
    upgrade(url)
    engine = make_engine(url)
    return engine, services.get_ledger(engine)  # with its real publisher listener


def _timed_post(ledger: Ledger, account_id: int, type_: str, amount: str) -> float:
    start = time.monotonic()
    within(10, ledger.post, Posting(account_id, type_, Decimal(amount), f"{type_} {amount}"))
    return time.monotonic() - start


def test_a_posting_never_waits_on_a_redis_that_does_not_answer(tmp_path, black_hole, redis_url_env, monkeypatch):
    # Redis timeouts far above anything a loaded machine adds to a posting (which has taken 2.8 s on a busy
    # CI machine): a posting that waited on this Redis would take 30 s or more, or never return
    monkeypatch.setenv("REDIS_CONNECT_TIMEOUT", "30")
    monkeypatch.setenv("REDIS_SOCKET_TIMEOUT", "30")
    redis_url_env(black_hole.url)
    engine, ledger = _ledger_on_sqlite(tmp_path)
    org = Org(engine, ledger, roles=("owner",))
    took = [_timed_post(ledger, org.account_id, "purchase", "10.00")]
    took += [_timed_post(ledger, org.account_id, "usage", "-0.25") for _ in range(8)]
    assert max(took) < 10, took  # each is milliseconds on a quiet machine: the publisher thread waits, not them
    with engine.connect() as conn:
        assert get_account(conn, account_id=org.account_id).balance == Decimal("8.00")  # 10.00 - 8 x 0.25
    assert services.get_event_bus().pending() >= 1  # still trying Redis, off the postings' thread
    engine.dispose()


def test_a_job_lock_fails_closed_when_redis_does_not_answer(black_hole):
    def try_lock() -> bool:
        with run_once(None, f"job-{uuid.uuid4().hex[:6]}", black_hole.url) as mine:
            return mine

    start = time.monotonic()
    assert within(15, try_lock) is False  # the round is skipped, never run without the lock
    assert time.monotonic() - start < 5


def test_events_flow_again_after_redis_comes_back(tmp_path, relay, redis_url_env):
    """A worker's tab listens through the relay; the relay's connections go dead (the subscription
    with them) while a posting is made; once Redis answers again, the subscriber notices its dead
    connection, reconnects, and the postings made after the outage reach the tab."""
    import asyncio

    redis_url_env(relay.url)
    engine, ledger = _ledger_on_sqlite(tmp_path)
    org = Org(engine, Ledger(engine, grace_limit=GRACE), roles=("owner",))  # made without events
    tab_worker = EventBus(relay.url)  # the worker that serves the tab

    async def scenario() -> tuple[list[dict], float]:
        with tab_worker.listen(org.id) as queue:
            await asyncio.sleep(0.5)  # the subscriber connects
            await asyncio.to_thread(_timed_post, ledger, org.account_id, "purchase", "1.00")
            received = [await asyncio.wait_for(queue.get(), 10)]  # Redis works: the tab hears it

            relay.black_hole()
            during = await asyncio.to_thread(_timed_post, ledger, org.account_id, "purchase", "2.00")
            assert during < 1.0
            await asyncio.to_thread(services.get_event_bus().flush, 10)  # its publish failed by now
            await asyncio.sleep(1)
            relay.restore()
            back = time.monotonic()

            # The subscription's connection is still dead: the subscriber must find that out by
            # itself. Postings made from now on must reach the tab (the one made during the outage
            # is the heartbeat's to catch up).
            while time.monotonic() - back < 30:
                await asyncio.to_thread(_timed_post, ledger, org.account_id, "purchase", "3.00")
                try:
                    while True:
                        received.append(await asyncio.wait_for(queue.get(), 2))
                        if received[-1]["amount"] == "3.0000":
                            return received, time.monotonic() - back
                except TimeoutError:
                    continue
            pytest.fail(f"no posting reached the tab within 30 s after Redis came back: {received}")

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:  # a loop of its own (Playwright may hold this thread's)
        received, after = pool.submit(asyncio.run, scenario()).result(timeout=90)
    assert received[0]["amount"] == "1.0000" and received[-1]["amount"] == "3.0000" and after < 30
    assert tab_worker.subscriptions >= 2  # it noticed the dead subscription and subscribed again
    engine.dispose()


# -- the app as its own process ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_backend_starts_and_serves_with_a_redis_that_does_not_answer(tmp_path, black_hole):
    """`reflex run --backend-only` (production mode, its own process and port) with REDIS_URL at the
    black hole: /ping and /api/health answer, and a usage report is charged at once."""
    from .browser import reflex_environment

    reflex_environment()
    database_url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade(database_url)
    engine = make_engine(database_url)
    org = Org(engine, Ledger(engine, grace_limit=GRACE), roles=("owner",))
    org.post("purchase", "20")
    port = _free_port()
    log_path = ROOT / "test-artifacts" / "redis-outage-backend.log"
    log_path.parent.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": black_hole.url,
        "REFLEX_WEB_WORKDIR": tempfile.mkdtemp(prefix="opb-web-"),
        "REFLEX_STATES_WORKDIR": tempfile.mkdtemp(prefix="opb-states-"),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("REFLEX_REDIS_URL", None)
    command = [sys.executable, "-m", "reflex", "run", "--env", "prod", "--backend-only"]
    command += ["--backend-host", "127.0.0.1", "--backend-port", str(port)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the backend exited ({proc.returncode}); see {log_path}"
            try:
                if httpx.get(base + "/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"the backend did not answer /ping within 60 s; see {log_path}"
            time.sleep(0.5)
        assert httpx.get(base + "/api/health", timeout=5).json()["status"] == "ok"
        for n in range(3):
            body = {"operation": "chat", "quantity": "25", "status": "completed", "idempotency_key": uuid.uuid4().hex}
            start = time.monotonic()
            r = httpx.post(base + "/api/credits/usage", json=body, headers=org.auth("owner"), timeout=10)
            took = time.monotonic() - start
            assert r.status_code == 200, r.text
            assert took < 1.0, f"usage report {n} took {took:.2f} s"
        assert org.account().balance == Decimal("20") - 3 * Decimal("0.025")  # chat: $0.025 for 25
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:  # today's backend, stuck on the black hole, ignores SIGTERM
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        engine.dispose()


def test_a_process_that_exits_right_after_posting_still_announces_it(relay):
    """The outbox is drained at exit (a CLI grant reaches the tabs), here through a real Redis."""
    import asyncio

    listening = EventBus(relay.url)
    script = "import sys; from orcapulse_billing.events import EventBus; EventBus(sys.argv[1]).publish({'organization_id': 77, 'n': 1})"

    async def scenario() -> dict:
        with listening.listen(77) as queue:
            await asyncio.sleep(0.5)  # the subscriber connects
            await asyncio.to_thread(subprocess.run, [sys.executable, "-c", script, relay.url], check=True, timeout=30)
            return await asyncio.wait_for(queue.get(), 10)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, scenario()).result(timeout=60) == {"organization_id": 77, "n": 1}


def test_reflex_refuses_to_start_at_once_when_its_state_redis_does_not_answer(tmp_path, black_hole):
    """REFLEX_REDIS_URL (Reflex's shared state) at the black hole: `reflex run` checks its Redis
    before it starts; with the timeouts rxconfig.py puts in the URL it stops with a clear line
    instead of hanging (a supervisor then retries it)."""
    from .browser import reflex_environment

    reflex_environment()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
        "REDIS_URL": black_hole.url,
        "REFLEX_REDIS_URL": black_hole.url,
        "REFLEX_WEB_WORKDIR": tempfile.mkdtemp(prefix="opb-web-"),
        "REFLEX_STATES_WORKDIR": tempfile.mkdtemp(prefix="opb-states-"),
    }
    command = [sys.executable, "-m", "reflex", "run", "--env", "prod", "--backend-only"]
    command += ["--backend-host", "127.0.0.1", "--backend-port", str(_free_port())]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        pytest.fail("reflex run hung on a Redis that does not answer")
    assert proc.returncode != 0 and b"Unable to connect to Redis" in output, output.decode(errors="replace")
