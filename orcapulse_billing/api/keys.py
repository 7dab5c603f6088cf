"""`/api/keys`: the organization's API keys, managed by its owners and admins.

A key made here is bound to the caller's organization and answered once (only its hash is stored).
Scopes add what a role alone does not let a key do: `usage:write` reports usage (spends credits),
and only a user who is an owner or admin here may hold it. Members get 403 on every route here.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request, Response

from .. import accounts
from ..auth import Principal
from ..db import get_engine
from ..models import Role
from . import schemas as s
from .deps import DecimalRoute, client_ip, current_principal
from .errors import ApiError, ErrorBody, responses

router = APIRouter(prefix="/api/keys", tags=["api keys"], route_class=DecimalRoute)
MANAGERS = (Role.owner.value, Role.admin.value)
FORBIDDEN = {
    403: {
        "model": ErrorBody,
        "description": "forbidden: only owners and admins manage keys, and an admin not an owner's; "
        "scope_not_allowed: `usage:write` for a user who is a member here",
    }
}
KeyId = Path(..., ge=1, le=2_147_483_647, description="The key's id (from GET /api/keys).")


def manager_principal(principal: Principal = Depends(current_principal)) -> Principal:
    if principal.role not in MANAGERS:
        raise ApiError(403, "forbidden", "only owners and admins of the organization manage API keys")
    return principal


def _out(info: accounts.ApiKeyInfo) -> s.ApiKeyOut:
    return s.ApiKeyOut(
        id=info.id,
        prefix=info.prefix,
        name=info.name,
        email=info.email,
        scopes=list(info.scopes),
        organization_id=info.organization_id,
        created_at=info.created_at,
        last_used_at=info.last_used_at,
        revoked_at=info.revoked_at,
    )


def _refusal(exc: accounts.AccountsError) -> ApiError:
    if isinstance(exc, accounts.UnknownUser | accounts.UnknownApiKey):
        return ApiError(404, "not_found", str(exc))
    if isinstance(exc, accounts.ScopeNotAllowed):
        return ApiError(403, "scope_not_allowed", str(exc))
    if isinstance(exc, accounts.NotPermitted):
        return ApiError(403, "forbidden", str(exc))
    return ApiError(400, "invalid_request", str(exc))


@router.post(
    "",
    status_code=201,
    response_model=s.ApiKeyCreated,
    responses={**responses(400, 401, 404), **FORBIDDEN},
    summary="Create an API key for a user of this organization (the secret is answered once)",
)
def create_key(
    body: s.ApiKeyCreate, request: Request, principal: Principal = Depends(manager_principal)
) -> s.ApiKeyCreated:
    try:
        new = accounts.create_api_key(
            get_engine(),
            body.email or principal.email,
            body.scopes,
            organization_id=principal.organization_id,
            name=body.name,
            maker_role=principal.role,
            actor_user_id=principal.user_id,
            ip=client_ip(request),
        )
    except accounts.AccountsError as exc:
        raise _refusal(exc) from None
    made = accounts.list_api_keys(get_engine(), principal.organization_id, key_id=new.id)[0]
    return s.ApiKeyCreated(key=new.key, **_out(made).model_dump())


@router.get(
    "",
    response_model=list[s.ApiKeyOut],
    responses={**responses(400, 401), **FORBIDDEN},
    summary="The keys that can act in this organization, newest first (revoked ones too; never a secret)",
)
def list_keys(principal: Principal = Depends(manager_principal)) -> list[s.ApiKeyOut]:
    return [_out(info) for info in accounts.list_api_keys(get_engine(), principal.organization_id)]


@router.delete(
    "/{key_id}",
    status_code=204,
    responses={**responses(400, 401, 404), **FORBIDDEN},
    summary="Revoke a key at once (again: nothing changes)",
)
def revoke_key(request: Request, key_id: int = KeyId, principal: Principal = Depends(manager_principal)) -> Response:
    try:
        accounts.revoke_api_key(
            get_engine(),
            principal.organization_id,
            key_id,
            maker_role=principal.role,
            actor_user_id=principal.user_id,
            ip=client_ip(request),
        )
    except accounts.AccountsError as exc:
        raise _refusal(exc) from None
    return Response(status_code=204)
