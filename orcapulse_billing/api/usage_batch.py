"""`POST /api/credits/usage/batch`: up to 1,000 usage events in one request, for platforms that meter in bulk.

Thin, as the single report's route: each event is checked on its own (an event that is not a valid usage
report is refused in its result, the others are still recorded), then metering_batch records them all in
one ledger transaction and each gets its result, in the order sent. Only the request as a whole can be a
400 (no list, an empty one or more than 1,000 events, an event that is not a JSON object), which writes
nothing.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError
from pydantic_core import to_json
from sqlalchemy.exc import IntegrityError

from ..auth import Principal
from ..config import get_settings
from ..db import get_engine
from ..ledger import LedgerError, get_account
from ..metering_batch import BatchResult, UsageEvent, record_usage_batch
from ..money import fmt4, to_units
from ..services import get_ledger
from . import schemas as s
from .credits import posted_entry_fields, session_info
from .deps import INSUFFICIENT_SCOPE, DecimalRoute, client_ip, usage_principal
from .errors import ApiError, describe, responses

router = APIRouter(prefix="/api/credits", tags=["credits"], route_class=DecimalRoute)
STATUSES = ("charged", "not_charged", "replayed", "refused")


@router.post(
    "/usage/batch",
    response_model=s.UsageBatchResponse,
    responses={**responses(400, 401, 409), **INSUFFICIENT_SCOPE},
    summary="Report up to 1,000 finished operations at once, each with its own key and its own result",
    description="Each event is recorded as `POST /api/credits/usage` would record it, in the order sent, all in "
    "one transaction: charged, not charged (a failed operation, or a cost still below one ledger unit, carried "
    "to the next report of the operation), replayed (its key was seen before, earlier in this batch too: nothing "
    "changed) or refused with its own error (a bad event, an idempotency conflict, a session already billed, "
    "`budget_exceeded` when it would take the month's spend past a hard-stopped spend budget), "
    "without affecting the others. Sending the same batch again replays it. Spends the organization's credits, "
    "so it needs an API key with the `usage:write` scope; a session, a member's key or a key without the scope "
    "gets 403 `insufficient_scope` and nothing is recorded. 409 `conflict`: the batch kept meeting concurrent "
    "reports of the same keys or sessions; nothing was recorded, send it again.",
)
def post_usage_batch(
    body: s.UsageBatchRequest, request: Request, principal: Principal = Depends(usage_principal)
) -> Response:
    events: list[UsageEvent] = []
    places: list[int] = []  # the request index of each event that was valid
    answers: list[dict[str, Any] | None] = [None] * len(body.events)
    for index, item in enumerate(body.events):
        try:
            event = s.BatchUsageEvent.model_validate(item).root
        except ValidationError as exc:
            answers[index] = _refused(index, _key_of(item), "invalid_request", describe(exc.errors()))
            continue
        events.append(
            UsageEvent(
                event.operation,
                event.quantity,
                event.status,
                event.idempotency_key,
                event.model,
                session_info(event.session),
            )
        )
        places.append(index)
    try:
        results = record_usage_batch(
            get_ledger(),
            principal.organization_id,
            events,
            markup_percent=get_settings().markup_percent,
            actor_user_id=principal.user_id,
            actor_ip=client_ip(request),
            api_key_id=principal.api_key_id,
        )
    except IntegrityError:  # met concurrent reports of its keys or sessions on every attempt
        raise ApiError(409, "conflict", "the batch met concurrent reports of the same keys or sessions") from None
    for index, event, result in zip(places, events, results, strict=True):
        answers[index] = _answer(index, event.idempotency_key, result)
    done = [a for a in answers if a is not None]
    counts = Counter(a["status"] for a in done)
    summary = {status: counts[status] for status in STATUSES}
    summary["balance"] = fmt4(_balance_after(principal.organization_id, results))
    # s.UsageBatchResponse as plain data, in its fields' order: what its model_dump_json gives, without
    # validating a model per event (that cost more than recording them). The route's response_model still
    # documents it; tests validate real answers against it.
    return Response(to_json({"results": done, "summary": summary}), media_type="application/json")


def _answer(index: int, key: str, result: BatchResult) -> dict[str, Any]:
    """An `s.UsageBatchResult` as a dict."""
    if result.error is not None:
        code = result.error.code if isinstance(result.error, LedgerError) else "invalid_request"
        return _refused(index, key, code, str(result.error), result)
    entry = result.entry
    return {
        "index": index,
        "idempotency_key": key,
        "status": result.status,
        "cost": fmt4(to_units(result.charge.cost)) if result.charge else None,
        "entry": posted_entry_fields(entry) if entry else None,
        "balance": fmt4(entry.balance_after_units) if entry else None,
        "session_id": result.session_id,
        "error": None,
    }


def _refused(index: int, key: str | None, code: str, message: str, result: BatchResult | None = None) -> dict[str, Any]:
    return {
        "index": index,
        "idempotency_key": key,
        "status": "refused",
        "cost": fmt4(to_units(result.charge.cost)) if result and result.charge else None,
        "entry": None,
        "balance": None,
        "session_id": result.session_id if result else None,
        "error": {"code": code, "message": message},
    }


def _key_of(item: dict[str, Any]) -> str | None:
    key = item.get("idempotency_key")
    return key if isinstance(key, str) and 0 < len(key) <= 150 else None


def _balance_after(organization_id: int, results: list[BatchResult]) -> int:
    """The balance this batch left: its last new entry's (the batch held the account row until its commit),
    or, when it posted none, the account's now."""
    fresh = [r.entry for r in results if r.status == "charged" and r.entry is not None]
    if fresh:
        return max(fresh, key=lambda e: e.seq).balance_after_units
    with get_engine().connect() as conn:
        return get_account(conn, organization_id=organization_id).balance_units
