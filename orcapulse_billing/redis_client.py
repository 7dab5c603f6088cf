"""Redis clients that give up: connect and socket timeouts on every client the app creates.

A Redis that accepts connections but never answers (overloaded, paused, a half-open proxy) would
otherwise hold its caller forever: a posting's event, a job's lock, a sign-in's rate limit, the
backend's start-up. With these options a call fails within about REDIS_CONNECT_TIMEOUT +
REDIS_SOCKET_TIMEOUT seconds (per retry) and the caller decides: events fall back to this
worker's tabs, job locks skip the round. Options given in the URL's query string
(`?socket_timeout=5`) win, as redis-py's `from_url` reads them last.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .config import Settings, get_settings

if TYPE_CHECKING:
    import redis

HEALTH_CHECK_SECONDS = 30  # a pooled connection idle this long is PINGed before it is used again


def redis_options(settings: Settings | None = None, *, retries: int = 1) -> dict[str, Any]:
    """Keyword arguments for `redis.Redis.from_url` (and libraries that pass them on, like `limits`).

    `retries`: how many times a failed command is tried again on a new connection (one covers a
    connection Redis closed while it sat in the pool), without waiting between tries."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    settings = settings or get_settings()
    return {
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_timeout": settings.redis_socket_timeout,
        "health_check_interval": HEALTH_CHECK_SECONDS,
        "retry": Retry(NoBackoff(), retries),
    }


def redis_client(url: str, settings: Settings | None = None, *, retries: int = 1) -> redis.Redis:
    import redis

    return redis.Redis.from_url(url, **redis_options(settings, retries=retries))


def url_with_timeouts(url: str, socket_timeout: float, settings: Settings | None = None) -> str:
    """`url` with connect and socket timeouts in its query string, for clients we do not create
    (Reflex's state manager): redis-py's `from_url` reads them there. Options already in the URL
    stay as they are."""
    settings = settings or get_settings()
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.setdefault("socket_connect_timeout", f"{settings.redis_connect_timeout:g}")
    query.setdefault("socket_timeout", f"{socket_timeout:g}")
    return urlunsplit(parts._replace(query=urlencode(query)))
