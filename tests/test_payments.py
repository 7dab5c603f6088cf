"""Stripe: webhook signatures, exactly-once crediting, refunds, saved cards and one-click purchase,
against the offline sandbox (localstripe + our Checkout stand-in, real processes, real HTTP)."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from types import SimpleNamespace

import httpx
import pytest
import sqlalchemy as sa
import stripe

from orcapulse_billing.ledger import check_invariants
from orcapulse_billing.sandbox.stripe_checkout import sign

from .apiutil import Org
from .sandboxes import STRIPE_PREVIOUS_WEBHOOK_SECRET
from .sandboxes import STRIPE_WEBHOOK_SECRET as SECRET


def _event(kind: str, obj: dict) -> dict:
    return {
        "id": "evt_" + uuid.uuid4().hex,
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "livemode": False,
        "api_version": "2024-06-20",
        "data": {"object": obj},
    }


def _post_event(client, event: dict, secret: str = SECRET, *, timestamp: int | None = None, body: bytes | None = None):
    payload = json.dumps(event).encode()
    return client.post(
        "/api/credits/webhook",
        content=body if body is not None else payload,
        headers={"Stripe-Signature": sign(payload, secret, timestamp), "Content-Type": "application/json"},
    )


def _checkout(client, org: Org, **body) -> dict:
    r = client.post("/api/credits/create-checkout", json=body or {"package_id": "pkg_50"}, headers=org.auth("owner"))
    assert r.status_code == 200, r.text
    return r.json()


def _session_object(client, org: Org, session_id: str, **changes) -> dict:
    """The Checkout Session as the sandbox (Stripe) holds it, as an event would carry it."""
    obj = stripe.StripeClient("sk_test_sandbox", base_addresses={"api": _api_base()}).v1.checkout.sessions.retrieve(
        session_id
    )
    return {**obj.to_dict(), **changes}


def _api_base() -> str:
    import os

    return os.environ["STRIPE_API_BASE"]


def _entries(org: Org, kind: str | None = None):
    from orcapulse_billing.history import HistoryQuery, iter_history

    with org.engine.connect() as conn:
        items = list(iter_history(conn, org.account_id, HistoryQuery()))[::-1]
    return [
        SimpleNamespace(type=i.type, amount=i.amount_units, description=i.description, metadata=i.metadata)
        for i in items
        if kind is None or i.type == kind
    ]


# -- signatures --------------------------------------------------------------------------------


def test_webhook_signature_checks(client, org):
    event = _event("customer.created", {"id": "cus_x", "object": "customer"})
    assert _post_event(client, event).json() == {"received": True, "outcome": "ignored"}
    again = _event("customer.created", {"id": "cus_y"})
    assert _post_event(client, again, STRIPE_PREVIOUS_WEBHOOK_SECRET).status_code == 200  # either during rotation
    bad = [
        _post_event(client, _event("x", {}), "whsec_" + uuid.uuid4().hex),  # a secret we do not have
        _post_event(client, _event("x", {}), timestamp=int(time.time()) - 600),  # stale
        _post_event(client, event, body=json.dumps(event).encode().replace(b"cus_x", b"cus_z")),  # tampered
        _post_event(client, event, body=json.dumps(event, indent=2).encode()),  # re-serialised JSON
        client.post("/api/credits/webhook", content=json.dumps(event).encode()),  # missing header
        client.post("/api/credits/webhook", content=b"{}", headers={"Stripe-Signature": "garbage"}),
    ]
    for r in bad:
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_signature", r.text
    with org.engine.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT COUNT(*) FROM webhook_event WHERE event_id = :e"), {"e": event["id"]}).scalar()
            == 1
        )


# -- exactly once ------------------------------------------------------------------------------


def test_same_completed_event_twenty_times_concurrently_credits_once(app, client, org):
    session = _checkout(client, org, package_id="pkg_200")
    event = _event(
        "checkout.session.completed",
        _session_object(
            client, org, session["session_id"], payment_status="paid", status="complete", payment_intent="pi_123"
        ),
    )
    payload = json.dumps(event).encode()
    url = app.backend_url + "/api/credits/webhook"

    def deliver(_):
        return httpx.post(url, content=payload, headers={"Stripe-Signature": sign(payload, SECRET)}, timeout=30)

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(deliver, range(20)))
    assert {r.status_code for r in responses} == {200}
    outcomes = sorted(r.json()["outcome"] for r in responses)
    assert outcomes.count("processed") == 1 and set(outcomes) <= {"processed", "replay"}
    rows = _entries(org)
    assert [(r.type, r.amount) for r in rows] == [("purchase", 2_000_000), ("bonus", 40_000)]
    assert rows[0].description == "Credit top-up via Stripe - $200.00"
    assert rows[0].metadata["stripeCheckoutSessionId"] == session["session_id"]
    with org.engine.connect() as conn:
        assert check_invariants(conn, org.account_id) == []


def test_completed_and_async_succeeded_in_any_order_credit_once(client, org):
    first = _checkout(client, org)
    obj = _session_object(client, org, first["session_id"], status="complete", payment_intent="pi_a")
    # async: completed (unpaid), then succeeded
    assert (
        _post_event(client, _event("checkout.session.completed", {**obj, "payment_status": "unpaid"})).json()["outcome"]
        == "pending"
    )
    assert _entries(org) == []
    assert (
        _post_event(
            client, _event("checkout.session.async_payment_succeeded", {**obj, "payment_status": "paid"})
        ).json()["outcome"]
        == "processed"
    )
    assert (
        _post_event(client, _event("checkout.session.completed", {**obj, "payment_status": "paid"})).json()["outcome"]
        == "duplicate"
    )
    # out of order: succeeded first, completed later
    second = _checkout(client, org)
    obj2 = _session_object(
        client, org, second["session_id"], status="complete", payment_intent="pi_b", payment_status="paid"
    )
    assert (
        _post_event(client, _event("checkout.session.async_payment_succeeded", obj2)).json()["outcome"] == "processed"
    )
    assert _post_event(client, _event("checkout.session.completed", obj2)).json()["outcome"] == "duplicate"
    assert [r.amount for r in _entries(org)] == [500_000, 500_000]


def test_events_that_do_not_match_our_session_are_rejected(client, org, other):
    session = _checkout(client, org)
    obj = _session_object(client, org, session["session_id"], payment_status="paid", payment_intent="pi_c")
    forged_amount = _post_event(client, _event("checkout.session.completed", {**obj, "amount_total": 500000}))
    forged_org = _post_event(
        client, _event("checkout.session.completed", {**obj, "metadata": {"organization_id": str(other.id)}})
    )
    unknown = _post_event(client, _event("checkout.session.completed", {**obj, "id": "cs_test_not_ours"}))
    # paid money that matches nothing we can credit is kept for an operator, never dropped
    outcomes = [r.json()["outcome"] for r in (forged_amount, forged_org, unknown)]
    assert outcomes == ["needs_attention", "rejected", "needs_attention"]
    assert _entries(org) == [] and _entries(other) == []
    with org.engine.connect() as conn:
        reasons = conn.execute(
            sa.text("SELECT reason FROM attention_item WHERE reference IN (:a, :b) ORDER BY reason"),
            {"a": "pi_c", "b": "cs_test_not_ours"},
        ).scalars()
        assert list(reasons) == ["amount_mismatch", "unknown_checkout"]


def test_async_failure_is_recorded_and_expiry_leaves_nothing(client, org):
    failed = _checkout(client, org)
    obj = _session_object(client, org, failed["session_id"], payment_status="unpaid")
    assert _post_event(client, _event("checkout.session.async_payment_failed", obj)).json()["outcome"] == "processed"
    expired = _checkout(client, org)
    assert (
        _post_event(
            client, _event("checkout.session.expired", _session_object(client, org, expired["session_id"]))
        ).status_code
        == 200
    )
    with org.engine.connect() as conn:
        statuses = dict(
            conn.execute(
                sa.text("SELECT provider_id, status FROM checkout_session WHERE organization_id = :o"), {"o": org.id}
            ).all()
        )
    assert statuses == {failed["session_id"]: "failed", expired["session_id"]: "expired"}
    assert _entries(org) == []


def test_refunds_post_each_delta_once_and_never_more_than_bought(client, org):
    session = _checkout(client, org)
    obj = _session_object(client, org, session["session_id"], payment_status="paid", payment_intent="pi_refund")
    _post_event(client, _event("checkout.session.completed", obj))
    org.post("usage", "-10", category="ai_call")

    def refunded(cents):
        return _post_event(
            client,
            _event(
                "charge.refunded",
                {
                    "id": "ch_1",
                    "object": "charge",
                    "payment_intent": "pi_refund",
                    "amount": 5000,
                    "amount_refunded": cents,
                },
            ),
        )

    partial = _event("charge.refunded", {"id": "ch_1", "payment_intent": "pi_refund", "amount_refunded": 2000})
    assert _post_event(client, partial).json()["outcome"] == "processed"
    assert _post_event(client, partial).json()["outcome"] == "replay"
    assert refunded(2000).json()["outcome"] == "duplicate"  # a new event id with nothing new refunded
    assert refunded(5000).json()["outcome"] == "processed"
    assert refunded(9000).json()["outcome"] == "duplicate"  # never more than was bought
    refunds = [r.amount for r in _entries(org, "refund")]
    assert refunds == [-200_000, -300_000] and org.account().balance == Decimal("-10.0000")
    unknown = _post_event(
        client, _event("charge.refunded", {"id": "ch_2", "payment_intent": "pi_nope", "amount_refunded": 100})
    )
    assert unknown.json()["outcome"] == "waiting"  # for a purchase that may not be credited yet


# -- checkout endpoints ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, code",
    [
        ({"amount": "0.50"}, "invalid_amount"),
        ({"amount": "150"}, "invalid_amount"),
        ({"amount": "7.255"}, "invalid_amount"),
        ({"amount": "abc"}, "invalid_request"),
        ({}, "invalid_request"),
        ({"package_id": "pkg_7"}, "invalid_request"),
        ({"package_id": "pkg_50", "amount": "5"}, "invalid_request"),
    ],
)
def test_checkout_input_is_validated(client, org, body, code):
    r = client.post("/api/credits/create-checkout", json=body, headers=org.auth("owner"))
    assert r.status_code == 400 and r.json()["error"]["code"] == code
    with org.engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT COUNT(*) FROM checkout_session WHERE organization_id = :o"), {"o": org.id}
            ).scalar()
            == 0
        )


@pytest.mark.parametrize("role", ["admin", "member"])
def test_only_owners_pay(client, org, role):
    for method, path, body in (
        ("POST", "/api/credits/create-checkout", {"package_id": "pkg_50"}),
        ("POST", "/api/credits/create-setup-checkout", None),
        ("POST", "/api/credits/quick-purchase", {"package_id": "pkg_50"}),
        ("GET", "/api/credits/payment-methods", None),
        ("DELETE", "/api/credits/payment-methods?payment_method_id=pm_1", None),
    ):
        r = client.request(method, path, json=body, headers=org.auth(role))
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", (path, r.text)


def test_custom_amount_checkout_is_priced_in_cents(client, org):
    session = _checkout(client, org, amount="7.25")
    obj = _session_object(client, org, session["session_id"])
    assert obj["amount_total"] == 725 and obj["mode"] == "payment" and obj["metadata"]["organization_id"] == str(org.id)
    assert obj["client_reference_id"] == f"org_{org.id}" and obj["customer"].startswith("cus_")


# -- saved cards and one-click purchase against localstripe ------------------------------------


def _save_card_through_checkout(app, client, org: Org) -> str:
    setup = client.post("/api/credits/create-setup-checkout", headers=org.auth("owner")).json()
    page = httpx.post(setup["url"], data={"card": "4242 4242 4242 4242", "action": "pay"})
    assert page.status_code == 303
    for _ in range(100):  # the sandbox delivers the signed webhook to the running app
        cards = client.get("/api/credits/payment-methods", headers=org.auth("owner")).json()
        if cards:
            return cards[0]["id"]
        time.sleep(0.1)
    raise AssertionError("the setup webhook never saved the card")


def _attach_test_card(org: Org, number: str) -> str:
    from orcapulse_billing.services import get_stripe_purchases

    purchases = get_stripe_purchases(org.engine)
    customer = purchases.customer_for(org.id)
    sdk = purchases.gateway.client
    pm = sdk.v1.payment_methods.create(
        params={"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"}}
    )
    sdk.v1.payment_methods.attach(pm["id"], params={"customer": customer})
    purchases.save_card(org.id, purchases.gateway.card(pm["id"]), make_default=False)
    return pm["id"]


def test_setup_checkout_saves_only_display_data_and_cards_can_be_removed(app, client, org):
    card_id = _save_card_through_checkout(app, client, org)
    cards = client.get("/api/credits/payment-methods", headers=org.auth("owner")).json()
    assert cards == [
        {"id": card_id, "brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030, "is_default": True}
    ]
    with org.engine.connect() as conn:
        columns = set(conn.execute(sa.text("SELECT * FROM payment_method LIMIT 1")).keys())
    assert columns == {
        "id",
        "organization_id",
        "provider",
        "provider_id",
        "brand",
        "last4",
        "exp_month",
        "exp_year",
        "is_default",
        "created_at",
    }
    assert (
        client.delete(
            f"/api/credits/payment-methods?payment_method_id={card_id}", headers=org.auth("owner")
        ).status_code
        == 204
    )
    assert client.get("/api/credits/payment-methods", headers=org.auth("owner")).json() == []
    with org.engine.connect() as conn:  # who removed it and from where
        removed = conn.execute(
            sa.text("SELECT user_id, ip, details FROM audit_log WHERE organization_id = :o AND action = :a"),
            {"o": org.id, "a": "payment_method_removed"},
        ).one()
    assert removed.user_id == org.user_ids["owner"] and removed.ip
    assert (
        client.delete(
            f"/api/credits/payment-methods?payment_method_id={card_id}", headers=org.auth("owner")
        ).status_code
        == 404
    )


def test_quick_purchase_success_and_retry_with_the_same_key_charges_once(app, client, org):
    _save_card_through_checkout(app, client, org)
    headers = {**org.auth("owner"), "Idempotency-Key": "quick-1"}
    first = client.post("/api/credits/quick-purchase", json={"package_id": "pkg_500"}, headers=headers)
    again = client.post("/api/credits/quick-purchase", json={"package_id": "pkg_500"}, headers=headers)
    assert first.status_code == again.status_code == 200, first.text
    assert [e["amount"] for e in first.json()["entries"]] == ["500.0000", "25.0000"]
    assert again.json()["replayed"] and [e["id"] for e in again.json()["entries"]] == [
        e["id"] for e in first.json()["entries"]
    ]
    assert org.account().balance == Decimal("525.0000")
    pi = first.json()["entries"][0]["metadata"]["stripePaymentIntentId"]
    intent = stripe.StripeClient("sk_test_sandbox", base_addresses={"api": _api_base()}).v1.payment_intents.retrieve(pi)
    assert intent["status"] == "succeeded" and intent["amount"] == 50000


@pytest.mark.parametrize(
    "number, code", [("4000000000000341", "card_declined"), ("4000002500003155", "authentication_required")]
)
def test_quick_purchase_failures_credit_nothing(app, client, org, number, code):
    card = _attach_test_card(org, number)
    r = client.post(
        "/api/credits/quick-purchase",
        json={"amount": "20", "payment_method_id": card},
        headers={**org.auth("owner"), "Idempotency-Key": uuid.uuid4().hex},
    )
    assert r.status_code == 402 and r.json()["error"]["code"] == code
    assert org.account().transaction_count == 0


def test_quick_purchase_without_a_card_and_when_stripe_is_unreachable(app, client, org):
    r = client.post("/api/credits/quick-purchase", json={"package_id": "pkg_50"}, headers=org.auth("owner"))
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_saved_card"
    _save_card_through_checkout(app, client, org)
    from orcapulse_billing.auth import principal_for_api_key
    from orcapulse_billing.config import get_settings
    from orcapulse_billing.payments.flow import choose
    from orcapulse_billing.payments.stripe_gateway import PaymentError, StripeGateway
    from orcapulse_billing.payments.stripe_purchases import StripePurchases

    settings = get_settings()
    principal = principal_for_api_key(org.engine, org.keys["owner"])
    dead = StripePurchases(org.engine, org.ledger, StripeGateway(settings), settings)
    dead.gateway.client = stripe.StripeClient(
        "sk_test_sandbox", base_addresses={"api": "http://127.0.0.1:9"}, max_network_retries=0
    )
    with pytest.raises(PaymentError) as err:
        dead.quick_purchase(principal, choose(settings, "pkg_50"), payment_method_id=None, request_key="net-1", ip=None)
    # no answer: charged or not, it is "being confirmed" (never "nothing was charged"); the retry settles it
    assert err.value.code == "payment_pending" and err.value.retryable
    assert org.account().transaction_count == 0
    retry = client.post(
        "/api/credits/quick-purchase",
        json={"package_id": "pkg_50"},
        headers={**org.auth("owner"), "Idempotency-Key": "net-1"},
    )
    assert retry.status_code == 200 and org.account().balance == Decimal("50.0000")
