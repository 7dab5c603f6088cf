"""Notification settings over REST: the organization's low-balance threshold
(`/api/organization/low-balance-threshold`: everyone in the organization reads it, owners change it)
and the signed-in owner's own email preferences (`/api/organization/notification-preferences`:
owners only, each their own; admins and members get no billing emails, so they have none).
A refusal writes nothing."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictBool, WithJsonSchema
from pydantic_core import PydanticCustomError

from .. import low_balance, notification_preferences
from ..auth import Principal
from ..config import get_settings
from ..db import get_engine
from ..money import fmt4, to_units
from .deps import DecimalRoute, client_ip, current_principal, owner_principal
from .errors import ApiError, ErrorBody, responses
from .schemas import Money, decimal_string

router = APIRouter(prefix="/api/organization", tags=["notifications"], route_class=DecimalRoute)
OWNERS_ONLY = {403: {"model": ErrorBody, "description": "forbidden: only owners"}}

ThresholdAmount = decimal_string(
    r"^(?:(?:0|[1-9][0-9]{0,5})(?:\.[0-9]{1,2})?|1000000(?:\.0{1,2})?)$",
    "Credits, 0 to 1000000, at most 2 decimal places",
    "25.00",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ThresholdDefault(_Strict):
    mode: Literal["default"] = Field(description="The deployment's LOW_BALANCE_THRESHOLD")


class ThresholdAmountIn(_Strict):
    mode: Literal["amount"]
    amount: ThresholdAmount


def _whole_percent(value: Any) -> int:
    # JSON Schema's integer includes 45.0 (JSON numbers with a fraction parse as Decimal here)
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool) and value == int(value):
        if 1 <= value <= 100:
            return int(value)
    raise PydanticCustomError("percent", "expected a whole number from 1 to 100")


Percent = Annotated[
    int,
    PlainValidator(_whole_percent),
    WithJsonSchema(
        {
            "type": "integer",
            "minimum": 1,
            "maximum": 100,
            "description": "Percent of the last top-up's credits (its volume bonus not counted)",
            "examples": [20],
        }
    ),
]


class ThresholdPercent(_Strict):
    mode: Literal["percent"]
    percent: Percent


ThresholdIn = Annotated[ThresholdDefault | ThresholdAmountIn | ThresholdPercent, Field(discriminator="mode")]


class ThresholdOut(BaseModel):
    """The setting and the threshold it gives now. Percent mode: `percent` of the credits the last
    purchase added (any provider, auto-recharge included; without its volume bonus), rounded down
    to the cent; before any top-up the deployment's threshold (`basis` "default_before_topup")."""

    mode: Literal["default", "amount", "percent"]
    amount: Money | None = Field(description="mode amount: the threshold set")
    percent: int | None = Field(description="mode percent: the percentage set")
    threshold: Money = Field(description="The threshold in force now")
    basis: Literal["default", "amount", "percent", "default_before_topup"]
    last_topup: Money | None = Field(description="mode percent: the last top-up's credits the percentage is of")
    default_threshold: Money = Field(description="The deployment's LOW_BALANCE_THRESHOLD")


# true or false; null is refused (validate_changes), so the schema says boolean only
Switch = Annotated[StrictBool | None, WithJsonSchema({"type": "boolean", "description": "on (true) or off (false)"})]


class PreferencesIn(_Strict):
    """The categories to turn on (true) or off (false); categories left out keep their setting
    (see GET: `categories` says what each covers)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    low_balance: Switch = None
    balance_recovered: Switch = None
    auto_recharge: Switch = None
    receipts: Switch = None
    budget_alerts: Switch = None
    expiring_credits: Switch = None


class Category(BaseModel):
    key: str
    label: str
    description: str


class PreferencesOut(BaseModel):
    """The signed-in owner's switches in this organization (all on by default). `always_sent`: the
    emails no switch stops (a payment waiting for 3-D Secure confirmation, a disputed payment)."""

    preferences: dict[str, bool]
    categories: list[Category]
    always_sent: list[str]


def _threshold_json(organization_id: int) -> ThresholdOut:
    default = to_units(get_settings().low_balance_threshold)
    with get_engine().connect() as conn:
        setting = low_balance.get_setting(conn, organization_id)
        now = low_balance.current_threshold(conn, organization_id, default)
    return ThresholdOut(
        **setting.as_json(),
        threshold=fmt4(now.units),
        basis=now.basis,  # type: ignore[arg-type]
        last_topup=fmt4(now.last_topup_units) if now.last_topup_units is not None else None,
        default_threshold=fmt4(default),
    )


@router.get(
    "/low-balance-threshold",
    response_model=ThresholdOut,
    responses=responses(400, 401),
    summary="The organization's low-balance threshold and the threshold in force now",
)
def get_threshold(principal: Principal = Depends(current_principal)) -> ThresholdOut:
    return _threshold_json(principal.organization_id)


@router.put(
    "/low-balance-threshold",
    response_model=ThresholdOut,
    responses={**responses(400, 401), **OWNERS_ONLY},
    summary="Set the low-balance threshold: the deployment's, an amount, or a percentage of the last top-up (owners)",
    description="The low-balance and balance-recovered emails and webhooks, and the page's banner, use it from "
    "the next ledger entry on; changing it sends nothing by itself.",
)
def put_threshold(body: ThresholdIn, request: Request, principal: Principal = Depends(owner_principal)) -> ThresholdOut:
    try:
        setting = low_balance.validate_setting(body.model_dump(mode="json"))
    except low_balance.ThresholdError as exc:
        raise ApiError(400, "invalid_request", exc.message) from None
    low_balance.save_audited(get_engine(), principal, setting, client_ip(request))
    return _threshold_json(principal.organization_id)


def _preferences_json(principal: Principal) -> PreferencesOut:
    with get_engine().connect() as conn:
        mine = notification_preferences.get_preferences(conn, principal.organization_id, principal.user_id)
    return PreferencesOut(
        preferences=mine,
        categories=[
            Category(key=key, label=label, description=description)
            for key, (label, description) in notification_preferences.CATEGORIES.items()
        ],
        always_sent=list(notification_preferences.ALWAYS_SENT),
    )


@router.get(
    "/notification-preferences",
    response_model=PreferencesOut,
    responses={**responses(400, 401), **OWNERS_ONLY},
    summary="Which emails the signed-in owner gets from this organization (owners)",
)
def get_preferences(principal: Principal = Depends(owner_principal)) -> PreferencesOut:
    return _preferences_json(principal)


@router.put(
    "/notification-preferences",
    response_model=PreferencesOut,
    responses={**responses(400, 401), **OWNERS_ONLY},
    summary="Turn categories of emails on or off for the signed-in owner (owners)",
)
def put_preferences(
    body: PreferencesIn, request: Request, principal: Principal = Depends(owner_principal)
) -> PreferencesOut:
    given: dict[str, Any] = body.model_dump(exclude_unset=True)
    try:
        changes = notification_preferences.validate_changes(given)
    except notification_preferences.PreferenceError as exc:
        raise ApiError(400, "invalid_request", exc.message) from None
    notification_preferences.save_audited(get_engine(), principal, changes, client_ip(request))
    return _preferences_json(principal)
