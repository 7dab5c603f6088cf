"""Who may call, from where, with what: the app's origins for REST CORS, the Reflex socket and
signed-in writes; rate limits shared through Redis and forgotten in memory; the client's address
behind proxies; the body size limit; signatures of any shape. Through the running app (real HTTP, a
real websocket handshake), real Redis and real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid

import httpx
import pytest
import sqlalchemy as sa
import websocket

from orcapulse_billing.config import get_settings, load_settings
from orcapulse_billing.ratelimit import RateLimiter

from .apiutil import PASSWORD, Org

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
EVIL = "https://evil.example"
TWO_MIB = 2 * 1024 * 1024
AUTO_RECHARGE = "/api/credits/auto-recharge"


def _signed_in(app, org: Org, role: str = "owner") -> httpx.Client:
    client = httpx.Client(base_url=app.backend_url, timeout=30)
    r = client.post("/api/auth/login", json={"email": org.emails[role], "password": PASSWORD})
    assert r.status_code == 200, r.text
    return client


@pytest.fixture
def settings_env(monkeypatch):
    """Environment changes read by the running app (its settings are read per request)."""
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


def _set(settings_env, **values: str) -> None:
    for name, value in values.items():
        settings_env.setenv(name, value)
    get_settings.cache_clear()


# -- origins -------------------------------------------------------------------------------------


def test_a_cross_origin_write_with_the_session_cookie_is_refused_and_writes_nothing(app, org: Org):
    client = _signed_in(app, org)
    before = client.get(AUTO_RECHARGE).json()
    change = {"enabled": False, "threshold": "42.00", "amount": "30.00"}
    for headers in (
        {"Origin": EVIL},
        {"Origin": "null", "Referer": EVIL + "/page"},
        {"Referer": EVIL + "/page"},
        {"Origin": app.base_url.replace("127.0.0.1", "127.0.0.2")},  # same site, another origin
        {},  # a signed-in browser always says where it comes from
    ):
        r = client.put(AUTO_RECHARGE, json=change, headers=headers)
        assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin", (headers, r.text)
    r = client.post("/api/auth/logout", headers={"Origin": EVIL})
    assert r.status_code == 403
    assert client.get(AUTO_RECHARGE).json() == before  # nothing changed, and the session still works

    # the page's own origin (APP_URL), its Referer, and the backend's own (dev mode: another port)
    for i, headers in enumerate(
        ({"Origin": app.base_url}, {"Referer": app.base_url + "/billing"}, {"Origin": app.backend_url})
    ):
        r = client.put(AUTO_RECHARGE, json={**change, "threshold": f"{40 + i}.00"}, headers=headers)
        assert r.status_code == 200 and r.json()["threshold"] == f"{40 + i}.0000", (headers, r.text)

    # an API key carries no ambient authority: it needs no Origin, and another one changes nothing
    key = httpx.put(app.backend_url + AUTO_RECHARGE, json=change, headers=org.auth("owner"), timeout=30)
    assert key.status_code == 200 and key.json()["threshold"] == "42.0000"
    key = httpx.put(
        app.backend_url + AUTO_RECHARGE, json=change, headers={**org.auth("owner"), "Origin": EVIL}, timeout=30
    )
    assert key.status_code == 200
    r = client.post("/api/auth/logout", headers={"Origin": app.base_url})
    assert r.status_code == 204 and client.get(AUTO_RECHARGE).status_code == 401


def test_cors_answers_only_the_apps_origins(app):
    from reflex.config import get_config

    allowed = list(get_config().cors_allowed_origins)
    assert allowed and "*" not in allowed
    url = app.backend_url + AUTO_RECHARGE
    preflight = {"Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "content-type"}
    refused = httpx.options(url, headers={"Origin": EVIL, **preflight})
    assert "access-control-allow-origin" not in refused.headers
    simple = httpx.get(url, headers={"Origin": EVIL})
    assert "access-control-allow-origin" not in simple.headers
    ok = httpx.options(url, headers={"Origin": allowed[0], **preflight})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == allowed[0]
    assert ok.headers["access-control-allow-credentials"] == "true"


def test_the_socket_refuses_a_handshake_from_another_origin(app):
    url = app.backend_url.replace("http://", "ws://") + "/_event/?EIO=4&transport=websocket"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url, origin=EVIL, timeout=15)
    assert refused.value.status_code == 403  # the websocket is never accepted
    for origin in (app.base_url, app.backend_url):  # the page's origin; the backend's own
        ws = websocket.create_connection(url, origin=origin, timeout=15)
        try:
            assert ws.recv().startswith("0{")  # engine.io's open packet: the handshake was accepted
        finally:
            ws.close()
    # the same over HTTP long-polling: the origin is refused before anything else is looked at
    polling = httpx.get(app.backend_url + "/_event/?EIO=4&transport=polling", headers={"Origin": EVIL})
    assert polling.status_code == 400 and "not an accepted origin" in polling.text


def test_cookie_secure_defaults_on_for_an_https_app_url(app, org: Org, settings_env):
    _set(settings_env, APP_URL="https://billing.example.com")
    settings_env.delenv("COOKIE_SECURE", raising=False)
    get_settings.cache_clear()
    assert get_settings().cookie_secure
    r = httpx.post(
        app.backend_url + "/api/auth/login", json={"email": org.emails["member"], "password": PASSWORD}, timeout=30
    )
    assert r.status_code == 200 and "secure" in r.headers["set-cookie"].lower()
    _set(settings_env, COOKIE_SECURE="false")
    assert not get_settings().cookie_secure
    settings_env.setenv("APP_URL", "http://billing.example.com")
    settings_env.delenv("COOKIE_SECURE")
    assert not load_settings().cookie_secure


# -- rate limits ---------------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys, time
    from orcapulse_billing.ratelimit import RateLimiter

    redis_url, name, start, hits = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    limiter = RateLimiter(5, 2, redis_url=redis_url, name=name)
    time.sleep(max(0.0, start - time.time()))
    print(sum(limiter.allow("one@example.test") for _ in range(hits)))
    """
)


@pytest.mark.redis
def test_the_limit_holds_across_two_workers_sharing_redis():
    """Two worker processes, 5 per 2 s: the first spends its hits just before a 2-second boundary,
    the second just after. A fixed window would let both through; the shared moving window lets 5."""
    name = f"test-{uuid.uuid4().hex}"
    boundary = (int(time.time()) // 2 + 3) * 2  # an even second, at least 4 s away
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, REDIS_URL, name, str(start), "8"], stdout=subprocess.PIPE, text=True
        )
        for start in (boundary - 0.3, boundary + 0.3)
    ]
    allowed = [int(w.communicate(timeout=60)[0]) for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    assert allowed == [5, 0]
    # and at the same moment, in two processes at once: still 5 in all
    name = f"test-{uuid.uuid4().hex}"
    start = time.time() + 2
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, REDIS_URL, name, str(start), "8"], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    assert sum(int(w.communicate(timeout=60)[0]) for w in workers) == 5


def test_memory_limits_forget_keys_once_their_window_has_passed():
    limiter = RateLimiter(2, 1)
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]
    for i in range(500):
        limiter.allow(f"guess-{i}@example.test")
    assert limiter.keys_in_memory() == 501
    time.sleep(1.3)
    assert limiter.keys_in_memory() == 0
    assert limiter.allow("a")  # and a forgotten key starts afresh


# -- the client's address ------------------------------------------------------------------------


def _last_login_ip(engine, user_id: int) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT ip FROM auth_session WHERE user_id = :u ORDER BY id DESC LIMIT 1"), {"u": user_id}
        ).scalar()


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(app, org: Org, app_engine, settings_env):
    def login() -> str | None:
        r = httpx.post(
            app.backend_url + "/api/auth/login",
            json={"email": org.emails["admin"], "password": PASSWORD},
            headers={"X-Forwarded-For": "198.51.100.9, 203.0.113.7"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return _last_login_ip(app_engine, org.user_ids["admin"])

    assert login() == "127.0.0.1"  # the peer: no proxy is trusted by default
    _set(settings_env, TRUSTED_PROXIES="10.0.0.0/8")
    assert login() == "127.0.0.1"  # the peer is not one of them
    _set(settings_env, TRUSTED_PROXIES="127.0.0.1, 10.0.0.0/8")
    assert login() == "203.0.113.7"  # the address the trusted proxy heard from
    _set(settings_env, TRUSTED_PROXIES="127.0.0.0/8,203.0.113.0/24")
    assert login() == "198.51.100.9"  # a chain of trusted proxies: the first address that is not one


def test_client_address_walks_only_trusted_hops():
    import dataclasses
    import ipaddress

    from orcapulse_billing.trust import client_address

    settings = load_settings()
    trusting = dataclasses.replace(settings, trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))
    assert client_address("10.1.2.3", "198.51.100.9", trusting) == "198.51.100.9"
    assert client_address("192.0.2.1", "198.51.100.9", trusting) == "192.0.2.1"
    assert client_address("10.1.2.3", "evil, 10.0.0.5", trusting) == "10.0.0.5"  # garbage stops the walk
    assert client_address("10.1.2.3", "", trusting) == "10.1.2.3"
    assert client_address("10.1.2.3", "198.51.100.9", dataclasses.replace(settings, trusted_proxies=())) == "10.1.2.3"


# -- body size -----------------------------------------------------------------------------------


def _chunks(size: int, chunk: int = 64 * 1024):
    for _ in range(size // chunk):
        yield b" " * chunk


@pytest.mark.parametrize("path", ["/api/auth/login", "/api/credits/webhook", "/api/credits/lemonsqueezy/webhook"])
def test_a_body_over_the_limit_answers_413(app, path):
    url = app.backend_url + path
    headers = {"Content-Type": "application/json"}
    declared = httpx.post(url, content=b" " * TWO_MIB, headers=headers, timeout=60)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "payload_too_large", declared.text
    chunked = httpx.post(url, content=_chunks(TWO_MIB), headers=headers, timeout=60)
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "payload_too_large", chunked.text
    small = httpx.post(url, content=b"{}", headers=headers, timeout=60)
    assert small.status_code == 400  # under the limit, the route answers as before


# -- signatures ----------------------------------------------------------------------------------


def test_a_signature_of_any_shape_answers_400(app):
    """Header bytes outside ASCII (read as latin-1): the signature checks compare ASCII strings."""
    for path, header, value in (
        ("/api/credits/webhook", "Stripe-Signature", "t=1700000000,v1=" + "é" * 64),
        ("/api/credits/webhook", "Stripe-Signature", "ü"),
        ("/api/credits/lemonsqueezy/webhook", "X-Signature", "é" * 64),
        ("/api/credits/lemonsqueezy/webhook", "X-Signature", "ab" * 31 + "é1"),
    ):
        r = httpx.post(
            app.backend_url + path,
            content=b'{"meta": {}, "data": {}}',
            headers={"Content-Type": "application/json", header: value.encode("latin-1")},
            timeout=30,
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_signature", (header, value, r.text)
