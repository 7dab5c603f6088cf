"""Holds: credits reserved while an operation runs, then captured or released."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from .common import Count, Money, Quantity, Strict
from .credits import HistoryEntry
from .usage import CheckChat, CheckMetered, CheckTokens, IdempotencyKey

# -- holds -------------------------------------------------------------------------------------------

_HOLD_KEY = Field(description="Unique per organization: the same key again answers the same hold (201).")


class HoldMetered(CheckMetered):
    estimated_quantity: Quantity
    idempotency_key: Annotated[IdempotencyKey, _HOLD_KEY]


class HoldChat(CheckChat):
    estimated_quantity: Count
    idempotency_key: Annotated[IdempotencyKey, _HOLD_KEY]


class HoldTokens(CheckTokens):
    estimated_quantity: Quantity
    idempotency_key: Annotated[IdempotencyKey, _HOLD_KEY]


HoldRequest = Annotated[HoldMetered | HoldChat | HoldTokens, Field(discriminator="operation")]


class CaptureRequest(Strict):
    quantity: Annotated[
        Quantity,
        Field(
            description="What the operation actually used, priced as the hold's operation (whole messages for a chat hold: 400 otherwise)."
        ),
    ]


class HoldOut(BaseModel):
    id: int
    operation: str
    model: str | None
    estimated_quantity: str
    amount: Money = Field(description="The credits reserved (the estimate's cost, rounded up to 4 places).")
    status: Literal["active", "captured", "released", "expired"]
    idempotency_key: str
    captured_entry_id: int | None
    expires_at: datetime
    created_at: datetime
    settled_at: datetime | None


class HoldPlaced(HoldOut):
    available: Money = Field(description="The available balance after this hold (on a replay: now).")
    replayed: bool = False


class HoldSettled(BaseModel):
    hold: HoldOut
    entry: HistoryEntry | None = Field(
        description="The usage entry of a capture (null: a release, or a cost below one ledger unit so far)."
    )
    released: Money = Field(description="What this call gave back to the available balance (0 on a replay).")
    replayed: bool = False


class Holds(BaseModel):
    holds: list[HoldOut]
    reserved: Money
    available: Money
