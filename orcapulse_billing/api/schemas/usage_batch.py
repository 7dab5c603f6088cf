"""Usage in bulk: POST /api/credits/usage/batch."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, RootModel, WithJsonSchema

from .common import Money, Strict
from .credits import HistoryEntry
from .usage import IdempotencyKey, UsageChat, UsageMetered, UsageTokens

# -- usage in bulk ----------------------------------------------------------------------------------

MAX_BATCH_EVENTS = 1000
_BATCH_KEY = Field(
    description="Required in each event: unique per organization, as the single report's key (the same key "
    "again, in this batch or any later request, is a replay of this event)."
)


class BatchUsageMetered(UsageMetered):
    """A usage event of a metered operation, with its own idempotency key."""

    idempotency_key: Annotated[IdempotencyKey, _BATCH_KEY]


class BatchUsageChat(UsageChat):
    """A chat session's usage (whole messages), with its own idempotency key."""

    idempotency_key: Annotated[IdempotencyKey, _BATCH_KEY]


class BatchUsageTokens(UsageTokens):
    """OpenAI tokens of a priced model, with their own idempotency key."""

    idempotency_key: Annotated[IdempotencyKey, _BATCH_KEY]


class BatchUsageEvent(RootModel[BatchUsageMetered | BatchUsageChat | BatchUsageTokens]):
    """One event of POST /api/credits/usage/batch: the body of POST /api/credits/usage, with its key."""

    root: Annotated[BatchUsageMetered | BatchUsageChat | BatchUsageTokens, Field(discriminator="operation")]


# Each event is checked on its own: one that is not a valid BatchUsageEvent is refused in its result
# (status `refused`, code `invalid_request`) and the others are still recorded. So the document accepts
# any object as an event, and names the shape that is recorded.
_BatchItem = Annotated[
    dict[str, Any],
    WithJsonSchema(
        {
            "anyOf": [{"$ref": "#/components/schemas/BatchUsageEvent"}, {"type": "object"}],
            "description": "A usage event, the body of POST /api/credits/usage with `idempotency_key` required "
            "(BatchUsageEvent). An object that is not one is refused in its own result; the others are still "
            "recorded.",
        }
    ),
]


class UsageBatchRequest(Strict):
    events: Annotated[
        list[_BatchItem],
        Field(
            min_length=1,
            max_length=MAX_BATCH_EVENTS,
            description=f"1 to {MAX_BATCH_EVENTS} usage events of the caller's organization, recorded in order "
            "in one transaction (each as if reported alone, in this order).",
        ),
    ]


class BatchError(BaseModel):
    code: str = Field(description="invalid_request (bad event), idempotency_conflict, or the ledger's code")
    message: str


class UsageBatchResult(BaseModel):
    index: int = Field(ge=0, description="The event's place in `events` (from 0).")
    idempotency_key: str | None = Field(description="The event's key (null: it sent none that is valid).")
    status: Literal["charged", "not_charged", "replayed", "refused"] = Field(
        description="charged: an entry was posted. not_charged: a failed operation, or a cost still below one "
        "ledger unit (carried to the next report of the operation). replayed: the key was seen before (earlier "
        "in this batch too); nothing changed. refused: see `error`; nothing was recorded for this event."
    )
    cost: Money | None = Field(description="The event's own cost (null: refused before it could be priced).")
    entry: HistoryEntry | None = Field(description="The posted entry (a replay: the key's first entry, if any).")
    balance: Money | None = Field(description="The balance after `entry`.")
    session_id: str | None
    error: BatchError | None = None


class UsageBatchSummary(BaseModel):
    charged: int
    not_charged: int
    replayed: int
    refused: int
    balance: Money = Field(description="The balance after this batch.")


class UsageBatchResponse(BaseModel):
    results: list[UsageBatchResult] = Field(description="One per event, in the order of `events`.")
    summary: UsageBatchSummary
