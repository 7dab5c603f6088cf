"""The offline Stripe sandbox's front door speaks Stripe's contract: idempotency keys, list filters and
cursors, PaymentIntent / refund / dispute events signed as Stripe signs them, failed refunds, and event
replays. Driven only through the official `stripe` SDK (and httpx for the `/_config` test controls);
webhooks are received by a real HTTP server and verified with `stripe.Webhook.construct_event`."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import stripe

from .sandboxes import StripeSandbox, start_stripe_sandbox

DECLINED_AFTER_ATTACH = "4000000000000341"


class Webhooks:
    """A tiny webhook endpoint: keeps every delivery whose signature verifies."""

    def __init__(self, secret: str):
        self.secret = secret
        self.events: list[dict] = []
        self.rejected = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    event = stripe.Webhook.construct_event(raw, self.headers["Stripe-Signature"], outer.secret)
                except (stripe.SignatureVerificationError, ValueError):
                    with outer.lock:
                        outer.rejected += 1
                    self.send_response(400)
                else:
                    with outer.lock:
                        outer.events.append(event.to_dict())
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def matching(self, kind: str, test: Callable[[dict], bool] = lambda o: True) -> list[dict]:
        with self.lock:
            return [e for e in self.events if e["type"] == kind and test(e["data"]["object"])]

    def wait(self, kind: str, test: Callable[[dict], bool] = lambda o: True, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.matching(kind, test)
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no {kind} event arrived")


@pytest.fixture(scope="module")
def sandbox():
    """A sandbox of this module's own, so its webhooks, disputes and failed refunds touch no other test."""
    instance: StripeSandbox = start_stripe_sandbox()
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def hooks(sandbox):
    receiver = Webhooks(sandbox.webhook_secret)
    sandbox.configure_webhook(receiver.url)
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def client(sandbox) -> stripe.StripeClient:
    return stripe.StripeClient("sk_test_sandbox", base_addresses={"api": sandbox.api_base}, max_network_retries=0)


@pytest.fixture
def customer(client) -> str:
    return client.v1.customers.create(params={"name": "Sandbox test"}).id


def card(client: stripe.StripeClient, customer: str, number: str = "4242424242424242") -> str:
    pm = client.v1.payment_methods.create(
        params={"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"}}
    )
    client.v1.payment_methods.attach(pm.id, params={"customer": customer})
    return pm.id


def charge_params(customer: str, pm: str, amount: int = 2000, **metadata: str) -> dict:
    return {
        "amount": amount,
        "currency": "usd",
        "customer": customer,
        "payment_method": pm,
        "confirm": True,
        "off_session": True,
        "metadata": metadata,
    }


def intents_of(client: stripe.StripeClient, customer: str) -> list:
    return client.v1.payment_intents.list(params={"customer": customer, "limit": 100}).data


def localstripe_intent_count(sandbox: StripeSandbox) -> int:
    direct = stripe.StripeClient("sk_test_sandbox", base_addresses={"api": sandbox.localstripe})
    return sum(1 for _ in direct.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter())


def config(sandbox: StripeSandbox, path: str, **body) -> httpx.Response:
    return httpx.post(sandbox.api_base + "/_config/" + path, json=body)


# -- idempotency keys ---------------------------------------------------------------------------------


def test_an_idempotent_replay_returns_the_same_intent_and_charges_once(sandbox, hooks, client, customer):
    pm = card(client, customer)
    key = uuid.uuid4().hex
    before = localstripe_intent_count(sandbox)
    first = client.v1.payment_intents.create(params=charge_params(customer, pm), options={"idempotency_key": key})
    again = client.v1.payment_intents.create(params=charge_params(customer, pm), options={"idempotency_key": key})
    assert first.status == "succeeded" and again.id == first.id and again.to_dict() == first.to_dict()
    assert again.last_response.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.last_response.headers
    assert localstripe_intent_count(sandbox) == before + 1
    assert [pi.id for pi in intents_of(client, customer)] == [first.id]
    hooks.wait("payment_intent.succeeded", lambda o: o["id"] == first.id)
    time.sleep(0.3)
    assert len(hooks.matching("payment_intent.succeeded", lambda o: o["id"] == first.id)) == 1  # not again


def test_the_same_key_with_other_parameters_or_another_endpoint_is_an_idempotency_error(client, customer):
    pm = card(client, customer)
    key = uuid.uuid4().hex
    client.v1.payment_intents.create(params=charge_params(customer, pm), options={"idempotency_key": key})
    with pytest.raises(stripe.IdempotencyError) as other_body:
        client.v1.payment_intents.create(params=charge_params(customer, pm, 2001), options={"idempotency_key": key})
    assert other_body.value.http_status == 400
    assert other_body.value.error.type == "idempotency_error"
    assert "same parameters" in other_body.value.error.message
    with pytest.raises(stripe.IdempotencyError) as other_path:
        client.v1.customers.create(params={"name": "x"}, options={"idempotency_key": key})
    assert other_path.value.http_status == 400 and "same endpoint" in other_path.value.error.message
    assert len(intents_of(client, customer)) == 1


def test_a_4xx_answer_is_replayed_too(client, customer):
    pm = card(client, customer, DECLINED_AFTER_ATTACH)
    key = uuid.uuid4().hex
    errors = []
    for _ in range(2):
        with pytest.raises(stripe.CardError) as declined:
            client.v1.payment_intents.create(params=charge_params(customer, pm), options={"idempotency_key": key})
        errors.append(declined.value)
    assert errors[0].json_body == errors[1].json_body and errors[0].code == "card_declined"
    assert errors[1].headers.get("Idempotent-Replayed") == "true"
    assert len(intents_of(client, customer)) == 1


def test_concurrent_requests_with_one_key_charge_once(sandbox, client, customer):
    pm = card(client, customer)
    key = uuid.uuid4().hex
    together = threading.Barrier(6)

    def create(_: int):
        together.wait()
        try:
            return client.v1.payment_intents.create(
                params=charge_params(customer, pm), options={"idempotency_key": key}
            ).id
        except stripe.StripeError as exc:  # the SDK maps only a 400 idempotency_error to IdempotencyError
            assert exc.http_status == 409 and exc.error.type == "idempotency_error"
            assert "in-progress request" in exc.error.message
            return 409

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(create, range(6)))
    ids = {r for r in results if r != 409}
    assert len(ids) == 1
    assert [pi.id for pi in intents_of(client, customer)] == list(ids)


def test_checkout_sessions_honour_idempotency_keys(client, customer):
    params = {
        "mode": "setup",
        "customer": customer,
        "success_url": "http://127.0.0.1/ok",
        "cancel_url": "http://127.0.0.1/cancel",
    }
    key = uuid.uuid4().hex
    first = client.v1.checkout.sessions.create(params=params, options={"idempotency_key": key})
    again = client.v1.checkout.sessions.create(params=params, options={"idempotency_key": key})
    assert again.id == first.id
    assert [s.id for s in client.v1.checkout.sessions.list(params={"customer": customer}).data] == [first.id]


# -- lists --------------------------------------------------------------------------------------------


def test_payment_intent_lists_filter_and_paginate_newest_first(client, customer):
    pm = card(client, customer)
    start = int(time.time())
    made = [
        client.v1.payment_intents.create(params=charge_params(customer, pm, 1000 + i, order=str(i))) for i in range(5)
    ]
    listed = intents_of(client, customer)
    assert [pi.id for pi in listed] == [pi.id for pi in reversed(made)]
    assert [pi.metadata["order"] for pi in listed] == ["4", "3", "2", "1", "0"]
    assert all(pi.created >= start and isinstance(pi.latest_charge, str) for pi in listed)

    page = client.v1.payment_intents.list(params={"customer": customer, "limit": 2})
    assert page.object == "list" and page.url == "/v1/payment_intents" and page.has_more
    assert [pi.id for pi in page.data] == [made[4].id, made[3].id]
    rest = client.v1.payment_intents.list(params={"customer": customer, "limit": 2, "starting_after": made[3].id})
    assert [pi.id for pi in rest.data] == [made[2].id, made[1].id] and rest.has_more
    last = client.v1.payment_intents.list(params={"customer": customer, "limit": 2, "starting_after": made[1].id})
    assert [pi.id for pi in last.data] == [made[0].id] and not last.has_more
    back = client.v1.payment_intents.list(params={"customer": customer, "limit": 2, "ending_before": made[1].id})
    assert [pi.id for pi in back.data] == [made[3].id, made[2].id] and back.has_more
    every = client.v1.payment_intents.list(params={"customer": customer, "limit": 2}).auto_paging_iter()
    assert [pi.id for pi in every] == [pi.id for pi in reversed(made)]

    assert intents_of(client, "cus_nobody") == []
    future = {"customer": customer, "created": {"gt": int(time.time()) + 60}}
    assert client.v1.payment_intents.list(params=future).data == []
    window = {"customer": customer, "created": {"gte": start, "lte": int(time.time())}, "limit": 100}
    assert len(client.v1.payment_intents.list(params=window).data) == 5
    assert client.v1.payment_intents.list(params={"created": {"lt": start - 3600}}).data == []


def test_list_parameters_are_checked_as_stripe_checks_them(client):
    with pytest.raises(stripe.InvalidRequestError) as too_many:
        client.v1.payment_intents.list(params={"limit": 101})
    assert too_many.value.http_status == 400 and too_many.value.error.param == "limit"
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.payment_intents.list(params={"colour": "blue"})
    assert unknown.value.error.code == "parameter_unknown"


def test_checkout_session_lists_filter_by_status_and_payment_intent(sandbox, client, customer):
    params = {
        "mode": "payment",
        "customer": customer,
        "line_items": [{"price_data": {"unit_amount": 500, "product_data": {"name": "Credits"}}, "quantity": 1}],
        "success_url": "http://127.0.0.1/ok",
        "cancel_url": "http://127.0.0.1/cancel",
    }
    paid, left = (client.v1.checkout.sessions.create(params=params) for _ in range(2))
    httpx.post(f"{sandbox.api_base}/pay/{paid.id}", data={"action": "pay", "card": "4242424242424242"})
    paid = client.v1.checkout.sessions.retrieve(paid.id)
    mine = client.v1.checkout.sessions.list(params={"customer": customer})
    assert [s.id for s in mine.data] == [left.id, paid.id] and mine.url == "/v1/checkout/sessions"
    complete = client.v1.checkout.sessions.list(params={"customer": customer, "status": "complete"})
    assert [s.id for s in complete.data] == [paid.id]
    by_intent = client.v1.checkout.sessions.list(params={"payment_intent": paid.payment_intent})
    assert [s.id for s in by_intent.data] == [paid.id]
    page = client.v1.checkout.sessions.list(params={"customer": customer, "limit": 1, "starting_after": left.id})
    assert [s.id for s in page.data] == [paid.id] and not page.has_more


# -- PaymentIntent and refund events ------------------------------------------------------------------


def test_payment_intent_events_for_success_and_decline(hooks, client, customer):
    ok = client.v1.payment_intents.create(params=charge_params(customer, card(client, customer), order="ok"))
    event = hooks.wait("payment_intent.succeeded", lambda o: o["id"] == ok.id)
    assert event["data"]["object"]["metadata"] == {"order": "ok"} and event["data"]["object"]["amount"] == 2000

    declined_card = card(client, customer, DECLINED_AFTER_ATTACH)
    with pytest.raises(stripe.CardError) as declined:
        client.v1.payment_intents.create(params=charge_params(customer, declined_card, order="no"))
    error = declined.value.error
    assert declined.value.http_status == 402 and error.type == "card_error" and error.code == "card_declined"
    intent_id = error.payment_intent.id
    failed = hooks.wait("payment_intent.payment_failed", lambda o: o["id"] == intent_id)["data"]["object"]
    assert failed["status"] == "requires_payment_method" and failed["metadata"] == {"order": "no"}
    assert failed["last_payment_error"]["code"] == "card_declined"
    assert failed["last_payment_error"]["type"] == "card_error"


def test_the_hosted_page_sends_payment_intent_succeeded_too(sandbox, hooks, client, customer):
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "payment",
            "customer": customer,
            "metadata": {"purchase": "p1"},
            "line_items": [{"price_data": {"unit_amount": 700, "product_data": {"name": "Credits"}}, "quantity": 1}],
            "success_url": "http://127.0.0.1/ok",
            "cancel_url": "http://127.0.0.1/cancel",
        }
    )
    httpx.post(f"{sandbox.api_base}/pay/{session.id}", data={"action": "pay", "card": "4242424242424242"})
    completed = hooks.wait("checkout.session.completed", lambda o: o["id"] == session.id)["data"]["object"]
    succeeded = hooks.wait("payment_intent.succeeded", lambda o: o["id"] == completed["payment_intent"])
    assert succeeded["data"]["object"]["amount"] == 700
    assert succeeded["data"]["object"]["metadata"] == {"purchase": "p1"}


def test_a_refund_sends_charge_refunded_with_the_charge(hooks, client, customer):
    pi = client.v1.payment_intents.create(params=charge_params(customer, card(client, customer), 3000))
    refund = client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 1200})
    charge = hooks.wait("charge.refunded", lambda o: o["payment_intent"] == pi.id)["data"]["object"]
    assert charge["id"] == refund.charge == pi.latest_charge
    assert (charge["amount"], charge["amount_refunded"], charge["refunded"]) == (3000, 1200, False)
    assert charge["currency"] == "usd"
    client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 1800})
    hooks.wait("charge.refunded", lambda o: o["payment_intent"] == pi.id and o["refunded"])


# -- disputes, failed refunds, replays ------------------------------------------------------------------


def test_disputes_are_opened_and_closed_with_events(sandbox, hooks, client, customer):
    pi = client.v1.payment_intents.create(params=charge_params(customer, card(client, customer), 2500))
    client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 500})
    r = config(sandbox, "disputes", payment_intent=pi.id, reason="fraudulent")
    assert r.status_code == 200
    dispute = r.json()
    assert dispute["id"].startswith("dp_") and dispute["object"] == "dispute"
    assert (dispute["amount"], dispute["currency"], dispute["charge"]) == (2000, "usd", pi.latest_charge)
    assert (dispute["payment_intent"], dispute["status"], dispute["reason"]) == (pi.id, "needs_response", "fraudulent")
    created = hooks.wait("charge.dispute.created", lambda o: o["id"] == dispute["id"])
    assert created["data"]["object"] == dispute
    assert client.v1.charges.retrieve(pi.latest_charge).disputed is True

    got = client.v1.disputes.retrieve(dispute["id"])
    assert got.to_dict() == dispute
    listed = client.v1.disputes.list(params={"payment_intent": pi.id})
    assert [d.id for d in listed.data] == [dispute["id"]] and listed.url == "/v1/disputes"
    assert [d.id for d in client.v1.disputes.list(params={"charge": pi.latest_charge}).data] == [dispute["id"]]
    assert client.v1.disputes.list(params={"charge": "ch_other"}).data == []

    closed = config(sandbox, f"disputes/{dispute['id']}/close", status="lost").json()
    assert closed["status"] == "lost"
    event = hooks.wait("charge.dispute.closed", lambda o: o["id"] == dispute["id"])
    assert event["data"]["object"]["status"] == "lost"
    assert client.v1.disputes.retrieve(dispute["id"]).status == "lost"
    assert config(sandbox, f"disputes/{dispute['id']}/close", status="won").status_code == 400

    partial = config(sandbox, "disputes", payment_intent=pi.id, amount=700, reason="duplicate").json()
    assert partial["amount"] == 700
    assert config(sandbox, f"disputes/{partial['id']}/close", status="won").json()["status"] == "won"

    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.disputes.retrieve("dp_missing")
    assert missing.value.http_status == 404 and missing.value.error.code == "resource_missing"
    assert config(sandbox, "disputes", payment_intent="pi_missing").status_code == 404


def test_a_failed_refund_gives_the_money_back(sandbox, hooks, client, customer):
    pi = client.v1.payment_intents.create(params=charge_params(customer, card(client, customer), 4000))
    kept = client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 1000})
    failing = client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 3000})
    hooks.wait("charge.refunded", lambda o: o["payment_intent"] == pi.id and o["refunded"])

    r = config(sandbox, f"refunds/{failing.id}/fail")
    assert r.status_code == 200 and r.json()["status"] == "failed"
    updated = hooks.wait("charge.refund.updated", lambda o: o["id"] == failing.id)["data"]["object"]
    assert updated["status"] == "failed" and updated["failure_reason"] == "expired_or_canceled_card"
    assert updated["amount"] == 3000 and updated["charge"] == pi.latest_charge

    refund = client.v1.refunds.retrieve(failing.id)
    assert (refund.status, refund.failure_reason) == ("failed", "expired_or_canceled_card")
    assert client.v1.refunds.retrieve(kept.id).status == "succeeded"
    charge = client.v1.charges.retrieve(pi.latest_charge)
    assert (charge.amount_refunded, charge.refunded) == (1000, False)

    client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 500})
    later = hooks.wait("charge.refunded", lambda o: o["payment_intent"] == pi.id and o["amount_refunded"] == 1500)
    assert later["data"]["object"]["refunded"] is False
    assert config(sandbox, f"refunds/{failing.id}/fail").status_code == 400
    assert config(sandbox, "refunds/re_missing/fail").status_code == 404


def test_a_sent_event_can_be_delivered_again_unchanged(sandbox, hooks, client, customer):
    pi = client.v1.payment_intents.create(params=charge_params(customer, card(client, customer)))
    event = hooks.wait("payment_intent.succeeded", lambda o: o["id"] == pi.id)
    sent = httpx.get(sandbox.api_base + "/_config/events").json()
    assert sent["object"] == "list" and event["id"] in [e["id"] for e in sent["data"]]
    assert [e["created"] for e in sent["data"]] == sorted(e["created"] for e in sent["data"])
    assert config(sandbox, "events/resend", id=event["id"]).json()["id"] == event["id"]
    deadline = time.monotonic() + 10
    while len([e for e in hooks.events if e["id"] == event["id"]]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    copies = [e for e in hooks.events if e["id"] == event["id"]]
    assert len(copies) == 2 and copies[0] == copies[1]
    assert client.v1.events.retrieve(event["id"]).type == "payment_intent.succeeded"
    assert config(sandbox, "events/resend", id="evt_missing").status_code == 404
    assert hooks.rejected == 0
