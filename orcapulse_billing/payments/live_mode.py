"""Test money never counts in production.

In production (`Settings.production`: ORCAPULSE_ENV=production, or an https APP_URL) a verified
provider event made in test mode is refused before anything is recorded, and Lemon Squeezy
checkouts are never created in test mode. Outside production test-mode events are accepted (the
sandboxes and provider test modes send nothing else). Framework-free: the webhook routes call
these right after checking the signature, with the verified event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..config import Settings

log = logging.getLogger("orcapulse_billing.payments.live_mode")

TEST_MODE_EVENT = "test_mode_event"


class TestModeEvent(Exception):
    """A test-mode provider event received in production: answer 4xx, record nothing."""

    __test__ = False  # not a pytest test class
    code = TEST_MODE_EVENT

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def check_stripe_event(settings: Settings, event: Mapping[str, Any]) -> None:
    """Raises TestModeEvent for a Stripe event that is not live (`livemode` must be true) in production."""
    if not settings.production or event.get("livemode") is True:
        return
    log.warning(
        "refused a test-mode Stripe event in production: id=%s type=%s livemode=%r",
        event.get("id"),
        event.get("type"),
        event.get("livemode"),
    )
    raise TestModeEvent("a Stripe test-mode event (livemode is not true) is refused in production")


def check_lemonsqueezy_event(settings: Settings, event: Mapping[str, Any]) -> None:
    """Raises TestModeEvent for a Lemon Squeezy event in production unless `meta.test_mode` is false
    (and `data.attributes.test_mode`, when present, is not true)."""
    if not settings.production:
        return
    meta = _mapping(event.get("meta"))
    data = _mapping(event.get("data"))
    attributes = _mapping(data.get("attributes"))
    if meta.get("test_mode") is False and not attributes.get("test_mode"):
        return
    log.warning(
        "refused a test-mode Lemon Squeezy event in production: event=%s %s id=%s meta.test_mode=%r "
        "data.attributes.test_mode=%r",
        meta.get("event_name"),
        data.get("type"),
        data.get("id"),
        meta.get("test_mode"),
        attributes.get("test_mode"),
    )
    raise TestModeEvent("a Lemon Squeezy test-mode event (meta.test_mode is not false) is refused in production")


def lemonsqueezy_checkout_test_mode(settings: Settings) -> bool:
    """`test_mode` for a new Lemon Squeezy checkout: as configured, and always false in production
    (where start-up also refuses LEMONSQUEEZY_TEST_MODE=true)."""
    return settings.lemonsqueezy_test_mode and not settings.production
