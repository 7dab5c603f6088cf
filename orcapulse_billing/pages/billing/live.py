"""LiveUpdates: BillingState's live part (a mixin). Each open tab keeps one background listener on
its organization's committed postings (in-process, or Redis across workers) and pushes the new
figures over its socket: the balance at once from the event, then the cards and the history page
from one read shared by the worker's tabs (data._load_after). Purchases and refunds raise a toast
each; usage raises one toast per burst. Holds (holds.py: placed, captured, released, expired) are
announced too: they change Available and Reserved, not the ledger, so the tab reloads its figures
without a toast. A 30 s heartbeat from the page catches up when the account
has an entry the tab has not shown (an event missed: a Redis blip, a posting by another process on
the embedded default) and restarts a listener lost with the socket."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from decimal import Decimal

import reflex as rx

from ...money import fmt4, fmt_money4, to_units
from ...services import get_event_bus
from . import data

log = logging.getLogger(__name__)
LIVE_BEAT = 20  # seconds between the listener's signs of life
USAGE_QUIET = 1.5  # a burst of usage ends after this many seconds without any: then its one toast
USAGE_MAX = 10.0  # a steady stream of usage makes at most one toast per this many seconds
_BILLING_UPDATED = "window.dispatchEvent(new CustomEvent('billingUpdated', {detail: DETAIL}))"


class LiveUpdates(rx.State, mixin=True):
    """Relies on SessionState (_current_principal, _live_principal) and BillingPage (loaded,
    _reload, _show_balance), with which BillingState composes it."""

    _live_beat: float = 0.0  # when the live listener last showed it is alive (monotonic seconds)
    _live_binding: str = ""  # the session and organization this tab's data and listener belong to
    _live_entry: int = 0  # the newest entry whose balance a live update showed
    # idempotency keys of purchases this tab's own flow announces ("Credits added successfully!"):
    # the live update raises no second toast for them or their bonus
    _own_toasts: list[str] = []

    def _own_toast(self, key: str) -> None:
        self._own_toasts = [*self._own_toasts[-19:], key]

    @rx.event(background=True)
    async def live(self):
        """Listens for this organization's committed postings (any worker, with Redis) and pushes
        the new figures to this tab over its socket: no polling while the socket is up."""
        async with self:
            principal = self._current_principal()
            if principal is None or time.monotonic() - self._live_beat < LIVE_BEAT * 2:
                return  # signed out, or a listener is already running for this tab
            mine = self._binding(principal)
            if mine != self._live_binding:
                return  # the page has not loaded for this user yet: its load starts the listener
            self._live_beat = time.monotonic()
        usage = _UsageBurst()
        with get_event_bus().listen(principal.organization_id) as queue:
            while True:
                if usage.due is not None and time.monotonic() >= usage.due:
                    yield usage.toast()
                    usage = _UsageBurst()
                wait = LIVE_BEAT if usage.due is None else max(0.0, usage.due - time.monotonic())
                try:
                    event = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    if usage.due is None:
                        async with self:
                            # a listener never outlives its tab's session or binding
                            if not await self._still_mine(mine):
                                return
                            self._live_beat = time.monotonic()
                    continue
                events = [event]
                while not queue.empty():  # a burst becomes one refresh
                    events.append(queue.get_nowait())
                # holds (placed, captured, released, expired) change Available and Reserved, not the
                # ledger: no toast and no billingUpdated for them, only the reload of the figures
                holds = [e for e in events if e.get("type") == "hold"]
                events = [e for e in events if "entry_id" in e]
                latest = max(events, key=lambda e: e["entry_id"]) if events else None
                async with self:
                    # The new balance first, as the posting left it: a small update that shows
                    # at once; the cards and the history page follow from the database.
                    if not await self._still_mine(mine):
                        return  # signed out, or another user or organization now: not theirs to see
                    self._live_beat = time.monotonic()
                    if latest is not None and latest["entry_id"] > self._live_entry and "balance" in latest:
                        self._live_entry = latest["entry_id"]
                        self._show_balance(to_units(latest["balance"]))
                    own = set(self._own_toasts)
                usage.add(events)
                for toast in _live_toasts(events, own):
                    yield toast
                if latest is not None:
                    yield rx.call_script(_BILLING_UPDATED.replace("DETAIL", json.dumps(_billing_detail(latest))))
                after = latest["entry_id"] if latest is not None else 0
                if holds:  # the same change read once by this worker's tabs
                    after = ("hold", after, *sorted(json.dumps(e, sort_keys=True) for e in holds))
                async with self:
                    if not await self._reload(after=after):
                        return

    async def _still_mine(self, binding: str) -> bool:
        """Is this tab still showing `binding` (the listener's), with its session still valid?"""
        return self._live_binding == binding and self._binding(await self._live_principal()) == binding

    @rx.event
    async def heartbeat(self, _value=None):
        """Every 30 s from the page. While the live listener runs: one cheap read of the account's
        newest entry (shared by this worker's tabs of the organization), and a catch-up when this
        tab has not shown it, as when an event was missed. When the listener is gone (socket
        dropped, worker restarted): catch up and listen again."""
        if not self.loaded:
            return
        principal = await self._live_principal()
        if principal is None:
            return rx.redirect("/login")
        if self._binding(principal) != self._live_binding:
            return type(self).load  # another user or organization in this tab: start over for them
        if time.monotonic() - self._live_beat >= LIVE_BEAT * 2:
            if not await self._reload():
                return rx.redirect("/login")
            return type(self).live  # BillingState.live: the composed class, which this mixin cannot import
        if self._organization_id is None:
            return
        try:
            newest = await data._newest_entry(self._organization_id)
        except Exception:  # the next beat tries again; the cause goes to the log
            log.exception("reading the account's newest entry failed")
            return
        if newest == self.transactions and not self.load_failed:
            return
        shown = self._balance_units
        if not await self._reload(after=("newest", newest)):
            return rx.redirect("/login")
        if self._balance_units != shown:
            detail = {"type": "balance_updated", "balance": fmt4(self._balance_units)}
            return rx.call_script(_BILLING_UPDATED.replace("DETAIL", json.dumps(detail)))


def _billing_detail(last: dict) -> dict:
    """The spec's billingUpdated detail for the newest posting of a live update."""
    amount = Decimal(last["amount"])
    kind = "credit_added" if amount > 0 else "credit_consumed" if last["type"] == "usage" else "balance_updated"
    return {"type": kind, "balance": last["balance"], "amount": last["amount"], "entryType": last["type"]}


class _UsageBurst:
    """Usage charges since the last usage toast: one toast for all of them once USAGE_QUIET seconds
    pass without another (or USAGE_MAX after the first)."""

    def __init__(self):
        self.count = self.units = 0
        self.first = self.last = 0.0

    @property
    def due(self) -> float | None:
        return min(self.last + USAGE_QUIET, self.first + USAGE_MAX) if self.count else None

    def add(self, events: list[dict]) -> None:
        charges = [e for e in events if e["type"] == "usage"]
        if charges:
            now = time.monotonic()
            self.first = self.first if self.count else now
            self.last = now
            self.count += len(charges)
            self.units += sum(to_units(e["amount"]) for e in charges)

    def toast(self):
        amount = ("+" if self.units > 0 else "") + fmt_money4(self.units)
        label = "Usage charge" if self.count == 1 else f"{self.count:,} usage charges"
        return rx.toast.info(f"{label}: {amount}")


def _live_toasts(events: list[dict], own: set[str] = frozenset()) -> list:
    """Purchases (with their bonus) and refunds; not the purchases this tab's own flow announces
    (their idempotency key, or its bonus's, in `own`)."""
    toasts = []
    added = sum(
        (
            Decimal(e["amount"])
            for e in events
            if e["type"] in ("purchase", "bonus") and (e.get("key") or "").removesuffix(":bonus") not in own
        ),
        Decimal(0),
    )
    if added:
        toasts.append(rx.toast.success(f"Credits added: +${added:,.2f}"))
    refunded = sum((Decimal(e["amount"]) for e in events if e["type"] == "refund"), Decimal(0))
    if refunded:
        toasts.append(rx.toast.info(f"Refund posted: {'+' if refunded > 0 else '-'}${abs(refunded):,.2f}"))
    return toasts
