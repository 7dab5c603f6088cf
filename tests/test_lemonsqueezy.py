"""Lemon Squeezy: the httpx client against the stand-in (shapes, retries), signed order webhooks,
exactly-once crediting, refunds. Real processes, real HTTP, real signatures."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import pytest
import sqlalchemy as sa

from orcapulse_billing.ledger import check_invariants

from .apiutil import Org


def _sign(payload: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def _checkout(client, org: Org, **body) -> dict:
    r = client.post(
        "/api/credits/create-checkout",
        json={"provider": "lemonsqueezy", **(body or {"package_id": "pkg_50"})},
        headers=org.auth("owner"),
    )
    assert r.status_code == 200, r.text
    return r.json()


def _order_event(
    lemon_sandbox,
    reference: str,
    org: Org,
    *,
    order_id=None,
    total=5000,
    status="paid",
    refunded=0,
    event="order_created",
    org_id=None,
) -> dict:
    return {
        "meta": {
            "event_name": event,
            "test_mode": True,
            "webhook_id": "w1",
            "custom_data": {"organization_id": str(org_id or org.id), "checkout_ref": reference, "user_id": "1"},
        },
        "data": {
            "type": "orders",
            "id": order_id or str(uuid.uuid4().int % 10**9),
            "attributes": {
                "store_id": 1,
                "status": status,
                "currency": "USD",
                "subtotal": total,
                "total": total,
                "refunded": refunded == total,
                "refunded_amount": refunded,
            },
        },
    }


def _post(client, lemon_sandbox, body: dict, secret: str | None = None, raw: bytes | None = None):
    payload = raw if raw is not None else json.dumps(body).encode()
    return client.post(
        "/api/credits/lemonsqueezy/webhook",
        content=payload,
        headers={
            "X-Signature": _sign(
                json.dumps(body).encode() if raw is not None else payload, secret or lemon_sandbox.webhook_secret
            ),
            "X-Event-Name": body["meta"]["event_name"],
            "Content-Type": "application/json",
        },
    )


def test_checkout_request_follows_lemon_squeezys_json_api(client, org, lemon_sandbox):
    created = _checkout(client, org, amount="7.25")
    request = next(r for r in reversed(lemon_sandbox.requests()) if r["path"] == "/v1/checkouts")
    assert request["headers"]["accept"] == request["headers"]["content-type"] == "application/vnd.api+json"
    assert request["headers"]["authorization"] == "Bearer test_sandbox_key"
    data = request["body"]["data"]
    assert data["type"] == "checkouts"
    assert data["attributes"]["custom_price"] == 725 and data["attributes"]["checkout_options"]["embed"] is True
    assert data["attributes"]["test_mode"] is True
    assert data["attributes"]["product_options"]["redirect_url"].endswith("/billing")
    custom = data["attributes"]["checkout_data"]["custom"]
    assert custom["organization_id"] == str(org.id) and custom["checkout_ref"] == created["session_id"]
    assert all(isinstance(v, str) for v in custom.values())
    assert data["relationships"] == {
        "store": {"data": {"type": "stores", "id": "1"}},
        "variant": {"data": {"type": "variants", "id": "1"}},
    }
    assert created["url"].startswith(lemon_sandbox.url + "/checkout/buy/") and created["url"].endswith("?embed=1")


def test_client_retries_429_and_5xx_then_gives_a_clear_error(org, lemon_sandbox, app_database):
    from orcapulse_billing.config import get_settings
    from orcapulse_billing.payments.lemonsqueezy_gateway import LemonSqueezyGateway
    from orcapulse_billing.payments.stripe_gateway import PaymentError

    gateway = LemonSqueezyGateway(get_settings(), backoff=0.01)
    lemon_sandbox.configure(faults=[429, 503])
    checkout = gateway.create_checkout(
        amount_cents=5000, custom={"organization_id": "1"}, redirect_url="http://x/", product_name="credits"
    )
    assert checkout.url.startswith(lemon_sandbox.url)
    lemon_sandbox.configure(faults=[500, 502, 503, 504])
    with pytest.raises(PaymentError) as err:
        gateway.create_checkout(amount_cents=5000, custom={}, redirect_url="http://x/", product_name="credits")
    assert err.value.code == "payment_provider_unreachable" and err.value.retryable
    lemon_sandbox.configure(faults=[])
    with pytest.raises(PaymentError) as err:  # a 4xx is not retried and says what was wrong
        gateway.create_checkout(amount_cents=0, custom={}, redirect_url="http://x/", product_name="credits")
    assert err.value.code == "payment_failed" and "positive integer" in err.value.message


def test_webhook_signature(client, org, lemon_sandbox):
    created = _checkout(client, org)
    body = _order_event(lemon_sandbox, created["session_id"], org)
    assert _post(client, lemon_sandbox, body, secret="wrong").status_code == 400
    tampered = json.dumps(body).replace('"total": 5000', '"total": 50000').encode()
    r = _post(client, lemon_sandbox, body, raw=tampered)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_signature"
    missing = client.post("/api/credits/lemonsqueezy/webhook", content=json.dumps(body).encode())
    assert missing.status_code == 400
    assert org.account().transaction_count == 0
    assert _post(client, lemon_sandbox, body).json()["outcome"] == "processed"


def test_replays_and_concurrent_duplicates_credit_once(app, client, org, lemon_sandbox):
    created = _checkout(client, org, package_id="pkg_200")
    body = _order_event(lemon_sandbox, created["session_id"], org, total=20000)
    payload = json.dumps(body).encode()
    headers = {"X-Signature": _sign(payload, lemon_sandbox.webhook_secret), "X-Event-Name": "order_created"}
    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(
            pool.map(
                lambda _: httpx.post(
                    app.backend_url + "/api/credits/lemonsqueezy/webhook", content=payload, headers=headers, timeout=30
                ),
                range(10),
            )
        )
    assert {r.status_code for r in responses} == {200}
    assert sorted(r.json()["outcome"] for r in responses).count("processed") == 1
    with org.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT type, amount, description FROM ledger_entry WHERE account_id = :a ORDER BY seq"),
            {"a": org.account_id},
        ).all()
        assert check_invariants(conn, org.account_id) == []
    assert [tuple(r) for r in rows] == [
        ("purchase", 2_000_000, "Credit top-up via Lemon Squeezy - $200.00"),
        ("bonus", 40_000, "Volume bonus - $200.00 package"),
    ]


def test_partial_then_full_refund(client, org, lemon_sandbox):
    created = _checkout(client, org)
    order = str(uuid.uuid4().int % 10**9)
    _post(client, lemon_sandbox, _order_event(lemon_sandbox, created["session_id"], org, order_id=order))
    partial = _order_event(
        lemon_sandbox,
        created["session_id"],
        org,
        order_id=order,
        event="order_refunded",
        status="partial_refund",
        refunded=1500,
    )
    assert _post(client, lemon_sandbox, partial).json()["outcome"] == "processed"
    assert _post(client, lemon_sandbox, partial).json()["outcome"] == "replay"
    full = _order_event(
        lemon_sandbox,
        created["session_id"],
        org,
        order_id=order,
        event="order_refunded",
        status="refunded",
        refunded=5000,
    )
    assert _post(client, lemon_sandbox, full).json()["outcome"] == "processed"
    assert org.account().balance == Decimal("0.0000")
    with org.engine.connect() as conn:
        refunds = [
            r[0]
            for r in conn.execute(
                sa.text("SELECT amount FROM ledger_entry WHERE account_id = :a AND type = 'refund' ORDER BY seq"),
                {"a": org.account_id},
            )
        ]
    assert refunds == [-150_000, -350_000]


def test_unknown_organization_wrong_amount_and_unpaid_orders_are_not_credited(client, org, lemon_sandbox):
    created = _checkout(client, org)
    base = str(uuid.uuid4().int % 10**8)
    cases = [
        # paid orders that match nothing we can credit are kept for an operator (the attention list)
        (
            _order_event(lemon_sandbox, created["session_id"], org, order_id=f"{base}1", org_id=987654),
            "needs_attention",
        ),
        (_order_event(lemon_sandbox, "ls_not_ours", org, order_id=f"{base}2"), "needs_attention"),
        (_order_event(lemon_sandbox, created["session_id"], org, order_id=f"{base}3", total=4999), "needs_attention"),
        (_order_event(lemon_sandbox, created["session_id"], org, order_id=f"{base}4", status="pending"), "pending"),
    ]
    for body, outcome in cases:
        assert _post(client, lemon_sandbox, body).json()["outcome"] == outcome
    assert org.account().transaction_count == 0
    with org.engine.connect() as conn:
        recorded = conn.execute(
            sa.text("SELECT outcome, detail FROM webhook_event WHERE event_id = :e"), {"e": f"order_created:{base}1"}
        ).one()
    assert tuple(recorded) == ("needs_attention", f"order {base}1: a paid order that matches no checkout of ours")
    with org.engine.connect() as conn:
        reasons = conn.execute(
            sa.text(
                "SELECT reason FROM attention_item WHERE provider = 'lemonsqueezy' AND reference LIKE :b ORDER BY reference"
            ),
            {"b": f"{base}%"},
        ).scalars()
        assert list(reasons) == ["unknown_checkout", "unknown_checkout", "amount_mismatch"]


def test_a_refund_through_the_client_reaches_the_ledger(app, client, org, lemon_sandbox):
    """Pay on the stand-in's hosted page, then refund through our client: both arrive as signed webhooks."""
    from orcapulse_billing.services import get_lemon_purchases

    created = _checkout(client, org, amount="20")
    checkout_id = created["url"].split("/checkout/buy/")[1].split("?")[0]
    paid = httpx.post(f"{lemon_sandbox.url}/checkout/buy/{checkout_id}/pay", json={"card": "4242 4242 4242 4242"})
    order_id = paid.json()["order"]["id"]
    for _ in range(100):
        if org.account().balance == Decimal("20.0000"):
            break
        time.sleep(0.1)
    assert org.account().balance == Decimal("20.0000")
    order = get_lemon_purchases(org.engine).gateway.refund_order(order_id, 500)
    assert (order.status, order.refunded_cents) == ("partial_refund", 500)
    for _ in range(100):
        if org.account().balance == Decimal("15.0000"):
            break
        time.sleep(0.1)
    assert org.account().balance == Decimal("15.0000")


def test_an_order_first_delivered_pending_is_credited_once_when_it_is_paid(client, org, lemon_sandbox):
    """Its event id is fixed per order (order_created:<id>): a pending outcome must stay open, and a
    refund that overtakes the order waits for it."""
    created = _checkout(client, org)
    order_id = str(uuid.uuid4().int % 10**9)
    pending = _order_event(lemon_sandbox, created["session_id"], org, order_id=order_id, status="pending")
    paid = _order_event(lemon_sandbox, created["session_id"], org, order_id=order_id)
    refunded = _order_event(
        lemon_sandbox, created["session_id"], org, order_id=order_id, event="order_refunded", refunded=1000
    )
    assert _post(client, lemon_sandbox, pending).json()["outcome"] == "pending"
    assert _post(client, lemon_sandbox, refunded).json()["outcome"] == "waiting"
    assert org.account().transaction_count == 0
    assert _post(client, lemon_sandbox, paid).json()["outcome"] == "processed"
    assert org.account().balance == Decimal("40.0000")  # credited, and the waiting refund applied with it
    for body in (paid, pending, refunded):
        assert _post(client, lemon_sandbox, body).json()["outcome"] == "replay"
    assert org.account().balance == Decimal("40.0000")
    with org.engine.connect() as conn:
        assert check_invariants(conn, org.account_id) == []


def test_a_paid_order_in_another_currency_is_not_credited_and_needs_attention(client, org, lemon_sandbox):
    created = _checkout(client, org)
    body = _order_event(lemon_sandbox, created["session_id"], org)
    body["data"]["attributes"]["currency"] = "EUR"
    assert _post(client, lemon_sandbox, body).json()["outcome"] == "needs_attention"
    assert org.account().transaction_count == 0
