"""AutoRechargeForm: BillingState's auto-recharge panel (a mixin). Owners only: every handler that
writes re-checks the role on the server and records the browser's IP address, as the REST route does.

Two kinds of values. The saved settings (auto_enabled, auto_threshold, auto_amount, auto_cap, their
`auto_saved` key) and the status line (auto_note, auto_status, auto_action_url) are the organization's
figures (figures.py): the live fan-out sends them, the same message to every tab, whenever anything
of the organization changes. What an owner types is the tab's own (auto_edit_*): from the first edit
until Save or Discard (`auto_editing`) the inputs show it instead of the saved settings, so a live
update never overwrites unsaved edits, while the status line still follows. `auto_base` is the saved
key when the edits began; the panel compares it with the live `auto_saved` in the browser (the
fan-out writes no tab's state) and says the settings changed elsewhere. Save then writes what the
owner typed, whatever changed meanwhile (the last writer wins: the owner was told, and chose)."""

from __future__ import annotations

import asyncio

import reflex as rx

from ...db import get_engine
from ...money import MoneyError, parse_amount
from ...payments.flow import PurchaseError
from ...services import get_auto_recharger

FIELDS = ("auto_threshold", "auto_amount", "auto_cap")


class AutoRechargeForm(rx.State, mixin=True):
    """Relies on SessionState (_client_ip), BillingPage (_reload) and Purchases (_owner), with which
    BillingState composes it."""

    # the saved settings and the status line: the organization's figures, sent live
    auto_enabled: bool = False
    auto_threshold: str = ""
    auto_amount: str = ""
    auto_cap: str = ""
    auto_saved: str = ""  # the saved settings as one key: they changed when it did
    auto_note: str = ""
    auto_status: str = ""  # a decline's backoff or the daily limit: until when
    auto_action_url: str = ""  # the provider's page to confirm the charge that paused it (3-D Secure)
    # this tab's unsaved edits (never in the figures)
    auto_editing: bool = False
    auto_base: str = ""  # auto_saved when the edits began
    auto_edit_enabled: bool = False
    auto_edit_threshold: str = ""
    auto_edit_amount: str = ""
    auto_edit_cap: str = ""
    auto_error: str = ""

    def _start_editing(self) -> None:
        """The first edit copies the saved settings the tab shows into the form (LiveSync has just
        given the state the newest figures this worker sent the tab)."""
        if self.auto_editing:
            return
        self.auto_editing, self.auto_base = True, self.auto_saved
        self.auto_edit_enabled = self.auto_enabled
        self.auto_edit_threshold, self.auto_edit_amount, self.auto_edit_cap = (
            self.auto_threshold,
            self.auto_amount,
            self.auto_cap,
        )

    def _stop_editing(self) -> None:
        """The inputs show the saved settings again, and follow live updates."""
        self.auto_editing, self.auto_base, self.auto_error = False, "", ""

    @rx.event
    def set_auto_field(self, field: str, value: str):
        if field in FIELDS:
            self._start_editing()
            setattr(self, field.replace("auto_", "auto_edit_", 1), value.strip().lstrip("$"))
            self.auto_error = ""

    @rx.event
    def set_auto_enabled(self, value: bool):
        self._start_editing()
        self.auto_edit_enabled = bool(value)
        self.auto_error = ""

    @rx.event
    async def discard_auto_edits(self):
        """Cancel, or load what was saved elsewhere: the saved settings, read again."""
        self._stop_editing()
        await self._reload()

    @rx.event
    async def save_auto_recharge(self):
        principal = self._owner()
        if principal is None:
            yield rx.toast.error("Only owners can change auto-recharge.")
            return
        self._start_editing()  # a Save without edits saves the settings as shown
        texts = (self.auto_edit_threshold, self.auto_edit_amount, self.auto_edit_cap)
        try:
            values = [parse_amount(v) if v else None for v in texts]
            if values[0] is None or values[1] is None:
                raise PurchaseError("invalid_request", "Enter a threshold and an amount.")
            policy = await asyncio.to_thread(
                get_auto_recharger(get_engine()).update,
                principal,
                enabled=self.auto_edit_enabled,
                threshold=values[0],
                amount=values[1],
                monthly_cap=values[2],
                ip=self._client_ip(),
            )
        except MoneyError as exc:  # the edits stay, with the error
            self.auto_error = f"Amounts: {exc}"
            return
        except PurchaseError as exc:
            self.auto_error = exc.message
            return
        self._stop_editing()
        await self._reload()
        # below the threshold, saving it on recharged at once: say how that went
        if policy.recharge in ("failed", "disabled"):
            yield rx.toast.error(f"Auto-recharge saved, but the charge failed: {policy.last_error}")
        else:
            yield rx.toast.success(SAVED.get(policy.recharge or "", "Auto-recharge saved"))


SAVED = {  # what saving auto-recharge did at once, when the balance was below the threshold
    "charged": "Auto-recharge saved: the balance was below the threshold, so it recharged now",
    "pending": "Auto-recharge saved: a charge is being confirmed",
    "requires_action": "Auto-recharge saved: your bank asks you to confirm the payment (see the panel)",
    "daily_limit": "Auto-recharge saved: it already made 4 charges in the last 24 hours",
    "capped": "Auto-recharge saved: this month's cap is reached",
}
