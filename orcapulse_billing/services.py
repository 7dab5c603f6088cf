"""Wiring: the process's engine and ledger, built from configuration. Faces (CLI, REST, Reflex,
jobs) take their collaborators from here instead of constructing them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import lru_cache

from sqlalchemy.engine import Engine

from .config import get_settings
from .db import get_engine
from .events import EventBus
from .ledger import Ledger, PostedEntry, get_account
from .money import fmt4
from .notifications import Notifier


@lru_cache(maxsize=1)
def get_event_bus() -> EventBus:
    settings = get_settings()
    return EventBus(settings.redis_url, settings=settings)  # its Redis client has timeouts (redis_client.py)


@lru_cache(maxsize=8)
def _ledger_for(engine: Engine) -> Ledger:
    ledger = Ledger(engine, grace_limit=get_settings().grace_limit)
    ledger.add_listener(_publisher(engine))
    for listener in notification_listeners(engine, get_notifier(engine)):
        ledger.add_listener(listener)
    # a recharge calls the card network: never on the thread of the posting that triggered it
    ledger.add_listener(
        lambda entries: (
            run_in_background(get_auto_recharger(engine).on_postings, entries)
            if get_auto_recharger(engine).wants(entries)
            else None
        )
    )
    return ledger


def notification_listeners(engine: Engine, notifier: Notifier) -> list[Callable[[list[PostedEntry]], None]]:
    """The ledger listeners for what committed postings send: the low-balance crossings' emails and
    webhooks, and the purchase and refund emails with their documents."""
    return [low_balance_listener(engine, notifier), notifier.on_documents]


def low_balance_listener(engine: Engine, notifier: Notifier | None = None):
    """Ledger listener for the crossings of the low-balance threshold (low_balance.crossings), computed once
    per commit for both what is sent for them: the owners' emails (`notifier`, when given) and the
    balance.low and balance.recovered webhooks. One failing does not keep the other from being written."""
    from .low_balance import crossings
    from .money import to_units

    write = _crossing_writer(engine, notifier)

    def listen(entries) -> None:
        with engine.connect() as conn:
            crossed = crossings(conn, entries, to_units(get_settings().low_balance_threshold))
        if crossed:
            write(crossed)

    return listen


def _crossing_writer(engine: Engine, notifier: Notifier | None):
    """Writes the notices of crossings: the webhooks, then the emails even when the webhooks failed."""
    from . import webhooks

    def write(crossed) -> None:
        try:
            webhooks.on_crossings(engine, crossed)
        finally:
            if notifier is not None:
                notifier.on_crossings(crossed)

    return write


def sweep_notices(engine: Engine):
    """One round of the notice sweep (notice_sweep.py) with the app's emails and webhooks: what the
    listeners above should have written for committed postings and did not."""
    from .money import to_units
    from .notice_sweep import sweep_notices as sweep

    notifier = get_notifier(engine)
    threshold = to_units(get_settings().low_balance_threshold)
    return sweep(engine, threshold, _crossing_writer(engine, notifier), notifier.on_documents)


def run_in_background(fn, *args) -> None:
    threading.Thread(target=fn, args=args, name="auto-recharge", daemon=True).start()


@lru_cache(maxsize=8)
def get_auto_recharger(engine: Engine):
    from .payments.auto_recharge import AutoRecharger

    # its changes that post nothing (a decline's backoff, a pause) reach the open pages through the bus
    return AutoRecharger(
        engine, lambda: get_stripe_purchases(engine), get_notifier(engine), announce=get_event_bus().publish
    )


@lru_cache(maxsize=8)
def get_notifier(engine: Engine) -> Notifier:
    return Notifier(engine, get_settings())


def _publisher(engine: Engine):
    """Announces committed postings on the event bus, by organization."""
    organizations: dict[int, int] = {}  # account -> organization never changes

    def publish(entries) -> None:
        events = []
        try:
            for entry in entries:
                if entry.account_id not in organizations:
                    with engine.connect() as conn:
                        organizations[entry.account_id] = get_account(conn, account_id=entry.account_id).organization_id
                events.append(
                    {
                        "organization_id": organizations[entry.account_id],
                        "entry_id": entry.id,
                        "seq": entry.seq,  # the account's entry count after it: a tab shows no older balance
                        "type": entry.type,
                        "amount": fmt4(entry.amount_units),
                        "balance": fmt4(entry.balance_after_units),
                        # lets the tab whose own flow made a purchase announce it once (pages/billing/live.py)
                        "key": entry.metadata.get("purchaseKey") or entry.idempotency_key,
                    }
                )
        finally:  # all at once (a batch brings a thousand), those before a failed look-up too
            get_event_bus().publish_many(events)

    return publish


def get_ledger(engine: Engine | None = None) -> Ledger:
    return _ledger_for(engine or get_engine())


def get_stripe_purchases(engine: Engine | None = None):
    """The Stripe purchase flow, or PaymentError('payments_unavailable') when Stripe is not configured."""
    from .payments.stripe_gateway import StripeGateway
    from .payments.stripe_purchases import StripePurchases

    engine = engine or get_engine()
    settings = get_settings()
    return StripePurchases(engine, get_ledger(engine), StripeGateway(settings), settings)


def get_lemon_purchases(engine: Engine | None = None):
    """The Lemon Squeezy purchase flow, or PaymentError('payments_unavailable') when not configured."""
    from .payments.lemon_purchases import LemonPurchases
    from .payments.lemonsqueezy_gateway import LemonSqueezyGateway

    engine = engine or get_engine()
    settings = get_settings()
    return LemonPurchases(engine, get_ledger(engine), LemonSqueezyGateway(settings), settings)
