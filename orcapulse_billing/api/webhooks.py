"""Outbound webhook endpoints and their delivery log (`/api/webhooks/...`).

Owners register, enable or disable, remove and test endpoints; owners and admins read them and the log (members get
403; another organization's endpoint is 404). The signing secret is answered once, when the endpoint
is created. Refused input writes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from .. import webhooks
from ..auth import Principal
from ..config import get_settings
from ..db import get_engine
from ..models import Role
from .deps import DecimalRoute, client_ip, current_principal, owner_principal
from .errors import ApiError, ErrorBody, responses

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"], route_class=DecimalRoute)
READERS = (Role.owner.value, Role.admin.value)
READ_FORBIDDEN = {403: {"model": ErrorBody, "description": "forbidden: only owners and admins see webhooks"}}
WRITE_FORBIDDEN = {403: {"model": ErrorBody, "description": "forbidden: only owners change webhooks"}}
EndpointId = Path(..., ge=1, le=2_147_483_647, description="The endpoint's id (`id` in GET /api/webhooks/endpoints)")
EventType = Literal[
    "credits.added",
    "credits.refunded",
    "balance.low",
    "balance.recovered",
    "auto_recharge.failed",
    "budget.threshold_reached",
]
assert set(EventType.__args__) == set(webhooks.EVENT_TYPES)  # type: ignore[attr-defined]


def reader_principal(principal: Principal = Depends(current_principal)) -> Principal:
    if principal.role not in READERS:
        raise ApiError(403, "forbidden", "only owners and admins of the organization see its webhooks")
    return principal


class EndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[
        str,
        Field(
            min_length=1,
            max_length=2000,
            pattern=r"^https?://[A-Za-z0-9._~:/?\[\]@!$&'()*+,;=%-]+$",  # URL characters, no #fragment
            description="Where to POST events: https in production; its host must resolve to public addresses "
            "only (never loopback, private, link-local or unique-local)",
            examples=["https://example.com/hooks/orcapulse"],
        ),
    ]
    event_types: Annotated[list[EventType], Field(min_length=1, max_length=len(webhooks.EVENT_TYPES))]
    description: Annotated[str, Field(max_length=200, description="A note for people")] = ""


class EndpointPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        description="false: nothing more is sent to it (what it has not received yet is cancelled, and no "
        "event is queued for it while it is off); true: it receives the events from then on",
        strict=True,
    )


class EndpointOut(BaseModel):
    id: int
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    secret_hint: str = Field(description="The start of the signing secret (the whole one is shown once)")
    created_at: datetime


class EndpointCreated(EndpointOut):
    secret: str = Field(
        description="The signing secret (`whsec_` + base64), answered only now: verify each request's "
        "`webhook-signature` with it as the Standard Webhooks specification says"
    )


class Endpoints(BaseModel):
    endpoints: list[EndpointOut]


class AttemptOut(BaseModel):
    attempt: int
    status_code: int | None = Field(description="The receiver's HTTP status; null when no answer came")
    error: str | None
    duration_ms: int
    attempted_at: datetime


class DeliveryOut(BaseModel):
    id: int
    endpoint_id: int
    url: str
    event_type: str
    msg_id: str = Field(description="The `webhook-id` header, the same on every attempt")
    status: Literal["pending", "delivered", "failed", "cancelled"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None = Field(description="When it is tried again (pending only)")
    created_at: datetime
    finished_at: datetime | None
    log: list[AttemptOut]


class Deliveries(BaseModel):
    deliveries: list[DeliveryOut]


class TestSent(BaseModel):
    msg_id: str = Field(description="The test message's `webhook-id`; it shows in the delivery log")


def _out(endpoint: webhooks.Endpoint) -> EndpointOut:
    return EndpointOut(
        id=endpoint.id,
        url=endpoint.url,
        description=endpoint.description,
        event_types=list(endpoint.event_types),
        enabled=endpoint.enabled,
        secret_hint=endpoint.secret_hint,
        created_at=endpoint.created_at,
    )


def _refusal(exc: webhooks.WebhookError) -> ApiError:
    status = {"not_found": 404, "too_many_endpoints": 409, "endpoint_disabled": 409}.get(exc.code, 400)
    return ApiError(status, exc.code, exc.message)


@router.get(
    "/endpoints",
    response_model=Endpoints,
    responses={**responses(401), **READ_FORBIDDEN},
    summary="The organization's webhook endpoints (owners and admins)",
)
def list_endpoints(principal: Principal = Depends(reader_principal)) -> Endpoints:
    with get_engine().connect() as conn:
        return Endpoints(endpoints=[_out(e) for e in webhooks.list_endpoints(conn, principal.organization_id)])


@router.post(
    "/endpoints",
    status_code=201,
    response_model=EndpointCreated,
    responses={
        **responses(400, 401),
        409: {"model": ErrorBody, "description": "too_many_endpoints"},
        **WRITE_FORBIDDEN,
    },
    summary="Register a webhook endpoint (owners); the signing secret is answered once",
    description="Events are POSTed as JSON `{id, type, timestamp, data}` with the Standard Webhooks headers "
    "`webhook-id`, `webhook-timestamp` and `webhook-signature`; a 2xx answer within 10 seconds delivers, "
    "anything else is retried with exponential backoff for 3 days. A bad URL is 400 `invalid_url`.",
)
def create_endpoint(
    body: EndpointIn, request: Request, principal: Principal = Depends(owner_principal)
) -> EndpointCreated:
    try:
        endpoint, secret = webhooks.add_audited(
            get_engine(),
            principal,
            body.url,
            list(body.event_types),
            description=body.description,
            production=get_settings().production,
            ip=client_ip(request),
        )
    except webhooks.WebhookError as exc:
        raise _refusal(exc) from None
    return EndpointCreated(**_out(endpoint).model_dump(), secret=secret)


@router.delete(
    "/endpoints/{endpoint_id}",
    status_code=204,
    responses={**responses(400, 401, 404), **WRITE_FORBIDDEN},
    summary="Remove a webhook endpoint (owners); what it has not received yet is cancelled",
)
def delete_endpoint(
    request: Request, endpoint_id: int = EndpointId, principal: Principal = Depends(owner_principal)
) -> Response:
    if not webhooks.remove_audited(get_engine(), principal, endpoint_id, ip=client_ip(request)):
        raise ApiError(404, "not_found", "no such webhook endpoint in this organization")
    return Response(status_code=204)


@router.patch(
    "/endpoints/{endpoint_id}",
    response_model=EndpointOut,
    responses={**responses(400, 401, 404), **WRITE_FORBIDDEN},
    summary="Enable or disable a webhook endpoint (owners); disabling cancels what it has not received yet",
    description='`{"enabled": false}` stops deliveries to the endpoint: its queued messages and retries are '
    "cancelled (they show as `cancelled`, `endpoint disabled`, in the delivery log) and events while it is "
    'disabled are not queued for it. `{"enabled": true}` resumes with the events from then on; the cancelled '
    "ones are not sent. Setting the state it already has changes nothing. Answers the endpoint.",
)
def patch_endpoint(
    body: EndpointPatch,
    request: Request,
    endpoint_id: int = EndpointId,
    principal: Principal = Depends(owner_principal),
) -> EndpointOut:
    endpoint = webhooks.set_enabled_audited(get_engine(), principal, endpoint_id, body.enabled, ip=client_ip(request))
    if endpoint is None:
        raise ApiError(404, "not_found", "no such webhook endpoint in this organization")
    return _out(endpoint)


@router.post(
    "/endpoints/{endpoint_id}/test",
    status_code=202,
    response_model=TestSent,
    responses={
        **responses(400, 401, 404),
        409: {"model": ErrorBody, "description": "endpoint_disabled: enable the endpoint first"},
        **WRITE_FORBIDDEN,
    },
    summary="Send a test event (`webhook.test`) to this endpoint (owners)",
    description="Queued at once and sent within seconds; follow it in GET /api/webhooks/deliveries.",
)
def send_test(endpoint_id: int = EndpointId, principal: Principal = Depends(owner_principal)) -> TestSent:
    try:
        msg_id = webhooks.send_test_event(get_engine(), principal.organization_id, endpoint_id, principal.email)
    except webhooks.WebhookError as exc:
        raise _refusal(exc) from None
    return TestSent(msg_id=msg_id)


@router.get(
    "/deliveries",
    response_model=Deliveries,
    responses={**responses(400, 401), **READ_FORBIDDEN},
    summary="The delivery log, newest first, each message with its attempts' response codes (owners and admins)",
)
def list_deliveries(
    endpoint_id: int | None = Query(None, ge=1, le=2_147_483_647, description="Only this endpoint's"),
    limit: int = Query(50, ge=1, le=200),
    principal: Principal = Depends(reader_principal),
) -> Deliveries:
    with get_engine().connect() as conn:
        found = webhooks.list_deliveries(conn, principal.organization_id, endpoint_id=endpoint_id, limit=limit)
        logs = webhooks.attempts_for(conn, [d.id for d in found])
    return Deliveries(
        deliveries=[
            DeliveryOut(
                id=d.id,
                endpoint_id=d.endpoint_id,
                url=d.url,
                event_type=d.event_type,
                msg_id=d.msg_id,
                status=d.status,  # type: ignore[arg-type]
                attempts=d.attempts,
                last_status_code=d.last_status_code,
                last_error=d.last_error,
                next_attempt_at=d.next_attempt_at,
                created_at=d.created_at,
                finished_at=d.finished_at,
                log=[AttemptOut(**a) for a in logs.get(d.id, [])],
            )
            for d in found
        ]
    )
