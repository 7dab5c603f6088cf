"""Reflex configuration. Everything else is configured by environment variables (README.md)."""

import os
from pathlib import Path

import reflex as rx

from orcapulse_billing.config import ConfigError, load_settings
from orcapulse_billing.trust import app_origins

_HERE = Path(__file__).resolve().parent

# Reflex's state manager (REFLEX_REDIS_URL) creates its own Redis clients with no timeouts: a Redis
# that accepts but never answers would hold every socket event forever. redis-py reads timeouts from
# the URL's query string, so they go there (in the environment, which Reflex reads after this file
# and its workers inherit). Its socket timeout is longer than ours: Reflex's lock subscription reads
# with it and reconnects each time it passes in silence.
REFLEX_REDIS_SOCKET_TIMEOUT = 10.0
if os.environ.get("REFLEX_REDIS_URL"):
    from orcapulse_billing.config import ConfigError
    from orcapulse_billing.redis_client import url_with_timeouts

    try:
        os.environ["REFLEX_REDIS_URL"] = url_with_timeouts(os.environ["REFLEX_REDIS_URL"], REFLEX_REDIS_SOCKET_TIMEOUT)
    except ConfigError:  # a bad setting: the app's start-up check says which, on one line
        pass

try:  # the page's origins (APP_URL, ALLOWED_ORIGINS): REST CORS, and the socket's (trust.py) check too
    _ORIGINS = list(app_origins(load_settings(), backend=False))
except ConfigError:
    _ORIGINS = []  # the app refuses to start and says why (config.require_safe_start)

# The client's address is decided by TRUSTED_PROXIES alone (trust.py): a uvicorn or gunicorn server
# (granian does not look) must not rewrite it from X-Forwarded-For on its own, as it does for 127.0.0.1.
os.environ.setdefault("FORWARDED_ALLOW_IPS", "")

config = rx.Config(
    app_name="orcapulse_billing",
    # bun comes from the npm registry into .tools/ (scripts/setup.sh): Reflex cannot download it here.
    bun_path=Path(os.environ.get("REFLEX_BUN_PATH", _HERE / ".tools/node_modules/.bin/bun")),
    disable_plugins=[rx.plugins.SitemapPlugin],
    plugins=[
        rx.plugins.RadixThemesPlugin(
            theme=rx.theme(appearance="light", accent_color="purple", gray_color="slate", radius="large")
        )
    ],
    telemetry_enabled=False,
    # Reflex's default is "*" with credentials. A request from the backend's own origin needs no CORS.
    cors_allowed_origins=_ORIGINS,
)
