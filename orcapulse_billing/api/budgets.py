"""Monthly spend budgets (`/api/credits/budgets...`).

Owners set and remove budgets for the organization, one of its API keys or one of its members; owners
and admins read them with the month's spend (members get 403). A budget names a key or a member of
another organization: 404. Refused input writes nothing.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, Field, StrictBool

from ..auth import Principal
from ..budget_settings import BudgetInputError, BudgetStatus, list_budgets, remove_budget, set_budget
from ..budgets import month_of
from ..db import get_engine
from ..models import Role, utcnow
from ..services import get_ledger
from . import schemas as s
from .deps import DecimalRoute, client_ip, current_principal, owner_principal
from .errors import ApiError, ErrorBody, responses

router = APIRouter(prefix="/api/credits/budgets", tags=["budgets"], route_class=DecimalRoute)
READERS = (Role.owner.value, Role.admin.value)
READ_FORBIDDEN = {403: {"model": ErrorBody, "description": "forbidden: only owners and admins see spend budgets"}}
WRITE_FORBIDDEN = {403: {"model": ErrorBody, "description": "forbidden: only owners set or remove spend budgets"}}
NOT_FOUND = {404: {"model": ErrorBody, "description": "not_found: no such budget, API key or member here"}}
ApiKeyId = Path(..., ge=1, le=2_147_483_647, description="The API key's id (`id` in GET /api/keys)")
UserId = Path(..., ge=1, le=2_147_483_647, description="The member's user id")
BudgetAmount = s.decimal_string(
    r"^[1-9][0-9]{0,9}(?:\.[0-9]{1,2})?$",
    "credits per calendar month (UTC): $1 to $9,999,999,999.99 in whole cents",
    "500.00",
)


def reader_principal(principal: Principal = Depends(current_principal)) -> Principal:
    if principal.role not in READERS:
        raise ApiError(403, "forbidden", "only owners and admins of the organization see its spend budgets")
    return principal


class BudgetIn(s.Strict):
    amount: BudgetAmount
    hard_stop: StrictBool = Field(
        default=False,
        description="Refuse new usage and holds that would take the month's spend past the budget (402 "
        "`budget_exceeded`); off: alerts only",
    )


class BudgetOut(BaseModel):
    id: int
    scope: Literal["organization", "api_key", "member"]
    api_key_id: int | None
    user_id: int | None
    name: str = Field(description="What the budget is for, for people")
    amount: str = Field(description="The monthly budget (4 decimals)")
    hard_stop: bool
    month: str = Field(description="The calendar month (UTC) of `spent`: YYYY-MM")
    spent: str = Field(description="Usage charged this month that counts for the budget (4 decimals)")
    percent: str = Field(description="`spent` as a percentage of `amount`, one decimal, rounded down")
    level: Literal[0, 50, 80, 100] = Field(description="The highest alert threshold reached this month (0: none)")


class Budgets(BaseModel):
    month: str = Field(description="The calendar month (UTC) the spends are of: YYYY-MM")
    budgets: list[BudgetOut]


def _out(status: BudgetStatus) -> BudgetOut:
    return BudgetOut(**status.as_dict())  # type: ignore[arg-type]


def _set(principal: Principal, request: Request, body: BudgetIn, **target: int | None) -> BudgetOut:
    try:
        status = set_budget(
            get_ledger(),
            principal.organization_id,
            body.amount,
            hard_stop=body.hard_stop,
            actor_user_id=principal.user_id,
            ip=client_ip(request),
            **target,  # type: ignore[arg-type]
        )
    except BudgetInputError as exc:
        raise ApiError(404 if exc.code == "not_found" else 400, exc.code, exc.message) from None
    return _out(status)


def _remove(principal: Principal, request: Request, **target: int | None) -> Response:
    removed = remove_budget(
        get_ledger(), principal.organization_id, actor_user_id=principal.user_id, ip=client_ip(request), **target
    )
    if not removed:
        raise ApiError(404, "not_found", "no such spend budget in this organization")
    return Response(status_code=204)


@router.get(
    "",
    response_model=Budgets,
    responses={**responses(401), **READ_FORBIDDEN},
    summary="The organization's monthly spend budgets with this month's spend (owners and admins)",
    description="Months are calendar months in UTC; a budget's spend starts from zero on the 1st. Spend is the "
    "usage charged to the organization (usage reports, batches, captured holds, phone-number rentals): all of "
    "it for the organization's budget, what an API key posted for its budget, what a member's keys posted for "
    "theirs. Owners are emailed (and `budget.threshold_reached` webhooks sent) at 50, 80 and 100 %, once each "
    "per budget and month.",
)
def get_budgets(principal: Principal = Depends(reader_principal)) -> Budgets:
    now = utcnow()
    with get_engine().connect() as conn:
        found = list_budgets(conn, principal.organization_id, now=now)
    return Budgets(month=month_of(now), budgets=[_out(b) for b in found])


SET_RESPONSES = {**responses(400, 401), **WRITE_FORBIDDEN}


@router.put(
    "/organization",
    response_model=BudgetOut,
    responses=SET_RESPONSES,
    summary="Set the organization's monthly spend budget (owners)",
    description="Creates or changes it; a budget set mid-month starts from the month's usage so far. Setting "
    "it sends no alert for thresholds already reached.",
)
def put_organization(body: BudgetIn, request: Request, principal: Principal = Depends(owner_principal)) -> BudgetOut:
    return _set(principal, request, body)


@router.delete(
    "/organization",
    status_code=204,
    responses={**responses(401), **WRITE_FORBIDDEN, **NOT_FOUND},
    summary="Remove the organization's monthly spend budget (owners)",
)
def delete_organization(request: Request, principal: Principal = Depends(owner_principal)) -> Response:
    return _remove(principal, request)


@router.put(
    "/api-keys/{api_key_id}",
    response_model=BudgetOut,
    responses={**SET_RESPONSES, **NOT_FOUND},
    summary="Set an API key's monthly spend budget (owners): the usage that key posts",
)
def put_api_key(
    body: BudgetIn, request: Request, api_key_id: int = ApiKeyId, principal: Principal = Depends(owner_principal)
) -> BudgetOut:
    return _set(principal, request, body, api_key_id=api_key_id)


@router.delete(
    "/api-keys/{api_key_id}",
    status_code=204,
    responses={**responses(400, 401), **WRITE_FORBIDDEN, **NOT_FOUND},
    summary="Remove an API key's monthly spend budget (owners)",
)
def delete_api_key(
    request: Request, api_key_id: int = ApiKeyId, principal: Principal = Depends(owner_principal)
) -> Response:
    return _remove(principal, request, api_key_id=api_key_id)


@router.put(
    "/members/{user_id}",
    response_model=BudgetOut,
    responses={**SET_RESPONSES, **NOT_FOUND},
    summary="Set a member's monthly spend budget (owners): the usage that member's API keys post",
)
def put_member(
    body: BudgetIn, request: Request, user_id: int = UserId, principal: Principal = Depends(owner_principal)
) -> BudgetOut:
    return _set(principal, request, body, user_id=user_id)


@router.delete(
    "/members/{user_id}",
    status_code=204,
    responses={**responses(400, 401), **WRITE_FORBIDDEN, **NOT_FOUND},
    summary="Remove a member's monthly spend budget (owners)",
)
def delete_member(request: Request, user_id: int = UserId, principal: Principal = Depends(owner_principal)) -> Response:
    return _remove(principal, request, user_id=user_id)
