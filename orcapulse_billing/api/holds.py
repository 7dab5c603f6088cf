"""`/api/credits/holds`: reserve credits for an operation in progress, then capture its actual cost
or release it (holds.py has the rules). Placing, capturing and releasing spend or reserve credits, so
they answer the principals that may report usage (an API key with `usage:write`); anyone in the
organization reads the active holds. Each change is announced on the event bus after it commits
(a hold changes `held`, not the ledger), so open billing tabs show Available and Reserved live."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request

from .. import holds
from ..auth import Principal
from ..budgets import BudgetExceeded
from ..config import get_settings
from ..db import get_engine
from ..ledger import IdempotencyConflict, get_account
from ..metering import MeteringError
from ..money import fmt4
from ..services import get_event_bus, get_ledger
from . import schemas as s
from .credits import posted_entry_json
from .deps import INSUFFICIENT_SCOPE, DecimalRoute, client_ip, current_principal, usage_principal
from .errors import ApiError, ErrorBody, responses

router = APIRouter(prefix="/api/credits/holds", tags=["holds"], route_class=DecimalRoute)
HoldId = Path(..., ge=1, le=2**53, description="The hold's id (from POST /api/credits/holds).")
REFUSED = {
    402: {
        "model": ErrorBody,
        "description": "insufficient_credits: the available balance is at or below zero (debt is paid first), "
        "or the hold does not fit within the available balance plus the grace limit; budget_exceeded: the month's "
        "spend plus the estimate would pass a spend budget with a hard stop; nothing is reserved",
    }
}
NOT_FOUND = {404: {"model": ErrorBody, "description": "not_found: no such hold in this organization"}}
CONFLICT = {
    409: {
        "model": ErrorBody,
        "description": "conflict: the hold was already settled the other way (captured: no release; released: "
        "no capture), or captured with another quantity",
    }
}


def hold_json(hold: holds.Hold) -> s.HoldOut:
    return s.HoldOut(
        id=hold.id,
        operation=hold.operation,
        model=hold.model,
        estimated_quantity=hold.estimated_quantity,
        amount=fmt4(hold.amount_units),
        status=hold.status,  # type: ignore[arg-type]
        idempotency_key=hold.idempotency_key,
        captured_entry_id=hold.captured_entry_id,
        expires_at=hold.expires_at,
        created_at=hold.created_at,
        settled_at=hold.settled_at,
    )


def _announce(organization_id: int, hold: holds.Hold) -> None:
    """After the commit: open billing tabs reload Available and Reserved (events.py never waits)."""
    get_event_bus().publish(holds.hold_event(organization_id, hold))


def _refusal(exc: Exception) -> ApiError:
    if isinstance(exc, holds.HoldRefused):
        return ApiError(402, "insufficient_credits", str(exc))
    if isinstance(exc, BudgetExceeded):
        return ApiError(402, "budget_exceeded", str(exc))
    if isinstance(exc, holds.HoldNotFound):
        return ApiError(404, "not_found", str(exc))
    if isinstance(exc, holds.HoldConflict | IdempotencyConflict):
        return ApiError(409, "conflict", str(exc))
    return ApiError(400, "invalid_request", str(exc))


@router.post(
    "",
    status_code=201,
    response_model=s.HoldPlaced,
    responses={**responses(400, 401, 409), **REFUSED, **INSUFFICIENT_SCOPE},
    summary="Reserve the estimated cost of an operation about to start",
    description="Needs an API key with the `usage:write` scope. The hold expires after HOLD_TTL_SECONDS "
    "(15 minutes by default) unless captured or released. The same idempotency key again answers the same "
    "hold; with another operation, model or estimate it is 409.",
)
def place(body: s.HoldRequest, principal: Principal = Depends(usage_principal)) -> s.HoldPlaced:
    settings = get_settings()
    try:
        placed = holds.place_hold(
            get_ledger(),
            principal.organization_id,
            body.operation,
            body.estimated_quantity,
            body.idempotency_key,
            settings.markup_percent,
            model=body.model,
            actor_user_id=principal.user_id,
            ttl_seconds=settings.hold_ttl_seconds,
            api_key_id=principal.api_key_id,
        )
    except (holds.HoldError, BudgetExceeded, MeteringError) as exc:
        raise _refusal(exc) from None
    if not placed.replayed:
        _announce(principal.organization_id, placed.hold)
    return s.HoldPlaced(
        **hold_json(placed.hold).model_dump(), available=fmt4(placed.available_units), replayed=placed.replayed
    )


@router.get("", response_model=s.Holds, responses=responses(400, 401), summary="The organization's active holds")
def active(principal: Principal = Depends(current_principal)) -> s.Holds:
    with get_engine().connect() as conn:
        acct = get_account(conn, organization_id=principal.organization_id)
        found = holds.active_holds(conn, acct.id)
    reserved = sum(h.amount_units for h in found)
    return s.Holds(
        holds=[hold_json(h) for h in found], reserved=fmt4(reserved), available=fmt4(acct.balance_units - reserved)
    )


def _settled(result: holds.Settled) -> s.HoldSettled:
    if not result.replayed:
        _announce(result.organization_id, result.hold)
    return s.HoldSettled(
        hold=hold_json(result.hold),
        entry=posted_entry_json(result.entry) if result.entry is not None else None,
        released=fmt4(result.released_units),
        replayed=result.replayed,
    )


@router.post(
    "/{hold_id}/capture",
    response_model=s.HoldSettled,
    responses={**responses(400, 401), **NOT_FOUND, **CONFLICT, **INSUFFICIENT_SCOPE},
    summary="The operation completed: charge its actual cost and release the hold",
    description="Needs an API key with the `usage:write` scope. The actual cost is charged in full even when "
    "it exceeds the hold or the balance (a completed operation is always recorded: past the grace limit "
    "the balance is debt), and the whole hold is released, in one transaction. A hold that expired is "
    "still charged. Again with the same quantity: the same answer, nothing charged twice.",
)
def capture(
    body: s.CaptureRequest,
    request: Request,
    hold_id: int = HoldId,
    principal: Principal = Depends(usage_principal),
) -> s.HoldSettled:
    try:
        result = holds.capture(
            get_ledger(),
            principal.organization_id,
            hold_id,
            body.quantity,
            markup_percent=get_settings().markup_percent,
            actor_user_id=principal.user_id,
            actor_ip=client_ip(request),
            api_key_id=principal.api_key_id,
        )
    except (holds.HoldError, MeteringError, IdempotencyConflict) as exc:
        raise _refusal(exc) from None
    return _settled(result)


@router.post(
    "/{hold_id}/release",
    response_model=s.HoldSettled,
    responses={**responses(400, 401), **NOT_FOUND, **CONFLICT, **INSUFFICIENT_SCOPE},
    summary="The operation failed or never started: release the hold, charge nothing",
    description="Needs an API key with the `usage:write` scope. Again, or on a hold that expired: the hold "
    "as it is, nothing released twice.",
)
def release(hold_id: int = HoldId, principal: Principal = Depends(usage_principal)) -> s.HoldSettled:
    try:
        result = holds.release(get_ledger(), principal.organization_id, hold_id)
    except holds.HoldError as exc:
        raise _refusal(exc) from None
    return _settled(result)
