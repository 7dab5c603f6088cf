"""Money integrity where payment providers really fail (issue 14): a charge whose answer is lost or
whose process dies, refunds with their bonus, chargebacks, outcomes that change, and the bugs other
billing systems shipped. Real parts throughout: the Stripe sandbox (localstripe and our front door,
real processes), a fault proxy in front of it, the REST API, signed webhooks, SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import sqlalchemy as sa
import stripe

from orcapulse_billing.config import get_settings
from orcapulse_billing.ledger import check_invariants
from orcapulse_billing.sandbox.stripe_checkout import sign

from .apiutil import Org
from .faultproxy import FaultProxy
from .sandboxes import ROOT

PI_CREATE = ("POST", "/v1/payment_intents")
_APP: dict[str, str] = {}  # the running app's backend and page URLs (set by held_webhooks)


# -- helpers -----------------------------------------------------------------------------------


class _Sink(BaseHTTPRequestHandler):
    """Takes a webhook and answers 200 without acting on it (so the sandbox does not retry it later)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def held_webhooks(app, stripe_sandbox):
    """The sandbox's webhooks are taken and dropped during the test: each test delivers the events
    itself (from the sandbox's record of what it sent), in the order and as often as it wants.
    Restored for the other tests afterwards."""
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    stripe_sandbox.configure_webhook(f"http://127.0.0.1:{sink.server_address[1]}/held")
    _APP.update(url=app.backend_url, page=app.base_url)
    yield stripe_sandbox
    stripe_sandbox.configure_webhook(app.backend_url + "/api/credits/webhook")
    sink.shutdown()
    sink.server_close()


@pytest.fixture
def proxy(stripe_sandbox):
    fault = FaultProxy(stripe_sandbox.api_base)
    yield fault
    fault.close()


def _secret() -> str:
    return get_settings().stripe_webhook_secrets[-1]


def _deliver(client, event: dict):
    payload = json.dumps(event).encode()
    r = client.post(
        "/api/credits/webhook",
        content=payload,
        headers={"Stripe-Signature": sign(payload, _secret()), "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    return r.json()["outcome"]


def _event(kind: str, obj: dict, event_id: str | None = None) -> dict:
    return {
        "id": event_id or "evt_" + uuid.uuid4().hex,
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": obj},
    }


def _sent(sandbox, kind: str, **match) -> list[dict]:
    """Events the sandbox sent (Stripe's own objects), oldest first."""
    events = httpx.get(sandbox.api_base + "/_config/events").json()
    events = events.get("data", events) if isinstance(events, dict) else events
    return [e for e in events if e["type"] == kind and all(e["data"]["object"].get(k) == v for k, v in match.items())]


def _sdk(base: str) -> stripe.StripeClient:
    return stripe.StripeClient("sk_test_sandbox", base_addresses={"api": base}, max_network_retries=0)


def _purchases(org: Org, api_base: str | None = None):
    from orcapulse_billing.payments.stripe_gateway import StripeGateway
    from orcapulse_billing.payments.stripe_purchases import StripePurchases

    settings = get_settings()
    if api_base:
        settings = dataclasses.replace(settings, stripe_api_base=api_base)
    return StripePurchases(org.engine, org.ledger, StripeGateway(settings), settings)


def _card(org: Org, number: str = "4242424242424242") -> str:
    purchases = _purchases(org)
    customer = purchases.customer_for(org.id)
    sdk = purchases.gateway.client
    pm = sdk.v1.payment_methods.create(
        params={"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"}}
    )
    sdk.v1.payment_methods.attach(pm["id"], params={"customer": customer})
    purchases.save_card(org.id, purchases.gateway.card(pm["id"]))
    return pm["id"]


def _intents_for(sandbox, org: Org) -> list:
    found = _sdk(sandbox.api_base).v1.payment_intents.list(params={"limit": 100})
    intents = [pi.to_dict() for pi in found.auto_paging_iter()]
    return [pi for pi in intents if (pi.get("metadata") or {}).get("organization_id") == str(org.id)]


def _attempts(org: Org) -> list:
    with org.engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT status, payment_intent_id, idempotency_key, refunded FROM checkout_session "
                "WHERE organization_id = :o ORDER BY id"
            ),
            {"o": org.id},
        ).all()


def _balance(org: Org) -> Decimal:
    return org.account().balance


def _sound(org: Org) -> None:
    with org.engine.connect() as conn:
        assert check_invariants(conn, org.account_id) == []


def _reconcile(org: Org, **kw):
    from orcapulse_billing.payments.reconcile import Reconciler

    return Reconciler(_purchases(org), **kw).run()


def _principal(org: Org):
    from orcapulse_billing.auth import principal_for_api_key

    return principal_for_api_key(org.engine, org.keys["owner"])


def _choice(package: str = "pkg_50"):
    from orcapulse_billing.payments.flow import choose

    return choose(get_settings(), package)


# -- 1. charged, never credited ----------------------------------------------------------------


@pytest.fixture
def app_through_proxy(proxy):
    """The app's own Stripe calls go through the fault proxy for the test."""
    before = os.environ["STRIPE_API_BASE"]
    os.environ["STRIPE_API_BASE"] = proxy.url
    get_settings.cache_clear()
    yield proxy
    os.environ["STRIPE_API_BASE"] = before
    get_settings.cache_clear()


def test_a_lost_answer_says_payment_being_confirmed_and_the_retry_credits_once(
    held_webhooks, client, org, app_through_proxy
):
    proxy = app_through_proxy
    _card(org)
    # every attempt's answer is lost (the SDK retries twice with the same key): Stripe charged once
    proxy.add(*PI_CREATE, "drop_response", times=3)
    headers = {**org.auth("owner"), "Idempotency-Key": "lost-answer"}
    r = client.post("/api/credits/quick-purchase", json={"package_id": "pkg_50"}, headers=headers)
    assert r.status_code == 202, r.text
    assert r.json()["error"]["code"] == "payment_pending"
    assert "being confirmed" in r.json()["error"]["message"] and "nothing was charged" not in r.text
    assert [a.status for a in _attempts(org)] == ["unknown"] and _balance(org) == 0
    assert len(_intents_for(held_webhooks, org)) == 1  # it was charged
    # a second purchase cannot start while this one is unsettled
    other = client.post(
        "/api/credits/quick-purchase",
        json={"package_id": "pkg_200"},
        headers={**org.auth("owner"), "Idempotency-Key": "x"},
    )
    assert other.status_code == 409 and other.json()["error"]["code"] == "payment_in_progress"
    # the retry with the same key: the same PaymentIntent, credited once
    again = client.post("/api/credits/quick-purchase", json={"package_id": "pkg_50"}, headers=headers)
    assert again.status_code == 200, again.text
    assert _balance(org) == Decimal(50) and len(_intents_for(held_webhooks, org)) == 1
    # its webhook, arriving late, changes nothing
    (succeeded,) = _sent(held_webhooks, "payment_intent.succeeded", id=_attempts(org)[0].payment_intent_id)
    assert _deliver(client, succeeded) == "duplicate"
    assert _balance(org) == Decimal(50)
    _sound(org)


def test_the_webhook_settles_a_charge_whose_answer_was_lost(held_webhooks, client, org, proxy):
    _card(org)
    proxy.add(*PI_CREATE, "drop_response", times=3)
    from orcapulse_billing.payments.stripe_gateway import PaymentError

    with pytest.raises(PaymentError) as err:
        _purchases(org, proxy.url).quick_purchase(
            _principal(org), _choice("pkg_200"), payment_method_id=None, request_key="k", ip=None
        )
    assert err.value.code == "payment_pending" and _balance(org) == 0
    pi = _attempts(org)[0].payment_intent_id or _intents_for(held_webhooks, org)[0]["id"]
    (succeeded,) = _sent(held_webhooks, "payment_intent.succeeded", id=pi)
    assert _deliver(client, succeeded) == "processed"
    assert _deliver(client, succeeded) == "replay"
    assert _balance(org) == Decimal(204) and [a.status for a in _attempts(org)] == ["completed"]
    _sound(org)


PURCHASE_SCRIPT = """
import sys
from orcapulse_billing.auth import principal_for_api_key
from orcapulse_billing.config import get_settings
from orcapulse_billing.db import get_engine
from orcapulse_billing.payments.flow import choose
from orcapulse_billing.services import get_stripe_purchases
engine = get_engine()
print("ready", flush=True)
sys.stdin.readline()
get_stripe_purchases(engine).quick_purchase(
    principal_for_api_key(engine, sys.argv[1]), choose(get_settings(), "pkg_50"),
    payment_method_id=None, request_key=sys.argv[2], ip=None)
print("posted", flush=True)
"""


def _purchase_in_a_process_that_dies(org: Org, proxy: FaultProxy, action: str, key: str) -> None:
    env = {**os.environ, "STRIPE_API_BASE": proxy.url}
    proc = subprocess.Popen(
        [sys.executable, "-c", PURCHASE_SCRIPT, org.keys["owner"], key],
        env=env,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    proxy.add(*PI_CREATE, action, pid=proc.pid)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.wait(timeout=60) == -9  # SIGKILL: it never posted
    assert "posted" not in proc.stdout.read()


@pytest.mark.parametrize("run", ["job", "cli"])
def test_killed_between_charge_and_posting_reconcile_credits_every_paid_charge_once(
    held_webhooks, client, org, proxy, run
):
    _card(org)
    _purchase_in_a_process_that_dies(org, proxy, "kill_after_charge", "killed-1")
    assert [a.status for a in _attempts(org)] == ["charging"] and _balance(org) == 0
    assert [pi["status"] for pi in _intents_for(held_webhooks, org)] == ["succeeded"]
    if run == "cli":
        dry = subprocess.run(
            [sys.executable, "-m", "orcapulse_billing.cli", "reconcile", "--dry-run"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert dry.returncode == 0, dry.stderr
        assert "would credit" in dry.stdout and _balance(org) == 0
        for _ in range(2):
            done = subprocess.run(
                [sys.executable, "-m", "orcapulse_billing.cli", "reconcile"],
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
    else:
        first = _reconcile(org)
        assert [pi["id"] for pi in _intents_for(held_webhooks, org)] == [
            ref
            for ref in first.credited
            if ref.startswith("pi_") and ref in {a.payment_intent_id for a in _attempts(org)}
        ]
        _reconcile(org)
    assert _balance(org) == Decimal(50) and [a.status for a in _attempts(org)] == ["completed"]
    # the webhook and a retry of the same purchase, after the fact: still once
    (succeeded,) = _sent(held_webhooks, "payment_intent.succeeded", id=_attempts(org)[0].payment_intent_id)
    assert _deliver(client, succeeded) == "duplicate"
    retried = _purchases(org).quick_purchase(
        _principal(org), _choice("pkg_50"), payment_method_id=None, request_key="killed-1", ip=None
    )
    assert retried[0].replayed and _balance(org) == Decimal(50)
    assert len(_intents_for(held_webhooks, org)) == 1
    _sound(org)


def test_reconcile_credits_a_paid_checkout_whose_webhook_never_came_and_closes_an_expired_one(
    held_webhooks, client, org
):
    paid = client.post("/api/credits/create-checkout", json={"package_id": "pkg_200"}, headers=org.auth("owner"))
    expired = client.post("/api/credits/create-checkout", json={"package_id": "pkg_50"}, headers=org.auth("owner"))
    assert paid.status_code == expired.status_code == 200
    page = httpx.post(paid.json()["url"], data={"card": "4242 4242 4242 4242", "action": "pay"})
    assert page.status_code == 303  # paid on the hosted page; its webhooks went nowhere
    _sdk(held_webhooks.api_base).v1.checkout.sessions.expire(expired.json()["session_id"])
    assert _balance(org) == 0
    report = _reconcile(org)
    assert paid.json()["session_id"] in report.credited and expired.json()["session_id"] in report.failed
    assert _balance(org) == Decimal(204)
    again = _reconcile(org)
    assert paid.json()["session_id"] not in again.credited and _balance(org) == Decimal(204)
    assert sorted(a.status for a in _attempts(org)) == ["completed", "expired"]
    _sound(org)


def test_a_charge_for_another_amount_goes_to_an_operator_and_does_not_block_the_next_purchase(
    held_webhooks, client, org
):
    _card(org)
    _purchases(org).quick_purchase(_principal(org), _choice("pkg_50"), payment_method_id=None, request_key="a", ip=None)
    with org.engine.begin() as conn:  # our record says $50; what Stripe charged for this key says otherwise
        conn.execute(
            sa.text(
                "INSERT INTO checkout_session (organization_id, user_id, provider, provider_id, idempotency_key, mode, "
                "amount, bonus, currency, status, refunded, created_at) VALUES (:o, :u, 'stripe', 'attempt:m', :k, "
                "'quick', 2000000, 0, 'usd', 'unknown', 0, CURRENT_TIMESTAMP)"
            ),
            {"o": org.id, "u": org.user_ids["owner"], "k": f"quick-{org.id}-m"},
        )
    paid = {"id": "pi_other_amount", "object": "payment_intent", "amount": 5000, "currency": "usd"}
    paid["metadata"] = {"orcapulse_key": f"quick-{org.id}-m"}
    assert _deliver(client, _event("payment_intent.succeeded", paid)) == "needs_attention"
    assert _balance(org) == Decimal(50)
    assert [a.status for a in _attempts(org)] == ["completed", "needs_attention"]
    _purchases(org).quick_purchase(_principal(org), _choice("pkg_50"), payment_method_id=None, request_key="b", ip=None)
    assert _balance(org) == Decimal(100)  # the organization is not blocked by the unmatched one
    _sound(org)


def test_killed_before_the_charge_reached_stripe_nothing_is_credited_and_the_next_purchase_goes_through(
    held_webhooks, org, proxy
):
    _card(org)
    _purchase_in_a_process_that_dies(org, proxy, "kill_before_send", "never-sent")
    assert [a.status for a in _attempts(org)] == ["charging"] and _intents_for(held_webhooks, org) == []
    report = _reconcile(org, never_reached=timedelta(0))
    assert report.failed == [f"quick-{org.id}-never-sent"] and report.credited == []
    assert [a.status for a in _attempts(org)] == ["failed"] and _balance(org) == 0
    _purchases(org).quick_purchase(
        _principal(org), _choice("pkg_50"), payment_method_id=None, request_key="next", ip=None
    )
    assert _balance(org) == Decimal(50) and len(_intents_for(held_webhooks, org)) == 1
    _sound(org)


def test_duplicate_top_up_requests_charge_and_credit_once(held_webhooks, client, org):
    """Named after a bug other billing systems shipped: the same top-up request sent twice at once."""
    _card(org)
    headers = {**org.auth("owner"), "Idempotency-Key": "double-click"}

    def buy(_):
        return client.post("/api/credits/quick-purchase", json={"package_id": "pkg_200"}, headers=headers)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(buy, range(8)))
    assert {r.status_code for r in answers} <= {200, 409}, [r.text for r in answers]
    assert any(r.status_code == 200 for r in answers)
    assert _balance(org) == Decimal(204) and len(_intents_for(held_webhooks, org)) == 1
    final = buy(0)
    assert final.status_code == 200 and final.json()["replayed"]
    _sound(org)


def test_auto_recharge_retries_its_unsettled_charge_with_the_same_key(held_webhooks, org, proxy):
    from orcapulse_billing.notifications import Notifier
    from orcapulse_billing.payments.auto_recharge import AutoRecharger

    _card(org)
    recharger = AutoRecharger(org.engine, lambda: _purchases(org, proxy.url), Notifier(org.engine, get_settings()))
    proxy.add(*PI_CREATE, "drop_response", times=3)
    # turned on below the threshold, it recharges at once; the answer is lost: not counted as a failure
    policy = recharger.update(
        _principal(org), enabled=True, threshold=Decimal(10), amount=Decimal(20), monthly_cap=None, ip=None
    )
    assert policy.recharge == "pending" and policy.charges_last_24h == 1
    assert recharger.maybe_recharge(org.id) == "charged"  # the same charge, answered this time
    assert _balance(org) == Decimal(20) and len(_intents_for(held_webhooks, org)) == 1
    assert recharger.get(org.id).consecutive_failures == 0
    _sound(org)


# -- 2. refunds ----------------------------------------------------------------------------------


def _bought(client, held, org: Org, package: str) -> str:
    _card(org)
    r = client.post(
        "/api/credits/quick-purchase",
        json={"package_id": package},
        headers={**org.auth("owner"), "Idempotency-Key": uuid.uuid4().hex},
    )
    assert r.status_code == 200, r.text
    return r.json()["entries"][0]["metadata"]["stripePaymentIntentId"]


def test_a_full_refund_takes_back_the_volume_bonus_too(held_webhooks, client, org):
    pi = _bought(client, held_webhooks, org, "pkg_1000")
    assert _balance(org) == Decimal(1100)
    sdk = _sdk(held_webhooks.api_base)
    sdk.v1.refunds.create(params={"payment_intent": pi, "amount": 30000})
    (partial,) = _sent(held_webhooks, "charge.refunded", payment_intent=pi)
    assert _deliver(client, partial) == "processed"
    assert _balance(org) == Decimal(1100) - Decimal(300) - Decimal(30)  # the bonus in proportion
    sdk.v1.refunds.create(params={"payment_intent": pi})  # the rest
    events = _sent(held_webhooks, "charge.refunded", payment_intent=pi)
    assert _deliver(client, events[-1]) == "processed"
    assert _balance(org) == 0
    for event in events:  # replays and stale snapshots take nothing more
        assert _deliver(client, event) == "replay"
    assert _deliver(client, _event("charge.refunded", events[0]["data"]["object"])) == "duplicate"
    assert _balance(org) == 0
    _sound(org)


def test_concurrent_refund_events_on_postgres_cannot_both_apply_from_the_same_old_total(pg_url):
    """Two connections interleaved deterministically: refund event A has read the purchase and is
    paused; refund event B (a later running total) reads it meanwhile. B must not compute its delta
    from the total A has not written yet."""
    from orcapulse_billing.db import make_engine
    from orcapulse_billing.ledger import Ledger, Posting
    from orcapulse_billing.models import CheckoutSession
    from orcapulse_billing.payments.flow import table_of
    from orcapulse_billing.payments.takebacks import refund_to

    engine = make_engine(pg_url)
    ledger = Ledger(engine, grace_limit=Decimal(5))
    org = Org(engine, ledger, roles=("owner",))
    t = table_of(CheckoutSession)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(t).values(
                organization_id=org.id,
                user_id=org.user_ids["owner"],
                provider="stripe",
                provider_id=f"pi_race_{org.id}",
                mode="quick",
                amount=500_000,
                bonus=0,
                currency="usd",
                status="completed",
                payment_intent_id=f"pi_race_{org.id}",
                created_at=sa.func.now(),
            )
        )
    ledger.post(Posting(org.account_id, "purchase", Decimal(50), "top-up", source="purchase"))
    a_read, b_read = threading.Event(), threading.Event()

    @sa.event.listens_for(engine, "after_cursor_execute")
    def interleave(conn, cursor, statement, parameters, context, executemany):
        if "FROM checkout_session" not in statement:
            return
        if threading.current_thread().name == "refund-a" and not a_read.is_set():
            a_read.set()
            b_read.wait(timeout=3)  # B reads now (or, where B must wait for A's lock, A goes on)
        elif threading.current_thread().name == "refund-b":
            b_read.set()

    def refund(total_cents: int) -> None:
        with ledger.transaction() as conn:
            row = conn.execute(sa.select(t).where(t.c.organization_id == org.id)).one()
            refund_to(ledger, conn, row, total_cents, key=f"race-{total_cents}", metadata={})

    a = threading.Thread(target=refund, args=(2000,), name="refund-a")
    b = threading.Thread(target=refund, args=(3000,), name="refund-b")
    a.start()
    assert a_read.wait(timeout=10)
    b.start()
    a.join(timeout=30)
    b.join(timeout=30)
    sa.event.remove(engine, "after_cursor_execute", interleave)
    assert org.account().balance == Decimal(20)  # $30 refunded in all, taken once
    with engine.connect() as conn:
        assert conn.execute(sa.select(t.c.refunded).where(t.c.organization_id == org.id)).scalar() == 300_000
        assert check_invariants(conn, org.account_id) == []
    engine.dispose()


# -- 3. chargebacks --------------------------------------------------------------------------------


def _dispute(sandbox, pi: str, **body) -> dict:
    r = httpx.post(sandbox.api_base + "/_config/disputes", json={"payment_intent": pi, **body})
    assert r.status_code == 200, r.text
    return r.json()


def _close(sandbox, dispute_id: str, status: str) -> dict:
    r = httpx.post(sandbox.api_base + f"/_config/disputes/{dispute_id}/close", json={"status": status})
    assert r.status_code == 200, r.text
    return r.json()


def _enable_auto_recharge(org: Org) -> None:
    from orcapulse_billing.services import get_auto_recharger

    get_auto_recharger(org.engine).update(
        _principal(org), enabled=True, threshold=Decimal(5), amount=Decimal(20), monthly_cap=None, ip=None
    )


def test_a_dispute_takes_the_credits_and_bonus_back_and_a_won_one_returns_them_once(held_webhooks, client, org):
    pi = _bought(client, held_webhooks, org, "pkg_500")  # 500 + 25 bonus
    _enable_auto_recharge(org)
    org.post("usage", "-400", category="ai_call")
    dispute = _dispute(held_webhooks, pi)
    (created,) = _sent(held_webhooks, "charge.dispute.created", id=dispute["id"])
    assert _deliver(client, created) == "processed"
    assert _balance(org) == Decimal(125) - Decimal(525)  # below zero: the money went back to the bank
    assert _deliver(client, created) == "replay"
    assert _deliver(client, _event("charge.dispute.created", created["data"]["object"])) == "duplicate"
    from orcapulse_billing.services import get_auto_recharger

    policy = get_auto_recharger(org.engine).get(org.id)
    assert not policy.enabled and "disputed" in policy.disabled_reason
    with org.engine.connect() as conn:
        mails = conn.execute(
            sa.text("SELECT to_address FROM email_outbox WHERE organization_id = :o AND kind = 'payment_disputed'"),
            {"o": org.id},
        ).scalars()
        assert list(mails) == [org.emails["owner"]]
    _close(held_webhooks, dispute["id"], "won")
    (closed,) = _sent(held_webhooks, "charge.dispute.closed", id=dispute["id"])
    assert _deliver(client, closed) == "processed"
    assert _deliver(client, _event("charge.dispute.closed", closed["data"]["object"])) == "duplicate"
    assert _balance(org) == Decimal(125)
    kinds = [
        e["type"] for e in client.get("/api/credits/history?type=refund", headers=org.auth("owner")).json()["items"]
    ]
    assert kinds == ["dispute"] * 4  # taken (credits, bonus), returned (credits, bonus)
    _sound(org)


@pytest.mark.parametrize("order", ["lost_first", "won_first", "refund_then_dispute"])
def test_disputes_and_refunds_move_money_once_in_any_order(held_webhooks, client, org, order):
    pi = _bought(client, held_webhooks, org, "pkg_50")
    bought = _balance(org)
    if order == "refund_then_dispute":
        _sdk(held_webhooks.api_base).v1.refunds.create(params={"payment_intent": pi, "amount": 4000})  # $40
        (refunded,) = _sent(held_webhooks, "charge.refunded", payment_intent=pi)
        assert _deliver(client, refunded) == "processed"
        dispute = _dispute(held_webhooks, pi)  # the rest: $10
        (created,) = _sent(held_webhooks, "charge.dispute.created", id=dispute["id"])
        assert _deliver(client, created) == "processed"
        assert _balance(org) == 0
        return
    dispute = _dispute(held_webhooks, pi)
    status = "lost" if order == "lost_first" else "won"
    _close(held_webhooks, dispute["id"], status)
    (created,) = _sent(held_webhooks, "charge.dispute.created", id=dispute["id"])
    (closed,) = _sent(held_webhooks, "charge.dispute.closed", id=dispute["id"])
    assert _deliver(client, closed) == "processed"  # the close overtook the opening
    assert _deliver(client, created) == "duplicate"
    assert _balance(org) == (0 if status == "lost" else bought)
    _sound(org)


# -- 4. outcomes that can change ------------------------------------------------------------------


def _checkout_session(client, org: Org, package: str = "pkg_50") -> dict:
    r = client.post("/api/credits/create-checkout", json={"package_id": package}, headers=org.auth("owner"))
    assert r.status_code == 200, r.text
    sdk = stripe.StripeClient("sk_test_sandbox", base_addresses={"api": get_settings().stripe_api_base})
    return sdk.v1.checkout.sessions.retrieve(r.json()["session_id"]).to_dict()


def test_a_refund_that_overtakes_its_purchase_waits_and_applies_when_it_is_credited(held_webhooks, client, org):
    session = _checkout_session(client, org)
    pi = "pi_overtaken_" + uuid.uuid4().hex[:8]
    refund = _event("charge.refunded", {"id": "ch_" + pi, "payment_intent": pi, "amount_refunded": 2000})
    assert _deliver(client, refund) == "waiting"
    assert _deliver(client, refund) == "waiting"  # Stripe retries it: still waiting, nothing moved
    paid = {**session, "payment_status": "paid", "status": "complete", "payment_intent": pi}
    assert _deliver(client, _event("checkout.session.completed", paid)) == "processed"
    assert _balance(org) == Decimal(30)  # credited and the waiting refund applied, in one transaction
    with org.engine.connect() as conn:
        outcome = conn.execute(
            sa.text("SELECT outcome FROM webhook_event WHERE event_id = :e"), {"e": refund["id"]}
        ).scalar()
    assert outcome == "processed"
    assert _deliver(client, refund) == "replay"
    _sound(org)


def test_pending_then_settled_payment_is_credited_once(held_webhooks, client, org):
    """Named after a bug other billing systems shipped: credited when pending and again when settled."""
    session = _checkout_session(client, org)
    unpaid = _event(
        "checkout.session.completed",
        {**session, "payment_status": "unpaid", "status": "complete", "payment_intent": "pi_x"},
    )
    assert _deliver(client, unpaid) == "pending"
    assert _deliver(client, unpaid) == "pending"  # re-evaluated on redelivery, still not paid
    settled = _event(
        "checkout.session.async_payment_succeeded",
        {**session, "payment_status": "paid", "status": "complete", "payment_intent": "pi_x"},
    )
    assert _deliver(client, settled) == "processed"
    paid_again = {**unpaid, "data": {"object": {**unpaid["data"]["object"], "payment_status": "paid"}}}
    assert _deliver(client, paid_again) == "duplicate"  # the pending event, delivered again as paid
    assert _deliver(client, settled) == "replay"
    assert _balance(org) == Decimal(50)
    _sound(org)


def test_paid_money_that_matches_nothing_goes_to_the_attention_list_and_emails_the_operator(held_webhooks, client, org):
    session = _checkout_session(client, org)
    euros = {**session, "payment_status": "paid", "status": "complete", "payment_intent": "pi_eur", "currency": "eur"}
    assert _deliver(client, _event("checkout.session.completed", euros)) == "needs_attention"
    assert _balance(org) == 0
    cli = subprocess.run(
        [sys.executable, "-m", "orcapulse_billing.cli", "attention"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert "pi_eur" in cli.stdout and "eur" in cli.stdout
    with org.engine.connect() as conn:
        subjects = conn.execute(
            sa.text("SELECT subject FROM email_outbox WHERE kind = 'needs_attention' AND subject LIKE '%pi_eur%'")
        ).scalars()
        assert len(list(subjects)) == 1


# -- the bugs other billing systems shipped -------------------------------------------------------


def test_a_payment_failed_after_settlement_does_not_keep_its_credits(held_webhooks, client, org):
    """Named after a bug other billing systems shipped. A stale failure for a payment that did succeed
    changes nothing; a failure Stripe confirms takes the credits back, once."""
    pi = _bought(client, held_webhooks, org, "pkg_50")
    stale = _event("payment_intent.payment_failed", {"id": pi, "object": "payment_intent", "metadata": {}})
    (ours,) = _sent(held_webhooks, "payment_intent.succeeded", id=pi)
    stale["data"]["object"]["metadata"] = ours["data"]["object"]["metadata"]
    assert _deliver(client, stale) == "duplicate" and _balance(org) == Decimal(50)
    # a payment our records show credited but that Stripe holds as failed (card ...0341 declines)
    declined_card = _card(org, "4000000000000341")
    sdk = _sdk(held_webhooks.api_base)
    customer = _purchases(org).customer_for(org.id)
    with pytest.raises(stripe.CardError) as declined:
        sdk.v1.payment_intents.create(
            params={
                "amount": 2000,
                "currency": "usd",
                "customer": customer,
                "payment_method": declined_card,
                "confirm": True,
                "off_session": True,
            }
        )
    failed_pi = declined.value.error.payment_intent["id"]
    key = f"quick-{org.id}-reported-paid"
    with org.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO checkout_session (organization_id, user_id, provider, provider_id, idempotency_key, mode, "
                "amount, bonus, currency, status, refunded, created_at) VALUES (:o, :u, 'stripe', :p, :k, 'quick', "
                "200000, 0, 'usd', 'charging', 0, CURRENT_TIMESTAMP)"
            ),
            {"o": org.id, "u": org.user_ids["owner"], "p": f"attempt:{key}", "k": key},
        )
    reported = {
        "id": failed_pi,
        "object": "payment_intent",
        "amount": 2000,
        "currency": "usd",
        "metadata": {"orcapulse_key": key},
    }
    assert _deliver(client, _event("payment_intent.succeeded", reported)) == "processed"
    assert _balance(org) == Decimal(70)
    failure = _event("payment_intent.payment_failed", reported)
    assert _deliver(client, failure) == "processed"
    assert _deliver(client, _event("payment_intent.payment_failed", reported)) == "duplicate"
    assert _balance(org) == Decimal(50)
    _sound(org)


def test_a_void_during_a_refund_returns_the_credits_once_and_never_re_credits_more(held_webhooks, client, org):
    """Named after a bug other billing systems shipped: a refund voided while being processed."""
    pi = _bought(client, held_webhooks, org, "pkg_50")
    sdk = _sdk(held_webhooks.api_base)
    refund = sdk.v1.refunds.create(params={"payment_intent": pi, "amount": 3000})
    (refunded,) = _sent(held_webhooks, "charge.refunded", payment_intent=pi)
    assert _deliver(client, refunded) == "processed" and _balance(org) == Decimal(20)
    assert httpx.post(held_webhooks.api_base + f"/_config/refunds/{refund['id']}/fail").status_code == 200
    (voided,) = _sent(held_webhooks, "charge.refund.updated", id=refund["id"])
    assert _deliver(client, voided) == "processed"
    assert _balance(org) == Decimal(50)  # the money stayed with us: its credits return
    assert _deliver(client, voided) == "replay"
    # the refund's own event, delivered again late as a new delivery: Stripe's figure now excludes it
    assert _deliver(client, _event("charge.refunded", refunded["data"]["object"])) == "duplicate"
    assert _balance(org) == Decimal(50)
    _sound(org)


# -- the page: a payment being confirmed ----------------------------------------------------------


def test_the_page_shows_a_charge_being_confirmed_until_its_webhook_settles_it(
    held_webhooks, app_through_proxy, page, org
):
    """In the browser: Pay now, the answer is lost, the page says "being confirmed" (never "nothing was
    charged") until the webhook credits it; the buttons are disabled while the purchase runs."""
    import re

    from playwright.sync_api import expect

    from .apiutil import PASSWORD
    from .browser import sign_in

    _card(org)
    app_through_proxy.add(*PI_CREATE, "drop_response", times=3)
    sign_in(page, _APP["page"], org.emails["owner"], PASSWORD)
    expect(page).to_have_url(re.compile(r"/billing$"), timeout=30_000)
    expect(page.get_by_test_id("balance-value")).to_have_text("$0.00", timeout=30_000)
    page.get_by_test_id("add-credits-button").click()
    page.get_by_test_id("quick-pkg_50").click()
    expect(page.get_by_test_id("add-credits-dialog")).to_contain_text("Payment being confirmed", timeout=30_000)
    expect(page.get_by_test_id("add-credits-dialog")).not_to_contain_text("nothing was charged")
    page.keyboard.press("Escape")
    banner = page.get_by_test_id("pending-payment-banner")
    expect(banner).to_contain_text("Payment of $50.00 being confirmed")
    (succeeded,) = _sent(held_webhooks, "payment_intent.succeeded", id=_intents_for(held_webhooks, org)[0]["id"])
    payload = json.dumps(succeeded).encode()
    r = httpx.post(
        _APP["url"] + "/api/credits/webhook",
        content=payload,
        headers={"Stripe-Signature": sign(payload, _secret()), "Content-Type": "application/json"},
    )
    assert r.json()["outcome"] == "processed"
    expect(page.get_by_test_id("balance-value")).to_have_text("$50.00", timeout=20_000)
    expect(banner).to_have_count(0)
    assert _balance(org) == Decimal(50) and len(_intents_for(held_webhooks, org)) == 1
