"""LiveFanout: live updates by organization, not by tab.

Each worker keeps the billing tabs whose socket it holds, by organization, and ONE listener per
organization on its committed postings (in-process, or Redis across workers). For a burst of postings
it computes what changed once and sends the same small update to each of that organization's tabs over
its socket: first the balance as the posting left it (no read), with the toasts and the page's
`billingUpdated` event; then the figures (cards, history page, chart) from one read per view of the
history that its tabs show (data._load_after: the read is shared with the heartbeats' catch-ups).

The tabs' stored states are not written on this path: writing each one (behind Redis: a lock, a read
and a write of the tab's whole state) is what made a posting cost a second per thousand tabs. The
worker keeps the newest figures of each organization and view instead (`latest`), and a tab's state
takes them when it next handles an event (LiveSync, the app's middleware), before its handler runs:
a handler never sees older figures than its tab shows.

Who receives: a tab subscribes when its page loads (or reloads its data for another view) for the
signed-in session and organization, and stays subscribed only while all of this holds, checked before
every update: its socket is the one that subscribed (a reconnect, which brings any new cookie, ends the
subscription until the page loads again); its session still signs in the same user in the same
organization (re-read at most every LIVE_RECHECK seconds, one read per session shared with the other
live checks). A tab that subscribes for another organization leaves the first one's.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import reflex as rx
from reflex.event import Event
from reflex.middleware import Middleware
from reflex.state import StateUpdate
from reflex_base.constants.state import FIELD_MARKER

from ... import state as session_state
from ...auth import Principal, principal_for_session
from ...db import get_engine
from ...money import fmt_money4, to_units
from ...services import get_event_bus
from . import data
from .figures import Figures, View, balance_vars, figures_of

log = logging.getLogger(__name__)
LIVE_BEAT = 20  # seconds: an idle listener checks its tabs this often, and ends when none is left
USAGE_QUIET = 1.5  # a burst of usage ends after this many seconds without any: then its one toast
USAGE_MAX = 10.0  # a steady stream of usage makes at most one toast per this many seconds
RESTART_AFTER = 1.0  # seconds before a failed listener listens again, while it has tabs
# the live reads after usage are partial (3 queries: balance, new entries, expiry); one in this many
# seconds per organization and view is whole (the 30-day chart's window, pending payments, auto-recharge)
FULL_READ_EVERY = 60.0
LATEST_KEPT = 1024  # figures of (organization, view) kept besides those of the subscribed tabs
BILLING_UPDATED = "window.dispatchEvent(new CustomEvent('billingUpdated', {detail: DETAIL}))"


@dataclass
class Subscriber:
    """One tab whose socket this worker holds."""

    token: str  # the tab's client token (its Reflex state)
    sid: str  # the socket it subscribed on
    organization_id: int
    user_id: int
    session: str  # the session cookie's token, re-checked before updates
    view: View  # what its history shows (data._load's arguments after the organization)
    shown_at: float  # read_at of the figures it shows
    entries: int  # the account's entry count in them: an older posting's balance is not shown again
    figures: Figures | None = None  # the newest figures it has: its own read, or the last sent to it
    own: deque[str] = field(default_factory=lambda: deque(maxlen=20))  # purchases its own flow announces


class LiveFanout:
    """One per worker process (`fanout`)."""

    def __init__(self) -> None:
        self._app: Any = None
        self._feeds: dict[int, dict[str, Subscriber]] = {}  # organization -> token -> subscriber
        self._organization_of: dict[str, int] = {}  # token -> organization
        self._tasks: dict[int, asyncio.Task] = {}
        self._latest: OrderedDict[tuple[int, View], Figures] = OrderedDict()
        self._last_read: dict[int, Figures] = {}  # organization -> its newest figures, any view

    def bind(self, app: Any) -> None:
        """The Reflex app whose sockets the updates go out on (the app module binds it)."""
        self._app = app

    # -- the tabs' side (their event handlers, on the event loop) -----------------------------

    def subscribe(self, subscriber: Subscriber) -> None:
        """`subscriber`'s tab receives its organization's updates from now on (and no other's)."""
        token, organization_id = subscriber.token, subscriber.organization_id
        before = self._organization_of.get(token)
        if before is not None and before != organization_id:
            self._feeds.get(before, {}).pop(token, None)
        feed = self._feeds.setdefault(organization_id, {})
        if (previous := feed.get(token)) is not None and previous.user_id == subscriber.user_id:
            subscriber.own.extend(k for k in previous.own if k not in subscriber.own)
        feed[token] = subscriber
        self._organization_of[token] = organization_id
        if subscriber.figures is not None:  # the tab's own read: the next posting's balance can show at once
            self.remember(organization_id, subscriber.view, subscriber.figures)
        self._ensure_listener(organization_id)

    def _ensure_listener(self, organization_id: int) -> None:
        if organization_id not in self._tasks and self._feeds.get(organization_id):
            self._tasks[organization_id] = asyncio.get_running_loop().create_task(self._listen(organization_id))

    def subscribed(self, token: str, sid: str) -> Subscriber | None:
        organization_id = self._organization_of.get(token)
        subscriber = self._feeds.get(organization_id, {}).get(token) if organization_id is not None else None
        return subscriber if subscriber is not None and subscriber.sid == sid else None

    def own_toast(self, token: str, key: str) -> None:
        """The tab's own purchase flow announces the purchase with `key`: no second toast for it."""
        organization_id = self._organization_of.get(token)
        if organization_id is not None and (subscriber := self._feeds.get(organization_id, {}).get(token)):
            subscriber.own.append(key)

    def latest(self, token: str, organization_id: int, view: View) -> Figures | None:
        """The newest figures this worker has for the tab's organization and view: those it sent the
        tab, or else those it read for another tab."""
        subscriber = self._feeds.get(organization_id, {}).get(token)
        if subscriber is not None and subscriber.view == view and subscriber.figures is not None:
            return subscriber.figures
        return self._latest.get((organization_id, view))

    def remember(self, organization_id: int, view: View, figures: Figures) -> None:
        key = (organization_id, view)
        held = self._latest.get(key)
        if held is None or figures.read_at > held.read_at:
            self._latest[key] = figures
            self._latest.move_to_end(key)
            while len(self._latest) > LATEST_KEPT:
                self._latest.popitem(last=False)
        last = self._last_read.get(organization_id)
        if last is None or figures.read_at > last.read_at:
            self._last_read[organization_id] = figures

    # -- the organization's listener ----------------------------------------------------------

    async def _listen(self, organization_id: int) -> None:
        usage = _UsageBurst()
        try:
            with get_event_bus().listen(organization_id) as queue:
                while self._feeds.get(organization_id):
                    if usage.due is not None and time.monotonic() >= usage.due:
                        await self._send(await self._current(organization_id), events=[usage.toast()])
                        usage = _UsageBurst()
                    wait = LIVE_BEAT if usage.due is None else max(0.0, usage.due - time.monotonic())
                    try:
                        event = await asyncio.wait_for(queue.get(), wait)
                    except TimeoutError:
                        if usage.due is None:
                            await self._current(organization_id)  # tabs gone or signed out leave
                        continue
                    events = [event]
                    while not queue.empty():  # a burst becomes one update
                        events.append(queue.get_nowait())
                    usage.add(events)
                    await self._update(organization_id, events)
        except Exception:  # listening again in a second; meanwhile the tabs' heartbeats catch up
            log.exception("the live updates of organization %s failed", organization_id)
            asyncio.get_running_loop().call_later(RESTART_AFTER, self._ensure_listener, organization_id)
        finally:
            self._tasks.pop(organization_id, None)
            if not self._feeds.get(organization_id):
                self._feeds.pop(organization_id, None)
                self._last_read.pop(organization_id, None)

    async def _current(self, organization_id: int) -> list[Subscriber]:
        """The organization's tabs that may still receive its updates; the others leave."""
        feed = self._feeds.get(organization_id, {})
        connected = self._app.event_namespace.sid_to_token if self._app is not None else {}
        for token, subscriber in list(feed.items()):
            if connected.get(subscriber.sid) != token:
                self._leave(organization_id, token)
        sessions = {s.session for s in feed.values()}
        principals = dict(zip(sessions, await asyncio.gather(*(_check(s) for s in sessions)), strict=True))
        for token, subscriber in list(feed.items()):
            if subscriber.session not in principals:
                continue  # subscribed during the check, by its own page load: checked there
            principal = principals[subscriber.session]
            if principal is None or (principal.user_id, principal.organization_id) != (
                subscriber.user_id,
                organization_id,
            ):
                self._leave(organization_id, token)
        return list(feed.values())

    def _leave(self, organization_id: int, token: str) -> None:
        self._feeds.get(organization_id, {}).pop(token, None)
        if self._organization_of.get(token) == organization_id:
            del self._organization_of[token]

    async def _update(self, organization_id: int, events: list[dict]) -> None:
        # holds (placed, captured, released, expired) change Available and Reserved, not the ledger, and
        # auto-recharge's own state (a decline's backoff, a pause) neither: no toast and no
        # billingUpdated for them, only the figures
        holds = [e for e in events if e.get("type") in ("hold", "auto_recharge")]
        entries = [e for e in events if "entry_id" in e]
        latest = max(entries, key=lambda e: e["entry_id"]) if entries else None
        subscribers = await self._current(organization_id)
        if not subscribers:
            return
        if latest is not None:
            # the balance at once, as the posting left it; the toasts; billingUpdated
            script = rx.call_script(BILLING_UPDATED.replace("DETAIL", json.dumps(_billing_detail(latest))))
            common = Event.from_event_type([*_live_toasts(entries), script])
            quick = _delta(self._quick(organization_id, latest))
            seq = int(latest.get("seq") or 0)
            for subscriber in subscribers:
                fresh = bool(quick) and (not seq or seq > subscriber.entries)
                if fresh:
                    subscriber.entries = max(subscriber.entries, seq)
                own = set(subscriber.own)
                events = Event.from_event_type([*_live_toasts(entries, own), script]) if own else common
                await self._emit(subscriber, quick if fresh else {}, events)
        after: Any = latest["entry_id"] if latest is not None else 0
        if holds:  # the same change read once by this worker's tabs
            after = ("hold", after, *sorted(json.dumps(e, sort_keys=True) for e in holds))
        usage_only = not holds and all(e.get("type") == "usage" for e in entries)
        await self._refresh(organization_id, subscribers, after, usage_only)

    async def _read(self, organization_id: int, view: View, after: Any, usage_only: bool) -> dict:
        """The figures' read: after usage only, on the first page of the whole history, the last
        read (if under FULL_READ_EVERY seconds old) brought up to date (data._load_newer: 3 queries);
        otherwise the whole read, shared with the heartbeats' catch-ups (data._load_after)."""
        base = self._latest.get((organization_id, view))
        if usage_only and view[0] == "all" and view[1] == 1 and view[3:] == ("", "", "newest") and base is not None:
            if base.result and time.time() - base.result.get("full_at", 0.0) < FULL_READ_EVERY:
                newer = await asyncio.to_thread(data._load_newer, organization_id, base.result, view[2])
                if newer is not None:
                    return newer
        return await data._load_after(organization_id, *view, after)

    async def _refresh(self, organization_id: int, subscribers: list[Subscriber], after: Any, usage_only: bool) -> None:
        """The figures, one read per view shown, to the tabs that show older ones."""
        views: dict[View, list[Subscriber]] = {}
        for subscriber in subscribers:
            views.setdefault(subscriber.view, []).append(subscriber)
        for view, group in views.items():
            try:
                result = await self._read(organization_id, view, after, usage_only)
            except Exception:  # their heartbeats catch up; the cause goes to the log
                log.exception("reading the live figures of organization %s failed", organization_id)
                continue
            figures = figures_of(result, view[2])
            self.remember(organization_id, view, figures)
            delta = _delta(figures.shown)  # the same message for each of the group's tabs
            for subscriber in group:
                if figures.read_at > subscriber.shown_at:
                    subscriber.shown_at, subscriber.entries = figures.read_at, max(subscriber.entries, figures.entries)
                    subscriber.figures = figures
                    await self._emit(subscriber, delta, [])

    def _quick(self, organization_id: int, event: dict) -> dict[str, Any] | None:
        """The balance's vars from the event, with the reserve and threshold of the last read."""
        if "balance" not in event:
            return None
        last = self._last_read.get(organization_id)
        if last is None:
            return None
        kept = last.kept
        return balance_vars(to_units(event["balance"]), kept["_reserved_units"], kept["_threshold_units"])

    async def _send(self, subscribers: list[Subscriber], *, events: list) -> None:
        converted = Event.from_event_type(events)
        for subscriber in subscribers:
            await self._emit(subscriber, {}, converted)

    async def _emit(self, subscriber: Subscriber, delta: dict[str, Any], events: list[Event]) -> None:
        if self._app is None or not (delta or events):
            return
        try:
            await self._app.event_namespace.emit_update(StateUpdate(delta=delta, events=events), subscriber.token)
        except Exception:  # one tab's socket failing does not stop the others'
            log.exception("a live update could not be sent")


async def _check(session: str) -> Principal | None:
    """The session's principal, read at most every LIVE_RECHECK seconds (shared with SessionState)."""
    return await session_state._session_checks.get(
        session, principal_for_session, get_engine(), session, max_age=session_state.LIVE_RECHECK
    )


def _delta(shown: dict[str, Any] | None) -> dict[str, Any]:
    """BillingState's vars as a Reflex state delta ({} for none)."""
    return {_STATE_NAME(): {name + FIELD_MARKER: value for name, value in shown.items()}} if shown else {}


@functools.cache
def _STATE_NAME() -> str:  # noqa: N802  (BillingState is composed after this module is imported)
    from . import BillingState

    return BillingState.get_full_name()


class LiveSync(Middleware):
    """Before a billing tab handles an event, its state takes the newest figures this worker sent
    it (see the module's docstring)."""

    async def preprocess(self, app, state, event):
        from . import BillingState

        if event.name.startswith(_STATE_NAME() + "."):
            billing = await state.get_state(BillingState)
            billing._take_latest()
        return None


fanout = LiveFanout()


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
        charges = [e for e in events if e.get("type") == "usage"]
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
