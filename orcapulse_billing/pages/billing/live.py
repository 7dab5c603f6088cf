"""LiveUpdates: BillingState's live part (a mixin), the tab's side of the worker's fan-out
(fanout.py). A tab whose data loaded subscribes to its organization's updates on this worker for the
signed-in session and the view its history shows; the worker's one listener per organization sends it
the new figures over its socket, and this tab's state takes them (`_take_latest`) when it next handles
an event. A 30 s heartbeat from the page subscribes again when the worker has lost the tab (its socket
reconnected, the worker restarted) and catches up when the account has an entry the tab has not shown
(an event missed: a Redis blip, a posting by another process on the embedded default)."""

from __future__ import annotations

import json
import logging

import reflex as rx

from ...auth import Principal, session_token_from_cookie_header
from ...money import fmt4
from . import data
from .fanout import BILLING_UPDATED, Subscriber, fanout
from .figures import Figures

log = logging.getLogger(__name__)


class LiveUpdates(rx.State, mixin=True):
    """Relies on SessionState (_current_principal, _live_principal, _binding) and BillingPage
    (loaded, _reload, _view, _apply_figures), with which BillingState composes it."""

    _live_binding: str = ""  # the session and organization this tab's data and subscription belong to
    _shown_at: float = 0.0  # read_at of the figures this tab's state holds
    # idempotency keys of purchases this tab's own flow announces ("Credits added successfully!"):
    # the live update raises no second toast for them or their bonus
    _own_toasts: list[str] = []

    def _own_toast(self, key: str) -> None:
        self._own_toasts = [*self._own_toasts[-19:], key]
        fanout.own_toast(self.router.session.client_token, key)

    def _subscribe(self, principal: Principal, figures: Figures) -> None:
        """From now on this tab receives its organization's updates for its current view."""
        session = session_token_from_cookie_header(self.router.headers.cookie)
        if not session or self._binding(principal) != self._live_binding:
            return  # the page has not loaded for this user yet: its load subscribes
        subscriber = Subscriber(
            token=self.router.session.client_token,
            sid=self.router.session.session_id,
            organization_id=principal.organization_id,
            user_id=principal.user_id,
            session=session,
            view=self._view(),
            shown_at=figures.read_at,
            entries=figures.entries,
            figures=figures,
        )
        subscriber.own.extend(self._own_toasts)
        fanout.subscribe(subscriber)

    def _take_latest(self) -> None:
        """The newest figures this worker sent this tab, if its state holds older ones."""
        if not self.loaded or self._organization_id is None:
            return
        figures = fanout.latest(self.router.session.client_token, self._organization_id, self._view())
        if figures is not None and figures.read_at > self._shown_at:
            self._apply_figures(figures)

    @rx.event
    async def heartbeat(self, _value=None):
        """Every 30 s from the page: subscribe again where this worker lost the tab; one cheap read
        of the account's newest entry (shared by this worker's tabs of the organization), and a
        catch-up when this tab has not shown it, as when an event was missed."""
        if not self.loaded:
            return
        principal = await self._live_principal()
        if principal is None:
            return rx.redirect("/login")
        if self._binding(principal) != self._live_binding:
            return type(self).load  # another user or organization in this tab: start over for them
        try:
            newest = await data._newest_entry(principal.organization_id)
        except Exception:  # the next beat tries again; the cause goes to the log
            log.exception("reading the account's newest entry failed")
            return
        lost = fanout.subscribed(self.router.session.client_token, self.router.session.session_id) is None
        if newest == self.transactions and not self.load_failed and not lost:
            return
        shown = self._balance_units
        if not await self._reload(after=("newest", newest)):
            return rx.redirect("/login")
        if self._balance_units != shown:
            detail = {"type": "balance_updated", "balance": fmt4(self._balance_units)}
            return rx.call_script(BILLING_UPDATED.replace("DETAIL", json.dumps(detail)))
