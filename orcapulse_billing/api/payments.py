"""Stripe and Lemon Squeezy purchases: checkout, setup checkout, one-click purchase and saved cards
(owners only). Auto-recharge settings are in auto_recharge.py, the providers' webhooks in provider_webhooks.py."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..auth import Principal
from ..config import get_settings
from ..money import fmt4
from ..payments.flow import PurchaseError, choose, return_urls
from ..payments.stripe_gateway import PaymentError
from ..pricing import PACKAGES
from ..services import get_lemon_purchases, get_stripe_purchases
from . import schemas as s
from .credits import posted_entry_json
from .deps import DecimalRoute, client_ip, owner_principal, rate_limit
from .errors import ApiError, responses

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


def stripe_purchases_or_503():
    try:
        return get_stripe_purchases()
    except PaymentError as exc:
        raise ApiError(503, exc.code, exc.message) from None


def lemon_purchases_or_503():
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
            created = lemon_purchases_or_503().start_checkout(
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
        created = stripe_purchases_or_503().start_checkout(
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
        entries = stripe_purchases_or_503().quick_purchase(
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
        for c in stripe_purchases_or_503().cards(principal.organization_id)
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
        stripe_purchases_or_503().remove_card(
            principal.organization_id, payment_method_id, user_id=principal.user_id, ip=client_ip(request)
        )
    except PurchaseError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    except PaymentError as exc:
        raise _payment_error(exc) from None


@router.get("/checkout-return", response_class=HTMLResponse, include_in_schema=False)
def checkout_return(status: str = "success") -> HTMLResponse:
    """Where the checkout popup lands: it closes itself; the billing page waits for the webhook."""
    text = "Payment received. You can close this window." if status == "success" else "Checkout cancelled."
    return HTMLResponse(
        f"<!doctype html><title>OrcaPulse checkout</title><body style='font-family:system-ui;padding:40px'>"
        f"<p data-testid='checkout-return'>{text}</p><script>setTimeout(function(){{window.close()}}, 300)</script>"
    )
