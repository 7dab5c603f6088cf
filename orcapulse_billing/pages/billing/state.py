"""BillingPage: the page's own part of BillingState (a mixin): what the page shows, loading and
reloading it, the history's filters (type, date range, order) and paging, kept in the page's URL
(`/billing?type=usage&from=2026-11-01&to=2026-11-30&order=oldest&page=2&size=25`), and the row
detail panel."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Hashable
from datetime import date
from urllib.parse import urlencode

import reflex as rx

from ...history import DEFAULT_PAGE_SIZE, ORDERS, PAGE_SIZES, TYPE_LABELS
from . import data
from .figures import Figures, figures_of

log = logging.getLogger(__name__)
RANGE_ERROR = "The From date must be on or before the To date."
DATE_ERROR = "Enter dates as YYYY-MM-DD."
_REPLACE_URL = "window.history.replaceState(window.history.state, '', window.location.pathname + QUERY)"


def _day(value) -> str | None:
    """A date as YYYY-MM-DD (what a date input gives), '' for none, None when it is not one."""
    if not value:
        return ""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        return None
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        return None


class BillingPage(rx.State, mixin=True):
    """Relies on SessionState (_current_principal, _live_principal) and LiveUpdates (_subscribe,
    _shown_at), with which BillingState composes it."""

    loaded: bool = False
    load_failed: bool = False
    refreshing: bool = False
    org_name: str = ""
    balance: str = ""
    available: str = ""  # the balance minus active holds
    reserved: str = ""  # what active holds (calls in progress) reserve
    negative: bool = False
    low_balance: bool = False
    threshold: str = ""
    grace_limit: str = ""
    added: str = ""
    consumed: str = ""
    transactions: int = 0
    type_filter: str = "all"
    # the date range and order in force (the URL and the CSV link follow these), and what the date
    # inputs show: a refused range stays in the inputs, with its error, and changes nothing
    date_from: str = ""
    date_to: str = ""
    order: str = "newest"
    from_input: str = ""
    to_input: str = ""
    range_error: str = ""
    page_size: str = str(DEFAULT_PAGE_SIZE)
    page: int = 1
    total: int = 0
    total_pages: int = 1
    rows: list[dict[str, str]] = []
    # derived from the rows and the page, computed with them (figures.py), not in computed vars: the
    # live fan-out sends them to the tabs without writing the tabs' states
    range_text: str = "No transactions"
    page_labels: list[str] = ["1"]
    spend: list[dict] = []
    spend_total: str = "$0.00"
    pending_payment: str = ""  # amounts of saved-card charges being confirmed, e.g. "$50.00"
    expiring: str = ""  # "3.00 credits expire on Jan 31, 2027": the soonest-expiring active grant
    panel_open: bool = False
    panel_row: dict[str, str] = {}
    panel_session: dict[str, str] = {}
    panel_entry: dict[str, str] = {}
    panel_refs: list[dict[str, str]] = []
    _threshold_units: int = 0
    _balance_units: int = 0
    _reserved_units: int = 0

    @rx.var
    def filter_label(self) -> str:
        return TYPE_LABELS.get(self.type_filter, "All Transactions")

    @rx.var
    def empty_message(self) -> str:
        if self.date_from or self.date_to:
            kind = "" if self.type_filter == "all" else f"{self.filter_label} "
            return f"No {kind}transactions in this date range"
        if self.type_filter == "all":
            return "Your transaction history is empty"
        return f"No {self.filter_label} transactions in your history"

    @rx.var
    def export_query(self) -> str:
        """The CSV export's filter: the page's, with the dates as the API's instants (UTC days,
        `to` exclusive)."""
        query = data.history_query(self.type_filter, self.date_from, self.date_to, self.order)
        params = {"type": self.type_filter}
        for name, value in (("from", query.start), ("to", query.end)):
            if value is not None:
                params[name] = value.strftime("%Y-%m-%dT%H:%M:%SZ")
        params["order"] = self.order
        return "?" + urlencode(params)

    def _view(self) -> tuple:
        """What the history shows, as data._load takes it after the organization."""
        return (self.type_filter, self.page, int(self.page_size), self.date_from, self.date_to, self.order)

    def _read_url(self) -> None:
        """The view a reload or a shared link asks for; anything malformed falls back to the default."""
        q = self.router.url.query_parameters
        self.type_filter = q.get("type") if q.get("type") in TYPE_LABELS else "all"
        self.order = q.get("order") if q.get("order") in ORDERS else "newest"
        size = q.get("size", "")
        self.page_size = size if size in {str(n) for n in PAGE_SIZES} else str(DEFAULT_PAGE_SIZE)
        page = q.get("page", "")
        self.page = int(page) if re.fullmatch(r"[0-9]{1,9}", page) and int(page) > 0 else 1
        start, end = _day(q.get("from")), _day(q.get("to"))
        self.from_input, self.to_input = q.get("from", ""), q.get("to", "")
        self.range_error = ""
        if start is None or end is None:
            self.range_error, start, end = DATE_ERROR, "", ""
        elif start and end and start > end:
            self.range_error, start, end = RANGE_ERROR, "", ""
        self.date_from, self.date_to = start, end

    def _show_url(self):
        """Puts the current view into the address bar (no navigation, no history entry), so a
        reload or a copied link shows the same view."""
        params = {"type": self.type_filter if self.type_filter != "all" else ""}
        params.update({"from": self.date_from, "to": self.date_to})
        params["order"] = self.order if self.order != "newest" else ""
        params["page"] = str(self.page) if self.page != 1 else ""
        params["size"] = self.page_size if self.page_size != str(DEFAULT_PAGE_SIZE) else ""
        query = urlencode({k: v for k, v in params.items() if v})
        return rx.call_script(_REPLACE_URL.replace("QUERY", json.dumps("?" + query if query else "")))

    async def _reload(self, after: Hashable | None = None) -> bool:
        """`after`: a catch-up (the account's newest seq, tagged); tabs showing the same page share
        one read of it instead of each querying the database. The tab then receives its
        organization's live updates for this view (LiveUpdates._subscribe)."""
        principal = await self._live_principal() if after else self._current_principal()
        if principal is None:
            return False
        try:
            args = (principal.organization_id, *self._view())
            if after:
                result = await data._load_after(*args, after)
            else:
                result = await asyncio.to_thread(data._load, *args)
        except Exception:  # the page shows its error state; the cause goes to the log
            log.exception("loading billing data failed")
            self.load_failed = True
            return True
        figures = figures_of(result, int(self.page_size))
        self._apply_figures(figures)
        self._subscribe(principal, figures)
        return True

    def _apply_figures(self, figures: Figures) -> None:
        """Sets the vars that differ (an assignment is sent to the tab even when equal)."""
        for name, value in figures.shown.items():
            if getattr(self, name) != value:
                setattr(self, name, value)
        for name, value in figures.kept.items():
            setattr(self, name, value)
        self._shown_at = figures.read_at

    @rx.event
    async def load(self):
        binding = self._binding(self._current_principal())
        if binding != self._live_binding:
            # another user, session or organization in this tab: nothing of the previous one stays
            # (its figures, cards, dialogs, checkout, toasts), and its listener ends at its next check
            self.reset()
            self._live_binding = binding
        self._stop_editing()  # a page load shows the saved auto-recharge settings, as a reloaded form does
        self.loaded = False
        self._read_url()
        if not await self._reload():
            return rx.redirect("/login")
        self.loaded = True
        return self._show_url()  # the URL as shown

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

    async def _show_view(self):
        """After a change of filter or page: read it and put it in the URL."""
        await self._reload()
        return self._show_url()

    @rx.event
    async def set_type_filter(self, value: str):
        self.type_filter = value if value in TYPE_LABELS else "all"
        self.page = 1
        return await self._show_view()

    @rx.event
    async def set_page_size(self, value: str):
        self.page_size = value if value in {str(n) for n in PAGE_SIZES} else str(DEFAULT_PAGE_SIZE)
        self.page = 1
        return await self._show_view()

    @rx.event
    async def set_date_from(self, value: str):
        self.from_input = value
        return await self._apply_range()

    @rx.event
    async def set_date_to(self, value: str):
        self.to_input = value
        return await self._apply_range()

    @rx.event
    async def clear_dates(self):
        self.from_input = self.to_input = ""
        return await self._apply_range()

    async def _apply_range(self):
        """The date inputs' range, if it is one: a start after the end (or a malformed date) shows
        an error next to the inputs and leaves the history, the URL and the export as they were."""
        start, end = _day(self.from_input), _day(self.to_input)
        if start is None or end is None:
            self.range_error = DATE_ERROR
            return None
        if start and end and start > end:
            self.range_error = RANGE_ERROR
            return None
        self.range_error = ""
        if (start, end) == (self.date_from, self.date_to):
            return None
        self.date_from, self.date_to, self.page = start, end, 1
        return await self._show_view()

    @rx.event
    async def toggle_order(self):
        self.order = "oldest" if self.order == "newest" else "newest"
        self.page = 1
        return await self._show_view()

    @rx.event
    async def go_to_page(self, label: str):
        if label.isdigit():
            self.page = max(1, min(int(label), self.total_pages))
            return await self._show_view()

    @rx.event
    async def previous_page(self):
        if self.page > 1:
            self.page -= 1
            return await self._show_view()

    @rx.event
    async def next_page(self):
        if self.page < self.total_pages:
            self.page += 1
            return await self._show_view()

    @rx.event
    async def open_row(self, row: dict):
        """Any entry's detail: read again from the database by its id, within this organization
        (the row the tab sends only names the entry)."""
        principal = self._current_principal()
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
