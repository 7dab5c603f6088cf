"""Wiring: the process's engine and ledger, built from configuration. Faces (CLI, REST, Reflex,
jobs) take their collaborators from here instead of constructing them."""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy.engine import Engine

from .config import get_settings
from .db import get_engine
from .ledger import Ledger


@lru_cache(maxsize=8)
def _ledger_for(engine: Engine) -> Ledger:
    return Ledger(engine, grace_limit=get_settings().grace_limit)


def get_ledger(engine: Engine | None = None) -> Ledger:
    return _ledger_for(engine or get_engine())


def get_stripe_purchases(engine: Engine | None = None):
    """The Stripe purchase flow, or PaymentError('payments_unavailable') when Stripe is not configured."""
    from .payments.purchases import StripePurchases
    from .payments.stripe_gateway import StripeGateway

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
