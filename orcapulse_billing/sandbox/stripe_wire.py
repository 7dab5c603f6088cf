"""Stripe's wire formats for the offline sandbox's front door: form decoding, error bodies, webhook
signatures, list objects with Stripe's cursors and filters, and idempotency keys.

Everything here follows Stripe's documentation, not localstripe's behaviour (which ignores
Idempotency-Key and knows no list filters).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response


def decode_form(body: bytes) -> dict:
    """Stripe's form encoding (a[b][0][c]=1) back into nested dicts and lists."""
    result: dict = {}
    for key, value in parse_qsl(body.decode(), keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+", key)
        node = result
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt = None if last else ([] if parts[i + 1].isdigit() else {})
            if isinstance(node, list):
                index = int(part)
                while len(node) <= index:
                    node.append(None)
                if last:
                    node[index] = value
                else:
                    node[index] = node[index] if node[index] is not None else nxt
                    node = node[index]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, nxt)
    return result


def stripe_error(
    status: int,
    message: str,
    code: str | None = None,
    param: str | None = None,
    kind: str = "invalid_request_error",
) -> JSONResponse:
    error = {"type": kind, "message": message}
    if code:
        error["code"] = code
    if param:
        error["param"] = param
    return JSONResponse({"error": error}, status_code=status)


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    t = int(timestamp if timestamp is not None else time.time())
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


# -- lists ---------------------------------------------------------------------------------------

PAGING = ("limit", "starting_after", "ending_before", "created", "expand")
RANGES = {"gt": int.__gt__, "gte": int.__ge__, "lt": int.__lt__, "lte": int.__le__}


def list_page(objects: list[dict], params: dict, url: str, filters: tuple[str, ...] = ()) -> Response:
    """One page of a Stripe list object: `objects` oldest first (creation order), answered newest
    first; `limit` (1..100, default 10), `starting_after` / `ending_before` cursors, `created` as an
    exact timestamp or `created[gt|gte|lt|lte]`, and equality `filters` on top-level fields."""
    unknown = sorted(set(params) - set(PAGING) - set(filters))
    if unknown:
        return stripe_error(400, f"Received unknown parameter: {unknown[0]}", "parameter_unknown", unknown[0])
    try:
        limit = int(params.get("limit", 10))
    except (TypeError, ValueError):
        return stripe_error(400, "Invalid integer: limit", "parameter_invalid_integer", "limit")
    if not 1 <= limit <= 100:
        return stripe_error(400, f"This value must be between 1 and 100 (it currently is {limit}).", param="limit")
    created = params.get("created")
    try:
        bounds = [(int.__eq__, int(created))] if isinstance(created, str) else []
        for op, value in (created or {}).items() if isinstance(created, dict) else ():
            bounds.append((RANGES[op], int(value)))
    except (KeyError, TypeError, ValueError):
        return stripe_error(400, "Invalid created: use an integer or created[gt|gte|lt|lte]", param="created")

    def keep(o: dict) -> bool:
        return all(o.get(name) == params[name] for name in filters if name in params) and all(
            test(int(o["created"]), value) for test, value in bounds
        )

    # newest first; within one second the later-created first (the input is in creation order)
    ordered = sorted(reversed(objects), key=lambda o: o["created"], reverse=True)
    cursor = params.get("ending_before") or params.get("starting_after")
    position = next((i for i, o in enumerate(ordered) if o["id"] == cursor), None)
    if cursor and position is None:
        which = "ending_before" if params.get("ending_before") else "starting_after"
        return stripe_error(400, f"No such object: '{cursor}'", "resource_missing", which)
    if params.get("ending_before"):
        before = [o for o in ordered[:position] if keep(o)]
        page, has_more = before[-limit:], len(before) > limit
    else:
        after = [o for o in ordered[(position + 1 if cursor else 0) :] if keep(o)]
        page, has_more = after[:limit], len(after) > limit
    return JSONResponse({"object": "list", "data": page, "has_more": has_more, "url": url})


# -- idempotency keys ----------------------------------------------------------------------------

KEY_TTL = 24 * 3600
Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class _Stored:
    endpoint: tuple[str, str]
    body_hash: str
    at: float
    response: tuple[int, bytes, str | None] | None = None  # None while the first request is in flight


class IdempotencyKeys:
    """Stripe's idempotency: a POST with an `Idempotency-Key` is run once; repeats within 24 h with
    the same endpoint and body get the stored answer (header `Idempotent-Replayed: true`), other
    parameters get a 400 `idempotency_error`, and a repeat while the first is running a 409.
    Answers of 5xx (or handlers that failed) are not stored, so the key can be used again."""

    def __init__(self) -> None:
        self.keys: dict[str, _Stored] = {}

    def wrap(self, handler: Handler) -> Handler:
        async def idempotent(request: Request) -> Response:
            key = request.headers.get("idempotency-key")
            if request.method != "POST" or not key:
                return await handler(request)
            now = time.time()
            for old in [k for k, v in self.keys.items() if now - v.at > KEY_TTL]:
                del self.keys[old]
            endpoint = (request.method, request.url.path)
            body_hash = hashlib.sha256(await request.body()).hexdigest()
            stored = self.keys.get(key)
            if stored is not None:
                return self._repeat(key, stored, endpoint, body_hash)
            self.keys[key] = stored = _Stored(endpoint, body_hash, now)
            try:
                response = await handler(request)
            except BaseException:
                del self.keys[key]
                raise
            if response.status_code >= 500:
                del self.keys[key]
            else:
                stored.response = (response.status_code, bytes(response.body), response.media_type)
            response.headers["Idempotency-Key"] = key
            return response

        return idempotent

    @staticmethod
    def _repeat(key: str, stored: _Stored, endpoint: tuple[str, str], body_hash: str) -> Response:
        if stored.endpoint != endpoint:
            message = (
                f"Keys for idempotent requests can only be used for the same endpoint they were first used for "
                f"('{stored.endpoint[1]}' vs '{endpoint[1]}'). Try using a key other than '{key}' if you meant "
                "to execute a different request."
            )
            return stripe_error(400, message, kind="idempotency_error")
        if stored.body_hash != body_hash:
            message = (
                "Keys for idempotent requests can only be used with the same parameters they were first used "
                f"with. Try using a key other than '{key}' if you meant to execute a different request."
            )
            return stripe_error(400, message, kind="idempotency_error")
        if stored.response is None:
            message = (
                "There is currently another in-progress request using this Idempotent Key (that probably "
                f"means you submitted twice, and the other request is still going through): {key}. "
                "Please try again later."
            )
            return stripe_error(409, message, kind="idempotency_error")
        status, body, media_type = stored.response
        return Response(
            body,
            status_code=status,
            media_type=media_type,
            headers={"Idempotent-Replayed": "true", "Idempotency-Key": key},
        )
