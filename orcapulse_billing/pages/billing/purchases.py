"""Purchases: BillingState's buying part (a mixin): the Add Credits dialog (Stripe Checkout in a
popup or the Lemon Squeezy overlay, then waiting for the signed webhook; quick purchase with the
saved card; saving and removing cards). Owners only: every handler
re-checks the role on the server. Each records the browser's IP address where the REST routes
record the request's (checkout, quick purchase, card removal)."""

from __future__ import annotations

import asyncio
import json
import uuid
from urllib.parse import urlsplit

import reflex as rx

from ...auth import Principal
from ...config import get_settings
from ...money import fmt_balance, to_units
from ...payments.flow import PurchaseError, choose, return_urls
from ...payments.stripe_gateway import PaymentError
from ...pricing import PACKAGES
from ...services import get_lemon_purchases, get_stripe_purchases

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


class Purchases(rx.State, mixin=True):
    """Relies on SessionState (_current_principal, _client_ip, is_owner), BillingPage (_reload) and
    LiveUpdates (_own_toast), with which BillingState composes it."""

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
    _quick_keys: dict[str, str] = {}  # purchase intent -> its idempotency key, until it ends
    _checkout_mode: str = ""
    _checkout_provider: str = ""
    _checkout_credits: str = ""  # what the checkout adds, bonus included: "$525.00"
    providers: list[str] = []
    provider: str = "stripe"

    def _owner(self) -> Principal | None:
        principal = self._current_principal()
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
            created = await asyncio.to_thread(
                _start_checkout, principal, choice, provider, page_origin, self._client_ip()
            )
        except (PurchaseError, PaymentError) as exc:
            self.buying = False
            self.purchase_error = exc.message
            return
        self.buying, self.add_credits_open = False, False
        self.waiting, self.popup_blocked = True, False
        self.checkout_url, self._checkout_session = created["url"], created["session_id"]
        self._checkout_mode = "setup" if setup else "payment"
        self._checkout_provider = provider
        if choice is not None:  # its credits are announced by watch_checkout, not by the live update
            self._own_toast(f"{provider}:{created['session_id']}")
            self._checkout_credits = fmt_balance(to_units(choice.credits + choice.bonus))
        opener = _OPEN_OVERLAY if provider == "lemonsqueezy" else _OPEN_POPUP
        state = type(self)  # BillingState: the composed class, which this mixin cannot import
        yield rx.call_script(opener.replace("URL", json.dumps(created["url"])), callback=state.popup_opened)
        yield state.watch_checkout

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
            principal = self._current_principal()
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
                        f"Credits added successfully! +{self._checkout_credits}"
                        if self._checkout_mode == "payment"
                        else "Card saved"
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
        if self.buying:
            return  # a second click while the first runs: the button is disabled, and so is this
        try:
            choice = choose(get_settings(), package_id or None, self.custom_amount if not package_id else None)
            # One key per purchase intent: a retry after an error or a timeout reuses it, so the card is
            # charged at most once; a new key only after the purchase ended (credited or declined).
            intent = f"{choice.package_id or 'custom'}:{choice.price}"
            request_key = self._quick_keys.get(intent) or uuid.uuid4().hex
            self._quick_keys = {intent: request_key}
            self._own_toast(f"quick-{principal.organization_id}-{request_key}")  # announced below, not live
            self.buying = True
            yield
            await asyncio.to_thread(_quick_purchase, principal, choice, request_key, self._client_ip())
        except PaymentError as exc:
            self.buying = False
            if exc.code == "payment_pending":
                self.purchase_error = (
                    "Payment being confirmed: the credits appear as soon as the card network confirms it."
                )
                await self._reload()
                return
            self._quick_keys = {}
            self.purchase_error = exc.message
            return
        except PurchaseError as exc:
            self.buying = False
            self.purchase_error = exc.message
            return
        self._quick_keys = {}
        self.buying, self.add_credits_open = False, False
        await self._reload()
        yield rx.toast.success(f"Credits added successfully! +{fmt_balance(to_units(choice.credits + choice.bonus))}")

    @rx.event
    async def remove_card(self, card_id: str):
        principal = self._owner()
        if principal is None:
            yield rx.toast.error("Only owners can manage saved cards.")
            return
        try:
            await asyncio.to_thread(_remove_card, principal, card_id, self._client_ip())
        except (PurchaseError, PaymentError) as exc:
            yield rx.toast.error(exc.message)
            return
        self.cards = await asyncio.to_thread(_card_rows, principal.organization_id)
        yield rx.toast.success("Card removed")


# -- the provider calls, in a worker thread ------------------------------------------------------


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


def _start_checkout(principal: Principal, choice, provider: str, page_origin: str, ip: str | None) -> dict:
    if provider == "lemonsqueezy":
        redirect = (page_origin or get_settings().app_url).rstrip("/") + "/billing"
        return get_lemon_purchases().start_checkout(principal, choice, ip=ip, redirect_url=redirect)
    # the popup lands on the backend's own return page, which closes the window
    success, cancel = return_urls(rx.config.get_config().api_url)
    return get_stripe_purchases().start_checkout(
        principal, choice, ip=ip, success_url=success, cancel_url=cancel, request_key=uuid.uuid4().hex
    )


def _checkout_status(organization_id: int, provider: str, session_id: str) -> str | None:
    purchases = get_lemon_purchases() if provider == "lemonsqueezy" else get_stripe_purchases()
    return purchases.checkout_status(organization_id, session_id)


def _quick_purchase(principal: Principal, choice, request_key: str, ip: str | None) -> None:
    get_stripe_purchases().quick_purchase(principal, choice, payment_method_id=None, request_key=request_key, ip=ip)


def _remove_card(principal: Principal, card_id: str, ip: str | None) -> None:
    get_stripe_purchases().remove_card(principal.organization_id, card_id, user_id=principal.user_id, ip=ip)
