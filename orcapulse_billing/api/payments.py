"""Stripe payments: checkout, setup checkout, one-click purchase, saved cards (owners only) and
the signed webhook (public, verified on the raw body)."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, ValidationError, model_validator
from starlette.concurrency import run_in_threadpool

from ..auth import Principal
from ..config import get_settings
from ..db import get_engine
from ..money import fmt4
from ..payments.auto_recharge_policy import DAILY_LIMIT
from ..payments.flow import PurchaseError, choose, return_urls
from ..payments.stripe_gateway import PaymentError, WebhookSignatureError
from ..pricing import PACKAGES
from ..services import get_auto_recharger, get_lemon_purchases, get_stripe_purchases
from . import schemas as s
from .credits import posted_entry_json
from .deps import DecimalRoute, client_ip, current_principal, owner_principal, rate_limit
from .errors import ApiError, describe, responses

router = APIRouter(prefix="/api/credits", tags=["payments"], route_class=DecimalRoute)
IdemHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=150,
        description="Retrying with the same key never charges or credits twice (one is made up when absent).",
    ),
]
PAYMENT_STATUS = {
    "card_declined": 402,
    "authentication_required": 402,
    "payment_failed": 402,
    "payment_provider_unreachable": 503,
    # charged or not, the provider's answer was lost: the webhook or the reconcile job settles it, and a
    # retry with the same Idempotency-Key answers with the outcome (never a second charge)
    "payment_pending": 202,
    "idempotency_key_reused": 409,
    "payments_unavailable": 503,
}
PackageId = Literal[tuple(p.id for p in PACKAGES)]  # type: ignore[valid-type]
CustomAmount = s.decimal_string(
    r"^(?:[1-9][0-9]?(?:\.[0-9]{1,2})?|100(?:\.0{1,2})?)$",
    "a custom amount: $1.00 to $100.00 in whole cents",
    "25.00",
    code="invalid_amount",
)
_CHOICE = ("package_id", "amount")


def _one_of_package_or_amount(schema: dict[str, Any]) -> None:
    """Documents what the validator below checks: exactly one of the two, never null."""
    for name in _CHOICE:
        prop = schema["properties"][name]
        prop.pop("default", None)
        prop.update(next(a for a in prop.pop("anyOf") if a.get("type") != "null"))
    schema["oneOf"] = [{"required": [name]} for name in _CHOICE]


class _Purchase(s.Strict):
    """A package or a custom amount: exactly one of `package_id` and `amount`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_of_package_or_amount)
    package_id: PackageId | None = None
    amount: CustomAmount | None = None

    @model_validator(mode="before")
    @classmethod
    def _exactly_one(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [name for name in _CHOICE if name in data]
            if len(given) != 1:
                raise ValueError("give either package_id or amount")
            if data[given[0]] is None:
                raise ValueError(f"{given[0]} must not be null")
        return data


class CheckoutRequest(_Purchase):
    provider: Literal["stripe", "lemonsqueezy"] = "stripe"


class QuickPurchaseRequest(_Purchase):
    payment_method_id: Annotated[
        str | None, Field(max_length=100, description="A saved card's id; the default card when absent.")
    ] = None


class CheckoutCreated(BaseModel):
    session_id: str
    url: str


class SavedCard(BaseModel):
    id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    is_default: bool


class QuickPurchaseResult(BaseModel):
    entries: list[s.HistoryEntry]
    balance: s.Money
    replayed: bool


def _purchases():
    try:
        return get_stripe_purchases()
    except PaymentError as exc:
        raise ApiError(503, exc.code, exc.message) from None


def _lemon():
    try:
        return get_lemon_purchases()
    except PaymentError as exc:
        raise ApiError(503, exc.code, exc.message) from None


def _choice(body: _Purchase):
    try:
        return choose(get_settings(), body.package_id, body.amount)
    except PurchaseError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None


def _payment_error(exc: PaymentError) -> ApiError:
    return ApiError(PAYMENT_STATUS.get(exc.code, 402), exc.code, exc.message)


@router.post(
    "/create-checkout",
    response_model=CheckoutCreated,
    responses=responses(400, 401, 403, 409, 429, 503),
    summary="Start a Stripe Checkout for a package or a custom amount ($1-$100)",
)
def create_checkout(
    body: CheckoutRequest,
    request: Request,
    idempotency_key: IdemHeader = None,
    principal: Principal = Depends(owner_principal),
) -> CheckoutCreated:
    if body.provider not in get_settings().payment_providers:
        raise ApiError(400, "provider_unavailable", f"{body.provider} is not offered here")
    if body.provider == "lemonsqueezy":
        rate_limit("purchase", str(principal.organization_id), limit=20)
        try:
            created = _lemon().start_checkout(
                principal,
                _choice(body),
                ip=client_ip(request),
                redirect_url=get_settings().app_url.rstrip("/") + "/billing",
            )
        except PaymentError as exc:
            raise _payment_error(exc) from None
        return CheckoutCreated(**created)
    return _start_checkout(principal, _choice(body), request, idempotency_key)


def _start_checkout(principal: Principal, choice, request: Request, idempotency_key: str | None) -> CheckoutCreated:
    rate_limit("purchase", str(principal.organization_id), limit=20)
    success, cancel = return_urls(str(request.base_url))
    try:
        created = _purchases().start_checkout(
            principal,
            choice,
            ip=client_ip(request),
            success_url=success,
            cancel_url=cancel,
            request_key=idempotency_key or uuid.uuid4().hex,
        )
    except PaymentError as exc:
        raise _payment_error(exc) from None
    return CheckoutCreated(**created)


@router.post(
    "/create-setup-checkout",
    response_model=CheckoutCreated,
    responses=responses(400, 401, 403, 409, 429, 503),
    summary="Save a card without charging (Stripe Checkout in setup mode)",
)
def create_setup_checkout(
    request: Request, idempotency_key: IdemHeader = None, principal: Principal = Depends(owner_principal)
) -> CheckoutCreated:
    return _start_checkout(principal, None, request, idempotency_key)


@router.post(
    "/quick-purchase",
    response_model=QuickPurchaseResult,
    responses=responses(202, 400, 401, 402, 403, 404, 409, 429, 503),
    summary="Charge the saved card now (off-session) and add the credits",
    description=(
        "Send an Idempotency-Key per purchase and reuse it on every retry: the card is charged at most once. "
        "202 `payment_pending`: the payment provider's answer was lost; the credits are added as soon as it "
        "confirms the payment (webhook or reconciliation), and a retry with the same key answers with the "
        "outcome. 409 `payment_in_progress`: this purchase, or another of the organization's, is still unsettled."
    ),
)
def quick_purchase(
    body: QuickPurchaseRequest,
    request: Request,
    idempotency_key: IdemHeader = None,
    principal: Principal = Depends(owner_principal),
) -> QuickPurchaseResult:
    rate_limit("purchase", str(principal.organization_id), limit=20)
    choice = _choice(body)
    try:
        entries = _purchases().quick_purchase(
            principal,
            choice,
            payment_method_id=body.payment_method_id,
            request_key=idempotency_key or uuid.uuid4().hex,
            ip=client_ip(request),
        )
    except PurchaseError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    except PaymentError as exc:
        raise _payment_error(exc) from None
    return QuickPurchaseResult(
        entries=[posted_entry_json(e) for e in entries],
        balance=fmt4(entries[-1].balance_after_units),
        replayed=entries[0].replayed,
    )


@router.get(
    "/payment-methods",
    response_model=list[SavedCard],
    responses=responses(400, 401, 403, 503),
    summary="Saved cards (brand, last four, expiry)",
)
def list_payment_methods(principal: Principal = Depends(owner_principal)) -> list[SavedCard]:
    return [
        SavedCard(
            id=c["provider_id"],
            brand=c["brand"],
            last4=c["last4"],
            exp_month=c["exp_month"],
            exp_year=c["exp_year"],
            is_default=c["is_default"],
        )
        for c in _purchases().cards(principal.organization_id)
    ]


@router.delete(
    "/payment-methods",
    status_code=204,
    responses=responses(400, 401, 403, 404, 503),
    summary="Remove a saved card (detached at Stripe, deleted here)",
)
def delete_payment_method(
    request: Request,
    payment_method_id: str = Query(..., max_length=100),
    principal: Principal = Depends(owner_principal),
):
    try:
        _purchases().remove_card(
            principal.organization_id, payment_method_id, user_id=principal.user_id, ip=client_ip(request)
        )
    except PurchaseError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    except PaymentError as exc:
        raise _payment_error(exc) from None


class AutoRechargeSettings(BaseModel):
    """What auto-recharge does now. It charges the larger of `amount` and what brings the balance back up
    to `threshold` (counting payments being confirmed). After a decline it waits (1 hour, then 6) and
    pauses after 3 in a row (`disabled_reason`); it makes at most `daily_limit` charges in any 24 hours.
    A charge the bank wants confirmed (3-D Secure) pauses it until the owner confirms that payment at
    `action_url`, which turns it back on. Buying credits by hand never turns it back on."""

    enabled: bool
    threshold: s.Money
    amount: s.Money
    monthly_cap: s.Money | None
    consecutive_failures: int
    disabled_reason: str | None = Field(description="why it is off or paused, when it turned itself off")
    last_error: str | None = Field(description="why the last charge failed, while failures are being retried")
    next_attempt_at: datetime | None = Field(
        description="no charge before this (the backoff after a decline, or the daily limit); null when it may charge"
    )
    charges_last_24h: int = Field(ge=0, description="auto-recharge charges started in the last 24 hours")
    daily_limit: int = Field(description="the most charges it makes in any 24 hours")
    action_url: str | None = Field(
        description="the payment provider's page where an owner confirms the charge that paused it (3-D Secure); "
        "owners only (null for others)"
    )
    recharge: (
        Literal[
            "charged",
            "pending",
            "failed",
            "disabled",
            "requires_action",
            "daily_limit",
            "capped",
            "waiting",
            "in_flight",
            "not_needed",
            "off",
        ]
        | None
    ) = Field(
        default=None,
        description="PUT only: turning it on or changing it while the balance is below the threshold recharges "
        "at once; what that did (null: the balance was not below it, or it is off)",
    )


Threshold = s.decimal_string(
    r"^(?:(?:[5-9]|[1-9][0-9]{1,3})(?:\.[0-9]{1,4})?|10000(?:\.0{1,4})?)$",
    "5 to 10,000 credits, up to 4 decimals",
    "10.00",
)
RechargeAmount = s.decimal_string(
    r"^(?:(?:[2-9][0-9]|[1-9][0-9]{2})(?:\.[0-9]{1,2})?|1000(?:\.0{1,2})?)$",
    "$20 to $1,000 in whole cents",
    "25.00",
)
MonthlyCap = s.decimal_string(
    r"^(?:[2-9][0-9]|[1-9][0-9]{2,9})(?:\.[0-9]{1,2})?$",
    "$20 up to $9,999,999,999.99 in whole cents, and at least `amount`",
    "100.00",
)


class AutoRechargeUpdate(s.Strict):
    """`monthly_cap`, when given, must be at least `amount`; `enabled` needs a saved card."""

    enabled: bool
    threshold: Threshold
    amount: RechargeAmount
    monthly_cap: MonthlyCap | None = None


def _policy_json(policy, *, owner: bool = True) -> AutoRechargeSettings:
    return AutoRechargeSettings(
        enabled=policy.enabled,
        threshold=f"{policy.threshold:.4f}",
        amount=f"{policy.amount:.4f}",
        monthly_cap=f"{policy.monthly_cap:.4f}" if policy.monthly_cap is not None else None,
        consecutive_failures=policy.consecutive_failures,
        disabled_reason=policy.disabled_reason,
        last_error=policy.last_error,
        next_attempt_at=policy.next_attempt_at,
        charges_last_24h=policy.charges_last_24h,
        daily_limit=DAILY_LIMIT,
        action_url=policy.action_url if owner else None,  # the owners confirm it (as on the page)
        recharge=policy.recharge,
    )


@router.get(
    "/auto-recharge",
    response_model=AutoRechargeSettings,
    responses=responses(400, 401),
    summary="Auto-recharge settings",
)
def get_auto_recharge(principal: Principal = Depends(current_principal)) -> AutoRechargeSettings:
    return _policy_json(get_auto_recharger(get_engine()).get(principal.organization_id), owner=principal.is_owner)


@router.put(
    "/auto-recharge",
    response_model=AutoRechargeSettings,
    responses=responses(400, 401, 403),
    summary="Change auto-recharge (threshold >= 5 credits, amount >= $20, optional monthly cap); "
    "below the threshold, it recharges at once",
)
def put_auto_recharge(
    body: AutoRechargeUpdate, request: Request, principal: Principal = Depends(owner_principal)
) -> AutoRechargeSettings:
    try:
        policy = get_auto_recharger(get_engine()).update(
            principal,
            enabled=body.enabled,
            threshold=body.threshold,
            amount=body.amount,
            monthly_cap=body.monthly_cap,
            ip=client_ip(request),
        )
    except PurchaseError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    return _policy_json(policy)


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
    purchases = _purchases()
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
    purchases = _lemon()
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


@router.get("/checkout-return", response_class=HTMLResponse, include_in_schema=False)
def checkout_return(status: str = "success") -> HTMLResponse:
    """Where the checkout popup lands: it closes itself; the billing page waits for the webhook."""
    text = "Payment received. You can close this window." if status == "success" else "Checkout cancelled."
    return HTMLResponse(
        f"<!doctype html><title>OrcaPulse checkout</title><body style='font-family:system-ui;padding:40px'>"
        f"<p data-testid='checkout-return'>{text}</p><script>setTimeout(function(){{window.close()}}, 300)</script>"
    )
