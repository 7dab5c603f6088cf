"""The Notifications card on the billing page, owners only: the organization's low-balance threshold
(the deployment's, an amount, or a percentage of the last top-up) and the signed-in owner's own email
switches. Admins and members get no billing emails, so the card is not shown to them and nothing is
loaded for them.

A state of its own (a substate of SessionState, beside BillingState). Every handler re-reads the
caller's role from the database: anyone but an owner who sends an event anyway is refused and
nothing is written. What it shows belongs to one binding (user, organization, session) and is
cleared when that changes.
"""

from __future__ import annotations

import asyncio

import reflex as rx

from ... import low_balance, notification_preferences
from ...auth import Principal
from ...config import get_settings
from ...db import get_engine
from ...money import fmt_balance, from_units, to_units
from ...state import SessionState

OWNERS_ONLY = "Only owners can change notification settings."


def _read(organization_id: int, user_id: int) -> tuple[low_balance.ThresholdSetting, low_balance.Threshold, dict]:
    default = to_units(get_settings().low_balance_threshold)
    with get_engine().connect() as conn:
        setting = low_balance.get_setting(conn, organization_id)
        now = low_balance.current_threshold(conn, organization_id, default)
        switches = notification_preferences.get_preferences(conn, organization_id, user_id)
    return setting, now, switches


def in_force_text(setting: low_balance.ThresholdSetting, now: low_balance.Threshold) -> str:
    if now.basis == "percent":
        return f"In force now: {fmt_balance(now.units)} ({setting.percent}% of the last top-up, {fmt_balance(now.last_topup_units or 0)})"
    if now.basis == "default_before_topup":
        return f"In force now: {fmt_balance(now.units)} (the default, until the first top-up)"
    return f"In force now: {fmt_balance(now.units)}"


class NotificationsState(SessionState):
    visible: bool = False  # owners
    mode: str = "default"  # the form's: default | amount | percent
    amount: str = ""
    percent: str = ""
    in_force: str = ""
    default_label: str = ""
    error: str = ""
    saving: bool = False
    switches: list[dict[str, str]] = []  # key, label, description, on ("true" | "false")
    _bound: str = ""
    # The owner changed the form since it was loaded or saved. The card loads on mount, and it mounts
    # again whenever the page's content does (the page's own load shows the skeleton first, and in dev
    # React mounts twice): that must not put the saved setting back over an edit not yet saved.
    _editing: bool = False

    def _clear(self) -> None:
        self.visible, self.saving, self.switches, self._editing = False, False, [], False
        self.mode, self.amount, self.percent, self.in_force, self.error, self._bound = "default", "", "", "", "", ""

    def _owner(self) -> Principal | None:
        """The caller if an owner; otherwise None, with everything shown cleared."""
        principal = self._current_principal()
        if principal is None or not principal.is_owner:
            self._clear()
            return None
        if self._binding(principal) != self._bound:
            self._clear()
            self._bound = self._binding(principal)
        self.visible = True
        return principal

    async def _reload(self, principal: Principal, *, form: bool) -> None:
        setting, now, switches = await asyncio.to_thread(_read, principal.organization_id, principal.user_id)
        self.in_force = in_force_text(setting, now)
        self.default_label = fmt_balance(to_units(get_settings().low_balance_threshold))
        self.switches = [
            {"key": key, "label": label, "description": description, "on": "true" if switches[key] else "false"}
            for key, (label, description) in notification_preferences.CATEGORIES.items()
        ]
        if form:  # the saved setting into the form (not while an owner is typing into it)
            self.mode = setting.mode
            self.amount = f"{from_units(setting.amount_units):.2f}" if setting.amount_units is not None else ""
            self.percent = str(setting.percent) if setting.percent is not None else ""

    @rx.event
    async def load_notifications(self):
        principal = self._owner()
        if principal is not None:
            await self._reload(principal, form=not self._editing)

    @rx.event
    def set_threshold_mode(self, value: str | list[str]):
        value = value[0] if isinstance(value, list) and value else value
        if value in low_balance.MODES:
            self.mode, self.error, self._editing = str(value), "", True

    @rx.event
    def set_threshold_amount(self, value: str):
        self.amount, self.error, self._editing = str(value)[:20], "", True

    @rx.event
    def set_threshold_percent(self, value: str):
        self.percent, self.error, self._editing = str(value)[:10], "", True

    @rx.event
    async def save_threshold(self):
        principal = self._owner()
        if principal is None:
            yield rx.toast.error(OWNERS_ONLY)
            return
        data: dict = {"mode": self.mode}
        if self.mode == "amount":
            data["amount"] = self.amount.strip() or None
        elif self.mode == "percent":
            text = self.percent.strip().removesuffix("%").strip()
            data["percent"] = int(text) if text.isdigit() else (text or None)
        try:
            setting = low_balance.validate_setting(data)
        except low_balance.ThresholdError as exc:
            self.error = exc.message[:1].upper() + exc.message[1:] + "."
            return
        self.saving = True
        yield
        try:
            await asyncio.to_thread(low_balance.save_audited, get_engine(), principal, setting, self._client_ip())
            await self._reload(principal, form=True)
            self._editing = False
        finally:
            self.saving = False
        yield rx.toast.success("Low-balance threshold saved.")
        from . import BillingState

        yield BillingState.refresh  # the banner and the figures with the new threshold

    @rx.event
    async def set_switch(self, key: str, on: bool):
        principal = self._owner()
        if principal is None:
            yield rx.toast.error(OWNERS_ONLY)
            return
        try:
            changes = notification_preferences.validate_changes({str(key): on})
        except notification_preferences.PreferenceError as exc:
            yield rx.toast.error(exc.message)
            return
        await asyncio.to_thread(
            notification_preferences.save_audited, get_engine(), principal, changes, self._client_ip()
        )
        await self._reload(principal, form=False)
