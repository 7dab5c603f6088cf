"""Stripe, through the official SDK (v16 StripeClient). The base URL, key and webhook secrets come
from configuration: real Stripe, or the offline sandbox (localstripe plus our Checkout stand-in).

Only what the product needs, with Stripe's own errors mapped to a few `PaymentError` codes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import stripe
from stripe import APIConnectionError, CardError, IdempotencyError, StripeError

from ..config import Settings

if TYPE_CHECKING:
    from stripe.params.checkout import SessionCreateParams

_P = ParamSpec("_P")
_T = TypeVar("_T")


class PaymentError(Exception):
    """A payment that did not go through. `code` is what the API answers; `retryable` says whether
    the same request (same idempotency key) may simply be sent again."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        payment_intent_id: str | None = None,
        payment_method_id: str | None = None,
    ):
        super().__init__(message)
        self.code, self.message, self.retryable = code, message, retryable
        # an `authentication_required` charge: the PaymentIntent the customer can still confirm, and its card
        self.payment_intent_id, self.payment_method_id = payment_intent_id, payment_method_id


AUTHENTICATION_MESSAGE = "your bank asks to confirm this payment (3-D Secure): use checkout instead"


class WebhookSignatureError(Exception):
    pass


@dataclass(frozen=True)
class Card:
    id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True)
class Charge:
    payment_intent_id: str
    status: str
    amount_cents: int
    currency: str = "usd"


@dataclass(frozen=True)
class IntentSummary:
    """A PaymentIntent as the reconcile job needs it."""

    id: str
    status: str
    amount_cents: int
    currency: str
    metadata: dict[str, str]
    created: int


def _summary(pi: stripe.PaymentIntent) -> IntentSummary:
    plain = pi.to_dict()
    return IntentSummary(
        plain["id"],
        str(plain["status"]),
        int(plain["amount"]),
        str(plain["currency"]),
        {str(k): str(v) for k, v in (plain.get("metadata") or {}).items()},
        int(plain["created"]),
    )


def _card(pm: stripe.PaymentMethod) -> Card:
    card = pm["card"]
    return Card(pm["id"], str(card["brand"]), str(card["last4"]), int(card["exp_month"]), int(card["exp_year"]))


class StripeGateway:
    provider = "stripe"

    def __init__(self, settings: Settings):
        if not settings.stripe_secret_key:
            raise PaymentError("payments_unavailable", "card payments are not configured")
        # Retries resend the same idempotency key, so Stripe answers a retried charge with the first
        # attempt's result instead of charging again. A bounded timeout: an answer that never comes
        # is a payment "being confirmed" (webhooks and the reconcile job settle it), not a hung request.
        self.client = stripe.StripeClient(
            settings.stripe_secret_key,
            base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base else None,
            max_network_retries=settings.stripe_network_retries,
            http_client=stripe.RequestsClient(timeout=settings.stripe_timeout_seconds),
        )
        self.webhook_secrets = settings.stripe_webhook_secrets

    def _call(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return fn(*args, **kwargs)
        except CardError as exc:
            code = getattr(exc, "code", None) or "card_declined"
            if code == "authentication_required":  # Stripe's answer to an off-session charge needing 3-D Secure
                body: dict[str, Any] = exc.json_body if isinstance(exc.json_body, dict) else {}
                error: dict[str, Any] = body.get("error") or {}
                intent, method = error.get("payment_intent") or {}, error.get("payment_method") or {}
                raise PaymentError(
                    "authentication_required",
                    AUTHENTICATION_MESSAGE,
                    payment_intent_id=intent.get("id"),
                    payment_method_id=method.get("id") or intent.get("payment_method"),
                ) from None
            raise PaymentError("card_declined", exc.user_message or "the card was declined") from None
        except APIConnectionError:
            raise PaymentError(
                "payment_provider_unreachable",
                "could not reach the payment provider; nothing was charged, try again",
                retryable=True,
            ) from None
        except StripeError as exc:
            if isinstance(exc, IdempotencyError) or (exc.http_status == 409 and "idempotent" in str(exc).lower()):
                raise PaymentError(
                    "idempotency_key_reused",
                    "this Idempotency-Key was already used for a different request; use a new key per purchase",
                ) from None
            if (exc.http_status or 0) >= 500:
                raise PaymentError(
                    "payment_provider_unreachable", "the payment provider is not answering; try again", retryable=True
                ) from None
            if exc.http_status == 404:
                raise PaymentError("not_found", exc.user_message or "no such object at the payment provider") from None
            raise PaymentError(
                "payment_failed", exc.user_message or "the payment provider refused the request"
            ) from None

    # -- customers and cards ------------------------------------------------------------------

    def create_customer(self, organization_id: int, name: str, idempotency_key: str) -> str:
        customer = self._call(
            self.client.v1.customers.create,
            params={"name": name, "metadata": {"organization_id": str(organization_id)}},
            options={"idempotency_key": idempotency_key},
        )
        return customer.id

    def card(self, payment_method_id: str) -> Card:
        return _card(self._call(self.client.v1.payment_methods.retrieve, payment_method_id))

    def card_from_setup_intent(self, setup_intent_id: str) -> Card:
        intent = self._call(self.client.v1.setup_intents.retrieve, setup_intent_id)
        return self.card(intent["payment_method"])

    def card_from_payment_intent(self, payment_intent_id: str) -> Card | None:
        intent = self._call(self.client.v1.payment_intents.retrieve, payment_intent_id)
        return self.card(intent["payment_method"]) if intent["payment_method"] else None

    def detach(self, payment_method_id: str) -> None:
        try:
            self._call(self.client.v1.payment_methods.detach, payment_method_id)
        except PaymentError as exc:
            if exc.code not in ("payment_failed", "not_found"):  # already detached or gone: removing locally is right
                raise

    # -- checkout and charges ---------------------------------------------------------------

    def create_checkout(
        self,
        *,
        mode: str,
        customer_id: str,
        amount_cents: int | None,
        product_name: str,
        metadata: dict[str, str],
        client_reference_id: str,
        success_url: str,
        cancel_url: str,
        idempotency_key: str,
    ) -> tuple[str, str]:
        params: SessionCreateParams = {
            "mode": mode,
            "customer": customer_id,
            "client_reference_id": client_reference_id,
            "metadata": metadata,
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        if mode == "payment":
            if amount_cents is None:  # what Stripe would refuse: a payment line item without an amount
                raise PaymentError("payment_failed", "a payment checkout needs an amount")
            params["line_items"] = [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": amount_cents,
                        "product_data": {"name": product_name},
                    },
                }
            ]
            params["payment_intent_data"] = {"setup_future_usage": "off_session", "metadata": metadata}
        else:
            params["currency"] = "usd"
            params["setup_intent_data"] = {"metadata": metadata}
        session = self._call(
            self.client.v1.checkout.sessions.create, params=params, options={"idempotency_key": idempotency_key}
        )
        return session["id"], session["url"]

    def charge_saved_card(
        self,
        *,
        customer_id: str,
        payment_method_id: str,
        amount_cents: int,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> Charge:
        intent = self._call(
            self.client.v1.payment_intents.create,
            params={
                "amount": amount_cents,
                "currency": "usd",
                "customer": customer_id,
                "payment_method": payment_method_id,
                "confirm": True,
                "off_session": True,
                "metadata": metadata,
            },
            options={"idempotency_key": idempotency_key},
        )
        if intent["status"] == "requires_action":  # treated like Stripe's authentication_required error
            raise PaymentError(
                "authentication_required",
                AUTHENTICATION_MESSAGE,
                payment_intent_id=intent["id"],
                payment_method_id=intent["payment_method"],
            )
        if intent["status"] != "succeeded":
            raise PaymentError("card_declined", f"the payment did not succeed ({intent['status']})")
        return Charge(intent["id"], intent["status"], int(intent["amount"]), str(intent["currency"]))

    def authentication_page(
        self, payment_intent_id: str, *, payment_method_id: str | None, return_url: str, idempotency_key: str
    ) -> tuple[str, str | None]:
        """Readies a charge that needs the customer's authentication to be confirmed on the provider's
        hosted page (Stripe's manual 3-D Secure redirect: the PaymentIntent confirmed with a
        `return_url` answers `next_action.redirect_to_url`); its status and that page's URL (None when
        there is none: it succeeded at once, or failed)."""
        params: dict[str, Any] = {"return_url": return_url}
        if payment_method_id:
            params["payment_method"] = payment_method_id
        intent = self._call(
            self.client.v1.payment_intents.confirm,
            payment_intent_id,
            params=params,  # type: ignore[arg-type]
            options={"idempotency_key": idempotency_key},
        ).to_dict()
        action = intent.get("next_action") or {}
        url = (action.get("redirect_to_url") or {}).get("url") if action.get("type") == "redirect_to_url" else None
        return str(intent["status"]), url

    # -- what reconciliation and events read back ---------------------------------------------------

    def payment_intent(self, payment_intent_id: str) -> IntentSummary:
        return _summary(self._call(self.client.v1.payment_intents.retrieve, payment_intent_id))

    def recent_payment_intents(self, created_since: int) -> list[IntentSummary]:
        """Every PaymentIntent created since then (auto-paginated), newest first."""

        def every() -> list[IntentSummary]:  # later pages are fetched while iterating: inside _call too
            page = self.client.v1.payment_intents.list(params={"created": {"gte": created_since}, "limit": 100})
            return [_summary(pi) for pi in page.auto_paging_iter()]

        return self._call(every)

    def recent_checkout_sessions(self, created_since: int) -> list[dict[str, Any]]:
        def every() -> list[dict[str, Any]]:
            page = self.client.v1.checkout.sessions.list(params={"created": {"gte": created_since}, "limit": 100})
            return [session.to_dict() for session in page.auto_paging_iter()]

        return self._call(every)

    def charge(self, charge_id: str) -> dict[str, Any]:
        """The charge as Stripe holds it now (`amount_refunded` excludes failed refunds)."""
        return self._call(self.client.v1.charges.retrieve, charge_id).to_dict()

    # -- webhooks -------------------------------------------------------------------------------

    def verify_event(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        """Checks the Stripe-Signature header on the raw body against every configured secret
        (several during rotation); returns the event as a plain dict."""
        if not signature:
            raise WebhookSignatureError("missing Stripe-Signature header")
        if not self.webhook_secrets:
            raise WebhookSignatureError("no webhook secret is configured")
        for secret in self.webhook_secrets:
            try:
                event: stripe.Event = stripe.Webhook.construct_event(payload, signature, secret)
            except stripe.SignatureVerificationError:
                continue
            except ValueError:
                raise WebhookSignatureError("the body is not a JSON event") from None
            return event.to_dict()
        raise WebhookSignatureError("no configured secret matches the signature (or it is too old)")
