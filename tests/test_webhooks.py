"""Outbound webhooks through real parts: a real HTTP receiver on 127.0.0.1 that checks every signature
(with the `standardwebhooks` library and with an implementation of the spec written here), retries
with backoff while it answers 500 or is not listening at all, the same webhook-id on every attempt,
three days and then failed, several senders at once, and the events the payment flows emit in their
own transactions; on SQLite and PostgreSQL (the `engine` fixture)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import sqlalchemy as sa
import standardwebhooks

from orcapulse_billing import webhooks
from orcapulse_billing.db import writer
from orcapulse_billing.models import WebhookAttempt, WebhookMessage
from orcapulse_billing.webhooks import WebhookError, validate_url

from .apiutil import Org

# -- a receiver ----------------------------------------------------------------------------------


def spec_verify(secret: str, headers: dict[str, str], body: bytes, tolerance: int = 300) -> bool:
    """Standard Webhooks verification, from the spec: HMAC-SHA256 keyed with the base64 after
    `whsec_`, over "{webhook-id}.{webhook-timestamp}.{body}", any `v1,` signature of the header's
    space-separated list, and a timestamp within the tolerance."""
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest())
    for part in headers["webhook-signature"].split(" "):
        version, _, signature = part.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode(), expected):
            return True
    return False


class Receiver:
    """A real HTTP server on 127.0.0.1: records each request and answers the next code of `codes`
    (200 once they run out)."""

    def __init__(self, port: int = 0, codes: list[int] | None = None, delay: float = 0):
        self.requests: list[dict] = []
        self.codes = list(codes or [])
        self.delay = delay
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                code = receiver.codes.pop(0) if receiver.codes else 200
                time.sleep(receiver.delay)
                self.send_response(code)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/orcapulse"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- helpers ---------------------------------------------------------------------------------------


def make_org(engine, ledger) -> Org:
    return Org(engine, ledger, roles=("owner",))


def add(engine, org: Org, url: str, types=("credits.added",)):
    return webhooks.add_endpoint(engine, org.id, url, list(types), production=False, user_id=org.user_ids["owner"])


def emit(engine, org: Org, event_type="credits.added", data=None, key=None) -> int:
    with writer(engine).begin() as conn:
        return webhooks.emit(conn, org.id, event_type, data or {"amount": "50.0000"}, key=key or uuid.uuid4().hex)


def messages(engine, org: Org) -> list:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(WebhookMessage).where(WebhookMessage.organization_id == org.id).order_by(WebhookMessage.id)
        ).all()


def attempts(engine, message_id: int) -> list:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(WebhookAttempt).where(WebhookAttempt.message_id == message_id).order_by(WebhookAttempt.attempt)
        ).all()


def make_due(engine, org: Org) -> None:
    """Moves the clock for the organization's messages: whatever waits for a retry is due now."""
    with writer(engine).begin() as conn:
        conn.execute(
            sa.update(WebhookMessage)
            .where(WebhookMessage.organization_id == org.id, WebhookMessage.status == "pending")
            .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
        )


def deliver(engine, org: Org, **kw):
    """One delivery round for the organization's messages (other tests' stay where they are)."""
    kw.setdefault("production", False)
    return webhooks.deliver_due(engine, organization_id=org.id, **kw)


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


# -- URL rules ----------------------------------------------------------------------------------------


def resolver(table: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise WebhookError("invalid_url", f"the host {host!r} does not resolve")
        return table[host]

    return resolve


DNS = resolver(
    {
        "hooks.example.com": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
        "sneaky.example.com": ["93.184.215.14", "10.0.0.7"],  # one public address is not enough
        "internal.example.com": ["192.168.1.20"],
        "metadata.example.com": ["169.254.169.254"],
        "ula.example.com": ["fd12:3456:789a::1"],
        "loop.example.com": ["127.0.0.1"],
        "cgnat.example.com": ["100.64.1.1"],
    }
)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/orcapulse",
        "https://hooks.example.com:8443/orcapulse?team=1",
        "https://93.184.215.14/hook",
    ],
)
def test_public_https_urls_are_accepted_in_production(url):
    assert validate_url(url, production=True, resolve=DNS) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://hooks.example.com/orcapulse", "must be https"),
        ("https://sneaky.example.com/x", "10.0.0.7"),
        ("https://internal.example.com/x", "192.168.1.20"),
        ("https://metadata.example.com/x", "169.254.169.254"),
        ("https://ula.example.com/x", "fd12:3456:789a::1"),
        ("https://loop.example.com/x", "loopback"),
        ("https://cgnat.example.com/x", "not a public address"),
        ("https://127.0.0.1/x", "loopback"),
        ("https://localhost/x", "loopback"),
        ("https://[::1]/x", "loopback"),
        ("https://[::ffff:10.1.2.3]/x", "private"),
        ("https://10.1.2.3/x", "private"),
        ("https://0.0.0.0/x", "private"),
        ("https://user:pw@hooks.example.com/x", "user name or password"),
        ("https://nowhere.example.com/x", "does not resolve"),
        ("ftp://hooks.example.com/x", "https"),
        ("https:///x", "no host"),
        ("https://hooks.example.com:99999/x", "not a valid URL"),
        ("https://hooks.example.com/a b", "spaces"),
    ],
)
def test_refused_urls_in_production(url, why):
    with pytest.raises(WebhookError) as refused:
        validate_url(url, production=True, resolve=DNS)
    assert refused.value.code == "invalid_url"
    assert why in refused.value.message


def test_outside_production_http_and_loopback_are_allowed_but_private_addresses_never():
    assert validate_url("http://127.0.0.1:9999/hook", production=False, resolve=DNS)
    assert validate_url("http://localhost:9999/hook", production=False, resolve=DNS)
    assert validate_url("http://hooks.example.com/hook", production=False, resolve=DNS)
    for url in ("http://10.0.0.1/x", "http://internal.example.com/x", "http://[fe80::1]/x"):
        with pytest.raises(WebhookError):
            validate_url(url, production=False, resolve=DNS)


def test_unknown_event_types_and_bad_urls_write_nothing(engine, ledger):
    org = make_org(engine, ledger)
    with pytest.raises(WebhookError, match="unknown event types"):
        add(engine, org, "http://127.0.0.1:9/x", ["credits.added", "credits.stolen"])
    with pytest.raises(WebhookError, match="at least one"):
        add(engine, org, "http://127.0.0.1:9/x", [])
    with pytest.raises(WebhookError):
        add(engine, org, "http://10.0.0.1/x")
    with engine.connect() as conn:
        assert webhooks.list_endpoints(conn, org.id) == []


# -- signing and delivery ------------------------------------------------------------------------------


def test_a_delivered_event_verifies_with_the_standard_webhooks_library(engine, ledger, receiver):
    org = make_org(engine, ledger)
    endpoint, secret = add(engine, org, receiver.url, ["credits.added", "balance.low"])
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) >= 24
    with engine.connect() as conn:
        assert webhooks.list_endpoints(conn, org.id)[0].secret_hint == secret[:10] + "..."

    assert emit(engine, org, "credits.added", {"amount": "50.0000", "balance": "55.0000"}, key="purchase:1") == 1
    assert emit(engine, org, "credits.refunded", key="refund:1") == 0  # not subscribed
    run = deliver(engine, org)
    assert (run.delivered, run.retrying, run.failed) == (1, 0, 0)

    [request] = receiver.requests
    headers, body = request["headers"], request["body"]
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"].startswith("msg_")
    assert spec_verify(secret, headers, body)
    payload = standardwebhooks.Webhook(secret).verify(body, headers)  # raises when it does not verify
    assert payload["type"] == "credits.added"
    assert payload["id"] == headers["webhook-id"]
    assert payload["data"] == {"amount": "50.0000", "balance": "55.0000"}
    # a tampered body or another secret does not verify
    assert not spec_verify(secret, headers, body.replace(b"50.0000", b"500.0000"))
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(webhooks.new_secret()).verify(body, headers)

    [message] = messages(engine, org)
    assert (message.status, message.attempts, message.last_status_code) == ("delivered", 1, 200)
    assert [a.status_code for a in attempts(engine, message.id)] == [200]
    assert deliver(engine, org).delivered == 0  # nothing more to send


def test_the_same_event_emitted_twice_is_one_message(engine, ledger, receiver):
    org = make_org(engine, ledger)
    add(engine, org, receiver.url)
    assert emit(engine, org, key="purchase:7") == 1
    assert emit(engine, org, key="purchase:7") == 0
    assert len(messages(engine, org)) == 1


def test_a_rolled_back_change_sends_nothing(engine, ledger, receiver):
    org = make_org(engine, ledger)
    add(engine, org, receiver.url)
    with pytest.raises(RuntimeError), writer(engine).begin() as conn:
        webhooks.emit(conn, org.id, "credits.added", {"amount": "1.0000"}, key="doomed")
        raise RuntimeError("the change failed")
    assert messages(engine, org) == []


def test_5xx_answers_are_retried_with_backoff_and_the_same_webhook_id(engine, ledger):
    receiver = Receiver(codes=[500, 503, 502])
    try:
        org = make_org(engine, ledger)
        _, secret = add(engine, org, receiver.url)
        emit(engine, org, key="purchase:retry")
        waits = []
        for expected_attempt in (1, 2, 3):
            started = datetime.now(UTC)
            run = deliver(engine, org)
            assert run.retrying == 1
            [message] = messages(engine, org)
            assert message.attempts == expected_attempt and message.status == "pending"
            wait = as_utc(message.next_attempt_at) - started
            waits.append(wait)
            assert (
                webhooks.backoff(expected_attempt) <= wait <= webhooks.backoff(expected_attempt) + timedelta(seconds=5)
            )
            assert deliver(engine, org).retrying == 0  # not due yet: nothing sent before its time
            make_due(engine, org)
        assert waits[0] < waits[1] < waits[2]  # exponential: 30 s, 1 min, 2 min
        assert deliver(engine, org).delivered == 1

        [message] = messages(engine, org)
        assert (message.status, message.attempts) == ("delivered", 4)
        assert [(a.attempt, a.status_code) for a in attempts(engine, message.id)] == [
            (1, 500),
            (2, 503),
            (3, 502),
            (4, 200),
        ]
        assert len(receiver.requests) == 4
        assert {r["headers"]["webhook-id"] for r in receiver.requests} == {message.msg_id}
        assert {r["body"] for r in receiver.requests} == {message.payload.encode()}
        for request in receiver.requests:  # each attempt signed afresh, each verifiable
            standardwebhooks.Webhook(secret).verify(request["body"], request["headers"])
    finally:
        receiver.stop()


def test_finished_messages_are_deleted_with_their_attempts_after_the_retention(engine, ledger, receiver):
    org = make_org(engine, ledger)
    add(engine, org, receiver.url)
    emit(engine, org, key="purchase:old")
    emit(engine, org, key="purchase:new")
    assert deliver(engine, org).delivered == 2
    emit(engine, org, key="purchase:waiting")  # pending: never deleted, however old
    old, new, waiting = messages(engine, org)
    month_ago = datetime.now(UTC) - timedelta(days=31)
    with writer(engine).begin() as conn:
        conn.execute(sa.update(WebhookMessage).where(WebhookMessage.id == old.id).values(finished_at=month_ago))
        conn.execute(sa.update(WebhookMessage).where(WebhookMessage.id == waiting.id).values(created_at=month_ago))
    assert webhooks.prune_finished(engine, timedelta(days=30)) >= 1  # other tests' messages are all recent
    assert [(m.id, m.status) for m in messages(engine, org)] == [(new.id, "delivered"), (waiting.id, "pending")]
    assert attempts(engine, old.id) == [] and len(attempts(engine, new.id)) == 1
    with engine.connect() as conn:
        logged = webhooks.list_deliveries(conn, org.id)
    assert [d.msg_id for d in logged] == [waiting.msg_id, new.msg_id]  # the delivery log, newest first


def test_a_receiver_that_is_down_for_a_while_gets_the_events_when_it_is_back(engine, ledger):
    org = make_org(engine, ledger)
    port = free_port()
    _, secret = add(engine, org, f"http://127.0.0.1:{port}/hooks", ["credits.added", "balance.low"])
    emit(engine, org, "credits.added", key="purchase:down-1")
    emit(engine, org, "balance.low", key="low:down-2")
    for _ in range(3):  # nothing listens: connection refused, three rounds
        run = deliver(engine, org)
        assert run.retrying == 2
        make_due(engine, org)
    for message in messages(engine, org):
        log = attempts(engine, message.id)
        assert [a.status_code for a in log] == [None, None, None]
        assert all("Connect" in a.error for a in log)
        assert message.last_error and message.attempts == 3

    receiver = Receiver(port=port)  # back up
    try:
        assert deliver(engine, org).delivered == 2
        assert sorted(json.loads(r["body"])["type"] for r in receiver.requests) == ["balance.low", "credits.added"]
        for request in receiver.requests:
            assert spec_verify(secret, request["headers"], request["body"])
        assert {m.status for m in messages(engine, org)} == {"delivered"}
    finally:
        receiver.stop()


def test_a_receiver_slower_than_the_timeout_is_retried(engine, ledger):
    receiver = Receiver(delay=1.5)
    try:
        org = make_org(engine, ledger)
        add(engine, org, receiver.url)
        emit(engine, org, key="purchase:slow")
        with httpx.Client(timeout=0.3) as client:  # the job's client has webhooks.TIMEOUT_SECONDS
            assert deliver(engine, org, client=client).retrying == 1
        [message] = messages(engine, org)
        assert message.last_status_code is None and "Timeout" in message.last_error
        receiver.delay = 0
        make_due(engine, org)
        assert deliver(engine, org).delivered == 1
        assert len({r["headers"]["webhook-id"] for r in receiver.requests}) == 1
    finally:
        receiver.stop()


def test_after_three_days_of_failures_a_message_is_failed(engine, ledger):
    org = make_org(engine, ledger)
    add(engine, org, f"http://127.0.0.1:{free_port()}/hooks")
    emit(engine, org, key="purchase:never")
    t0 = datetime.now(UTC)
    deliver(engine, org, now=t0)
    # the schedule: each wait doubles up to 12 hours; the last attempt is at the end of the window
    now, rounds = t0, 1
    while True:
        [message] = messages(engine, org)
        if message.status != "pending":
            break
        now = as_utc(message.next_attempt_at)
        assert now - t0 <= webhooks.RETRY_WINDOW + timedelta(seconds=5)
        deliver(engine, org, now=now)
        rounds += 1
        assert rounds < 40
    assert message.status == "failed" and message.finished_at is not None
    assert now - as_utc(message.created_at) >= webhooks.RETRY_WINDOW
    assert message.attempts == rounds == len(attempts(engine, message.id))
    assert 10 <= rounds <= 25


def test_removing_an_endpoint_cancels_what_it_did_not_receive(engine, ledger):
    org = make_org(engine, ledger)
    endpoint, _ = add(engine, org, f"http://127.0.0.1:{free_port()}/hooks")
    emit(engine, org, key="purchase:cancel")
    deliver(engine, org)
    with writer(engine).begin() as conn:
        assert webhooks.remove_endpoint(conn, org.id, endpoint.id)
        assert not webhooks.remove_endpoint(conn, org.id, endpoint.id)
    [message] = messages(engine, org)
    assert message.status == "cancelled"
    with engine.connect() as conn:
        assert webhooks.list_endpoints(conn, org.id) == []
        assert [d.status for d in webhooks.list_deliveries(conn, org.id)] == ["cancelled"]
    assert emit(engine, org) == 0


def test_a_disabled_endpoint_gets_nothing_and_re_enabled_only_what_comes_next(engine, ledger, receiver):
    """Disabling cancels what the endpoint had not received (queued, or waiting for a retry); events
    while it is off are not queued for it (the organization's other endpoints still get them); on
    again, it gets the events from then on, never the cancelled ones."""
    org, other_org = make_org(engine, ledger), make_org(engine, ledger)
    endpoint, secret = add(engine, org, receiver.url)
    down = Receiver(codes=[500] * 50)  # the organization's other endpoint
    try:
        add(engine, org, down.url)
        receiver.codes = [500]
        emit(engine, org, key="retried")
        assert deliver(engine, org).retrying == 2  # both wait for a retry
        emit(engine, org, key="queued")
        with writer(engine).begin() as conn:
            assert webhooks.set_endpoint_enabled(conn, other_org.id, endpoint.id, False) is None  # not theirs
            off = webhooks.set_endpoint_enabled(conn, org.id, endpoint.id, False)
            assert off is not None and not off.enabled
            again = webhooks.set_endpoint_enabled(conn, org.id, endpoint.id, False)  # no change, no error
            assert again is not None and not again.enabled
        mine = [m for m in messages(engine, org) if m.endpoint_id == endpoint.id]
        assert [(m.status, m.last_error) for m in mine] == [("cancelled", "endpoint disabled")] * 2
        assert emit(engine, org, key="while-off") == 1  # the other endpoint's only
        with pytest.raises(WebhookError) as refused:
            webhooks.send_test_event(engine, org.id, endpoint.id)
        assert refused.value.code == "endpoint_disabled"
        make_due(engine, org)
        deliver(engine, org)
        assert len(receiver.requests) == 1  # the first attempt, before it was disabled

        with writer(engine).begin() as conn:
            assert webhooks.set_endpoint_enabled(conn, org.id, endpoint.id, True).enabled
        emit(engine, org, key="after")
        make_due(engine, org)
        deliver(engine, org)
        assert len(receiver.requests) == 2
        payload = standardwebhooks.Webhook(secret).verify(receiver.requests[1]["body"], receiver.requests[1]["headers"])
        assert payload["id"] == webhooks.message_id(org.id, "credits.added:after")
        mine = [m for m in messages(engine, org) if m.endpoint_id == endpoint.id]
        assert [m.status for m in mine] == ["cancelled", "cancelled", "delivered"]
    finally:
        down.stop()


def test_a_test_event_goes_to_that_endpoint_only(engine, ledger, receiver):
    org = make_org(engine, ledger)
    first, secret = add(engine, org, receiver.url)
    add(engine, org, receiver.url + "/second")
    msg_id = webhooks.send_test_event(engine, org.id, first.id, "owner@example.test")
    assert deliver(engine, org).delivered == 1
    [request] = receiver.requests
    assert request["headers"]["webhook-id"] == msg_id
    assert standardwebhooks.Webhook(secret).verify(request["body"], request["headers"])["type"] == "webhook.test"
    with pytest.raises(WebhookError):
        webhooks.send_test_event(engine, org.id + 10_000, first.id)


def test_several_senders_at_once_send_each_message_once(engine, ledger, receiver):
    org = make_org(engine, ledger)
    add(engine, org, receiver.url)
    for i in range(30):
        emit(engine, org, key=f"purchase:many-{i}")
    start = threading.Barrier(4)
    errors = []

    def sender():
        start.wait(timeout=10)
        try:
            while deliver(engine, org, limit=5).delivered:
                pass
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    ids = [r["headers"]["webhook-id"] for r in receiver.requests]
    assert len(ids) == len(set(ids)) == 30
    assert {(m.status, m.attempts) for m in messages(engine, org)} == {("delivered", 1)}


def test_an_endpoint_whose_host_now_resolves_to_a_private_address_is_not_called(engine, ledger):
    org = make_org(engine, ledger)
    webhooks.add_endpoint(
        engine, org.id, "https://rebind.example.com/x", ["credits.added"], production=True, resolve=DNS_PUBLIC
    )
    emit(engine, org, key="purchase:rebind")
    sent = []

    def transport(request):  # pragma: no cover - must not be reached
        sent.append(request)
        return httpx.Response(200)

    with httpx.Client(transport=httpx.MockTransport(transport)) as client:
        run = deliver(engine, org, production=True, client=client, resolve=DNS_PRIVATE)
    assert run.retrying == 1 and sent == []
    [message] = messages(engine, org)
    assert "10.0.0.5" in message.last_error
    # resolving publicly again, it is sent
    with httpx.Client(transport=httpx.MockTransport(transport)) as client:
        make_due(engine, org)
        assert deliver(engine, org, production=True, client=client, resolve=DNS_PUBLIC).delivered == 1
    assert len(sent) == 1


def DNS_PUBLIC(host, port):  # noqa: N802
    return ["93.184.215.14"]


def DNS_PRIVATE(host, port):  # noqa: N802
    return ["10.0.0.5"]


# -- events from the payment flows -------------------------------------------------------------------


def _open_purchase(engine, org: Org, amount_units: int = 500_000, bonus: int = 0) -> int:
    with engine.begin() as conn:
        return conn.execute(
            sa.text(
                "INSERT INTO checkout_session (organization_id, user_id, provider, provider_id, mode, package_id,"
                " amount, bonus, currency, status, refunded, created_at) VALUES (:o, :u, 'stripe', :p, 'payment',"
                " 'pkg_50', :a, :b, 'usd', 'open', 0, CURRENT_TIMESTAMP) RETURNING id"
            ),
            {"o": org.id, "u": org.user_ids["owner"], "p": f"cs_{uuid.uuid4().hex}", "a": amount_units, "b": bonus},
        ).scalar_one()


def test_completed_top_ups_and_refunds_are_sent(engine, ledger, receiver):
    from orcapulse_billing.payments import takebacks
    from orcapulse_billing.payments.flow import credit_checkout

    org = make_org(engine, ledger)
    _, secret = add(engine, org, receiver.url, ["credits.added", "credits.refunded"])
    purchase = _open_purchase(engine, org, 2_000_000, 100_000)  # $200 with a $10 bonus
    for _ in range(2):  # a duplicate completion credits nothing and sends nothing more
        with ledger.transaction() as conn:
            row = conn.execute(sa.text("SELECT * FROM checkout_session WHERE id = :i"), {"i": purchase}).one()
            credit_checkout(ledger, conn, row, provider_reference="pi_wh", metadata={"feature": "checkout"})
    # a completion that rolls back sends nothing
    doomed = _open_purchase(engine, org)
    with pytest.raises(RuntimeError), ledger.transaction() as conn:
        row = conn.execute(sa.text("SELECT * FROM checkout_session WHERE id = :i"), {"i": doomed}).one()
        credit_checkout(ledger, conn, row, provider_reference="pi_doomed", metadata={})
        raise RuntimeError("died before the commit")
    with ledger.transaction() as conn:
        row = conn.execute(sa.text("SELECT * FROM checkout_session WHERE id = :i"), {"i": purchase}).one()
        takebacks.refund_to(ledger, conn, row, 5_000, key="re_wh", metadata={})  # $50 back
    assert deliver(engine, org).delivered == 2
    bodies = [standardwebhooks.Webhook(secret).verify(r["body"], r["headers"]) for r in receiver.requests]
    added, refunded = sorted(bodies, key=lambda b: b["type"])
    assert added["type"] == "credits.added"
    assert added["data"] | {"ledger_entry_ids": None} == {
        "organization_id": org.id,
        "purchase_id": purchase,
        "provider": "stripe",
        "provider_reference": "pi_wh",
        "auto_recharge": False,
        "amount": "200.0000",
        "bonus": "10.0000",
        "credits": "210.0000",
        "balance": "210.0000",
        "ledger_entry_ids": None,
    }
    assert refunded["type"] == "credits.refunded"
    assert refunded["data"]["amount"] == "50.0000"
    assert refunded["data"]["bonus"] == "2.5000"
    assert refunded["data"]["credits"] == "52.5000"
    assert Decimal(refunded["data"]["balance"]) == Decimal("157.5000")


def test_a_low_balance_crossing_is_sent_once(engine, receiver):
    from orcapulse_billing.config import get_settings
    from orcapulse_billing.ledger import Ledger
    from orcapulse_billing.services import low_balance_listener

    ledger = Ledger(engine, grace_limit=Decimal(5))
    listener = low_balance_listener(engine)
    ledger.add_listener(listener)  # as the app's ledger (services.py)
    org = make_org(engine, ledger)
    _, secret = add(engine, org, receiver.url, ["balance.low"])
    threshold = get_settings().low_balance_threshold
    org.post("bonus", str(threshold + 1))
    crossing = org.post("usage", "-2")
    listener([crossing])  # heard twice (another worker): still one message
    org.post("usage", "-0.5")  # staying below sends nothing
    assert deliver(engine, org).delivered == 1
    [request] = receiver.requests
    payload = standardwebhooks.Webhook(secret).verify(request["body"], request["headers"])
    assert payload["type"] == "balance.low"
    assert payload["data"] == {
        "organization_id": org.id,
        "balance": f"{threshold - 1:.4f}",
        "threshold": f"{threshold:.4f}",
        "ledger_entry_id": crossing.id,
    }
