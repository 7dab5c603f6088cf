"""Outbound webhooks on the billing page: owners add, enable or disable, remove and test endpoints and read the delivery
log; admins read both; members see nothing (the card is not shown and nothing is read for them).

A state of its own (a substate of SessionState, beside BillingState), so the page's live updates never
carry it. Every handler re-reads the caller's role from the database (`_current_principal`): anything
but an owner is refused and nothing is written. What the state holds belongs to the session and
organization it was read for (`_bound`): another sign-in in the tab clears it before anything is read.

After "Send test event" a background task reads the log every second until that message's first
attempt is logged (the delivery loop sends within 5 seconds; it gives up after 30 s), so the result
shows without a reload; later retries show on Refresh.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import reflex as rx

from ... import webhooks
from ...auth import Principal
from ...config import get_settings
from ...db import get_engine
from ...state import SessionState

READERS = ("owner", "admin")
LOG_PAGE = 10  # deliveries shown at first and added by each "Show more"
LOG_MAX = 200  # what the REST API answers at most, too
POLL_SECONDS = 1.0
POLLS = 30
OWNERS_ONLY = "Only owners can change webhooks."


def _endpoint_id(value: object) -> int | None:
    """An endpoint id sent by the tab, or None: digits only, within the column's range."""
    text = str(value)
    return int(text) if text.isdigit() and int(text) <= 2_147_483_647 else None


def _when(at: datetime | None) -> str:
    return at.strftime("%b %-d, %H:%M:%S UTC") if at else ""


def _endpoint_row(endpoint: webhooks.Endpoint) -> dict[str, str]:
    return {
        "id": str(endpoint.id),
        "url": endpoint.url,
        "description": endpoint.description,
        "events": ", ".join(endpoint.event_types),
        "secret_hint": endpoint.secret_hint,
        "created": _when(endpoint.created_at),
        "enabled": "yes" if endpoint.enabled else "",
    }


def _attempt_line(attempt: dict[str, Any]) -> str:
    code = attempt["status_code"]
    answer = f"HTTP {code}" if code is not None else (attempt["error"] or "no answer")
    return f"#{attempt['attempt']} {_when(attempt['attempted_at'])} · {answer}"


def _status(delivery: webhooks.Delivery, logged: int) -> tuple[str, str, str]:
    """What the log says of a message: label, badge colour, detail."""
    if delivery.status == "delivered":
        return "Delivered", "green", ""
    if delivery.status in ("failed", "cancelled"):
        return delivery.status.capitalize(), "red" if delivery.status == "failed" else "gray", delivery.last_error or ""
    if delivery.attempts > logged:  # claimed by a sender, its answer not recorded yet
        return "Sending", "blue", ""
    if delivery.attempts == 0:
        return "Queued", "gray", ""
    return "Retrying", "amber", f"next attempt {_when(delivery.next_attempt_at)}"


def _delivery_row(delivery: webhooks.Delivery, attempts: list[dict[str, Any]]) -> dict[str, str]:
    label, colour, detail = _status(delivery, len(attempts))
    return {
        "id": str(delivery.id),
        "msg_id": delivery.msg_id,
        "event": delivery.event_type,
        "url": delivery.url,
        "created": _when(delivery.created_at),
        "status": label,
        "colour": colour,
        "detail": detail,
        "attempts": "\n".join(_attempt_line(a) for a in attempts),
    }


def _read(organization_id: int, limit: int) -> tuple[list[dict[str, str]], list[dict[str, str]], bool]:
    """The endpoints, the newest `limit` deliveries, and whether there are more."""
    with get_engine().connect() as conn:
        endpoints = webhooks.list_endpoints(conn, organization_id)
        found = webhooks.list_deliveries(conn, organization_id, limit=limit + 1)
        logs = webhooks.attempts_for(conn, [d.id for d in found[:limit]])
    rows = [_delivery_row(d, logs.get(d.id, [])) for d in found[:limit]]
    return [_endpoint_row(e) for e in endpoints], rows, len(found) > limit


class WebhooksState(SessionState):
    visible: bool = False  # owners and admins
    can_manage: bool = False  # owners
    endpoints: list[dict[str, str]] = []
    deliveries: list[dict[str, str]] = []
    has_more: bool = False
    log_limit: int = LOG_PAGE
    refreshing: bool = False
    # the add dialog
    add_open: bool = False
    url: str = ""
    description: str = ""
    chosen: list[str] = []
    add_error: str = ""
    adding: bool = False
    secret: str = ""  # the new endpoint's signing secret: shown once, forgotten when the dialog closes
    # the remove confirmation
    remove_id: str = ""
    remove_url: str = ""
    _bound: str = ""

    def _clear(self) -> None:
        self.visible = self.can_manage = self.has_more = self.add_open = False
        self.endpoints, self.deliveries, self.chosen = [], [], []
        self.url = self.description = self.add_error = self.secret = self.remove_id = self.remove_url = ""
        self.log_limit, self._bound = LOG_PAGE, ""

    def _reader(self) -> Principal | None:
        """The caller if an owner or admin; otherwise None, with everything shown cleared."""
        principal = self._current_principal()
        if principal is None or principal.role not in READERS:
            self._clear()
            return None
        if self._binding(principal) != self._bound:
            self._clear()
            self._bound = self._binding(principal)
        self.visible, self.can_manage = True, principal.is_owner
        return principal

    def _owner(self) -> Principal | None:
        principal = self._reader()
        return principal if principal is not None and principal.is_owner else None

    def _show(self, read: tuple[list[dict[str, str]], list[dict[str, str]], bool]) -> None:
        self.endpoints, self.deliveries, self.has_more = read

    async def _reload(self, principal: Principal) -> None:
        self._show(await asyncio.to_thread(_read, principal.organization_id, self.log_limit))

    @rx.event
    async def load_webhooks(self):
        principal = self._reader()
        if principal is not None:
            await self._reload(principal)

    @rx.event
    async def refresh_log(self):
        principal = self._reader()
        if principal is None:
            return
        self.refreshing = True
        yield
        try:
            await self._reload(principal)
        finally:
            self.refreshing = False

    @rx.event
    async def show_more(self):
        principal = self._reader()
        if principal is not None:
            self.log_limit = min(self.log_limit + LOG_PAGE, LOG_MAX)
            await self._reload(principal)

    @rx.event
    def open_add(self):
        if self._owner() is None:
            return rx.toast.error(OWNERS_ONLY)
        self.url = self.description = self.add_error = self.secret = ""
        self.chosen, self.add_open = [], True

    @rx.event
    def set_add_open(self, value: bool):
        self.add_open = bool(value)
        if not value:  # the secret is not kept once its dialog is closed
            self.secret = self.add_error = ""

    @rx.event
    def set_url(self, value: str):
        self.url, self.add_error = str(value), ""

    @rx.event
    def set_description(self, value: str):
        self.description = str(value)

    @rx.event
    def toggle_event_type(self, event_type: str, checked: bool):
        chosen = [t for t in self.chosen if t != event_type]
        self.chosen = [t for t in webhooks.EVENT_TYPES if t in chosen or (checked and t == event_type)]
        self.add_error = ""

    @rx.event
    async def add_endpoint(self):
        principal = self._owner()
        if principal is None:
            self.add_error = OWNERS_ONLY
            yield rx.toast.error(OWNERS_ONLY)
            return
        self.adding = True
        yield
        try:
            _, self.secret = await asyncio.to_thread(
                webhooks.add_audited,
                get_engine(),
                principal,
                self.url,
                list(self.chosen),
                description=self.description,
                production=get_settings().production,
                ip=self._client_ip(),
            )
        except webhooks.WebhookError as exc:
            self.add_error = exc.message[:1].upper() + exc.message[1:] + "."
            return
        finally:
            self.adding = False
        await self._reload(principal)

    @rx.event
    def ask_remove(self, endpoint_id: str):
        if self._owner() is None:
            return rx.toast.error(OWNERS_ONLY)
        found = [e for e in self.endpoints if e["id"] == str(endpoint_id)]
        if found:
            self.remove_id, self.remove_url = found[0]["id"], found[0]["url"]

    @rx.event
    def set_remove_open(self, value: bool):
        if not value:
            self.remove_id = self.remove_url = ""

    @rx.event
    async def confirm_remove(self, endpoint_id: str):
        """The confirmation's button names the endpoint it asked about (closing the dialog clears
        `remove_id`, whichever event arrives first)."""
        principal = self._owner()
        self.remove_id = self.remove_url = ""
        if principal is None:
            yield rx.toast.error(OWNERS_ONLY)
            return
        found = _endpoint_id(endpoint_id)
        removed = found is not None and await asyncio.to_thread(
            webhooks.remove_audited, get_engine(), principal, found, ip=self._client_ip()
        )
        await self._reload(principal)
        yield rx.toast.success("Endpoint removed.") if removed else rx.toast.error("That endpoint is already gone.")

    @rx.event
    async def set_endpoint_enabled(self, endpoint_id: str, enabled: bool):
        principal = self._owner()
        if principal is None:
            yield rx.toast.error(OWNERS_ONLY)
            return
        found = _endpoint_id(endpoint_id)
        endpoint = found is not None and await asyncio.to_thread(
            webhooks.set_enabled_audited, get_engine(), principal, found, enabled is True, ip=self._client_ip()
        )
        await self._reload(principal)
        if not endpoint:
            yield rx.toast.error("That endpoint is already gone.")
        elif endpoint.enabled:
            yield rx.toast.success("Endpoint enabled: it receives the events from now on.")
        else:
            yield rx.toast.success("Endpoint disabled: what it had not received yet is cancelled.")

    @rx.event
    async def send_test(self, endpoint_id: str):
        principal = self._owner()
        if principal is None:
            yield rx.toast.error(OWNERS_ONLY)
            return
        try:
            found = _endpoint_id(endpoint_id)
            if found is None:
                raise webhooks.WebhookError("not_found", "no such webhook endpoint in this organization")
            msg_id = await asyncio.to_thread(
                webhooks.send_test_event, get_engine(), principal.organization_id, found, principal.email
            )
        except webhooks.WebhookError as exc:
            yield rx.toast.error(exc.message[:1].upper() + exc.message[1:] + ".")
            return
        await self._reload(principal)
        yield rx.toast.success("Test event queued; its delivery shows in the log below.")
        yield WebhooksState.follow_delivery(msg_id)

    @rx.event(background=True)
    async def follow_delivery(self, msg_id: str):
        """Reads the log every second until `msg_id`'s first attempt is logged (or POLLS have passed),
        each time for the caller still signed in as an owner or admin of the same organization."""
        async with self:
            bound = self._bound
        for _ in range(POLLS):
            await asyncio.sleep(POLL_SECONDS)
            async with self:
                principal = await self._live_principal()
                if principal is None or principal.role not in READERS or self._binding(principal) != bound:
                    return
                organization_id, limit = principal.organization_id, self.log_limit
            read = await asyncio.to_thread(_read, organization_id, limit)
            async with self:
                if self._bound != bound:
                    return
                self._show(read)
            if any(d["msg_id"] == msg_id and d["attempts"] for d in read[1]):
                return
