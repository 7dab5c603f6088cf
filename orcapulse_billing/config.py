"""Configuration from environment variables (documented in README.md and .env.example).

Plain Python, no framework: the ledger, jobs, CLI, REST routes and Reflex states all read the same
`Settings`. Money settings are Decimals parsed strictly; a bad value stops start-up with a clear error.
Standard library only (and money.py): scripts/run runs this module's check before the virtualenv exists.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

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


def _seconds(name: str, default: float) -> float:
    try:
        value = float(_env(name, str(default)) or default)  # ok: a timeout in seconds, not money
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds") from None
    if not 0 < value < 3600:
        raise ConfigError(f"{name} must be a positive number of seconds")
    return value


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


def origin_of(url: str) -> str | None:
    """The browser's form of a URL's origin: 'scheme://host[:port]', lower-case, without the default
    port; None when it is not an http(s) URL with a host (or its port is malformed)."""
    parsed = urlsplit(url.strip())
    scheme = parsed.scheme.lower()
    try:
        port = parsed.port
    except ValueError:
        return None
    if scheme not in ("http", "https") or not parsed.hostname:
        return None
    host = parsed.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" if port in (None, DEFAULT_PORTS[scheme]) else f"{scheme}://{host}:{port}"


DEFAULT_PORTS = {"http": 80, "https": 443}


def _origins(name: str) -> tuple[str, ...]:
    result = []
    for entry in _list(name):
        origin = origin_of(entry)
        if origin is None or urlsplit(entry).path not in ("", "/"):
            raise ConfigError(f"{name}: {entry!r} is not an origin (scheme://host[:port])")
        result.append(origin)
    return tuple(result)


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(name: str) -> tuple[IPNetwork, ...]:
    try:
        return tuple(ipaddress.ip_network(entry, strict=False) for entry in _list(name))
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _positive_int(name: str, default: int) -> int:
    value = _int(name, default)
    if value <= 0:
        raise ConfigError(f"{name} must be a positive integer")
    return value


ENVIRONMENTS = ("development", "production")


def _environment() -> str | None:
    value = (_env("ORCAPULSE_ENV") or "").strip().lower()
    if value and value not in ENVIRONMENTS:
        raise ConfigError(f"ORCAPULSE_ENV must be development or production, not {value!r}")
    return value or None


def _is_production(environment: str | None, app_url: str) -> bool:
    """ORCAPULSE_ENV decides when set; unset, an https APP_URL means production."""
    if environment is not None:
        return environment == "production"
    return app_url.strip().lower().startswith("https://")


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
    environment: str | None = None  # ORCAPULSE_ENV as set (None: decided by APP_URL)
    operator_email: str = "billing-operator@localhost"  # money that needs a person (attention list)
    stripe_timeout_seconds: int = 30  # an answer that never comes is a payment "being confirmed"
    stripe_network_retries: int = 2  # with the same idempotency key: never a second charge
    # Every Redis client (events, job locks, rate limits, Reflex's state manager): a Redis that
    # accepts connections but never answers costs a caller seconds, never forever (redis_client.py)
    redis_connect_timeout: float = 1.0  # REDIS_CONNECT_TIMEOUT, seconds
    redis_socket_timeout: float = 1.0  # REDIS_SOCKET_TIMEOUT, seconds
    # Who may call, from where, with what (README "Security"): the page's origins besides APP_URL's
    # (REST CORS, the Reflex socket, cookie-authenticated writes), the proxies whose X-Forwarded-For
    # names the client, and the largest request body. COOKIE_SECURE (above) defaults to on for https.
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[IPNetwork, ...] = ()
    max_body_bytes: int = 1024 * 1024
    hold_ttl_seconds: int = 900  # HOLD_TTL_SECONDS: an active hold not captured or released by then expires
    # SWEEP_INTERVAL_SECONDS: how often the safety nets run, once per deployment: the auto-recharge sweep,
    # the reconcile round (which also runs at start-up) and the notice sweep
    sweep_interval_seconds: int = 300
    # WEBHOOK_RETENTION_DAYS: outbound webhook messages that are done are deleted, with their attempts, this
    # many days after they finished (webhooks/retention.py)
    webhook_retention_days: int = 30

    @property
    def production(self) -> bool:
        """Real money only: no sandbox, no test keys, no test-mode events (see check_production)."""
        return _is_production(self.environment, self.app_url)

    @property
    def mode_reason(self) -> str:
        if self.environment is not None:
            return f"ORCAPULSE_ENV={self.environment}"
        return "APP_URL is https" if self.production else "ORCAPULSE_ENV unset, APP_URL not https"


def load_settings() -> Settings:
    data_dir = default_data_dir()
    smtp_port = _int("SMTP_PORT", 587)
    environment = _environment()
    app_url = _env("APP_URL", "http://localhost:3000") or ""
    return Settings(
        database_url=_env("DATABASE_URL", f"sqlite:///{data_dir / 'orcapulse.db'}"),
        redis_url=_env("REDIS_URL"),
        app_url=app_url,
        environment=environment,
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
        # test-mode checkouts by default, except in production (where an explicit true refuses start-up)
        lemonsqueezy_test_mode=_flag("LEMONSQUEEZY_TEST_MODE", not _is_production(environment, app_url)),
        payment_providers=_providers(_list("PAYMENT_PROVIDERS") or ("stripe", "lemonsqueezy")),
        smtp_host=_env("SMTP_HOST"),
        smtp_port=smtp_port,
        smtp_user=_env("SMTP_USER"),
        smtp_password=_env("SMTP_PASSWORD"),
        smtp_from=_env("SMTP_FROM", "billing@orcapulse.local"),
        smtp_starttls=_flag("SMTP_STARTTLS", True),
        session_ttl_hours=_int("SESSION_TTL_HOURS", 168),
        package_bonus_percent=_bonuses(_env("PACKAGE_BONUS_PERCENT", "pkg_50:0,pkg_200:2,pkg_500:5,pkg_1000:10")),
        operator_email=_env("OPERATOR_EMAIL", "billing-operator@localhost") or "billing-operator@localhost",
        stripe_timeout_seconds=_int("STRIPE_TIMEOUT_SECONDS", 30),
        stripe_network_retries=_int("STRIPE_NETWORK_RETRIES", 2),
        redis_connect_timeout=_seconds("REDIS_CONNECT_TIMEOUT", 1.0),
        redis_socket_timeout=_seconds("REDIS_SOCKET_TIMEOUT", 1.0),
        # who may call, from where, with what (README "Security")
        allowed_origins=_origins("ALLOWED_ORIGINS"),
        trusted_proxies=_networks("TRUSTED_PROXIES"),
        max_body_bytes=_positive_int("MAX_BODY_BYTES", 1024 * 1024),
        hold_ttl_seconds=_positive_int("HOLD_TTL_SECONDS", 900),
        sweep_interval_seconds=_positive_int("SWEEP_INTERVAL_SECONDS", 300),
        webhook_retention_days=_positive_int("WEBHOOK_RETENTION_DAYS", 30),
        cookie_secure=_flag("COOKIE_SECURE", app_url.strip().lower().startswith("https://")),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


# -- production guard ----------------------------------------------------------------------------

STRIPE_LIVE_KEY_PREFIXES = ("sk_live_", "rk_live_")


def check_production(settings: Settings) -> list[str]:
    """What stops this configuration from taking real money safely: [] outside production.

    In production every enabled provider (PAYMENT_PROVIDERS) needs its real keys and webhook secret,
    and nothing may point at a sandbox or ask for test mode."""
    if not settings.production:
        return []
    problems: list[str] = []
    if "stripe" in settings.payment_providers:
        key = settings.stripe_secret_key
        if not key:
            problems.append("STRIPE_SECRET_KEY is not set")
        elif not key.startswith(STRIPE_LIVE_KEY_PREFIXES):
            problems.append("STRIPE_SECRET_KEY is not a live key (sk_live_... or rk_live_...)")
        if not settings.stripe_webhook_secrets:
            problems.append("STRIPE_WEBHOOK_SECRETS is not set")
        if settings.stripe_api_base:
            problems.append("STRIPE_API_BASE must be unset (it sends Stripe calls elsewhere, such as the sandbox)")
    if "lemonsqueezy" in settings.payment_providers:
        for name, value in (
            ("LEMONSQUEEZY_API_KEY", settings.lemonsqueezy_api_key),
            ("LEMONSQUEEZY_STORE_ID", settings.lemonsqueezy_store_id),
            ("LEMONSQUEEZY_VARIANT_ID", settings.lemonsqueezy_variant_id),
            ("LEMONSQUEEZY_WEBHOOK_SECRET", settings.lemonsqueezy_webhook_secret),
        ):
            if not value:
                problems.append(f"{name} is not set")
        if settings.lemonsqueezy_test_mode:
            problems.append("LEMONSQUEEZY_TEST_MODE must be false")
        for name, url in (
            ("LEMONSQUEEZY_API_BASE", settings.lemonsqueezy_api_base),
            ("LEMONSQUEEZY_JS_URL", settings.lemonsqueezy_js_url),
        ):
            if not url.lower().startswith("https://"):
                problems.append(f"{name} must be an https URL (not a sandbox)")
    return problems


def start_refusal(settings: Settings | None = None) -> str | None:
    """One line saying why the app must not start, or None when it may."""
    try:
        settings = settings or load_settings()
    except ConfigError as exc:
        return f"configuration error: {exc}"
    problems = check_production(settings)
    if not problems:
        return None
    return (
        f"refusing to start in production mode ({settings.mode_reason}): {'; '.join(problems)}. "
        "Production takes real money only and never starts the offline sandboxes."
    )


def require_safe_start(what: str = "OrcaPulse Billing") -> None:
    """Where the app starts: one line on stderr and exit status 2 when start_refusal has a reason."""
    reason = start_refusal()
    if reason:
        print(f"{what}: {reason}", file=sys.stderr, flush=True)
        raise SystemExit(2)


if __name__ == "__main__":  # scripts/run, before anything starts: prints the mode, or refuses
    require_safe_start()
    print("production" if load_settings().production else "development")
