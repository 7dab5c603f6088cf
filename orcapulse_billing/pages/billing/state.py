"""BillingPage: the page's own part of BillingState (a mixin): what the page shows, loading and
reloading it, the history's filter and paging, and the row detail panel."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Hashable

import reflex as rx

from ...components.pagination import page_window
from ...history import DEFAULT_PAGE_SIZE, PAGE_SIZES, TYPE_LABELS
from ...money import fmt_balance
from . import data

log = logging.getLogger(__name__)


class BillingPage(rx.State, mixin=True):
    """Relies on SessionState (current_principal, live_principal), LiveUpdates (`live`) and
    Purchases (`_show_auto_recharge`), with which BillingState composes it."""

    loaded: bool = False
    load_failed: bool = False
    refreshing: bool = False
    org_name: str = ""
    balance: str = ""
    negative: bool = False
    low_balance: bool = False
    threshold: str = ""
    grace_limit: str = ""
    added: str = ""
    consumed: str = ""
    transactions: int = 0
    type_filter: str = "all"
    page_size: str = str(DEFAULT_PAGE_SIZE)
    page: int = 1
    total: int = 0
    total_pages: int = 1
    rows: list[dict[str, str]] = []
    spend: list[dict] = []
    spend_total: str = "$0.00"
    panel_open: bool = False
    panel_row: dict[str, str] = {}
    panel_session: dict[str, str] = {}
    panel_entry: dict[str, str] = {}
    panel_refs: list[dict[str, str]] = []
    _threshold_units: int = 0
    _balance_units: int = 0

    @rx.var
    def page_labels(self) -> list[str]:
        return page_window(self.page, self.total_pages)

    @rx.var
    def filter_label(self) -> str:
        return TYPE_LABELS.get(self.type_filter, "All Transactions")

    @rx.var
    def range_text(self) -> str:
        if self.total == 0:
            return "No transactions"
        first = (self.page - 1) * int(self.page_size) + 1
        last = min(self.total, first + len(self.rows) - 1)
        noun = "transaction" if self.total == 1 else "transactions"
        return f"Showing {first:,}–{last:,} of {self.total:,} {noun}"

    @rx.var
    def export_query(self) -> str:
        return f"?type={self.type_filter}"

    async def _reload(self, after: Hashable | None = None) -> bool:
        """`after`: a live update (the committed entry's id) or a catch-up (the account's newest
        seq, tagged); tabs showing the same page share one read of it instead of each querying the
        database."""
        principal = await self.live_principal() if after else self.current_principal()
        if principal is None:
            return False
        try:
            args = (principal.organization_id, self.type_filter, self.page, int(self.page_size))
            if after:
                result = await data._load_after(*args, after)
            else:
                result = await asyncio.to_thread(data._load, *args)
        except Exception:  # the page shows its error state; the cause goes to the log
            log.exception("loading billing data failed")
            self.load_failed = True
            return True
        self.load_failed = False
        self.org_name = result["org_name"]
        self._threshold_units = result["threshold_units"]
        self._show_balance(result["balance_units"])
        self.threshold = fmt_balance(result["threshold_units"])
        self.grace_limit = fmt_balance(result["grace_units"])
        self.added = ("+" if result["added_units"] else "") + fmt_balance(result["added_units"])
        self.consumed = ("-" if result["consumed_units"] else "") + fmt_balance(result["consumed_units"])
        self.transactions = result["transactions"]
        self.rows, self.page, self.total, self.total_pages = (
            result["rows"],
            result["page"],
            result["total"],
            result["total_pages"],
        )
        self.spend, self.spend_total = result["spend"], result["spend_total"]
        self._show_auto_recharge(result["auto"])
        return True

    def _show_balance(self, units: int) -> None:
        self._balance_units = units
        self.balance = fmt_balance(units)
        self.negative = units < 0
        self.low_balance = units < self._threshold_units

    @rx.event
    async def load(self):
        self.loaded = False
        if not await self._reload():
            return rx.redirect("/login")
        self.loaded = True
        return type(self).live  # BillingState.live: the composed class, which this mixin cannot import

    @rx.event
    async def refresh(self):
        if self.refreshing:
            return
        self.refreshing = True
        yield
        ok = await self._reload()
        self.refreshing = False
        if not ok:
            yield rx.redirect("/login")
        elif self.load_failed:
            yield rx.toast.error("Refresh failed. Please try again later.")
        else:
            yield rx.toast.success("Billing data refreshed")

    @rx.event
    async def set_type_filter(self, value: str):
        self.type_filter = value if value in TYPE_LABELS else "all"
        self.page = 1
        await self._reload()

    @rx.event
    async def set_page_size(self, value: str):
        self.page_size = value if value in {str(n) for n in PAGE_SIZES} else str(DEFAULT_PAGE_SIZE)
        self.page = 1
        await self._reload()

    @rx.event
    async def go_to_page(self, label: str):
        if label.isdigit():
            self.page = max(1, min(int(label), self.total_pages))
            await self._reload()

    @rx.event
    async def previous_page(self):
        if self.page > 1:
            self.page -= 1
            await self._reload()

    @rx.event
    async def next_page(self):
        if self.page < self.total_pages:
            self.page += 1
            await self._reload()

    @rx.event
    async def open_row(self, row: dict):
        """Any entry's detail: read again from the database by its id, within this organization
        (the row the tab sends only names the entry)."""
        principal = self.current_principal()
        if principal is None:
            return rx.redirect("/login")
        entry_id = str(row.get("id", ""))
        detail = (
            await asyncio.to_thread(data._load_entry, principal.organization_id, int(entry_id))
            if re.fullmatch(r"[0-9]{1,18}", entry_id)
            else None
        )
        if detail is None:
            return rx.toast.error("This transaction is not in your organization's history.")
        self.panel_row, self.panel_entry = detail["row"], detail["entry"]
        self.panel_refs, self.panel_session = detail["refs"], detail["session"]
        self.panel_open = True

    @rx.event
    def set_panel_open(self, value: bool):
        self.panel_open = value
