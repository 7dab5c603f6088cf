"""What the web layer believes about a request: which origins are the app's own, and who the client is.

One answer for the REST routes, the Reflex socket and the page's handlers:

- the app's origins are `APP_URL`'s, each of `ALLOWED_ORIGINS`, and the backend's own (Reflex's `api_url`:
  in dev mode the page is served on FRONTEND_PORT and the backend on BACKEND_PORT, two origins); a
  request whose Origin is its own scheme://Host is same-origin and needs no list;
- the client's address is the peer's, or, when the peer is one of `TRUSTED_PROXIES`, the nearest
  address in `X-Forwarded-For` that is not a trusted proxy (a client can write anything there; only the
  proxies we trust append to it).

Standard library only (and config): rxconfig.py imports this before Reflex has its configuration.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from .config import Settings, get_settings, origin_of


def app_origins(settings: Settings | None = None, *, backend: bool = True) -> tuple[str, ...]:
    """The origins a page of this app is served from, APP_URL's first."""
    settings = settings or get_settings()
    origins = [origin_of(settings.app_url), *settings.allowed_origins]
    if backend:
        origins.append(_backend_origin())
    return tuple(dict.fromkeys(o for o in origins if o))


def _backend_origin() -> str | None:
    """The backend's own origin as Reflex was told it (`api_url`: http://localhost:BACKEND_PORT in dev)."""
    try:
        from reflex.config import get_config

        return origin_of(get_config().api_url or "")
    except Exception:  # no rxconfig (the CLI, a test serving the API alone): no backend origin of its own
        return None


def is_allowed_origin(origin: str | None, *, own: str | None = None, settings: Settings | None = None) -> bool:
    """Whether a browser Origin is one of the app's (or `own`, the request's own scheme://Host)."""
    normalized = origin_of(origin or "")
    if normalized is None:
        return False
    if own is not None and normalized == origin_of(own):
        return True
    return normalized in app_origins(settings)


def request_origin(headers: Mapping[str, str]) -> str | None:
    """The Origin a browser sent, or the origin of its Referer when it sent no (or a "null") Origin."""
    origin = headers.get("origin")
    if origin and origin != "null":
        return origin
    referer = headers.get("referer")
    return origin_of(referer) if referer else None


def socket_origin_allowed(origin: str | None, environ: Mapping[str, object]) -> bool:
    """python-engineio's `cors_allowed_origins` check for the Reflex socket (/_event): only the app's
    origins (or the socket's own); a handshake from any other Origin is refused. A client that sends
    no Origin (not a browser) is not asked."""
    host = environ.get("HTTP_HOST")
    own = f"{environ.get('wsgi.url_scheme', 'http')}://{host}" if host else None
    return is_allowed_origin(origin, own=own)


# -- the client's address ------------------------------------------------------------------------


def _ip(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address((value or "").strip())
    except ValueError:
        return None


def client_address(peer: str | None, forwarded_for: str | None, settings: Settings | None = None) -> str | None:
    """The client's address: the peer's, unless the peer is a trusted proxy; then, walking
    X-Forwarded-For from its right end (the hop the proxy itself added), the first address that is
    not a trusted proxy (or the leftmost, when every one is)."""
    trusted = (settings or get_settings()).trusted_proxies
    address = peer
    if not trusted or not forwarded_for:
        return address
    for hop in reversed(forwarded_for.split(",")):
        current = _ip(address)
        if current is None or not any(current in network for network in trusted):
            break
        nearer = _ip(hop)
        if nearer is None:  # not an address: what the trusted proxy heard cannot be used
            break
        address = str(nearer)
    return address
