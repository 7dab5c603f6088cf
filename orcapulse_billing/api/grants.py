"""`/api/credits/grants`: the organization's credit grants (any member reads them). Grants are made and
consumed by the ledger only (ledger.py); grants.py lists them."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from .. import grants
from ..auth import Principal
from ..db import get_engine
from ..ledger import get_account
from ..money import fmt4
from . import schemas as s
from .deps import DecimalRoute, current_principal
from .errors import responses

router = APIRouter(prefix="/api/credits/grants", tags=["credits"], route_class=DecimalRoute)


def grant_json(grant: grants.GrantView) -> s.GrantOut:
    return s.GrantOut(
        id=grant.id,
        source=grant.source,
        priority=grant.priority,
        amount=fmt4(grant.amount_units),
        remaining=fmt4(grant.remaining_units),
        expires_at=grant.expires_at,
        expired_at=grant.expired_at,
        active=grant.active,
        created_at=grant.created_at,
    )


@router.get(
    "",
    response_model=s.Grants,
    responses=responses(400, 401),
    summary="Credit grants: what remains of each credit, its expiry and source",
    description="Debits spend grants in burn order: promotional and welcome credits first, then bonus, then "
    "paid; within a class the earliest-expiring first, then the oldest. The balance is the sum of what "
    "remains, less any debt (a negative balance).",
)
def list_grants(principal: Principal = Depends(current_principal)) -> s.Grants:
    with get_engine().connect() as conn:
        account_id = get_account(conn, organization_id=principal.organization_id).id
        found = grants.list_grants(conn, account_id)
    return s.Grants(grants=[grant_json(g) for g in found])
