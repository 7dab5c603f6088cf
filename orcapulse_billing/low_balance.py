"""An organization's low-balance threshold, and the ledger entries that cross it.

Owners choose one of (`low_balance_setting`; REST, the page, the CLI):
- nothing: the deployment's LOW_BALANCE_THRESHOLD (mode "default");
- an amount ("amount"): 0 to 1,000,000 credits, at most 2 decimal places;
- a percentage of the last top-up ("percent", 1 to 100): of the credits the organization's last
  `purchase` entry added, whatever paid for it (Stripe checkout, a quick purchase, auto-recharge,
  Lemon Squeezy, an operator's purchase), without its volume bonus (a separate `bonus` entry, posted
  just after: counting it would make the threshold differ between the two entries of one top-up),
  and whether or not it was refunded later; rounded down to the cent. Before any top-up the
  deployment's LOW_BALANCE_THRESHOLD applies.

A crossing is one ledger entry: down when balance_before is at or above the threshold and
balance_after below it (the low-balance email, `balance.low`), up when balance_before is below it and
balance_after at or above it (the "balance recovered" email, `balance.recovered`), except the
account's first entry (a new organization's first credits recover nothing). The threshold
an entry is judged by is the one in force when it is processed: the setting as it is then, and in
percent mode the last top-up at or before that entry (an entry's own purchase counts), so a later
top-up never re-judges an older entry. Staying below or above sends nothing; each entry is judged
once per direction, keyed by its id, so hearing it twice writes nothing new.

Framework-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from operator import attrgetter
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .auth import Principal, audit
from .billing_profile import table_of
from .db import writer
from .ledger import PostedEntry
from .models import CreditAccount, LedgerEntry, LowBalanceSetting
from .money import MoneyError, fmt4, parse_amount, to_units

MODES = ("default", "amount", "percent")
MAX_AMOUNT = Decimal(1_000_000)
UNITS_PER_CENT = 100
SETTINGS = table_of(LowBalanceSetting)
ACCOUNTS = table_of(CreditAccount)
ENTRIES = table_of(LedgerEntry)
_SEQ = attrgetter("seq")


class ThresholdError(ValueError):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ThresholdSetting:
    mode: Literal["default", "amount", "percent"]
    amount_units: int | None = None
    percent: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "amount": fmt4(self.amount_units) if self.amount_units is not None else None,
            "percent": self.percent,
        }


DEFAULT = ThresholdSetting("default")


@dataclass(frozen=True)
class Threshold:
    """The threshold in force: `units`, and what it came from (`basis`: "default", "amount",
    "percent", or "default_before_topup" in percent mode before any top-up)."""

    units: int
    basis: str
    last_topup_units: int | None = None


@dataclass(frozen=True)
class Crossing:
    entry: PostedEntry
    organization_id: int
    threshold: int  # units
    direction: Literal["low", "recovered"]


def validate_setting(data: Mapping[str, Any]) -> ThresholdSetting:
    """{"mode": "default"} | {"mode": "amount", "amount": "25.00"} | {"mode": "percent", "percent": 20};
    ThresholdError names what is wrong. The field of the other mode must be absent or null."""
    unknown = sorted(set(data) - {"mode", "amount", "percent"})
    if unknown:
        raise ThresholdError(f"unknown field {unknown[0]!r}")
    mode, amount, percent = data.get("mode"), data.get("amount"), data.get("percent")
    if mode not in MODES:
        raise ThresholdError(f"mode must be one of {', '.join(MODES)}")
    if mode != "amount" and amount is not None:
        raise ThresholdError(f"amount is only for mode amount (mode is {mode})")
    if mode != "percent" and percent is not None:
        raise ThresholdError(f"percent is only for mode percent (mode is {mode})")
    if mode == "amount":
        if not isinstance(amount, (str, int, Decimal)) or isinstance(amount, bool):
            raise ThresholdError('amount is required: a decimal string, e.g. "25.00"')
        try:
            value = parse_amount(amount, max_places=2)
        except MoneyError:
            raise ThresholdError("amount must be a decimal number of credits with at most 2 decimal places") from None
        if not 0 <= value <= MAX_AMOUNT:
            raise ThresholdError(f"amount must be between 0 and {MAX_AMOUNT:,}")
        return ThresholdSetting("amount", amount_units=to_units(value))
    if mode == "percent":
        if not isinstance(percent, int) or isinstance(percent, bool) or not 1 <= percent <= 100:
            raise ThresholdError("percent must be a whole number from 1 to 100")
        return ThresholdSetting("percent", percent=percent)
    return DEFAULT


def get_setting(conn: Connection, organization_id: int) -> ThresholdSetting:
    row = conn.execute(sa.select(SETTINGS).where(SETTINGS.c.organization_id == organization_id)).first()
    return _setting(row.mode, row.amount, row.percent) if row is not None else DEFAULT


def _setting(mode: str | None, amount: int | None, percent: int | None) -> ThresholdSetting:
    if mode == "amount" and amount is not None:
        return ThresholdSetting("amount", amount_units=int(amount))
    if mode == "percent" and percent is not None:
        return ThresholdSetting("percent", percent=int(percent))
    return DEFAULT


def save_setting(conn: Connection, organization_id: int, setting: ThresholdSetting, user_id: int | None) -> None:
    """Writes the setting in the caller's transaction; "default" removes the organization's own."""
    conn.execute(sa.delete(SETTINGS).where(SETTINGS.c.organization_id == organization_id))
    if setting.mode != "default":
        conn.execute(
            sa.insert(SETTINGS).values(
                organization_id=organization_id,
                mode=setting.mode,
                amount=setting.amount_units,
                percent=setting.percent,
                updated_by_user_id=user_id,
                updated_at=datetime.now(UTC),
            )
        )


def save_audited(engine: Engine, principal: Principal, setting: ThresholdSetting, ip: str | None) -> None:
    """An owner's change (REST, the page): the setting and its audit line, in one transaction."""
    with writer(engine).begin() as conn:
        save_setting(conn, principal.organization_id, setting, principal.user_id)
        audit(
            conn,
            "low_balance_threshold_updated",
            organization_id=principal.organization_id,
            user_id=principal.user_id,
            ip=ip,
            **setting.as_json(),
        )


def percent_of(topup_units: int, percent: int) -> int:
    """`percent` of a top-up, rounded down to the cent (integer arithmetic: exact)."""
    return topup_units * percent // 100 // UNITS_PER_CENT * UNITS_PER_CENT


def _last_topups(conn: Connection, account_id: int, up_to_seq: int | None, limit: int) -> list[tuple[int, int]]:
    """(seq, amount) of the account's last `limit` purchase entries at or before `up_to_seq`, newest
    first. Top-ups are kind "topup" (purchases and bonuses): the (account, kind, kind_seq) index."""
    query = sa.select(ENTRIES.c.seq, ENTRIES.c.amount).where(
        ENTRIES.c.account_id == account_id, ENTRIES.c.kind == "topup", ENTRIES.c.type == "purchase"
    )
    if up_to_seq is not None:
        query = query.where(ENTRIES.c.seq <= up_to_seq)
    return [(r.seq, r.amount) for r in conn.execute(query.order_by(ENTRIES.c.kind_seq.desc()).limit(limit))]


def _in_force(setting: ThresholdSetting, default_units: int, last_topup: int | None) -> Threshold:
    if setting.mode == "amount" and setting.amount_units is not None:
        return Threshold(setting.amount_units, "amount")
    if setting.mode == "percent" and setting.percent is not None:
        if last_topup is None:
            return Threshold(default_units, "default_before_topup")
        return Threshold(percent_of(last_topup, setting.percent), "percent", last_topup)
    return Threshold(default_units, "default")


def current_threshold(conn: Connection, organization_id: int, default_units: int) -> Threshold:
    """The threshold in force now (the page's banner, GET /api/credits/balance)."""
    setting = get_setting(conn, organization_id)
    last = None
    if setting.mode == "percent":
        account_id = conn.execute(
            sa.select(ACCOUNTS.c.id).where(ACCOUNTS.c.organization_id == organization_id)
        ).scalar()
        found = _last_topups(conn, int(account_id), None, 1) if account_id is not None else []
        last = found[0][1] if found else None
    return _in_force(setting, default_units, last)


def _account_setting(conn: Connection, account_id: int) -> tuple[int, ThresholdSetting] | None:
    """The account's organization and its threshold setting (None: no such account)."""
    row = conn.execute(
        sa.select(ACCOUNTS.c.organization_id, SETTINGS.c.mode, SETTINGS.c.amount, SETTINGS.c.percent)
        .select_from(ACCOUNTS.outerjoin(SETTINGS, SETTINGS.c.organization_id == ACCOUNTS.c.organization_id))
        .where(ACCOUNTS.c.id == account_id)
    ).first()
    return (int(row.organization_id), _setting(row.mode, row.amount, row.percent)) if row is not None else None


def thresholds_between(
    conn: Connection, account_id: int, default_units: int, after_seq: int, upto_seq: int
) -> set[int]:
    """Every threshold the account's entries with `seq` in (after_seq, upto_seq] can be judged by now: the
    one of an amount or the default, or in percent mode one per top-up they may follow (the last one
    before them and each among them), and the default for those before the first top-up. To pick out
    the entries that may cross one; `crossings` then judges each by its own."""
    found_account = _account_setting(conn, account_id)
    setting = found_account[1] if found_account is not None else DEFAULT
    if setting.mode != "percent" or setting.percent is None:
        return {_in_force(setting, default_units, None).units}
    inside = conn.execute(
        sa.select(ENTRIES.c.amount).where(
            ENTRIES.c.account_id == account_id,
            ENTRIES.c.kind == "topup",
            ENTRIES.c.type == "purchase",
            ENTRIES.c.seq > after_seq,
            ENTRIES.c.seq <= upto_seq,
        )
    ).scalars()
    before = _last_topups(conn, account_id, after_seq, 1)
    found = {percent_of(int(amount), setting.percent) for amount in [*inside, *(a for _, a in before)]}
    if not before:
        found.add(default_units)  # percent mode before any top-up
    return found


def crossings(conn: Connection, entries: Sequence[PostedEntry], default_units: int) -> list[Crossing]:
    """The entries that crossed their account's threshold, each judged by the threshold in force for
    it (module docstring). One read per account for the setting, one more in percent mode."""
    found: list[Crossing] = []
    by_account: dict[int, list[PostedEntry]] = {}
    for entry in entries:  # a replay is judged again: the dedupe keys keep its notices once
        by_account.setdefault(entry.account_id, []).append(entry)
    for account_id, group in by_account.items():
        found_account = _account_setting(conn, account_id)
        if found_account is None:
            continue
        organization_id, setting = found_account
        topups: list[tuple[int, int]] = []
        if setting.mode == "percent":
            low, high = min(e.seq for e in group), max(e.seq for e in group)
            # every purchase in the group's range, and the last one before it
            topups = _last_topups(conn, account_id, high, high - low + 2)
        # the threshold per last top-up: one for the whole group unless it is in percent mode and holds purchases
        # (a batch brings a thousand entries of one account: each is still judged, by a number looked up once)
        in_force: dict[int | None, int] = {}
        for entry in sorted(group, key=_SEQ):
            last = next((amount for seq, amount in topups if seq <= entry.seq), None) if topups else None
            threshold = in_force.get(last)
            if threshold is None:
                threshold = in_force[last] = _in_force(setting, default_units, last).units
            before, after = entry.balance_before_units, entry.balance_after_units
            if before >= threshold > after:
                found.append(Crossing(entry, organization_id, threshold, "low"))
            elif before < threshold <= after and entry.seq > 1:  # an account's first credit recovers nothing
                found.append(Crossing(entry, organization_id, threshold, "recovered"))
    return found
