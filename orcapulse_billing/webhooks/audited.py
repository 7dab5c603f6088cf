"""What an owner does to the organization's endpoints, audited: the REST routes and the billing page
both add, enable or disable, and remove through here (the caller has checked that the principal is an owner)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.engine import Engine

from ..auth import Principal, audit
from ..db import writer
from .endpoints import Endpoint, add_endpoint, remove_endpoint, set_endpoint_enabled


def add_audited(
    engine: Engine,
    principal: Principal,
    url: str,
    event_types: Sequence[str],
    *,
    description: str,
    production: bool,
    ip: str | None,
) -> tuple[Endpoint, str]:
    """`add_endpoint` for the principal's organization, then the audit line; WebhookError writes nothing."""
    endpoint, secret = add_endpoint(
        engine,
        principal.organization_id,
        url,
        event_types,
        production=production,
        user_id=principal.user_id,
        description=description,
    )
    with writer(engine).begin() as conn:
        audit(
            conn,
            "webhook_endpoint_added",
            organization_id=principal.organization_id,
            user_id=principal.user_id,
            ip=ip,
            endpoint_id=endpoint.id,
            url=endpoint.url,
        )
    return endpoint, secret


def remove_audited(engine: Engine, principal: Principal, endpoint_id: int, *, ip: str | None) -> bool:
    """`remove_endpoint` and its audit line in one transaction; False (nothing written): no such
    endpoint in the principal's organization."""
    with writer(engine).begin() as conn:
        if not remove_endpoint(conn, principal.organization_id, endpoint_id):
            return False
        audit(
            conn,
            "webhook_endpoint_removed",
            organization_id=principal.organization_id,
            user_id=principal.user_id,
            ip=ip,
            endpoint_id=endpoint_id,
        )
    return True


def set_enabled_audited(
    engine: Engine, principal: Principal, endpoint_id: int, enabled: bool, *, ip: str | None
) -> Endpoint | None:
    """`set_endpoint_enabled` and its audit line in one transaction; None (nothing written): no such
    endpoint in the principal's organization."""
    with writer(engine).begin() as conn:
        endpoint = set_endpoint_enabled(conn, principal.organization_id, endpoint_id, enabled)
        if endpoint is None:
            return None
        audit(
            conn,
            "webhook_endpoint_enabled" if enabled else "webhook_endpoint_disabled",
            organization_id=principal.organization_id,
            user_id=principal.user_id,
            ip=ip,
            endpoint_id=endpoint_id,
        )
    return endpoint
