"""The billing details receipts are made out to, on the billing page: owners edit them in a dialog,
admins see them, members see nothing (the card is not shown and nothing is loaded for them).

A state of its own (a substate of SessionState, beside BillingState), so the page's live updates never
carry it. Every handler re-reads the caller's role from the database (`_current_principal`): an admin
or a member who sends the save event anyway is refused and nothing is written.
"""

from __future__ import annotations

import asyncio

import reflex as rx

from ...auth import Principal, audit
from ...billing_profile import (
    PROFILE_FIELDS,
    BillingDetails,
    ProfileError,
    get_profile,
    save_profile,
    validate_profile,
)
from ...db import get_engine, writer
from ...state import SessionState

READERS = ("owner", "admin")


def _read(organization_id: int) -> BillingDetails:
    with get_engine().connect() as conn:
        return get_profile(conn, organization_id)[0]


def _write(principal: Principal, details: BillingDetails, ip: str | None) -> None:
    with writer(get_engine()).begin() as conn:
        save_profile(conn, principal.organization_id, details, principal.user_id)
        audit(
            conn,
            "billing_profile_updated",
            organization_id=principal.organization_id,
            user_id=principal.user_id,
            ip=ip,
            name=details.name,
        )


class BillingProfileState(SessionState):
    visible: bool = False  # owners and admins
    dialog_open: bool = False
    saving: bool = False
    error: str = ""
    # what is saved, as shown on the card
    name: str = ""
    address: str = ""  # one line: street, town, country
    tax_id: str = ""
    # the dialog's fields
    form: dict[str, str] = {}

    @rx.event
    async def load_profile(self):
        principal = self._current_principal()
        if principal is None or principal.role not in READERS:
            self.visible, self.name, self.address, self.tax_id, self.form = False, "", "", "", {}
            return
        details = await asyncio.to_thread(_read, principal.organization_id)
        self._show(details)
        self.visible = True

    def _show(self, details: BillingDetails) -> None:
        self.name, self.tax_id = details.name, details.tax_id
        self.address = ", ".join(details.address_lines())
        self.form = details.as_dict()

    @rx.event
    async def open_profile(self):
        principal = self._current_principal()
        if principal is None or not principal.is_owner:
            yield rx.toast.error("Only owners can change the billing details.")
            return
        self._show(await asyncio.to_thread(_read, principal.organization_id))
        self.error, self.dialog_open = "", True

    @rx.event
    def set_profile_open(self, value: bool):
        self.dialog_open = bool(value)
        if not value:
            self.error = ""

    @rx.event
    def set_profile_field(self, field: str, value: str):
        if field in PROFILE_FIELDS:
            self.form = {**self.form, field: str(value)}
            self.error = ""

    @rx.event
    async def save_billing_profile(self):
        principal = self._current_principal()
        if principal is None or not principal.is_owner:
            self.error = "Only owners can change the billing details."
            return
        try:
            details = validate_profile({k: v for k, v in self.form.items() if k in PROFILE_FIELDS})
        except ProfileError as exc:
            self.error = exc.message[:1].upper() + exc.message[1:] + "."
            return
        self.saving = True
        yield
        try:
            await asyncio.to_thread(_write, principal, details, self._client_ip())
        finally:
            self.saving = False
        self._show(details)
        self.dialog_open = False
        yield rx.toast.success("Billing details saved. Receipts from now on are made out to them.")
