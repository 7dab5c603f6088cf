"""LiveUpdates: BillingState's live part (a mixin). Each open tab keeps one background listener on
its organization's committed postings (in-process, or Redis across workers) and pushes the new
figures over its socket: the balance at once from the event, then the cards and the history page
from one read shared by the worker's tabs (data._load_after). A 30 s heartbeat from the page
restarts a listener lost with the socket and catches up."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal

import reflex as rx

from ...money import to_units
from ...services import get_event_bus

LIVE_BEAT = 20  # seconds between the listener's signs of life
_BILLING_UPDATED = "window.dispatchEvent(new CustomEvent('billingUpdated', {detail: DETAIL}))"


class LiveUpdates(rx.State, mixin=True):
    """Relies on SessionState (current_principal, live_principal) and BillingPage (loaded,
    _reload, _show_balance), with which BillingState composes it."""

    _live_beat: float = 0.0  # when the live listener last showed it is alive (monotonic seconds)
    _live_entry: int = 0  # the newest entry whose balance a live update showed

    @rx.event(background=True)
    async def live(self):
        """Listens for this organization's committed postings (any worker, with Redis) and pushes
        the new figures to this tab over its socket: no polling while the socket is up."""
        async with self:
            principal = self.current_principal()
            if principal is None or time.monotonic() - self._live_beat < LIVE_BEAT * 2:
                return  # signed out, or a listener is already running for this tab
            self._live_beat = time.monotonic()
        with get_event_bus().listen(principal.organization_id) as queue:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), LIVE_BEAT)
                except TimeoutError:
                    async with self:
                        self._live_beat = time.monotonic()
                    continue
                events = [event]
                while not queue.empty():  # a burst becomes one refresh
                    events.append(queue.get_nowait())
                latest = max(events, key=lambda e: e.get("entry_id", 0))
                async with self:
                    # The new balance first, as the posting left it: a small update that shows
                    # at once; the cards and the history page follow from the database.
                    self._live_beat = time.monotonic()
                    if await self.live_principal() is None:
                        return
                    if latest.get("entry_id", 0) > self._live_entry and "balance" in latest:
                        self._live_entry = latest["entry_id"]
                        self._show_balance(to_units(latest["balance"]))
                for toast in _live_toasts(events):
                    yield toast
                yield rx.call_script(_BILLING_UPDATED.replace("DETAIL", json.dumps(_billing_detail(latest))))
                async with self:
                    if not await self._reload(after_entry=latest.get("entry_id", 0)):
                        return

    @rx.event
    async def heartbeat(self, _value=None):
        """Every 30 s from the page: if the live listener is gone (socket dropped, worker restarted)
        catch up and listen again. While it runs, this does nothing."""
        if not self.loaded or time.monotonic() - self._live_beat < LIVE_BEAT * 2:
            return
        if not await self._reload():
            return rx.redirect("/login")
        return type(self).live  # BillingState.live: the composed class, which this mixin cannot import


def _billing_detail(last: dict) -> dict:
    """The spec's billingUpdated detail for the newest posting of a live update."""
    amount = Decimal(last["amount"])
    kind = "credit_added" if amount > 0 else "credit_consumed" if last["type"] == "usage" else "balance_updated"
    return {"type": kind, "balance": last["balance"], "amount": last["amount"], "entryType": last["type"]}


def _live_toasts(events: list[dict]) -> list:
    toasts = []
    added = sum((Decimal(e["amount"]) for e in events if e["type"] in ("purchase", "bonus")), Decimal(0))
    if added:
        toasts.append(rx.toast.success(f"Credits added: +${added:,.2f}"))
    refunded = sum((Decimal(e["amount"]) for e in events if e["type"] == "refund"), Decimal(0))
    if refunded:
        toasts.append(rx.toast.info(f"Refund posted: {'+' if refunded > 0 else '-'}${abs(refunded):,.2f}"))
    return toasts
