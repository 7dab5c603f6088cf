"""Configuration from environment variables (documented in README.md and .env.example).

Plain Python, no framework: the ledger, jobs, CLI, REST routes and Reflex states all read the same
`Settings`. Money settings are Decimals parsed strictly; a bad value stops start-up with a clear error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

from .money import MoneyError, parse_amount

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(RuntimeError):
    pass


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _money(name: str, default: str) -> Decimal:
    raw = _env(name, default)
    try:
        value = parse_amount(raw)
    except MoneyError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative")
    return value


def _list(name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in (_env(name, "") or "").split(",") if part.strip())


def _int(name: str, default: int) -> int:
    try:
        return int(_env(name, str(default)))
    except ValueError:
        raise ConfigError(f"{name} must be an integer") from None


def _flag(name: str, default: bool) -> bool:
    return (_env(name, "true" if default else "false") or "").lower() in ("1", "true", "yes", "on")


def _providers(names: tuple[str, ...]) -> tuple[str, ...]:
    unknown = set(names) - {"stripe", "lemonsqueezy"}
    if unknown:
        raise ConfigError(f"PAYMENT_PROVIDERS: unknown provider(s) {', '.join(sorted(unknown))}")
    return names


def _bonuses(raw: str) -> dict[str, Decimal]:
    """'pkg_200:2,pkg_500:5' -> {'pkg_200': Decimal('2'), ...} (percent of the package's credits)."""
    result = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        package, _, percent = part.partition(":")
        try:
            value = parse_amount(percent)
        except MoneyError:
            raise ConfigError(f"PACKAGE_BONUS_PERCENT: bad percent in {part!r}") from None
        if not package or value < 0 or value > 100:
            raise ConfigError(f"PACKAGE_BONUS_PERCENT: bad entry {part!r}")
        result[package.strip()] = value
    return result


def default_data_dir() -> Path:
    return Path(_env("ORCAPULSE_DATA_DIR", str(PROJECT_ROOT / "data")))


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str | None
    app_url: str
    low_balance_threshold: Decimal
    grace_limit: Decimal
    markup_percent: Decimal
    welcome_credit: Decimal
    stripe_secret_key: str | None
    stripe_publishable_key: str | None
    stripe_api_base: str | None
    stripe_webhook_secrets: tuple[str, ...]
    lemonsqueezy_api_key: str | None
    lemonsqueezy_api_base: str
    lemonsqueezy_store_id: str | None
    lemonsqueezy_variant_id: str | None
    lemonsqueezy_webhook_secret: str | None
    lemonsqueezy_js_url: str
    lemonsqueezy_test_mode: bool
    payment_providers: tuple[str, ...]
    smtp_host: str | None
    smtp_port: int
    smtp_user: str | None
    smtp_password: str | None
    smtp_from: str
    smtp_starttls: bool
    session_ttl_hours: int
    cookie_secure: bool
    package_bonus_percent: dict[str, Decimal]


def load_settings() -> Settings:
    data_dir = default_data_dir()
    smtp_port = _int("SMTP_PORT", 587)
    return Settings(
        database_url=_env("DATABASE_URL", f"sqlite:///{data_dir / 'orcapulse.db'}"),
        redis_url=_env("REDIS_URL"),
        app_url=_env("APP_URL", "http://localhost:3000"),
        low_balance_threshold=_money("LOW_BALANCE_THRESHOLD", "5.00"),
        grace_limit=_money("GRACE_LIMIT", "5.00"),
        markup_percent=_money("MARKUP_PERCENT", "20"),
        welcome_credit=_money("WELCOME_CREDIT", "5.00"),
        stripe_secret_key=_env("STRIPE_SECRET_KEY"),
        stripe_publishable_key=_env("STRIPE_PUBLISHABLE_KEY"),
        stripe_api_base=_env("STRIPE_API_BASE"),
        stripe_webhook_secrets=_list("STRIPE_WEBHOOK_SECRETS"),
        lemonsqueezy_api_key=_env("LEMONSQUEEZY_API_KEY"),
        lemonsqueezy_api_base=_env("LEMONSQUEEZY_API_BASE", "https://api.lemonsqueezy.com/v1"),
        lemonsqueezy_store_id=_env("LEMONSQUEEZY_STORE_ID"),
        lemonsqueezy_variant_id=_env("LEMONSQUEEZY_VARIANT_ID"),
        lemonsqueezy_webhook_secret=_env("LEMONSQUEEZY_WEBHOOK_SECRET"),
        lemonsqueezy_js_url=_env("LEMONSQUEEZY_JS_URL", "https://app.lemonsqueezy.com/js/lemon.js"),
        lemonsqueezy_test_mode=_flag("LEMONSQUEEZY_TEST_MODE", True),
        payment_providers=_providers(_list("PAYMENT_PROVIDERS") or ("stripe", "lemonsqueezy")),
        smtp_host=_env("SMTP_HOST"),
        smtp_port=smtp_port,
        smtp_user=_env("SMTP_USER"),
        smtp_password=_env("SMTP_PASSWORD"),
        smtp_from=_env("SMTP_FROM", "billing@orcapulse.local"),
        smtp_starttls=_flag("SMTP_STARTTLS", True),
        session_ttl_hours=_int("SESSION_TTL_HOURS", 168),
        package_bonus_percent=_bonuses(_env("PACKAGE_BONUS_PERCENT", "pkg_50:0,pkg_200:2,pkg_500:5,pkg_1000:10")),
        cookie_secure=_flag("COOKIE_SECURE", False),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
