"""The spend budgets card on the billing page: a progress bar per budget (the month's spend against it,
its 50/80/100 % state), owners add, change and remove budgets in a dialog, admins read, members see
nothing (the card is not shown and nothing is loaded for them).

A state of its own (a substate of SessionState, beside BillingState), so the page's live updates never
carry it: the card asks for its own refresh when the page announces a posting (`billingUpdated`), one
read of the budgets. Every handler re-reads the caller's role from the database; an admin or a member
who sends an owner's event anyway is refused and nothing is written. The rows belong to the signed-in
user and organization they were read for (`_bound`): another sign-in in the tab clears them.
"""

from __future__ import annotations

import asyncio

import reflex as rx

from ...auth import Principal
from ...budget_settings import (
    BudgetInputError,
    BudgetStatus,
    budget_targets,
    list_budgets,
    remove_budget,
    set_budget,
)
from ...db import get_engine
from ...money import fmt_balance, from_units
from ...services import get_ledger
from ...state import SessionState
from ...trust import client_address

READERS = ("owner", "admin")
SCOPES = ("organization", "api_key", "member")
LEVEL_COLORS = {0: "grass", 50: "amber", 80: "orange", 100: "red"}
OWNERS_ONLY = "Only owners can change spend budgets."
# The page dispatches `billingUpdated` after each posting it shows live; the card then asks for its own
# refresh (its hidden button), at most once a second: a burst of usage is one read. Installed once per
# tab, for owners and admins only (members get no card and no listener).
REFRESH_ON_POSTINGS = """
(() => {
  if (window.__budgetsListening) return;
  window.__budgetsListening = true;
  let timer = null;
  window.addEventListener('billingUpdated', () => {
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      const button = document.getElementById('budgets-refresh');
      if (button) button.click();
    }, 1000);
  });
})();
"""


def _row(status: BudgetStatus) -> dict[str, str]:
    b = status.budget
    return {
        "id": str(b.id),
        "scope": b.scope,
        "target": str(b.api_key_id or b.user_id or ""),
        "name": status.name,
        "amount": f"{from_units(b.amount_units):.2f}",  # budgets are whole cents
        "budget": fmt_balance(b.amount_units),
        "spent": fmt_balance(status.spent_units),
        "percent": f"{status.percent}",
        "bar": str(min(100, int(status.percent))),
        "level": str(status.level),
        "reached": f"{status.level}% reached" if status.level else "",
        "color": LEVEL_COLORS[status.level],
        "hard_stop": "yes" if b.hard_stop else "",
        "stop": "Hard stop at 100%" if b.hard_stop else "Alerts only",
    }


def _read(organization_id: int) -> tuple[list[dict[str, str]], list[dict[str, str]], list[dict[str, str]]]:
    with get_engine().connect() as conn:
        rows = [_row(s) for s in list_budgets(conn, organization_id)]
        keys, members = budget_targets(conn, organization_id)
    return (
        rows,
        [{"value": str(k), "label": label} for k, label in keys],
        [{"value": str(u), "label": email} for u, email in members],
    )


class BudgetsState(SessionState):
    budgets_visible: bool = False  # owners and admins
    budget_rows: list[dict[str, str]] = []
    key_options: list[dict[str, str]] = []
    member_options: list[dict[str, str]] = []
    _bound: str = ""  # the binding (SessionState._binding) the rows were read for
    # the dialog
    budget_dialog_open: bool = False
    budget_editing: bool = False  # changing an existing budget: its target is fixed
    budget_scope: str = "organization"
    budget_target: str = ""
    budget_amount: str = ""
    budget_hard_stop: bool = False
    budget_error: str = ""
    budget_saving: bool = False

    def _clear(self) -> None:
        self.budgets_visible, self.budget_rows, self.key_options, self.member_options = False, [], [], []
        self.budget_dialog_open, self._bound = False, ""

    async def _show(self, principal: Principal | None) -> None:
        if principal is None or principal.role not in READERS:
            self._clear()
            return
        rows, keys, members = await asyncio.to_thread(_read, principal.organization_id)
        self.budget_rows, self.key_options, self.member_options = rows, keys, members
        self._bound = self._binding(principal)
        self.budgets_visible = True

    @rx.event
    async def load_budgets(self):
        await self._show(self._current_principal())
        if self.budgets_visible:
            return rx.call_script(REFRESH_ON_POSTINGS)

    @rx.event
    async def refresh_budgets(self):
        """The page announced a posting (`billingUpdated`): the month's spends again."""
        principal = await self._live_principal()
        if self._binding(principal) != self._bound:
            self._clear()
        await self._show(principal)

    def _owner(self) -> Principal | None:
        principal = self._current_principal()
        return principal if principal is not None and principal.is_owner else None

    @rx.event
    async def open_new_budget(self):
        if self._owner() is None:
            yield rx.toast.error(OWNERS_ONLY)
            return
        taken = {r["scope"] for r in self.budget_rows if r["scope"] == "organization"}
        self.budget_scope = "api_key" if taken else "organization"
        self.budget_target = ""
        self.budget_amount, self.budget_hard_stop, self.budget_error = "", False, ""
        self.budget_editing, self.budget_dialog_open = False, True

    @rx.event
    async def open_edit_budget(self, budget_id: str):
        if self._owner() is None:
            yield rx.toast.error(OWNERS_ONLY)
            return
        row = next((r for r in self.budget_rows if r["id"] == budget_id), None)
        if row is None:
            return
        self.budget_scope, self.budget_target = row["scope"], row["target"]
        self.budget_amount, self.budget_hard_stop = row["amount"], bool(row["hard_stop"])
        self.budget_error, self.budget_editing, self.budget_dialog_open = "", True, True

    @rx.event
    def set_budget_dialog_open(self, value: bool):
        self.budget_dialog_open = bool(value)
        if not value:
            self.budget_error = ""

    @rx.event
    def set_budget_scope(self, value: str):
        if value in SCOPES and not self.budget_editing:
            self.budget_scope, self.budget_target, self.budget_error = value, "", ""

    @rx.event
    def set_budget_target(self, value: str):
        self.budget_target, self.budget_error = str(value), ""

    @rx.event
    def set_budget_amount(self, value: str):
        self.budget_amount, self.budget_error = str(value).strip().lstrip("$"), ""

    @rx.event
    def set_budget_hard_stop(self, value: bool):
        self.budget_hard_stop = bool(value)

    def _target(self) -> dict[str, int] | None:
        if self.budget_scope == "organization":
            return {}
        if not self.budget_target.isdigit():
            return None
        return {"api_key_id" if self.budget_scope == "api_key" else "user_id": int(self.budget_target)}

    def _ip(self) -> str | None:
        forwarded = self.router.headers.raw_headers.get("x-forwarded-for")
        return client_address(self.router.session.client_ip or None, forwarded)

    @rx.event
    async def save_budget(self):
        principal = self._owner()
        if principal is None:
            self.budget_error = OWNERS_ONLY
            return
        target = self._target()
        if target is None:
            self.budget_error = "Choose the API key or member this budget is for."
            return
        self.budget_saving = True
        yield
        try:
            status = await asyncio.to_thread(
                set_budget,
                get_ledger(),
                principal.organization_id,
                self.budget_amount,
                hard_stop=self.budget_hard_stop,
                actor_user_id=principal.user_id,
                ip=self._ip(),
                **target,
            )
        except BudgetInputError as exc:
            self.budget_error = exc.message[:1].upper() + exc.message[1:] + "."
            return
        finally:
            self.budget_saving = False
        await self._show(principal)
        self.budget_dialog_open = False
        yield rx.toast.success(f"Budget saved: {status.name}, {fmt_balance(status.budget.amount_units)} a month.")

    @rx.event
    async def remove_budget(self, budget_id: str):
        principal = self._owner()
        if principal is None:
            yield rx.toast.error(OWNERS_ONLY)
            return
        row = next((r for r in self.budget_rows if r["id"] == budget_id), None)
        if row is None or self._binding(principal) != self._bound:  # rows read for another user or organization
            await self._show(principal)
            return
        target = (
            {}
            if row["scope"] == "organization"
            else {"api_key_id" if row["scope"] == "api_key" else "user_id": int(row["target"])}
        )
        await asyncio.to_thread(
            remove_budget,
            get_ledger(),
            principal.organization_id,
            actor_user_id=principal.user_id,
            ip=self._ip(),
            **target,
        )
        await self._show(principal)
        yield rx.toast.success(f"Budget removed: {row['name']}.")
