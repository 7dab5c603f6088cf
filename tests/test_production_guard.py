"""Production takes real money only: without real provider keys and webhook secrets nothing starts (one
line, no traceback, no sandbox), test-mode events are refused after their signature is checked, Lemon
Squeezy checkouts are never in test mode, and the sandboxes' webhook secrets are made per installation
(and per test session), never committed.

The webhook tests serve the real API (`create_api_app`) in a process of its own with production
settings, on the test session's database and sandboxes, over real HTTP with real signatures."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from orcapulse_billing import config
from orcapulse_billing.sandbox.stripe_checkout import sign

from .apiutil import Org
from .sandboxes import ROOT, free_port
from .test_lemonsqueezy import _order_event, _sign
from .test_payments import SECRET, _entries, _event, _session_object

PROVIDER_VARS = (
    "STRIPE_SECRET_KEY",
    "STRIPE_PUBLISHABLE_KEY",
    "STRIPE_API_BASE",
    "STRIPE_WEBHOOK_SECRETS",
    "LEMONSQUEEZY_API_KEY",
    "LEMONSQUEEZY_API_BASE",
    "LEMONSQUEEZY_STORE_ID",
    "LEMONSQUEEZY_VARIANT_ID",
    "LEMONSQUEEZY_WEBHOOK_SECRET",
    "LEMONSQUEEZY_JS_URL",
    "LEMONSQUEEZY_TEST_MODE",
    "PAYMENT_PROVIDERS",
    "ORCAPULSE_ENV",
    "APP_URL",
)
LIVE = {  # a complete production configuration (the values only have to look real: nothing is called)
    "STRIPE_SECRET_KEY": "sk_live_" + uuid.uuid4().hex,
    "STRIPE_WEBHOOK_SECRETS": "whsec_" + uuid.uuid4().hex,
    "LEMONSQUEEZY_API_KEY": uuid.uuid4().hex,
    "LEMONSQUEEZY_STORE_ID": "7",
    "LEMONSQUEEZY_VARIANT_ID": "8",
    "LEMONSQUEEZY_WEBHOOK_SECRET": uuid.uuid4().hex,
}


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROVIDER_VARS}
    return {**env, **extra}


def _settings(monkeypatch, **values: str):
    for name in PROVIDER_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return config.load_settings()


def _refused_in_one_line(result: subprocess.CompletedProcess, *names: str) -> str:
    """Exit status 2, one line on stderr naming each setting, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("─")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "production" in lines[0]
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


# -- start-up ------------------------------------------------------------------------------------


def test_production_needs_the_keys_and_secrets_of_every_enabled_provider(monkeypatch):
    settings = _settings(monkeypatch, ORCAPULSE_ENV="production", PAYMENT_PROVIDERS="stripe")
    assert settings.production
    problems = config.check_production(settings)
    assert "STRIPE_SECRET_KEY is not set" in problems and "STRIPE_WEBHOOK_SECRETS is not set" in problems
    assert not any("LEMONSQUEEZY" in p for p in problems)  # not enabled: not needed

    # the sandbox's configuration is not production's: test keys, an API base elsewhere
    sandbox = _settings(
        monkeypatch,
        ORCAPULSE_ENV="production",
        STRIPE_SECRET_KEY="sk_test_sandbox",
        STRIPE_API_BASE="http://127.0.0.1:12111",
        STRIPE_WEBHOOK_SECRETS="whsec_" + uuid.uuid4().hex,
        LEMONSQUEEZY_API_KEY="test_sandbox_key",
        LEMONSQUEEZY_STORE_ID="1",
        LEMONSQUEEZY_VARIANT_ID="1",
        LEMONSQUEEZY_WEBHOOK_SECRET=uuid.uuid4().hex,
        LEMONSQUEEZY_API_BASE="http://127.0.0.1:12112/v1",
        LEMONSQUEEZY_TEST_MODE="true",
    )
    problems = " | ".join(config.check_production(sandbox))
    for name in ("STRIPE_SECRET_KEY", "STRIPE_API_BASE", "LEMONSQUEEZY_TEST_MODE", "LEMONSQUEEZY_API_BASE"):
        assert name in problems, problems

    live = _settings(monkeypatch, ORCAPULSE_ENV="production", **LIVE)
    assert config.check_production(live) == []
    assert live.lemonsqueezy_test_mode is False  # production's default: live checkouts

    development = _settings(monkeypatch)
    assert not development.production and config.check_production(development) == []
    assert development.lemonsqueezy_test_mode is True  # as before outside production


def test_an_https_app_url_counts_as_production(monkeypatch):
    settings = _settings(monkeypatch, APP_URL="https://billing.example.com")
    assert settings.production
    assert "STRIPE_SECRET_KEY is not set" in config.check_production(settings)
    assert not _settings(monkeypatch, APP_URL="http://localhost:3000").production
    # explicit wins: a staging host on https with test keys says so
    assert not _settings(monkeypatch, APP_URL="https://staging.example.com", ORCAPULSE_ENV="development").production
    result = subprocess.run(
        [sys.executable, "-m", "orcapulse_billing.config"],
        cwd=ROOT,
        env=_clean_env(APP_URL="https://billing.example.com"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "APP_URL" in _refused_in_one_line(result, "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRETS")


def test_an_unknown_orcapulse_env_is_a_clear_error(monkeypatch):
    result = subprocess.run(
        [sys.executable, "-m", "orcapulse_billing.cli", "check-config"],
        cwd=ROOT,
        env=_clean_env(ORCAPULSE_ENV="prod"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "orcapulse-billing: error: ORCAPULSE_ENV must be development or production, not 'prod'"
    ]


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([sys.executable, "-c", "import orcapulse_billing.orcapulse_billing"], id="app-module"),
        pytest.param([sys.executable, "-m", "orcapulse_billing.cli", "check-config"], id="cli-check-config"),
        pytest.param([sys.executable, "-m", "orcapulse_billing.cli", "bill-phones"], id="cli-job"),
    ],
)
def test_the_app_and_the_jobs_refuse_to_start_in_production_without_stripe_keys(command, tmp_path):
    env = _clean_env(ORCAPULSE_ENV="production", PAYMENT_PROVIDERS="stripe", ORCAPULSE_DATA_DIR=str(tmp_path))
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'never.db'}"
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    _refused_in_one_line(result, "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRETS")
    assert not (tmp_path / "never.db").exists()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_run_command_refuses_production_without_keys_before_starting_anything(tmp_path):
    ports = {name: free_port() for name in ("FRONTEND_PORT", "BACKEND_PORT")}
    ports.update(LOCALSTRIPE_PORT=free_port(), STRIPE_SANDBOX_PORT=free_port(), LEMON_SANDBOX_PORT=free_port())
    data = tmp_path / "data"
    env = _clean_env(ORCAPULSE_ENV="production", ORCAPULSE_DATA_DIR=str(data), **{k: str(v) for k, v in ports.items()})
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(ROOT / "scripts/run")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("scripts/run kept running in production without keys")
    assert time.monotonic() - started < 30
    line = _refused_in_one_line(
        subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr),
        "STRIPE_SECRET_KEY",
        "STRIPE_WEBHOOK_SECRETS",
        "LEMONSQUEEZY_WEBHOOK_SECRET",
    )
    assert "sandbox" in line
    assert not data.exists()  # no database, no sandbox secrets, no sandbox logs
    assert not any(_listening(port) for port in ports.values())


# -- sandbox secrets: per installation, never committed -------------------------------------------


def _sandbox_secrets(data: Path) -> dict[str, str]:
    script = 'source scripts/setup.sh; setup_sandbox_secrets; echo "$SANDBOX_STRIPE_WEBHOOK_SECRET $SANDBOX_LEMONSQUEEZY_WEBHOOK_SECRET"'
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        env=_clean_env(ORCAPULSE_DATA_DIR=str(data)),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    stripe_secret, lemon_secret = result.stdout.split()
    return {"stripe": stripe_secret, "lemon": lemon_secret}


def test_sandbox_secrets_are_made_once_per_installation(tmp_path):
    first = _sandbox_secrets(tmp_path / "one")
    assert re.fullmatch(r"whsec_[0-9a-f]{48}", first["stripe"]) and re.fullmatch(r"[0-9a-f]{64}", first["lemon"])
    assert _sandbox_secrets(tmp_path / "one") == first  # reused on later runs
    assert _sandbox_secrets(tmp_path / "two") != first  # another installation, other secrets
    secrets_file = tmp_path / "one" / "sandbox-secrets.env"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600


OLD_COMMITTED_SECRETS = (  # split so that this file does not hold them either
    "whsec_" + "offline_sandbox",
    "ls_offline_sandbox" + "_secret",
    "whsec_" + "test_sandbox",
    "ls_signing_secret" + "_test",
    "whsec_" + "previous_rotated",
)
WHSEC_LITERAL = re.compile("whsec" + r"_[A-Za-z0-9]")


def test_no_sandbox_secret_is_committed():
    files = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    )
    found = []
    for name in filter(None, files):
        path = ROOT / name
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if any(secret in line for secret in OLD_COMMITTED_SECRETS) or WHSEC_LITERAL.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    assert found == []


# -- webhooks in production -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def production_api(app_database):
    """The real API with production settings, in a process of its own, on the session's database and
    sandboxes (their test keys are fine here: only the webhook routes' live-mode checks are exercised)."""
    port = free_port()
    log_path = ROOT / "test-artifacts" / "production-api.log"
    log_path.parent.mkdir(exist_ok=True)
    env = {**os.environ, "ORCAPULSE_ENV": "production", "PYTHONUNBUFFERED": "1"}
    env.pop("LEMONSQUEEZY_TEST_MODE", None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "orcapulse_billing.api:create_api_app"]
            + ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            if proc.poll() is not None:
                pytest.fail(f"the production API exited; see {log_path}")
            try:
                if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("the production API did not start")
        yield url, log_path
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _webhook_rows(org: Org, where: str, **params) -> int:
    with org.engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT COUNT(*) FROM webhook_event WHERE {where}"), params).scalar()


def _stripe_post(url: str, event: dict) -> httpx.Response:
    payload = json.dumps(event).encode()
    return httpx.post(
        url + "/api/credits/webhook",
        content=payload,
        headers={"Stripe-Signature": sign(payload, SECRET), "Content-Type": "application/json"},
        timeout=30,
    )


def test_a_test_mode_stripe_event_is_refused_in_production_and_a_live_one_credited(production_api, org):
    url, log_path = production_api
    created = httpx.post(
        url + "/api/credits/create-checkout", json={"package_id": "pkg_50"}, headers=org.auth("owner"), timeout=30
    )
    assert created.status_code == 200, created.text
    session = _session_object(
        None, org, created.json()["session_id"], payment_status="paid", status="complete", payment_intent="pi_live"
    )

    test_event = _event("checkout.session.completed", session)  # livemode: false, as the sandbox sends
    assert test_event["livemode"] is False
    refused = _stripe_post(url, test_event)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "test_mode_event", refused.text
    assert org.account().transaction_count == 0 and _entries(org) == []
    assert _webhook_rows(org, "event_id = :e", e=test_event["id"]) == 0  # recorded nowhere
    assert test_event["id"] in log_path.read_text()  # logged

    # the same event, unsigned or signed with another secret, is still a signature error first
    forged = httpx.post(
        url + "/api/credits/webhook",
        content=json.dumps(test_event).encode(),
        headers={"Stripe-Signature": sign(json.dumps(test_event).encode(), "whsec_" + uuid.uuid4().hex)},
        timeout=30,
    )
    assert forged.json()["error"]["code"] == "invalid_signature"

    live_event = {**_event("checkout.session.completed", session), "livemode": True}
    processed = _stripe_post(url, live_event)
    assert processed.status_code == 200 and processed.json()["outcome"] == "processed", processed.text
    assert [(e.type, e.amount) for e in _entries(org)] == [("purchase", 500_000)]


def _lemon_post(url: str, event: dict, secret: str) -> httpx.Response:
    payload = json.dumps(event).encode()
    headers = {"X-Signature": _sign(payload, secret), "X-Event-Name": event["meta"]["event_name"]}
    return httpx.post(url + "/api/credits/lemonsqueezy/webhook", content=payload, headers=headers, timeout=30)


def test_a_test_mode_lemon_squeezy_order_is_refused_in_production(production_api, org, lemon_sandbox):
    url, log_path = production_api
    created = httpx.post(
        url + "/api/credits/create-checkout",
        json={"provider": "lemonsqueezy", "package_id": "pkg_50"},
        headers=org.auth("owner"),
        timeout=30,
    )
    assert created.status_code == 200, created.text
    request = next(r for r in reversed(lemon_sandbox.requests()) if r["path"] == "/v1/checkouts")
    assert request["body"]["data"]["attributes"]["test_mode"] is False  # never a test checkout in production

    order_id = str(uuid.uuid4().int % 10**9)
    body = _order_event(lemon_sandbox, created.json()["session_id"], org, order_id=order_id)
    assert body["meta"]["test_mode"] is True
    # meta.test_mode, or the order's own test_mode attribute
    flagged_order = {**body["data"], "attributes": {**body["data"]["attributes"], "test_mode": True}}
    for event in (body, {**body, "meta": {**body["meta"], "test_mode": False}, "data": flagged_order}):
        refused = _lemon_post(url, event, lemon_sandbox.webhook_secret)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "test_mode_event", refused.text
    assert org.account().transaction_count == 0
    assert _webhook_rows(org, "event_id LIKE :e", e=f"%{order_id}%") == 0
    assert order_id in log_path.read_text()

    processed = _lemon_post(url, {**body, "meta": {**body["meta"], "test_mode": False}}, lemon_sandbox.webhook_secret)
    assert processed.status_code == 200 and processed.json()["outcome"] == "processed", processed.text
    assert org.account().transaction_count == 1
