"""Auto-recharge settings over REST: everyone in the organization reads them (members without the
link to confirm a payment), owners change them; a change made while the balance is already low recharges
once at once, and the answer says what that did."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from ..auth import Principal
from ..db import get_engine
from ..payments.auto_recharge_policy import DAILY_LIMIT
from ..payments.flow import PurchaseError
from ..services import get_auto_recharger
from . import schemas as s
from .deps import DecimalRoute, client_ip, current_principal, owner_principal
from .errors import ApiError, responses

router = APIRouter(prefix="/api/credits", tags=["payments"], route_class=DecimalRoute)


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
