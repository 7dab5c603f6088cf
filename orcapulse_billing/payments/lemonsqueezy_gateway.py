"""Lemon Squeezy, through a small typed client over httpx (there is no official Python SDK, and
the unofficial one cannot create checkouts). JSON:API requests, retries with backoff on 429 and
5xx (honouring Retry-After), timeouts, and clear errors for the rest. Signature checks for the
order webhooks (hex HMAC-SHA256 of the raw body, compared in constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from ..config import Settings
from .live_mode import lemonsqueezy_checkout_test_mode
from .stripe_gateway import PaymentError, WebhookSignatureError

JSONAPI = "application/vnd.api+json"


@dataclass(frozen=True)
class LemonCheckout:
    id: str
    url: str


@dataclass(frozen=True)
class LemonOrder:
    id: str
    status: str
    total_cents: int
    refunded_cents: int
    custom_data: dict[str, Any]  # checkout_data.custom as it came back (JSON)
    currency: str = "USD"


class LemonSqueezyGateway:
    provider = "lemonsqueezy"

    def __init__(
        self,
        settings: Settings,
        *,
        retries: int = 3,
        backoff: float = 0.5,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ):
        if not (settings.lemonsqueezy_api_key and settings.lemonsqueezy_store_id and settings.lemonsqueezy_variant_id):
            raise PaymentError("payments_unavailable", "Lemon Squeezy is not configured")
        self.store_id, self.variant_id = settings.lemonsqueezy_store_id, settings.lemonsqueezy_variant_id
        self.webhook_secret = settings.lemonsqueezy_webhook_secret
        self.test_mode = lemonsqueezy_checkout_test_mode(settings)  # never in production
        self.retries, self.backoff = retries, backoff
        self.http = httpx.Client(
            base_url=settings.lemonsqueezy_api_base.rstrip("/"),
            timeout=timeout,
            transport=transport,
            headers={
                "Accept": JSONAPI,
                "Content-Type": JSONAPI,
                "Authorization": f"Bearer {settings.lemonsqueezy_api_key}",
            },
        )

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        for attempt in range(self.retries + 1):
            try:
                r = self.http.request(method, path, json=body)
            except httpx.TimeoutException:
                if attempt < self.retries:
                    time.sleep(self.backoff * 2**attempt)
                    continue
                raise PaymentError(
                    "payment_provider_unreachable", "Lemon Squeezy did not answer in time", retryable=True
                ) from None
            except httpx.HTTPError:
                if attempt < self.retries:
                    time.sleep(self.backoff * 2**attempt)
                    continue
                raise PaymentError(
                    "payment_provider_unreachable", "could not reach Lemon Squeezy", retryable=True
                ) from None
            if r.status_code == 429 or r.status_code >= 500:
                if attempt < self.retries:
                    retry_after = r.headers.get("retry-after", "")
                    wait_seconds = (
                        float(retry_after)  # ok: seconds to wait, not money
                        if retry_after.replace(".", "", 1).isdigit()
                        else self.backoff * 2**attempt
                    )
                    time.sleep(min(wait_seconds, 30))
                    continue
                raise PaymentError(
                    "payment_provider_unreachable",
                    f"Lemon Squeezy is unavailable (HTTP {r.status_code}); try again",
                    retryable=True,
                )
            if r.status_code >= 400:
                raise PaymentError("payment_failed", _error_detail(r))
            document: dict[str, Any] = r.json()  # a JSON:API document is an object
            return document
        raise AssertionError("unreachable")

    def create_checkout(
        self, *, amount_cents: int, custom: dict[str, str], redirect_url: str, product_name: str
    ) -> LemonCheckout:
        body = {
            "data": {
                "type": "checkouts",
                "attributes": {
                    "custom_price": amount_cents,
                    "product_options": {"name": product_name, "redirect_url": redirect_url},
                    "checkout_options": {"embed": True},
                    "checkout_data": {"custom": custom},
                    "test_mode": self.test_mode,
                },
                "relationships": {
                    "store": {"data": {"type": "stores", "id": str(self.store_id)}},
                    "variant": {"data": {"type": "variants", "id": str(self.variant_id)}},
                },
            }
        }
        data = self._request("POST", "/checkouts", body)["data"]
        return LemonCheckout(str(data["id"]), data["attributes"]["url"])

    def get_order(self, order_id: str) -> LemonOrder:
        return order_from(self._request("GET", f"/orders/{order_id}")["data"], {})

    def refund_order(self, order_id: str, amount_cents: int | None = None) -> LemonOrder:
        body: dict[str, Any] = {"data": {"type": "orders", "id": str(order_id), "attributes": {}}}
        if amount_cents is not None:
            body["data"]["attributes"]["amount"] = amount_cents
        return order_from(self._request("POST", f"/orders/{order_id}/refund", body)["data"], {})

    def verify(self, payload: bytes, signature: str | None) -> None:
        if not self.webhook_secret:
            raise WebhookSignatureError("no Lemon Squeezy signing secret is configured")
        if not signature:
            raise WebhookSignatureError("missing X-Signature header")
        expected = hmac.new(self.webhook_secret.encode(), payload, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.strip().lower()):
            raise WebhookSignatureError("the X-Signature does not match the body")


def order_from(data: Mapping[str, Any], custom: Mapping[str, Any]) -> LemonOrder:
    a = data.get("attributes") or {}
    return LemonOrder(
        str(data.get("id")),
        str(a.get("status")),
        int(a.get("total") or 0),
        int(a.get("refunded_amount") or 0),
        dict(custom),
        str(a.get("currency") or "USD"),
    )


def _error_detail(r: httpx.Response) -> str:
    try:
        errors = r.json().get("errors") or []
        return "; ".join(e.get("detail") or e.get("title") or "" for e in errors) or f"HTTP {r.status_code}"
    except ValueError:
        return f"Lemon Squeezy answered HTTP {r.status_code}"
