"""`/billing`: the Billing & Credits page (document 003), for the signed-in organization.

The state reads through the same services as the REST API (ledger.get_account, history,
metering's billing sessions), off the event loop, and keeps only display-ready strings: money is
formatted here from exact integer units, never carried as floats (the chart's bar heights aside).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlsplit

import reflex as rx
import sqlalchemy as sa

from ..auth import Principal
from ..components.layout import PURPLE, page_frame
from ..components.native_form import backend_url, resolve_on_use
from ..components.pagination import page_window, pagination
from ..components.stat_card import stat_card
from ..config import get_settings
from ..db import get_engine
from ..history import (
    DEFAULT_PAGE_SIZE,
    PAGE_SIZES,
    TYPE_LABELS,
    HistoryQuery,
    billing_session,
    history_page,
    usage_summary,
)
from ..ledger import get_account
from ..models import Organization
from ..money import MoneyError, fmt4, fmt_balance, fmt_money4, fmt_signed_amount, from_units, parse_amount, to_units
from ..payments.purchases import PurchaseError, choose, return_urls
from ..payments.stripe_gateway import PaymentError
from ..pricing import CUSTOM_MAX, CUSTOM_MIN, PACKAGES
from ..services import get_auto_recharger, get_event_bus, get_lemon_purchases, get_stripe_purchases
from ..state import SessionState, SharedReads

log = logging.getLogger(__name__)

GRAY = "linear-gradient(135deg, #475569 0%, #64748b 100%)"
BLACK = "linear-gradient(135deg, #0f172a 0%, #334155 100%)"
GREEN = "#16a34a"
RED = "#dc2626"
CHART_DAYS = 30
TYPE_BADGES = {
    "purchase": "Top-up",
    "bonus": "Top-up",
    "usage": "Usage",
    "refund": "Refund",
    "adjustment": "Adjustment",
}
CATEGORY_LABELS = {
    "ai_call": "AI calls",
    "call_recording": "Recording",
    "whatsapp": "WhatsApp",
    "sms": "SMS",
    "email": "Email",
    "transcription": "Transcription",
    "tts": "TTS",
    "llm_tokens": "LLM tokens",
    "chat": "Chat",
    "phone_rental": "Phone numbers",
    "other": "Other",
}


def format_when(value: datetime) -> str:
    """'Jan 15, 2024 14:30' (UTC)."""
    v = value.astimezone(UTC)
    return f"{v:%b} {v.day}, {v:%Y %H:%M}"


def _row(item) -> dict[str, str]:
    return {
        "id": str(item.id),
        "when": format_when(item.created_at),
        "type": item.type,
        "badge": TYPE_BADGES.get(item.type, item.type.title()),
        "description": item.description,
        "amount": fmt_signed_amount(item.amount_units),
        "credit": "1" if item.amount_units > 0 else "",
        "balance_after": fmt_money4(item.balance_after_units),
        "session_id": item.usage_session_id or "",
        "category": item.category or "",
    }


def _load(organization_id: int, type_filter: str, page: int, page_size: int) -> dict:
    """Everything the page shows, in one read transaction (runs in a worker thread)."""
    settings = get_settings()
    now = datetime.now(UTC)
    with get_engine().connect() as conn:
        acct = get_account(conn, organization_id=organization_id)
        org_name = conn.execute(sa.select(Organization.name).where(Organization.id == organization_id)).scalar()
        result = history_page(conn, acct.id, HistoryQuery(type_filter), page=page, page_size=page_size)
        if result.items == [] and page > result.total_pages:  # the page vanished (filter changed elsewhere)
            result = history_page(
                conn, acct.id, HistoryQuery(type_filter), page=result.total_pages, page_size=page_size
            )
        spend = usage_summary(conn, acct.id, now - timedelta(days=CHART_DAYS), None)
    return {
        "org_name": org_name or "",
        "balance_units": acct.balance_units,
        "added_units": acct.lifetime_added_units,
        "consumed_units": acct.lifetime_consumed_units,
        "transactions": acct.transaction_count,
        "threshold_units": to_units(settings.low_balance_threshold),
        "grace_units": to_units(settings.grace_limit),
        "rows": [_row(i) for i in result.items],
        "page": result.page,
        "total": result.total,
        "total_pages": result.total_pages,
        "spend": [
            {
                "category": CATEGORY_LABELS.get(r.category, r.category),
                "amount": fmt_money4(r.amount_units),
                "count": f"({r.count:,})",
                # chart bar height only; every figure shown as text comes from the exact string above
                "value": float(from_units(r.amount_units)),
            }  # ok: chart
            for r in spend
        ],
        "spend_total": fmt_balance(sum(r.amount_units for r in spend)),
        "auto": get_auto_recharger(get_engine()).get(organization_id),
    }


_live_reads = SharedReads(max_entries=256)


async def _load_after(organization_id: int, type_filter: str, page: int, page_size: int, entry_id: int) -> dict:
    """_load for a live update: all the tabs of this worker showing the same page after the same
    committed entry share one read."""
    key = (organization_id, type_filter, page, page_size, entry_id)
    return await _live_reads.get(key, _load, organization_id, type_filter, page, page_size)


def _load_session(organization_id: int, session_id: str) -> dict | None:
    with get_engine().connect() as conn:
        acct = get_account(conn, organization_id=organization_id)
        row = billing_session(conn, acct.id, session_id)
    if row is None:
        return None
    when = lambda v: format_when(v.replace(tzinfo=v.tzinfo or UTC)) if v else ""  # noqa: E731
    duration = (
        f"{row['duration_minutes']} min"
        if row["duration_minutes"]
        else (f"{row['message_count']} messages" if row["message_count"] is not None else "")
    )
    return {
        "id": row["external_id"],
        "agent": row["agent_name"] or row["agent_id"] or "Unknown agent",
        "agent_id": row["agent_id"] or "",
        "architecture": (row["architecture"] or row["operation"]).title(),
        "duration": duration,
        "base": "$" + fmt4(row["cost_base"]),
        "llm": "$" + fmt4(row["cost_llm"]),
        "stt": "$" + fmt4(row["cost_stt"]),
        "tts": "$" + fmt4(row["cost_tts"]),
        "total": "$" + fmt4(row["cost_total"]),
        "started": when(row["started_at"]),
        "ended": when(row["ended_at"]),
        "billed": when(row["created_at"]),
        "transcript": row["transcript"] or "",
        "recording": row["recording_url"] or "",
        "analysis": "\n".join(f"{k}: {v}" for k, v in (row["analysis"] or {}).items()),
    }


class BillingState(SessionState):
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
    add_credits_open: bool = False
    packages: list[dict[str, str]] = []
    cards: list[dict[str, str]] = []
    custom_amount: str = ""
    purchase_error: str = ""
    buying: bool = False
    waiting: bool = False
    checkout_url: str = ""
    popup_blocked: bool = False
    _checkout_session: str = ""
    _checkout_mode: str = ""
    _checkout_provider: str = ""
    providers: list[str] = []
    provider: str = "stripe"
    auto_enabled: bool = False
    auto_threshold: str = ""
    auto_amount: str = ""
    auto_cap: str = ""
    auto_note: str = ""
    auto_error: str = ""
    _live_beat: float = 0.0  # when the live listener last showed it is alive (monotonic seconds)
    _live_entry: int = 0  # the newest entry whose balance a live update showed
    _threshold_units: int = 0

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

    async def _reload(self, after_entry: int | None = None) -> bool:
        """`after_entry`: a live update for this committed entry; tabs showing the same page share
        one read of it instead of each querying the database."""
        principal = await self.live_principal() if after_entry else self.current_principal()
        if principal is None:
            return False
        try:
            args = (principal.organization_id, self.type_filter, self.page, int(self.page_size))
            data = await _load_after(*args, after_entry) if after_entry else await asyncio.to_thread(_load, *args)
        except Exception:  # the page shows its error state; the cause goes to the log
            log.exception("loading billing data failed")
            self.load_failed = True
            return True
        self.load_failed = False
        self.org_name = data["org_name"]
        self._threshold_units = data["threshold_units"]
        self._show_balance(data["balance_units"])
        self.threshold = fmt_balance(data["threshold_units"])
        self.grace_limit = fmt_balance(data["grace_units"])
        self.added = ("+" if data["added_units"] else "") + fmt_balance(data["added_units"])
        self.consumed = ("-" if data["consumed_units"] else "") + fmt_balance(data["consumed_units"])
        self.transactions = data["transactions"]
        self.rows, self.page, self.total, self.total_pages = (
            data["rows"],
            data["page"],
            data["total"],
            data["total_pages"],
        )
        self.spend, self.spend_total = data["spend"], data["spend_total"]
        policy = data["auto"]
        self.auto_enabled = policy.enabled
        self.auto_threshold, self.auto_amount = f"{policy.threshold:.2f}", f"{policy.amount:.2f}"
        self.auto_cap = f"{policy.monthly_cap:.2f}" if policy.monthly_cap is not None else ""
        self.auto_note = policy.disabled_reason or ""
        return True

    def _show_balance(self, units: int) -> None:
        self.balance = fmt_balance(units)
        self.negative = units < 0
        self.low_balance = units < self._threshold_units

    @rx.event
    async def load(self):
        self.loaded = False
        if not await self._reload():
            return rx.redirect("/login")
        self.loaded = True
        return BillingState.live

    # -- live updates ---------------------------------------------------------------------------

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
        return BillingState.live

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
        principal = self.current_principal()
        if principal is None:
            return rx.redirect("/login")
        self.panel_row = row
        self.panel_session = {}
        if row.get("session_id"):
            session = await asyncio.to_thread(_load_session, principal.organization_id, row["session_id"])
            self.panel_session = session or {}
        self.panel_open = True

    @rx.event
    def set_panel_open(self, value: bool):
        self.panel_open = value

    # -- buying credits (owners only: every handler re-checks the role on the server) ----------

    def _owner(self) -> Principal | None:
        principal = self.current_principal()
        return principal if principal is not None and principal.is_owner else None

    @rx.event
    async def open_add_credits(self):
        principal = self._owner()
        if principal is None:
            return rx.toast.error("Only owners can add credits.")
        self.purchase_error, self.custom_amount = "", ""
        self.providers = list(get_settings().payment_providers)
        if self.provider not in self.providers:
            self.provider = self.providers[0] if self.providers else ""
        self.packages = _package_rows()
        self.cards = await asyncio.to_thread(_card_rows, principal.organization_id)
        self.add_credits_open = True

    @rx.event
    def set_add_credits_open(self, value: bool):
        self.add_credits_open = value and self.is_owner

    @rx.event
    def set_provider(self, value: str | list[str]):
        if isinstance(value, str) and value in self.providers:
            self.provider = value

    @rx.event
    def set_custom_amount(self, value: str):
        self.custom_amount = value.strip().lstrip("$")
        self.purchase_error = ""

    async def _checkout(self, package_id: str | None, amount: str | None, setup: bool = False):
        principal = self._owner()
        if principal is None:
            yield rx.toast.error("Only owners can add credits.")
            return
        try:
            choice = None if setup else choose(get_settings(), package_id or None, amount if not package_id else None)
            self.buying = True
            yield
            provider = "stripe" if setup else self.provider
            if provider not in get_settings().payment_providers:
                raise PurchaseError("provider_unavailable", "This payment method is not offered.")
            page = urlsplit(str(self.router.url))
            page_origin = f"{page.scheme}://{page.netloc}" if page.scheme and page.netloc else ""
            created = await asyncio.to_thread(_start_checkout, principal, choice, provider, page_origin)
        except (PurchaseError, PaymentError) as exc:
            self.buying = False
            self.purchase_error = exc.message
            return
        self.buying, self.add_credits_open = False, False
        self.waiting, self.popup_blocked = True, False
        self.checkout_url, self._checkout_session = created["url"], created["session_id"]
        self._checkout_mode = "setup" if setup else "payment"
        self._checkout_provider = provider
        opener = _OPEN_OVERLAY if provider == "lemonsqueezy" else _OPEN_POPUP
        yield rx.call_script(opener.replace("URL", json.dumps(created["url"])), callback=BillingState.popup_opened)
        yield BillingState.watch_checkout

    @rx.event
    async def checkout_package(self, package_id: str):
        async for update in self._checkout(package_id, None):
            yield update

    @rx.event
    async def checkout_custom(self):
        if not self.custom_amount:
            self.purchase_error = "Enter an amount from $1.00 to $100.00."
            return
        async for update in self._checkout(None, self.custom_amount):
            yield update

    @rx.event
    async def save_card(self):
        async for update in self._checkout(None, None, setup=True):
            yield update

    @rx.event
    def popup_opened(self, opened: bool):
        self.popup_blocked = not opened

    @rx.event
    def cancel_waiting(self):
        self.waiting, self._checkout_session = False, ""

    @rx.event(background=True)
    async def watch_checkout(self):
        """Waits for the signed webhook to settle the checkout (the popup's own return proves nothing)."""
        async with self:
            principal = self.current_principal()
            session_id, provider = self._checkout_session, self._checkout_provider
        if principal is None or not session_id:
            return
        for _ in range(1800):
            await asyncio.sleep(1)
            status = await asyncio.to_thread(_checkout_status, principal.organization_id, provider, session_id)
            async with self:
                if self._checkout_session != session_id:
                    return  # another checkout replaced this one, or the owner stopped waiting
                if status == "completed":
                    self.waiting, self._checkout_session = False, ""
                    await self._reload()
                    self.cards = await asyncio.to_thread(_card_rows, principal.organization_id)
                    yield rx.toast.success(
                        "Credits added successfully!" if self._checkout_mode == "payment" else "Card saved"
                    )
                    return
                if status in ("failed", "expired"):
                    self.waiting, self._checkout_session = False, ""
                    yield rx.toast.error(
                        "The payment failed. Nothing was charged."
                        if status == "failed"
                        else "The checkout expired. Nothing was charged."
                    )
                    return
        async with self:
            self.waiting = False

    @rx.event
    async def quick_purchase(self, package_id: str):
        principal = self._owner()
        if principal is None:
            yield rx.toast.error("Only owners can add credits.")
            return
        try:
            choice = choose(get_settings(), package_id or None, self.custom_amount if not package_id else None)
            self.buying = True
            yield
            await asyncio.to_thread(_quick_purchase, principal, choice)
        except (PurchaseError, PaymentError) as exc:
            self.buying = False
            self.purchase_error = exc.message
            return
        self.buying, self.add_credits_open = False, False
        await self._reload()
        yield rx.toast.success("Credits added successfully!")

    @rx.event
    def set_auto_field(self, field: str, value: str):
        if field in ("auto_threshold", "auto_amount", "auto_cap"):
            setattr(self, field, value.strip().lstrip("$"))
            self.auto_error = ""

    @rx.event
    def set_auto_enabled(self, value: bool):
        self.auto_enabled = bool(value)
        self.auto_error = ""

    @rx.event
    async def save_auto_recharge(self):
        principal = self._owner()
        if principal is None:
            yield rx.toast.error("Only owners can change auto-recharge.")
            return
        try:
            values = [parse_amount(v) if v else None for v in (self.auto_threshold, self.auto_amount, self.auto_cap)]
            if values[0] is None or values[1] is None:
                raise PurchaseError("invalid_request", "Enter a threshold and an amount.")
            await asyncio.to_thread(
                get_auto_recharger(get_engine()).update,
                principal,
                enabled=self.auto_enabled,
                threshold=values[0],
                amount=values[1],
                monthly_cap=values[2],
                ip=None,
            )
        except MoneyError as exc:
            self.auto_error = f"Amounts: {exc}"
            return
        except PurchaseError as exc:
            self.auto_error = exc.message
            return
        await self._reload()
        yield rx.toast.success("Auto-recharge saved")

    @rx.event
    async def remove_card(self, card_id: str):
        principal = self._owner()
        if principal is None:
            yield rx.toast.error("Only owners can manage saved cards.")
            return
        try:
            await asyncio.to_thread(_remove_card, principal.organization_id, card_id)
        except (PurchaseError, PaymentError) as exc:
            yield rx.toast.error(exc.message)
            return
        self.cards = await asyncio.to_thread(_card_rows, principal.organization_id)
        yield rx.toast.success("Card removed")


LIVE_BEAT = 20  # seconds between the listener's signs of life
_BILLING_UPDATED = "window.dispatchEvent(new CustomEvent('billingUpdated', {detail: DETAIL}))"


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


_OPEN_POPUP = "(() => { const w = window.open(URL, 'opb-checkout', 'popup,width=520,height=760'); return !!w; })()"
# lemon.js is loaded by the page; createLemonSqueezy() (re)initialises it for the single-page app.
# Checkout.Success is only a UI signal: credits come from the signed webhook.
_OPEN_OVERLAY = """(() => {
  if (typeof window.createLemonSqueezy !== 'function') return false;
  window.createLemonSqueezy();
  window.LemonSqueezy.Setup({eventHandler: (e) => { if (e.event === 'Checkout.Success') window.__opbLemonPaid = true; }});
  window.LemonSqueezy.Url.Open(URL);
  return true;
})()"""


def _package_rows() -> list[dict[str, str]]:
    settings = get_settings()
    rows = []
    for package in PACKAGES:
        c = choose(settings, package_id=package.id)
        rows.append(
            {
                "id": package.id,
                "price": f"${package.price:,.0f}",
                "credits": f"{package.credits:,.0f} credits",
                "bonus": f"+{c.bonus:,.0f} bonus credits ({c.bonus_percent.normalize():f}%)" if c.bonus else "",
            }
        )
    return rows


def _card_rows(organization_id: int) -> list[dict[str, str]]:
    try:
        purchases = get_stripe_purchases()
    except PaymentError:
        return []
    return [
        {
            "id": c["provider_id"],
            "label": f"{c['brand'].title()} •••• {c['last4']}",
            "expiry": f"{c['exp_month']:02d}/{c['exp_year'] % 100:02d}",
            "default": "1" if c["is_default"] else "",
        }
        for c in purchases.cards(organization_id)
    ]


def _start_checkout(principal: Principal, choice, provider: str, page_origin: str) -> dict:
    if provider == "lemonsqueezy":
        redirect = (page_origin or get_settings().app_url).rstrip("/") + "/billing"
        return get_lemon_purchases().start_checkout(principal, choice, ip=None, redirect_url=redirect)
    # the popup lands on the backend's own return page, which closes the window
    success, cancel = return_urls(rx.config.get_config().api_url)
    return get_stripe_purchases().start_checkout(
        principal, choice, ip=None, success_url=success, cancel_url=cancel, request_key=uuid.uuid4().hex
    )


def _checkout_status(organization_id: int, provider: str, session_id: str) -> str | None:
    purchases = get_lemon_purchases() if provider == "lemonsqueezy" else get_stripe_purchases()
    return purchases.checkout_status(organization_id, session_id)


def _quick_purchase(principal: Principal, choice) -> None:
    get_stripe_purchases().quick_purchase(
        principal, choice, payment_method_id=None, request_key=uuid.uuid4().hex, ip=None
    )


def _remove_card(organization_id: int, card_id: str) -> None:
    get_stripe_purchases().remove_card(organization_id, card_id)


# -- views ----------------------------------------------------------------------------------------


def header() -> rx.Component:
    add = rx.button(
        rx.icon("plus", size=16),
        "Add Credits",
        color_scheme="green",
        size="3",
        on_click=BillingState.open_add_credits,
        disabled=~BillingState.is_owner,
        data_testid="add-credits-button",
    )
    return rx.flex(
        rx.vstack(
            rx.heading(
                "Billing & Credits",
                size="8",
                style={"background": PURPLE, "-webkit-background-clip": "text", "color": "transparent"},
            ),
            rx.text("Manage your credits and view transaction history", color_scheme="gray", size="3"),
            rx.text(BillingState.org_name, size="2", color_scheme="gray", data_testid="org-name"),
            spacing="1",
        ),
        rx.spacer(),
        rx.hstack(
            rx.button(
                rx.icon("refresh-cw", size=16, class_name=rx.cond(BillingState.refreshing, "animate-spin", "")),
                "Refresh",
                variant="outline",
                size="3",
                on_click=BillingState.refresh,
                disabled=BillingState.refreshing,
                loading=BillingState.refreshing,
                data_testid="refresh-button",
            ),
            rx.cond(BillingState.is_owner, add, rx.tooltip(rx.box(add), content="Only owners can add credits")),
            spacing="3",
        ),
        direction=rx.breakpoints(initial="column", sm="row"),
        gap="4",
        width="100%",
        align=rx.breakpoints(initial="start", sm="end"),
    )


def stats() -> rx.Component:
    return rx.grid(
        stat_card(
            "Current Balance",
            BillingState.balance,
            "Available credits",
            "wallet",
            testid="balance-value",
            background=PURPLE,
            value_color=rx.cond(BillingState.negative, "#fecaca", "white"),
        ),
        stat_card(
            "Credits Added",
            BillingState.added,
            "Credits added",
            "trending-up",
            testid="credits-added-value",
            background=GRAY,
            value_color="#bbf7d0",
        ),
        stat_card(
            "Credits Consumed",
            BillingState.consumed,
            "Credits consumed",
            "arrow-down-right",
            testid="credits-consumed-value",
            background="white",
            color="black",
            value_color=RED,
        ),
        stat_card(
            "Transactions",
            BillingState.transactions,
            "All time",
            "credit-card",
            testid="transaction-count-value",
            background=BLACK,
        ),
        columns=rx.breakpoints(initial="1", sm="2", lg="4"),
        spacing="4",
        width="100%",
    )


def low_balance_banner() -> rx.Component:
    return rx.cond(
        BillingState.low_balance,
        rx.callout.root(
            rx.callout.icon(rx.icon("triangle-alert")),
            rx.flex(
                rx.vstack(
                    rx.text(
                        rx.cond(
                            BillingState.negative,
                            "Your balance is negative",
                            "Low balance: below " + BillingState.threshold,
                        ),
                        weight="bold",
                    ),
                    rx.text(
                        rx.cond(
                            BillingState.negative,
                            "You are in the grace period (down to -"
                            + BillingState.grace_limit
                            + "). Calls already running finish normally; new calls are blocked until credits are added.",
                            "New calls stop when the balance reaches $0.00. Add credits to keep your agents running.",
                        ),
                        size="2",
                    ),
                    spacing="1",
                ),
                rx.spacer(),
                rx.cond(
                    BillingState.is_owner,
                    rx.button(
                        rx.icon("plus", size=14),
                        "Add Credits",
                        color_scheme="green",
                        on_click=BillingState.open_add_credits,
                        class_name="pulse-ring",
                    ),
                ),
                gap="3",
                width="100%",
                align="center",
                direction=rx.breakpoints(initial="column", sm="row"),
            ),
            color_scheme=rx.cond(BillingState.negative, "red", "amber"),
            width="100%",
            data_testid="low-balance-banner",
        ),
    )


def skeleton() -> rx.Component:
    return rx.vstack(
        rx.grid(
            *[
                rx.box(height="118px", border_radius="14px", background="var(--gray-4)", class_name="animate-pulse")
                for _ in range(4)
            ],
            columns=rx.breakpoints(initial="1", sm="2", lg="4"),
            spacing="4",
            width="100%",
            data_testid="skeleton-cards",
        ),
        rx.vstack(
            *[
                rx.box(
                    height="44px",
                    width="100%",
                    border_radius="8px",
                    background="var(--gray-3)",
                    class_name="animate-pulse",
                    data_testid="skeleton-row",
                )
                for _ in range(5)
            ],
            width="100%",
            spacing="2",
        ),
        width="100%",
        spacing="5",
    )


def type_badge(row) -> rx.Component:
    return rx.match(
        row["badge"],
        ("Top-up", rx.badge(rx.icon("arrow-up-right", size=12), "Top-up", color_scheme="green", variant="soft")),
        ("Usage", rx.badge(rx.icon("arrow-down-right", size=12), "Usage", color_scheme="red", variant="soft")),
        rx.badge(rx.icon("dollar-sign", size=12), row["badge"], color_scheme="gray", variant="soft"),
    )


def history_row(row) -> rx.Component:
    return rx.table.row(
        rx.table.cell(row["when"], white_space="nowrap"),
        rx.table.cell(type_badge(row)),
        rx.table.cell(row["description"], min_width="220px"),
        rx.table.cell(
            rx.text(
                row["amount"],
                color=rx.cond(row["credit"] == "1", GREEN, RED),
                weight="medium",
                font_family="var(--code-font-family)",
            ),
            text_align="right",
            white_space="nowrap",
        ),
        rx.table.cell(
            rx.text(row["balance_after"], font_family="var(--code-font-family)"),
            text_align="right",
            white_space="nowrap",
        ),
        on_click=BillingState.open_row(row),
        cursor="pointer",
        _hover={"background": "var(--gray-a2)"},
        data_testid="history-row",
    )


def controls() -> rx.Component:
    export_url = backend_url("/api/credits/history.csv") + BillingState.export_query
    return rx.flex(
        rx.heading("Transaction History", size="5"),
        rx.spacer(),
        rx.hstack(
            rx.select.root(
                rx.select.trigger(data_testid="type-filter", min_width="170px"),
                rx.select.content(*[rx.select.item(label, value=value) for value, label in TYPE_LABELS.items()]),
                value=BillingState.type_filter,
                on_change=BillingState.set_type_filter,
            ),
            rx.select.root(
                rx.select.trigger(data_testid="page-size-select"),
                rx.select.content(*[rx.select.item(f"{n} per page", value=str(n)) for n in PAGE_SIZES]),
                value=BillingState.page_size,
                on_change=BillingState.set_page_size,
            ),
            rx.el.a(
                rx.button(rx.icon("download", size=14), "Export CSV", variant="soft", color_scheme="gray"),
                href=export_url,
                # Reflex renders anchors as React Router links; with the page and the backend on
                # one origin (production) the router would take the click as a page change.
                custom_attrs={"onClick": resolve_on_use("href", export_url), "reloadDocument": True},
                download="orcapulse-credits.csv",
                data_testid="export-csv",
            ),
            spacing="2",
            wrap="wrap",
        ),
        direction=rx.breakpoints(initial="column", sm="row"),
        gap="3",
        width="100%",
        align=rx.breakpoints(initial="start", sm="center"),
    )


def empty_state() -> rx.Component:
    return rx.center(
        rx.vstack(
            rx.center(
                rx.icon("credit-card", size=40, color="var(--gray-9)"),
                width="80px",
                height="80px",
                border_radius="50%",
                background="var(--gray-3)",
            ),
            rx.heading("No transactions found", size="4"),
            rx.text(
                rx.cond(
                    BillingState.type_filter == "all",
                    "Your transaction history is empty",
                    "No " + BillingState.filter_label + " transactions in your history",
                ),
                color_scheme="gray",
            ),
            rx.button(rx.icon("refresh-cw", size=14), "Refresh", variant="outline", on_click=BillingState.refresh),
            align="center",
            spacing="3",
        ),
        padding_y="9",
        width="100%",
        data_testid="empty-state",
    )


def error_state() -> rx.Component:
    return rx.callout.root(
        rx.callout.icon(rx.icon("circle-alert")),
        rx.flex(
            rx.vstack(
                rx.text("Failed to load transaction history", weight="bold"),
                rx.text("Please try again later", size="2"),
                spacing="1",
            ),
            rx.spacer(),
            rx.button(
                rx.icon("refresh-cw", size=14),
                "Refresh",
                variant="outline",
                color_scheme="red",
                on_click=BillingState.refresh,
            ),
            width="100%",
            align="center",
            gap="3",
        ),
        color_scheme="red",
        width="100%",
        data_testid="error-alert",
    )


def history_table() -> rx.Component:
    return rx.card(
        rx.vstack(
            controls(),
            rx.cond(
                BillingState.total == 0,
                empty_state(),
                rx.vstack(
                    rx.box(
                        rx.table.root(
                            rx.table.header(
                                rx.table.row(
                                    rx.table.column_header_cell("Date & Time (UTC)"),
                                    rx.table.column_header_cell("Type"),
                                    rx.table.column_header_cell("Description"),
                                    rx.table.column_header_cell("Amount", text_align="right"),
                                    rx.table.column_header_cell("Balance", text_align="right"),
                                )
                            ),
                            rx.table.body(rx.foreach(BillingState.rows, history_row)),
                            variant="ghost",
                            size="2",
                            width="100%",
                            min_width="760px",
                            data_testid="history-table",
                        ),
                        overflow_x="auto",
                        width="100%",
                        max_width="100%",
                    ),
                    rx.flex(
                        rx.text(BillingState.range_text, size="2", color_scheme="gray", data_testid="pagination-total"),
                        rx.spacer(),
                        pagination(
                            page=BillingState.page,
                            total_pages=BillingState.total_pages,
                            labels=BillingState.page_labels,
                            on_prev=BillingState.previous_page,
                            on_next=BillingState.next_page,
                            on_page=BillingState.go_to_page,
                        ),
                        direction=rx.breakpoints(initial="column", sm="row"),
                        gap="3",
                        width="100%",
                        align=rx.breakpoints(initial="start", sm="center"),
                    ),
                    width="100%",
                    spacing="3",
                ),
            ),
            spacing="4",
            width="100%",
        ),
        width="100%",
        max_width="100%",
        overflow="hidden",
        size=rx.breakpoints(initial="2", sm="3"),
    )


def usage_chart() -> rx.Component:
    return rx.card(
        rx.vstack(
            rx.hstack(
                rx.heading("Usage by category", size="4"),
                rx.spacer(),
                rx.text("Last 30 days: ", rx.text.strong(BillingState.spend_total), size="2", color_scheme="gray"),
                width="100%",
                align="center",
            ),
            rx.cond(
                BillingState.spend.length() > 0,
                rx.flex(
                    rx.box(
                        rx.recharts.bar_chart(
                            rx.recharts.bar(
                                data_key="value",
                                fill="#8b5cf6",
                                radius=[6, 6, 0, 0],
                                name="Spend ($)",
                                # a live update redraws at once: no replayed animation
                                # in every open tab on every posting
                                is_animation_active=False,
                            ),
                            rx.recharts.x_axis(data_key="category", tick_line=False, font_size=12),
                            rx.recharts.y_axis(width=48, font_size=12),
                            rx.recharts.cartesian_grid(stroke_dasharray="3 3", vertical=False),
                            rx.recharts.graphing_tooltip(),
                            data=BillingState.spend,
                            height=220,
                            width="100%",
                        ),
                        flex="2",
                        min_width="260px",
                        width="100%",
                    ),
                    rx.vstack(
                        rx.foreach(
                            BillingState.spend,
                            lambda r: rx.hstack(
                                rx.text(r["category"], size="2"),
                                rx.spacer(),
                                rx.text(r["amount"], size="2", font_family="var(--code-font-family)"),
                                rx.text(r["count"], size="1", color_scheme="gray"),
                                width="100%",
                                data_testid="usage-category",
                            ),
                        ),
                        flex="1",
                        min_width="220px",
                        spacing="1",
                    ),
                    gap="5",
                    width="100%",
                    wrap="wrap",
                ),
                rx.text("No usage in the last 30 days.", color_scheme="gray", size="2"),
            ),
            spacing="3",
            width="100%",
        ),
        width="100%",
        size="3",
        data_testid="usage-chart",
    )


def _detail(label: str, value) -> rx.Component:
    return rx.cond(
        value != "",
        rx.hstack(
            rx.text(label, size="2", color_scheme="gray", min_width="130px"), rx.text(value, size="2"), width="100%"
        ),
    )


def session_panel() -> rx.Component:
    s = BillingState.panel_session
    r = BillingState.panel_row
    return rx.dialog.root(
        rx.dialog.content(
            rx.vstack(
                rx.hstack(
                    rx.dialog.title(rx.cond(s.contains("id"), "Billing session", "Transaction"), margin="0"),
                    rx.spacer(),
                    rx.dialog.close(rx.icon_button(rx.icon("x"), variant="ghost", color_scheme="gray")),
                    width="100%",
                    align="center",
                ),
                rx.text(r["description"], weight="medium"),
                _detail("Amount", r["amount"]),
                _detail("Date & Time", r["when"]),
                rx.cond(
                    s.contains("id"),
                    rx.vstack(
                        rx.divider(),
                        _detail("Session ID", s["id"]),
                        _detail("Agent", s["agent"]),
                        _detail("Agent ID", s["agent_id"]),
                        _detail("Architecture", s["architecture"]),
                        _detail("Duration", s["duration"]),
                        _detail("Started", s["started"]),
                        _detail("Ended", s["ended"]),
                        _detail("Billed", s["billed"]),
                        rx.heading("Cost breakdown", size="3", padding_top="2"),
                        _detail("Base", s["base"]),
                        _detail("Model / LLM", s["llm"]),
                        _detail("Speech-to-text", s["stt"]),
                        _detail("Text-to-speech", s["tts"]),
                        rx.hstack(
                            rx.text("Total", weight="bold", min_width="130px"),
                            rx.text(s["total"], weight="bold"),
                            width="100%",
                        ),
                        rx.cond(
                            s["recording"] != "",
                            rx.vstack(
                                rx.heading("Recording", size="3", padding_top="2"),
                                rx.audio(src=s["recording"], controls=True, width="100%", height="40px"),
                                width="100%",
                            ),
                        ),
                        rx.cond(
                            s["transcript"] != "",
                            rx.vstack(
                                rx.heading("Transcript", size="3", padding_top="2"),
                                rx.box(
                                    rx.text(s["transcript"], size="2", white_space="pre-wrap"),
                                    background="var(--gray-2)",
                                    padding="3",
                                    border_radius="8px",
                                    width="100%",
                                    max_height="220px",
                                    overflow_y="auto",
                                ),
                                width="100%",
                            ),
                        ),
                        rx.cond(
                            s["analysis"] != "",
                            rx.vstack(
                                rx.heading("Post-call analysis", size="3", padding_top="2"),
                                rx.text(s["analysis"], size="2", white_space="pre-wrap"),
                                width="100%",
                            ),
                        ),
                        width="100%",
                        spacing="2",
                    ),
                    rx.text(
                        rx.cond(r["type"] == "usage", "No session details were reported for this charge.", ""),
                        size="2",
                        color_scheme="gray",
                    ),
                ),
                spacing="3",
                width="100%",
            ),
            max_width="520px",
            data_testid="session-panel",
        ),
        open=BillingState.panel_open,
        on_open_change=BillingState.set_panel_open,
    )


def package_card(p) -> rx.Component:
    return rx.card(
        rx.vstack(
            rx.text(p["price"], size="6", weight="bold"),
            rx.text(p["credits"], size="2", color_scheme="gray"),
            rx.cond(
                p["bonus"] != "", rx.badge(p["bonus"], color_scheme="green", variant="soft"), rx.box(height="20px")
            ),
            rx.button(
                "Checkout",
                width="100%",
                color_scheme="purple",
                on_click=BillingState.checkout_package(p["id"]),
                loading=BillingState.buying,
                data_testid="checkout-" + p["id"].to(str),
            ),
            rx.cond(
                (BillingState.cards.length() > 0) & (BillingState.provider == "stripe"),
                rx.button(
                    "Pay now with ",
                    BillingState.cards[0]["label"],
                    width="100%",
                    variant="soft",
                    color_scheme="green",
                    on_click=BillingState.quick_purchase(p["id"]),
                    loading=BillingState.buying,
                    data_testid="quick-" + p["id"].to(str),
                ),
            ),
            spacing="2",
            width="100%",
        ),
    )


def add_credits_dialog() -> rx.Component:
    return rx.dialog.root(
        rx.dialog.content(
            rx.dialog.title("Add Credits"),
            rx.dialog.description("1 credit = $1.00. Larger packages come with bonus credits.", size="2"),
            rx.cond(
                BillingState.providers.length() > 1,
                rx.hstack(
                    rx.text("Pay with", size="2", color_scheme="gray"),
                    rx.segmented_control.root(
                        rx.segmented_control.item("Card (Stripe)", value="stripe"),
                        rx.segmented_control.item("Lemon Squeezy", value="lemonsqueezy"),
                        value=BillingState.provider,
                        on_change=BillingState.set_provider,
                        data_testid="provider-choice",
                    ),
                    align="center",
                    padding_top="3",
                ),
            ),
            rx.grid(
                rx.foreach(BillingState.packages, package_card),
                columns=rx.breakpoints(initial="1", sm="2"),
                spacing="3",
                padding_y="3",
            ),
            rx.text(f"Custom amount (${CUSTOM_MIN:,.0f} to ${CUSTOM_MAX:,.0f})", size="2", weight="medium"),
            rx.hstack(
                rx.input(
                    placeholder="25.00",
                    value=BillingState.custom_amount,
                    on_change=BillingState.set_custom_amount,
                    type="text",
                    input_mode="decimal",
                    width="100%",
                    data_testid="custom-amount",
                ),
                rx.button(
                    "Checkout",
                    on_click=BillingState.checkout_custom,
                    loading=BillingState.buying,
                    data_testid="custom-checkout",
                ),
                rx.cond(
                    (BillingState.cards.length() > 0) & (BillingState.provider == "stripe"),
                    rx.button(
                        "Pay now",
                        variant="soft",
                        color_scheme="green",
                        loading=BillingState.buying,
                        on_click=BillingState.quick_purchase(""),
                        data_testid="custom-quick",
                    ),
                ),
                width="100%",
            ),
            rx.cond(
                BillingState.purchase_error != "",
                rx.callout(
                    BillingState.purchase_error,
                    icon="circle-alert",
                    color_scheme="red",
                    size="1",
                    margin_top="2",
                    data_testid="purchase-error",
                ),
            ),
            rx.divider(margin_y="3"),
            rx.hstack(
                rx.text("Saved cards", size="2", weight="medium"),
                rx.spacer(),
                rx.button(
                    rx.icon("credit-card", size=14),
                    "Save a card",
                    size="1",
                    variant="soft",
                    on_click=BillingState.save_card,
                    data_testid="save-card-button",
                ),
                width="100%",
            ),
            rx.foreach(
                BillingState.cards,
                lambda c: rx.hstack(
                    rx.icon("credit-card", size=16),
                    rx.text(c["label"], size="2"),
                    rx.text(c["expiry"], size="1", color_scheme="gray"),
                    rx.cond(c["default"] == "1", rx.badge("default", size="1")),
                    rx.spacer(),
                    rx.icon_button(
                        rx.icon("trash-2", size=14),
                        size="1",
                        variant="ghost",
                        color_scheme="red",
                        on_click=BillingState.remove_card(c["id"]),
                        data_testid="remove-card",
                    ),
                    width="100%",
                    align="center",
                    padding_top="2",
                    data_testid="saved-card",
                ),
            ),
            rx.text(
                "Payments are processed by Stripe or Lemon Squeezy; card numbers never reach OrcaPulse.",
                size="1",
                color_scheme="gray",
                margin_top="3",
            ),
            rx.flex(
                rx.dialog.close(rx.button("Close", variant="soft", color_scheme="gray")), justify="end", margin_top="3"
            ),
            max_width="620px",
            data_testid="add-credits-dialog",
        ),
        open=BillingState.add_credits_open,
        on_open_change=BillingState.set_add_credits_open,
    )


def auto_recharge_panel() -> rx.Component:
    def field(label: str, name: str, value, placeholder: str) -> rx.Component:
        return rx.vstack(
            rx.text(label, size="1", color_scheme="gray"),
            rx.input(
                value=value,
                on_change=lambda v: BillingState.set_auto_field(name, v),
                placeholder=placeholder,
                input_mode="decimal",
                disabled=~BillingState.is_owner,
                width="120px",
                data_testid=f"auto-{name.split('_')[1]}",
            ),
            spacing="1",
        )

    return rx.card(
        rx.flex(
            rx.vstack(
                rx.hstack(rx.icon("refresh-ccw-dot", size=18), rx.heading("Auto-recharge", size="4"), align="center"),
                rx.text(
                    "Buy credits with your saved card when the balance drops below a threshold.",
                    size="2",
                    color_scheme="gray",
                ),
                rx.cond(
                    BillingState.auto_note != "",
                    rx.callout(
                        BillingState.auto_note,
                        icon="circle-alert",
                        color_scheme="red",
                        size="1",
                        data_testid="auto-disabled-note",
                    ),
                ),
                spacing="1",
            ),
            rx.spacer(),
            rx.hstack(
                rx.vstack(
                    rx.text("On", size="1", color_scheme="gray"),
                    rx.switch(
                        checked=BillingState.auto_enabled,
                        on_change=BillingState.set_auto_enabled,
                        disabled=~BillingState.is_owner,
                        data_testid="auto-enabled",
                    ),
                    spacing="2",
                ),
                field("Below (credits)", "auto_threshold", BillingState.auto_threshold, "10.00"),
                field("Add ($)", "auto_amount", BillingState.auto_amount, "50.00"),
                field("Monthly cap ($)", "auto_cap", BillingState.auto_cap, "none"),
                rx.cond(
                    BillingState.is_owner,
                    rx.button("Save", on_click=BillingState.save_auto_recharge, data_testid="auto-save"),
                ),
                align="end",
                spacing="3",
                wrap="wrap",
            ),
            gap="4",
            width="100%",
            direction=rx.breakpoints(initial="column", md="row"),
        ),
        rx.cond(
            BillingState.auto_error != "",
            rx.text(BillingState.auto_error, color_scheme="red", size="2", data_testid="auto-error", padding_top="2"),
        ),
        width="100%",
        data_testid="auto-recharge-panel",
    )


def waiting_banner() -> rx.Component:
    return rx.cond(
        BillingState.waiting,
        rx.callout.root(
            rx.callout.icon(rx.spinner(size="2")),
            rx.flex(
                rx.vstack(
                    rx.text("Waiting for payment confirmation…", weight="bold"),
                    rx.cond(
                        BillingState.popup_blocked,
                        rx.text(
                            "Your browser blocked the checkout window. ",
                            rx.link(
                                "Open the checkout",
                                href=BillingState.checkout_url,
                                is_external=True,
                                data_testid="checkout-link",
                            ),
                            size="2",
                        ),
                        rx.text(
                            "Complete the payment in the checkout window; credits appear as soon as the "
                            "payment provider confirms it.",
                            size="2",
                        ),
                    ),
                    spacing="1",
                ),
                rx.spacer(),
                rx.button("Stop waiting", variant="ghost", size="1", on_click=BillingState.cancel_waiting),
                width="100%",
                align="center",
                gap="3",
            ),
            color_scheme="purple",
            width="100%",
            data_testid="waiting-banner",
        ),
    )


@rx.page(route="/billing", title="Billing & Credits · OrcaPulse", on_load=BillingState.load)
def billing() -> rx.Component:
    return page_frame(
        rx.el.style(
            "@keyframes spin{to{transform:rotate(360deg)}}.animate-spin{animation:spin 1s linear infinite}"
            "@keyframes pulse{50%{opacity:.45}}.animate-pulse{animation:pulse 1.6s ease-in-out infinite}"
            ".pulse-ring{box-shadow:0 0 0 0 rgba(22,163,74,.6);animation:ring 1.8s infinite}"
            "@keyframes ring{70%{box-shadow:0 0 0 10px rgba(22,163,74,0)}100%{box-shadow:0 0 0 0 rgba(22,163,74,0)}}"
        ),
        *(
            [rx.script(src=get_settings().lemonsqueezy_js_url)]
            if "lemonsqueezy" in get_settings().payment_providers
            else []
        ),
        header(),
        rx.cond(
            BillingState.loaded,
            rx.cond(
                BillingState.load_failed,
                error_state(),
                rx.vstack(
                    waiting_banner(),
                    low_balance_banner(),
                    stats(),
                    usage_chart(),
                    history_table(),
                    auto_recharge_panel(),
                    width="100%",
                    spacing="5",
                ),
            ),
            skeleton(),
        ),
        session_panel(),
        add_credits_dialog(),
        rx.moment(interval=30_000, on_change=BillingState.heartbeat, display="none"),
    )


@rx.page(route="/", title="OrcaPulse Billing", on_load=rx.redirect("/billing"))
def index() -> rx.Component:
    return rx.center(rx.spinner(), min_height="50vh")
