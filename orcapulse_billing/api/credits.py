"""`/api/credits/*`: balance, history, usage summary, billing sessions and metering.

Thin: parse, check the principal, call the services (history, metering, ledger), shape the JSON.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import IntEnum
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import IntegrityError

from ..auth import Principal
from ..budgets import BudgetExceeded
from ..config import get_settings
from ..db import get_engine
from ..history import PAGE_SIZES, HistoryItem, HistoryQuery, billing_session, history_page, iter_history, usage_summary
from ..holds import reserved_units
from ..ledger import IdempotencyConflict, PostedEntry, get_account
from ..low_balance import current_threshold
from ..metering import MeteringError, SessionInfo, check, record_usage
from ..money import fmt4, to_units
from ..payments.flow import choose
from ..pricing import CUSTOM_MAX, CUSTOM_MIN, PACKAGES
from ..services import get_auto_recharger, get_ledger, run_in_background
from . import schemas as s
from .deps import BUDGET_EXCEEDED, INSUFFICIENT_SCOPE, DecimalRoute, client_ip, current_principal, usage_principal
from .errors import ApiError, responses

router = APIRouter(prefix="/api/credits", tags=["credits"], route_class=DecimalRoute)
AUTH = responses(400, 401)
TypeFilter = Literal["all", "topup", "usage", "refund", "adjustment"]
PageSize = IntEnum("PageSize", {f"size_{n}": n for n in PAGE_SIZES})  # query strings "50" validate as 50
DEFAULT_PAGE_SIZE = PageSize(50)
FROM_HELP = "Entries at or after this instant (RFC 3339 date-time)."
TO_HELP = "Entries before this instant (RFC 3339 date-time); must not be before `from` (400 otherwise)."
From = Annotated[s.Timestamp | None, Query(alias="from", description=FROM_HELP)]
To = Annotated[s.Timestamp | None, Query(description=TO_HELP)]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _range(start: datetime | None, end: datetime | None) -> tuple[datetime | None, datetime | None]:
    start, end = _utc(start), _utc(end)
    if start and end and end < start:
        raise ApiError(400, "invalid_request", "'to' must not be before 'from'")
    return start, end


def entry_json(item: HistoryItem) -> s.HistoryEntry:
    return s.HistoryEntry.model_validate(_entry_fields(item, item.usage_session_id))


def _entry_fields(entry: HistoryItem | PostedEntry, usage_session_id: str | None) -> dict[str, Any]:
    """An entry as `s.HistoryEntry` has it, in its fields' order, as plain data: the one list of them, for
    the history's items and for entries just posted (whose answers may carry a thousand)."""
    return {
        "id": entry.id,
        "type": entry.type,
        "source": entry.source,
        "amount": fmt4(entry.amount_units),
        "balance_before": fmt4(entry.balance_before_units),
        "balance_after": fmt4(entry.balance_after_units),
        "description": entry.description,
        "category": entry.category,
        "created_at": entry.created_at,
        "metadata": entry.metadata,
        "usage_session_id": usage_session_id,
    }


@router.get("/packages", response_model=s.Packages, summary="Available credit packages (public)")
def packages() -> s.Packages:
    settings = get_settings()
    choices = [choose(settings, package_id=p.id) for p in PACKAGES]
    return s.Packages(
        packages=[
            s.Package(
                id=p.id,
                name=p.name,
                credits=f"{p.credits:.4f}",
                price=f"{p.price:.4f}",
                bonus_credits=f"{c.bonus:.4f}",
                bonus_percent=f"{c.bonus_percent.normalize():f}",
            )
            for p, c in zip(PACKAGES, choices, strict=True)
        ],
        custom=s.CustomRange(min=f"{CUSTOM_MIN:.4f}", max=f"{CUSTOM_MAX:.4f}"),
    )


def balance_json(organization_id: int) -> s.Balance:
    settings = get_settings()
    with get_engine().connect() as conn:
        acct = get_account(conn, organization_id=organization_id)
        reserved = reserved_units(conn, acct.id)
        # the organization's own threshold (low_balance.py), else the deployment's
        threshold = current_threshold(conn, organization_id, to_units(settings.low_balance_threshold)).units
    return s.Balance(
        balance=fmt4(acct.balance_units),
        available=fmt4(acct.balance_units - reserved),
        reserved=fmt4(reserved),
        currency=acct.currency,
        low_balance=acct.balance_units < threshold,
        low_balance_threshold=fmt4(threshold),
        grace_limit=fmt4(to_units(settings.grace_limit)),
        in_grace_period=acct.balance_units < 0,
        can_start_operations=acct.balance_units - reserved > 0,
        lifetime_added=fmt4(acct.lifetime_added_units),
        lifetime_consumed=fmt4(acct.lifetime_consumed_units),
        transaction_count=acct.transaction_count,
    )


@router.get(
    "/balance",
    response_model=s.Balance,
    responses=AUTH,
    summary="Current credit balance (triggers auto-recharge if low)",
)
def balance(principal: Principal = Depends(current_principal)) -> s.Balance:
    answer = balance_json(principal.organization_id)
    if answer.low_balance:  # the spec's trigger; the charge runs off the request's thread
        run_in_background(get_auto_recharger(get_engine()).maybe_recharge, principal.organization_id)
    return answer


@router.get("/history", response_model=s.History, responses=AUTH, summary="Paginated transaction history")
def history(
    page: int = Query(1, ge=1, le=10_000_000),
    page_size: PageSize = Query(DEFAULT_PAGE_SIZE),
    type: TypeFilter = Query("all"),
    from_: From = None,
    to: To = None,
    principal: Principal = Depends(current_principal),
) -> s.History:
    start, end = _range(from_, to)
    with get_engine().connect() as conn:
        account_id = get_account(conn, organization_id=principal.organization_id).id
        result = history_page(conn, account_id, HistoryQuery(type, start, end), page=page, page_size=int(page_size))
    return s.History(
        items=[entry_json(i) for i in result.items],
        page=result.page,
        page_size=result.page_size,
        total=result.total,
        total_pages=result.total_pages,
    )


CSV_COLUMNS = [
    "id",
    "created_at",
    "type",
    "source",
    "description",
    "category",
    "amount",
    "balance_before",
    "balance_after",
    "usage_session_id",
]


def csv_rows(items: Iterator[HistoryItem]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for n, item in enumerate(items, 1):
        writer.writerow(
            [
                item.id,
                item.created_at.isoformat(),
                item.type,
                item.source or "",
                item.description,
                item.category or "",
                fmt4(item.amount_units),
                fmt4(item.balance_before_units),
                fmt4(item.balance_after_units),
                item.usage_session_id or "",
            ]
        )
        if n % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _stream_history(account_id: int, query: HistoryQuery) -> Iterator[str]:
    with get_engine().connect() as conn:
        yield from csv_rows(iter_history(conn, account_id, query))


@router.get(
    "/history.csv",
    responses={**AUTH, 200: {"content": {"text/csv": {}}, "description": "CSV"}},
    response_class=StreamingResponse,
    summary="The filtered history as CSV (whole range)",
)
def history_csv(
    type: TypeFilter = Query("all"),
    from_: From = None,
    to: To = None,
    order: Literal["newest", "oldest"] = Query("newest", description="Posting order: newest first, or oldest first."),
    principal: Principal = Depends(current_principal),
):
    start, end = _range(from_, to)
    with get_engine().connect() as conn:
        account_id = get_account(conn, organization_id=principal.organization_id).id
    name = f"orcapulse-credits-{type}-{datetime.now(UTC):%Y%m%d}.csv"
    return StreamingResponse(
        _stream_history(account_id, HistoryQuery(type, start, end, order)),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/usage-summary", response_model=s.UsageSummary, responses=AUTH, summary="Consumption per category")
def get_usage_summary(
    from_: From = None,
    to: To = None,
    principal: Principal = Depends(current_principal),
) -> s.UsageSummary:
    start, end = _range(from_, to)
    with get_engine().connect() as conn:
        account_id = get_account(conn, organization_id=principal.organization_id).id
        rows = usage_summary(conn, account_id, start, end)
    return s.UsageSummary(
        categories=[s.CategorySpend(category=r.category, amount=fmt4(r.amount_units), count=r.count) for r in rows],
        total=fmt4(sum(r.amount_units for r in rows)),
        count=sum(r.count for r in rows),
        from_=start,
        to=end,
    )


def session_json(row: dict) -> s.BillingSessionOut:
    return s.BillingSessionOut(
        id=row["external_id"],
        operation=row["operation"],
        agent_id=row["agent_id"],
        agent_name=row["agent_name"],
        architecture=row["architecture"],
        duration_minutes=row["duration_minutes"],
        message_count=row["message_count"],
        started_at=_utc(row["started_at"]),
        ended_at=_utc(row["ended_at"]),
        transcript=row["transcript"],
        recording_url=row["recording_url"],
        analysis=row["analysis"],
        cost=s.CostBreakdown(
            base=fmt4(row["cost_base"]),
            llm=fmt4(row["cost_llm"]),
            stt=fmt4(row["cost_stt"]),
            tts=fmt4(row["cost_tts"]),
            total=fmt4(row["cost_total"]),
        ),
        ledger_entry_id=row["ledger_entry_id"],
        created_at=_utc(row["created_at"]),
    )


@router.get(
    "/sessions/{session_id}",
    response_model=s.BillingSessionOut,
    responses=responses(400, 401, 404),
    summary="One billing session with its cost breakdown",
)
def get_session(
    session_id: str = Path(..., min_length=1, max_length=100), principal: Principal = Depends(current_principal)
) -> s.BillingSessionOut:
    with get_engine().connect() as conn:
        account_id = get_account(conn, organization_id=principal.organization_id).id
        row = billing_session(conn, account_id, session_id)
    if row is None:
        raise ApiError(404, "not_found", f"no billing session {session_id!r} in this organization")
    return session_json(row)


@router.post(
    "/check",
    response_model=s.CheckResponse,
    responses=responses(400, 401, 402),
    summary="May a new operation start? (402 when the available balance is at or below zero, or when the "
    "estimate would pass a spend budget with a hard stop)",
)
def post_check(body: s.CheckRequest, principal: Principal = Depends(current_principal)):
    try:
        result = check(
            get_engine(),
            principal.organization_id,
            body.operation,
            body.estimated_quantity,
            markup_percent=get_settings().markup_percent,
            model=body.model,
            api_key_id=principal.api_key_id,
            user_id=principal.user_id,
        )
    except MeteringError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None
    if result.over_budget is not None:  # what the usage report would answer once the work is done
        raise ApiError(402, result.over_budget.code, str(result.over_budget))
    answer = s.CheckResponse(
        allowed=result.allowed, balance=fmt4(result.balance_units), estimated_cost=fmt4(to_units(result.estimated_cost))
    )
    if not result.allowed:
        answer.reason = (
            f"the available balance ({fmt4(result.available_units)}: the balance less active holds) is at or "
            "below zero: add credits to start new operations"
        )
        raise ApiError(402, "insufficient_credits", answer.reason)
    return answer


@router.post(
    "/usage",
    response_model=s.UsageResponse,
    responses={**responses(400, 401, 409), **BUDGET_EXCEEDED, **INSUFFICIENT_SCOPE},
    summary="Report a finished operation; completed ones are always charged (into debt if need be), failed ones never",
    description="Spends the organization's credits, so it needs an API key with the `usage:write` scope "
    "(owners and admins create them: POST /api/keys). A session, a member's key or a key without the scope "
    "gets 403 `insufficient_scope` and nothing is recorded.",
)
def post_usage(
    body: s.UsageRequest,
    request: Request,
    idempotency_key: str | None = Header(
        None,
        alias="Idempotency-Key",
        min_length=1,
        max_length=150,
        description="Required unless the body's `idempotency_key` carries it; equal to it when both are sent.",
    ),
    principal: Principal = Depends(usage_principal),
) -> s.UsageResponse:
    key = body.idempotency_key or idempotency_key
    if key is None:
        raise ApiError(400, "invalid_request", "an idempotency_key (or Idempotency-Key header) is required")
    if body.idempotency_key and idempotency_key and body.idempotency_key != idempotency_key:
        raise ApiError(400, "invalid_request", "idempotency_key and the Idempotency-Key header differ")
    try:
        result = record_usage(
            get_ledger(),
            principal.organization_id,
            operation=body.operation,
            quantity=body.quantity,
            status=body.status,
            idempotency_key=key,
            markup_percent=get_settings().markup_percent,
            model=body.model,
            session=session_info(body.session),
            actor_user_id=principal.user_id,
            actor_ip=client_ip(request),
            api_key_id=principal.api_key_id,
        )
    except BudgetExceeded as exc:
        raise ApiError(402, "budget_exceeded", str(exc)) from None
    except MeteringError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None
    except IdempotencyConflict as exc:
        raise ApiError(409, "idempotency_conflict", str(exc)) from None
    except IntegrityError:  # the same session id billed concurrently under another key
        raise ApiError(409, "conflict", "this session was billed concurrently under another key") from None
    entry = result.entry
    return s.UsageResponse(
        charged=result.charged,
        cost=fmt4(to_units(result.charge.cost)),
        entry=posted_entry_json(entry) if entry else None,
        balance=fmt4(entry.balance_after_units) if entry else None,
        session_id=result.session_id,
        replayed=result.replayed or bool(entry and entry.replayed),
    )


def session_info(session: s.SessionIn | None) -> SessionInfo | None:
    if session is None:
        return None
    fields = session.model_dump()
    return SessionInfo(**{**fields, "started_at": _utc(session.started_at), "ended_at": _utc(session.ended_at)})


def posted_entry_json(entry: PostedEntry) -> s.HistoryEntry:
    """A ledger entry just posted (or replayed), as the history shows it."""
    return s.HistoryEntry.model_validate(posted_entry_fields(entry))


def posted_entry_fields(entry: PostedEntry) -> dict[str, Any]:
    """`posted_entry_json`'s fields as plain data (what its model dumps), for answers that carry a thousand
    entries and serialize them at once."""
    return _entry_fields(entry, entry.metadata.get("usage_session_id"))
