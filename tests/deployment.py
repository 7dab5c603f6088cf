"""The scale-out deployment as real processes, for the tests and bench/live.py.

Reflex in production mode (`reflex run --env prod`: a built frontend served by the backend, granian
workers), on PostgreSQL (DATABASE_URL) and Redis (REDIS_URL for billing events and job locks,
REFLEX_REDIS_URL for Reflex's state manager), as the README's scale-out deployment describes.

Two shapes:
- `ports`: one worker process per port. The first serves the page (so every tab's socket is on it);
  the others are backend-only. A test then knows which worker handles which request: a webhook
  sent to the second worker's port is handled by another worker than the tabs'.
- `shared`: the README's command, GRANIAN_WORKERS workers behind one port; the kernel spreads
  connections, as a load balancer would.

The frontend is built in a web directory of its own (.tools/web-prod), so the development server
the other browser tests use (.web) is never rewritten under them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .sandboxes import free_port

ROOT = Path(__file__).resolve().parents[1]
WEB_DIR = ROOT / ".tools/web-prod"
LOGS = ROOT / "test-artifacts"


class DeploymentError(RuntimeError):
    pass


@dataclass
class Worker:
    port: int
    proc: subprocess.Popen
    serves_page: bool

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Deployment:
    workers: list[Worker]
    env: dict = field(repr=False)

    @property
    def page_url(self) -> str:
        return next(w for w in self.workers if w.serves_page).url

    def stop(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                os.killpg(worker.proc.pid, signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.proc.pid, signal.SIGKILL)
                worker.proc.wait(timeout=10)


def _wait_until_up(worker: Worker, timeout: float, log: Path) -> None:
    path = "/billing/" if worker.serves_page else "/ping"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise DeploymentError(f"a worker exited with status {worker.proc.returncode}; see {log}")
        try:
            if httpx.get(worker.url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise DeploymentError(f"a worker did not answer on {worker.url}{path} within {timeout:.0f} s; see {log}")


def start_deployment(
    database_url: str, redis_url: str | None, *, shape: str = "ports", workers: int = 3, timeout: float = 600
) -> Deployment:
    """Starts the workers and returns once every one answers (the first build takes a minute or two).

    Without `redis_url`: the embedded default (one worker; in-process events, Reflex's own state)."""
    if redis_url is None and workers != 1:
        raise ValueError("several workers share their state and events through Redis")
    from .browser import reflex_environment

    reflex_environment()
    LOGS.mkdir(exist_ok=True)
    WEB_DIR.parent.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REFLEX_WEB_WORKDIR": str(WEB_DIR),
        # Reflex clears its states folder on start; keep that away from the dev server's.
        "REFLEX_STATES_WORKDIR": tempfile.mkdtemp(prefix="opb-states-"),
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("REDIS_URL", "REFLEX_REDIS_URL"):  # events and Reflex's state manager
        if redis_url:
            env[name] = redis_url
        else:
            env.pop(name, None)
    reflex = [sys.executable, "-m", "reflex", "run", "--env", "prod", "--backend-host", "127.0.0.1"]

    def launch(index: int, args: list[str], granian_workers: int, serves_page: bool) -> tuple[Worker, Path]:
        port = free_port()
        log = LOGS / f"scale-out-worker-{index}.log"
        proc = subprocess.Popen(
            [*reflex, *args, "--backend-port", str(port)],
            cwd=ROOT,
            env={**env, "GRANIAN_WORKERS": str(granian_workers)},
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return Worker(port, proc, serves_page), log

    started: list[Worker] = []
    try:
        if shape == "shared":
            worker, log = launch(0, [], workers, True)
            started.append(worker)
            _wait_until_up(worker, timeout, log)
        elif shape == "ports":
            # The first builds the frontend; the backend-only ones compile nothing, so they start
            # together once it is up.
            first, log = launch(0, [], 1, True)
            started.append(first)
            _wait_until_up(first, timeout, log)
            rest = [launch(i, ["--backend-only"], 1, False) for i in range(1, workers)]
            started.extend(w for w, _ in rest)
            for worker, log in rest:
                _wait_until_up(worker, timeout, log)
        else:
            raise ValueError(f"unknown deployment shape {shape!r}")
    except BaseException:
        Deployment(started, env).stop()
        raise
    return Deployment(started, env)
