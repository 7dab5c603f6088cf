"""The payment providers' signed webhooks (public): Stripe's and Lemon Squeezy's events, their signatures
verified on the raw body before anything is parsed; the parts we read are typed, the rest is the provider's.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, ValidationError
from starlette.concurrency import run_in_threadpool

from ..config import get_settings
from ..payments.stripe_gateway import PaymentError, WebhookSignatureError
from .deps import DecimalRoute
from .errors import ApiError, describe, responses
from .payments import lemon_purchases_or_503, stripe_purchases_or_503

router = APIRouter(prefix="/api/credits", tags=["payments"], route_class=DecimalRoute)


class WebhookAck(BaseModel):
    received: bool
    outcome: str


# -- provider events: the parts we read, typed (anything else is the provider's business) -------


def _integral(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[StrictInt, BeforeValidator(_integral)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class StripeEventObject(_Open):
    id: str | None = None
    payment_intent: str | None = None
    setup_intent: str | None = None
    amount_total: Integer | None = None
    amount_refunded: Integer | None = None
    metadata: dict[str, Any] | None = None


class StripeEventData(_Open):
    object: StripeEventObject


class StripeEvent(_Open):
    """A Stripe event as Stripe sends it; only these fields are read."""

    id: Annotated[str, Field(min_length=1)]
    type: str
    data: StripeEventData


OrganizationRef = Annotated[str, Field(pattern=r"^[0-9]{1,18}$")] | Annotated[Integer, Field(ge=0, le=10**18 - 1)]


class LemonCustomData(_Open):
    organization_id: OrganizationRef | None = None
    checkout_ref: str | None = None


class LemonMeta(_Open):
    event_name: str
    custom_data: LemonCustomData | None = None


class LemonAttributes(_Open):
    total: Integer | None = None
    refunded_amount: Integer | None = None


class LemonData(_Open):
    type: str
    id: str | Integer
    attributes: LemonAttributes | None = None


class LemonEvent(_Open):
    """A Lemon Squeezy webhook as Lemon Squeezy sends it; only these fields are read."""

    meta: LemonMeta
    data: LemonData


def _json_object(payload: bytes) -> dict:
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body is not a JSON object")
    return body


def _event(model: type[BaseModel], body: dict) -> None:
    try:
        model.model_validate(body)
    except ValidationError as exc:
        raise ApiError(400, "invalid_request", describe(exc.errors())) from None


def _signed_json(model: type[BaseModel], header: str, pattern: str | None = None) -> dict[str, Any]:
    parameter = {"name": header, "in": "header", "required": True, "schema": {"type": "string", "minLength": 1}}
    if pattern:
        parameter["schema"]["pattern"] = pattern
    return {
        "parameters": [parameter],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        },
    }


@router.post(
    "/webhook",
    response_model=WebhookAck,
    responses=responses(400, 503),
    summary="Stripe webhook (Stripe-Signature verified on the raw body)",
    openapi_extra=_signed_json(StripeEvent, "Stripe-Signature"),
)
async def stripe_webhook(request: Request) -> WebhookAck:
    from ..payments import live_mode

    payload = await request.body()
    purchases = stripe_purchases_or_503()
    signature = request.headers.get("stripe-signature")
    if not signature:
        raise ApiError(400, "invalid_signature", "missing Stripe-Signature header")
    if not signature.isascii():  # Stripe's own check compares str digests, which must be ASCII
        raise ApiError(400, "invalid_signature", "the Stripe-Signature is not a Stripe signature header")
    body = _json_object(payload)
    try:
        event = purchases.gateway.verify_event(payload, signature)
    except WebhookSignatureError as exc:
        raise ApiError(400, "invalid_signature", str(exc)) from None
    try:
        live_mode.check_stripe_event(get_settings(), event)
    except live_mode.TestModeEvent as exc:  # production: test money is refused, nothing recorded
        raise ApiError(400, exc.code, exc.message) from None
    _event(StripeEvent, body)
    try:
        outcome = await run_in_threadpool(purchases.handle_event, event, payload.decode())  # the raw event is kept
    except PaymentError as exc:  # Stripe itself unreachable while reading card details: let it retry
        raise ApiError(503, exc.code, exc.message) from None
    return WebhookAck(received=True, outcome=outcome)


LEMON_SIGNATURE = r"^[0-9A-Fa-f]{64}$"


@router.post(
    "/lemonsqueezy/webhook",
    response_model=WebhookAck,
    responses=responses(400, 503),
    summary="Lemon Squeezy order webhook (X-Signature verified on the raw body)",
    openapi_extra=_signed_json(LemonEvent, "X-Signature", LEMON_SIGNATURE),
)
async def lemonsqueezy_webhook(request: Request) -> WebhookAck:
    from ..payments import live_mode

    payload = await request.body()
    purchases = lemon_purchases_or_503()
    signature = request.headers.get("x-signature")
    if signature is not None and not (signature.isascii() and re.fullmatch(LEMON_SIGNATURE, signature)):
        raise ApiError(400, "invalid_signature", "the X-Signature is not a hex HMAC-SHA256")
    try:
        purchases.gateway.verify(payload, signature)
    except WebhookSignatureError as exc:
        raise ApiError(400, "invalid_signature", str(exc)) from None
    body = _json_object(payload)
    try:
        live_mode.check_lemonsqueezy_event(get_settings(), body)
    except live_mode.TestModeEvent as exc:  # production: test money is refused, nothing recorded
        raise ApiError(400, exc.code, exc.message) from None
    _event(LemonEvent, body)
    outcome = await run_in_threadpool(purchases.handle_webhook, body, payload.decode())
    return WebhookAck(received=True, outcome=outcome)


WEBHOOK_EVENTS = (StripeEvent, LemonEvent)  # documented in components (api.openapi)
