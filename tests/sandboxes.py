"""Starts the offline payment sandboxes as real processes on loopback for the tests."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]

# The sandboxes' webhook signing secrets: made fresh for each test session, never committed.
STRIPE_WEBHOOK_SECRET = "whsec_" + secrets.token_hex(24)
STRIPE_PREVIOUS_WEBHOOK_SECRET = "whsec_" + secrets.token_hex(24)  # also configured, as during a rotation
LEMON_WEBHOOK_SECRET = secrets.token_hex(32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LOGS = ROOT / "test-artifacts"


def _log(name: str):
    """test-artifacts/NAME.log; scripts/test runs two pytest processes, each with sandboxes of its own,
    and names them apart with PYTEST_PART."""
    LOGS.mkdir(exist_ok=True)
    part = os.environ.get("PYTEST_PART")
    return open(LOGS / (f"{name}-{part}.log" if part else f"{name}.log"), "w")


def _wait(url: str, proc: subprocess.Popen, what: str) -> None:
    for _ in range(100):
        if proc.poll() is not None:
            pytest.fail(f"{what} exited; see test-artifacts/*.log")
        try:
            httpx.get(url, timeout=1, auth=("sk_test_sandbox", ""))
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    pytest.fail(f"{what} did not start")


@dataclass
class StripeSandbox:
    api_base: str
    localstripe: str
    webhook_secret: str
    procs: list = field(default_factory=list)

    def configure_webhook(self, url: str) -> None:
        httpx.post(
            self.api_base + "/_config/webhook", json={"url": url, "secret": self.webhook_secret}
        ).raise_for_status()

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=10)


def start_stripe_sandbox() -> StripeSandbox:
    python = os.environ.get("LOCALSTRIPE_PYTHON") or str(ROOT / ".tools/localstripe-venv/bin/python")
    if not Path(python).exists():
        pytest.fail("localstripe is needed for the payment tests (scripts/test installs it into .tools/)")
    ls_port, sb_port = free_port(), free_port()
    ls_url, sb_url = f"http://127.0.0.1:{ls_port}", f"http://127.0.0.1:{sb_port}"
    ls = subprocess.Popen(
        [python, str(ROOT / "sandbox/localstripe_server.py"), "--port", str(ls_port)],
        stdout=subprocess.DEVNULL,
        stderr=_log("localstripe"),
    )
    _wait(ls_url + "/v1/customers", ls, "localstripe")
    sb = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orcapulse_billing.sandbox.stripe_checkout",
            "--port",
            str(sb_port),
            "--localstripe",
            ls_url,
            "--public-url",
            sb_url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=_log("stripe-sandbox"),
        cwd=ROOT,
    )
    _wait(sb_url + "/v1/customers", sb, "the Stripe Checkout stand-in")
    return StripeSandbox(sb_url, ls_url, STRIPE_WEBHOOK_SECRET, [ls, sb])


@dataclass
class LemonSandbox:
    url: str
    webhook_secret: str
    proc: subprocess.Popen

    @property
    def api_base(self) -> str:
        return self.url + "/v1"

    def configure(self, **settings) -> None:
        httpx.post(self.url + "/_config", json=settings).raise_for_status()

    def requests(self) -> list[dict]:
        return httpx.get(self.url + "/_config/requests").json()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def start_lemon_sandbox() -> LemonSandbox:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orcapulse_billing.sandbox.lemonsqueezy",
            "--port",
            str(port),
            "--public-url",
            url,
            "--api-key",
            "test_sandbox_key",
        ],
        stdout=subprocess.DEVNULL,
        stderr=_log("lemonsqueezy-sandbox"),
        cwd=ROOT,
    )
    _wait(url + "/js/lemon.js", proc, "the Lemon Squeezy stand-in")
    return LemonSandbox(url, LEMON_WEBHOOK_SECRET, proc)
