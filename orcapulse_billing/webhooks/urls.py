"""Where an endpoint may point: https only in production; never a private, link-local,
unique-local, loopback or otherwise non-public address, checked for every address the host name
resolves to (at registration and again before each attempt). Outside production, http and loopback
are allowed so a developer (and the tests) can receive on 127.0.0.1."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from .common import WebhookError

Resolver = Callable[[str, int], Sequence[str]]


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookError("invalid_url", f"the host {host!r} does not resolve ({exc})") from None
    return sorted({str(info[4][0]) for info in infos})


def _address_problem(address: str, production: bool) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address" if production else None
    if ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return "a private, link-local or reserved address"
    if not ip.is_global:  # 100.64.0.0/10 (carrier-grade NAT) and the like
        return "not a public address"
    return None


def validate_url(url: str, *, production: bool, resolve: Resolver = system_resolver) -> str:
    """The URL as it will be called, or WebhookError: https in production, http too otherwise; no user
    or password in it; every address the host resolves to public (loopback too outside production)."""
    url = url.strip()
    if not url or len(url) > 2000:
        raise WebhookError("invalid_url", "the URL must be 1 to 2000 characters")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise WebhookError("invalid_url", "the URL may not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookError("invalid_url", f"not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and not production):
        raise WebhookError("invalid_url", "the URL must be https" + ("" if production else " (or http)"))
    if parts.username is not None or parts.password is not None:
        raise WebhookError("invalid_url", "the URL may not contain a user name or password")
    host = parts.hostname
    if not host:
        raise WebhookError("invalid_url", "the URL has no host")
    if parts.fragment:
        raise WebhookError("invalid_url", "the URL may not have a #fragment")
    try:
        addresses: Sequence[str] = [str(ipaddress.ip_address(host))]
    except ValueError:
        if host.rstrip(".").lower() == "localhost" or host.rstrip(".").lower().endswith(".localhost"):
            addresses = ["127.0.0.1"]
        else:
            addresses = resolve(host, port or (443 if scheme == "https" else 80))
    if not addresses:
        raise WebhookError("invalid_url", f"the host {host!r} does not resolve")
    for address in addresses:
        problem = _address_problem(address, production)
        if problem:
            raise WebhookError("invalid_url", f"{host} resolves to {address}, {problem}; webhooks go to public hosts")
    return url
