"""Signing in, the caller, and API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from ...accounts import SCOPES
from .common import Strict


class LoginRequest(Strict):
    email: Annotated[str, Field(min_length=3, max_length=320)]
    password: Annotated[str, Field(min_length=1, max_length=200)]


class Me(BaseModel):
    user_id: int
    email: str
    organization_id: int
    role: str


# -- API keys ----------------------------------------------------------------------------------------

Scope = Literal[tuple(SCOPES)]  # type: ignore[valid-type]
KeyName = Annotated[
    str,
    Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$", examples=["voice-worker"]),
]


class ApiKeyCreate(Strict):
    """`usage:write` only for a user who is an owner or admin here (403 `scope_not_allowed` otherwise);
    an admin cannot make a key that acts as an owner (403)."""

    email: Annotated[
        str | None,
        Field(
            min_length=3,
            max_length=320,
            description="The user the key acts as, a member of this organization (404 otherwise); "
            "the caller when absent.",
        ),
    ] = None
    scopes: Annotated[
        list[Scope],
        Field(
            max_length=10,
            description="What the key may do beyond reading (each once; repeats are ignored); none: read only.",
        ),
    ] = []
    name: Annotated[KeyName | None, Field(description="A label for people (what the key is for).")] = None


class ApiKeyOut(BaseModel):
    id: int
    prefix: str = Field(description="The key's first characters, to recognise it (the key itself is never stored).")
    name: str | None
    email: str
    scopes: list[Scope]
    organization_id: int | None = Field(description="The organization the key is bound to; null: any of its user's.")
    created_at: datetime
    last_used_at: datetime | None = Field(description="To the minute.")
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret, shown this once: send it as `Authorization: Bearer <key>`.")
