"""The billing profile: the name and address an organization's receipts are made out to, edited by
its owners (REST, the billing page). Without one, receipts carry the organization's name and no
address. Receipts copy it when they are issued (receipts.py), so editing it changes no old receipt.

Framework-free.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .db import as_utc
from .models import BillingProfile, Organization


def table_of(model: Any) -> sa.Table:
    """A table model's Core table (what SQLModel does not declare to type checkers)."""
    table = sa.inspect(model).local_table
    assert isinstance(table, sa.Table)
    return table


@dataclass(frozen=True)
class BillingDetails:
    name: str
    address_line1: str = ""
    address_line2: str = ""
    city: str = ""
    region: str = ""
    postal_code: str = ""
    country: str = ""
    tax_id: str = ""

    def address_lines(self) -> list[str]:
        """The address as printed: street lines, 'postal code city', region, country (empty ones left out)."""
        town = " ".join(p for p in (self.postal_code, self.city) if p)
        return [line for line in (self.address_line1, self.address_line2, town, self.region, self.country) if line]

    def as_dict(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


PROFILE_FIELDS = tuple(f.name for f in fields(BillingDetails))
PROFILE_LIMITS = {
    "name": 200,
    "address_line1": 200,
    "address_line2": 200,
    "city": 100,
    "region": 100,
    "postal_code": 32,
    "country": 100,
    "tax_id": 64,
}
# One line of text: no control characters (C0, DEL, C1, line and paragraph separators). Blank: only
# spaces (these, spelled out, so that Python, the JSON Schema pattern and its validators agree on them).
CONTROL_CLASS = "\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029"
SPACES = " \u00a0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B)) + "\u202f\u205f\u3000\ufeff"
LINE_PATTERN = f"^[^{CONTROL_CLASS}]*$"
_SPACE_CLASS = "".join(f"\\u{ord(c):04x}" for c in SPACES)
NOT_BLANK_PATTERN = f"^[^{CONTROL_CLASS}]*[^{CONTROL_CLASS}{_SPACE_CLASS}][^{CONTROL_CLASS}]*$"
_CONTROL = re.compile(f"[{CONTROL_CLASS}]")


class ProfileError(ValueError):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def validate_profile(data: Mapping[str, Any]) -> BillingDetails:
    """The fields as they will be printed (trimmed); ProfileError names the first that is not acceptable:
    one line each (no control characters), at most its length as given, `name` not blank; the others
    may be empty; no other keys. (The REST body's schema says the same.)"""
    unknown = sorted(set(data) - set(PROFILE_FIELDS))
    if unknown:
        raise ProfileError(f"unknown field {unknown[0]!r}")
    values: dict[str, str] = {}
    for name in PROFILE_FIELDS:
        raw = data.get(name, "")
        if raw is None:
            raw = ""
        if not isinstance(raw, str):
            raise ProfileError(f"{name} must be a string")
        if _CONTROL.search(raw):
            raise ProfileError(f"{name} must be one line of text, without control characters")
        if len(raw) > PROFILE_LIMITS[name]:
            raise ProfileError(f"{name} must be at most {PROFILE_LIMITS[name]} characters")
        values[name] = raw.strip(SPACES)
    if not values["name"]:
        raise ProfileError("name is required (the name receipts are made out to)")
    return BillingDetails(**values)


def get_profile(conn: Connection, organization_id: int) -> tuple[BillingDetails, datetime | None]:
    """The organization's billing details and when they were last edited (None: never; the name is
    then the organization's own)."""
    t = table_of(BillingProfile)
    row = conn.execute(sa.select(t).where(t.c.organization_id == organization_id)).first()
    if row is not None:
        return BillingDetails(**{name: getattr(row, name) for name in PROFILE_FIELDS}), as_utc(row.updated_at)
    orgs = table_of(Organization)
    name = conn.execute(sa.select(orgs.c.name).where(orgs.c.id == organization_id)).scalar()
    return BillingDetails(name=str(name or "")), None


def save_profile(conn: Connection, organization_id: int, details: BillingDetails, user_id: int | None) -> datetime:
    """Writes the profile (insert or replace) in the caller's transaction; returns its time."""
    t = table_of(BillingProfile)
    moment = datetime.now(UTC)
    values = {**details.as_dict(), "updated_by_user_id": user_id, "updated_at": moment}
    changed = conn.execute(sa.update(t).where(t.c.organization_id == organization_id).values(**values)).rowcount
    if not changed:
        conn.execute(sa.insert(t).values(organization_id=organization_id, **values))
    return moment
