"""The offline Stripe sandbox's front door: Checkout Sessions and a hosted checkout page, which
localstripe lacks, in front of localstripe for everything else.

It speaks Stripe's documented wire formats: form-encoded requests with bracketed keys, JSON
objects shaped like Stripe's (`checkout.session`, `event`), and webhooks signed exactly as Stripe
signs them (`Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`), retried with
backoff until the endpoint answers 2xx. Paying on the hosted page creates the card, the customer's
attachment and the PaymentIntent (or SetupIntent) in localstripe, so later off-session charges
and refunds work against the same data.

Test cards on the hosted page:
  4242 4242 4242 4242  succeeds
  4000 0000 0000 0002  declined (the page says so; nothing happens)
  4000 0000 0000 0077  delayed payment that succeeds (completed unpaid, then async_payment_succeeded)
  4000 0000 0000 9995  delayed payment that fails (completed unpaid, then async_payment_failed)

Off-session charges of a card that needs authentication (4000 0025 0000 3155) are declined with
Stripe's `authentication_required`, and are confirmed on a hosted 3-D Secure page (stripe_3ds.py).

Stripe API behaviour added on top of localstripe (stripe_api.py, stripe_wire.py):
  - Idempotency-Key on every POST under /v1/: the answer (2xx or 4xx) is kept 24 h and replayed with
    `Idempotent-Replayed: true`; other endpoint or body -> 400, still running -> 409 (`idempotency_error`).
  - Lists newest first in Stripe's list shape with `limit` (1..100, default 10), `starting_after`,
    `ending_before`, `created` / `created[gt|gte|lt|lte]`: GET /v1/payment_intents (`customer`),
    /v1/checkout/sessions (`payment_intent`, `status`, `customer`), /v1/disputes (`payment_intent`,
    `charge`), /v1/events (`type`); GET /v1/disputes/{id}, /v1/events/{id}.
  - Events: payment_intent.succeeded (API and hosted page), payment_intent.payment_failed (402 card
    declines, which are answered as Stripe's `card_error` carrying the PaymentIntent), charge.refunded
    (after POST /v1/refunds), charge.dispute.created / .closed, charge.refund.updated, and the
    checkout.session.* events. An idempotent replay sends nothing again.

Test controls (not Stripe's API):
  POST /_config/webhook {"url", "secret"}            where webhooks go
  POST /_config/disputes {"payment_intent", "amount"?, "reason"?}
                                                      opens a dispute on the intent's charge (amount
                                                      defaults to what is not refunded)
  POST /_config/disputes/{id}/close {"status": "won"|"lost"}
  POST /_config/refunds/{id}/fail {"failure_reason"?}  the refund fails (default expired_or_canceled_card):
                                                      its money goes back, the charge's amount_refunded drops
  GET  /_config/events[?type=]                        every event sent, oldest first
  POST /_config/events/resend {"id": "evt_..."}       delivers a sent event again, unchanged

    python -m orcapulse_billing.sandbox.stripe_checkout --port 12111 --localstripe http://127.0.0.1:8420 \\
        --webhook-url http://127.0.0.1:8000/api/credits/webhook --webhook-secret whsec_...
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import html
import json
import logging
import re
import secrets
import time
from urllib.parse import parse_qsl

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from .stripe_3ds import ThreeDSecure
from .stripe_api import StripeApi
from .stripe_wire import IdempotencyKeys, decode_form, list_page, sign, stripe_error

__all__ = ["Sandbox", "create_app", "decode_form", "sign", "stripe_error"]

log = logging.getLogger("stripe-sandbox")
SUCCESS, DECLINE, ASYNC_OK, ASYNC_FAIL = "4242424242424242", "4000000000000002", "4000000000000077", "4000000000009995"
# localstripe accepts any valid 16-digit number; the async cards settle with its plain success card
SETTLE_WITH = {SUCCESS: SUCCESS, ASYNC_OK: SUCCESS, ASYNC_FAIL: SUCCESS}
FORWARDED_HEADERS = ("authorization", "content-type")


class Sandbox:
    def __init__(self, localstripe_url: str, public_url: str, webhook_url: str | None, webhook_secret: str | None):
        self.localstripe_url = localstripe_url.rstrip("/")
        self.public_url = public_url.rstrip("/")
        self.webhook_url, self.webhook_secret = webhook_url, webhook_secret
        self.sessions: dict[str, dict] = {}
        self.events: list[dict] = []  # every event sent, oldest first
        self.http = httpx.AsyncClient(timeout=10)
        self.retry_delays = (1, 2, 5, 10, 30)
        self.deliveries: set[asyncio.Task] = set()
        self.api = StripeApi(self)
        self.three_ds = ThreeDSecure(self)

    # -- localstripe -----------------------------------------------------------------------

    async def ls_request(
        self, method: str, path: str, params=None, content: bytes | None = None, request: Request | None = None
    ) -> httpx.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS} if request else {}
        auth = None if "authorization" in headers else ("sk_test_sandbox", "")
        return await self.http.request(
            method, self.localstripe_url + path, params=params, content=content, headers=headers, auth=auth
        )

    async def ls(self, method: str, path: str, data: dict | None = None) -> dict:
        r = await self.http.request(method, self.localstripe_url + path, data=data, auth=("sk_test_sandbox", ""))
        body = r.json()
        if r.status_code >= 400:
            raise RuntimeError(body.get("error", {}).get("message", "localstripe error"))
        return body

    # -- events ------------------------------------------------------------------------------

    def event(self, kind: str, obj: dict, idempotency_key: str | None = None) -> dict:
        return {
            "id": "evt_" + secrets.token_hex(12),
            "object": "event",
            "api_version": "2024-06-20",
            "created": int(time.time()),
            "type": kind,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {
                "id": "req_" + secrets.token_hex(7) if idempotency_key else None,
                "idempotency_key": idempotency_key,
            },
            "data": {"object": copy.deepcopy(obj)},
        }

    async def deliver(self, event: dict) -> None:
        if not (self.webhook_url and self.webhook_secret):
            log.warning("no webhook endpoint configured; %s not sent", event["type"])
            return
        payload = json.dumps(event).encode()
        for delay in (0, *self.retry_delays):
            await asyncio.sleep(delay)
            try:
                r = await self.http.post(
                    self.webhook_url,
                    content=payload,
                    headers={
                        "Content-Type": "application/json",
                        "Stripe-Signature": sign(payload, self.webhook_secret),
                        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                    },
                )
                if 200 <= r.status_code < 300:
                    return
                log.warning("webhook %s answered %s; retrying", event["type"], r.status_code)
            except httpx.HTTPError as exc:
                log.warning("webhook %s failed (%s); retrying", event["type"], exc)

    def deliver_later(self, event: dict) -> None:
        task = asyncio.get_running_loop().create_task(self.deliver(event))
        self.deliveries.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self.deliveries.discard)

    def send(self, kind: str, obj: dict, idempotency_key: str | None = None) -> dict:
        event = self.event(kind, obj, idempotency_key)
        self.events.append(event)
        self.deliver_later(event)
        return event

    # -- Checkout Sessions API ---------------------------------------------------------------

    async def create_session(self, request: Request) -> Response:
        p = decode_form(await request.body())
        mode = p.get("mode")
        if mode not in ("payment", "setup"):
            return stripe_error(400, "Invalid mode: must be one of payment, setup, subscription", param="mode")
        for field in ("success_url", "cancel_url"):
            if not p.get(field):
                return stripe_error(400, f"Missing required param: {field}.", param=field)
        amount = None
        if mode == "payment":
            try:
                items = p["line_items"]
                amount = sum(int(i["price_data"]["unit_amount"]) * int(i.get("quantity", 1)) for i in items)
            except (KeyError, TypeError, ValueError):
                return stripe_error(400, "Missing required param: line_items.", param="line_items")
        session_id = "cs_test_" + secrets.token_hex(16)
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": mode,
            "status": "open",
            "payment_status": "unpaid" if mode == "payment" else "no_payment_required",
            "amount_total": amount,
            "amount_subtotal": amount,
            "currency": p.get("currency", "usd"),
            "customer": p.get("customer"),
            "client_reference_id": p.get("client_reference_id"),
            "metadata": p.get("metadata", {}),
            "success_url": p["success_url"],
            "cancel_url": p["cancel_url"],
            "payment_intent": None,
            "setup_intent": None,
            "livemode": False,
            "created": int(time.time()),
            "expires_at": int(time.time()) + 24 * 3600,
            "url": f"{self.public_url}/pay/{session_id}",
            "line_items_summary": (p.get("line_items") or [{}])[0].get("price_data", {}).get("product_data", {}),
        }
        self.sessions[session_id] = session
        return JSONResponse(session)

    async def get_session(self, request: Request) -> Response:
        session = self.sessions.get(request.path_params["id"])
        if session is None:
            return stripe_error(
                404, f"No such checkout.session: '{request.path_params['id']}'", code="resource_missing"
            )
        return JSONResponse(session)

    async def list_sessions(self, request: Request) -> Response:
        query = decode_form(request.url.query.encode())
        filters = ("payment_intent", "status", "customer")
        return list_page(list(self.sessions.values()), query, "/v1/checkout/sessions", filters)

    async def expire_session(self, request: Request) -> Response:
        session = self.sessions.get(request.path_params["id"])
        if session is None:
            return stripe_error(404, "No such checkout.session", code="resource_missing")
        if session["status"] != "open":
            return stripe_error(400, "Only open sessions can be expired.")
        session["status"] = "expired"
        self.send("checkout.session.expired", session, request.headers.get("idempotency-key"))
        return JSONResponse(session)

    async def configure_webhook(self, request: Request) -> Response:
        body = await request.json()
        self.webhook_url, self.webhook_secret = body["url"], body["secret"]
        return JSONResponse({"url": self.webhook_url})

    # -- the hosted page ---------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        session = self.sessions.get(request.path_params["id"])
        if session is None or session["status"] != "open":
            return HTMLResponse(_page("This checkout is no longer available.", None, None), status_code=404)
        return HTMLResponse(_page(None, session, request.query_params.get("error")))

    async def pay(self, request: Request) -> Response:
        session = self.sessions.get(request.path_params["id"])
        if session is None or session["status"] != "open":
            return HTMLResponse(_page("This checkout is no longer available.", None, None), status_code=404)
        form = dict(parse_qsl((await request.body()).decode()))
        if form.get("action") == "cancel":
            return RedirectResponse(session["cancel_url"], status_code=303)
        number = re.sub(r"\D", "", form.get("card", ""))
        if number == DECLINE:
            return RedirectResponse(f"/pay/{session['id']}?error=declined", status_code=303)
        if number not in SETTLE_WITH:
            return RedirectResponse(f"/pay/{session['id']}?error=unknown_card", status_code=303)
        pm = await self.ls(
            "POST",
            "/v1/payment_methods",
            {
                "type": "card",
                "card[number]": SETTLE_WITH[number],
                "card[exp_month]": "12",
                "card[exp_year]": "2030",
                "card[cvc]": "123",
            },
        )
        if session["customer"]:
            await self.ls("POST", f"/v1/payment_methods/{pm['id']}/attach", {"customer": session["customer"]})
        if session["mode"] == "setup":
            intent = await self.ls("POST", "/v1/setup_intents", {"customer": session["customer"]})
            intent = await self.ls("POST", f"/v1/setup_intents/{intent['id']}/confirm", {"payment_method": pm["id"]})
            session.update(status="complete", setup_intent=intent["id"])
            self.send("checkout.session.completed", session)
        else:
            intent = await self.ls(
                "POST",
                "/v1/payment_intents",
                {
                    "amount": str(session["amount_total"]),
                    "currency": session["currency"],
                    "customer": session["customer"] or "",
                    "payment_method": pm["id"],
                    "confirm": "true",
                    **{f"metadata[{k}]": v for k, v in session["metadata"].items()},
                },
            )
            intent = self.api.shape(intent)
            session.update(status="complete", payment_intent=intent["id"])
            if number == SUCCESS:
                session["payment_status"] = "paid"
                self.send("payment_intent.succeeded", intent)
                self.send("checkout.session.completed", session)
            else:  # a delayed payment: completed now, settled (or not) a moment later
                self.send("checkout.session.completed", session)
                settled = dict(session, payment_status="paid" if number == ASYNC_OK else "unpaid")
                asyncio.get_running_loop().call_later(
                    1.0, self._settle, settled, intent if number == ASYNC_OK else None
                )
                session.update(payment_status=settled["payment_status"])
        return RedirectResponse(session["success_url"].replace("{CHECKOUT_SESSION_ID}", session["id"]), status_code=303)

    def _settle(self, session: dict, succeeded_intent: dict | None) -> None:
        """A delayed payment settles: Stripe sends payment_intent.succeeded with the async success."""
        if succeeded_intent is not None:
            self.send("payment_intent.succeeded", succeeded_intent)
            self.send("checkout.session.async_payment_succeeded", session)
        else:
            self.send("checkout.session.async_payment_failed", session)


def _page(message: str | None, session: dict | None, error: str | None) -> str:
    style = """body{font-family:system-ui,sans-serif;background:#f6f9fc;margin:0;display:flex;justify-content:center}
main{background:#fff;margin:40px 16px;padding:28px;border-radius:12px;box-shadow:0 2px 12px #0002;max-width:420px;width:100%}
h1{font-size:20px;margin:0 0 4px}.amount{font-size:28px;font-weight:700;margin:8px 0 18px}
label{display:block;font-size:13px;color:#555;margin-bottom:6px}input{width:100%;box-sizing:border-box;padding:12px;
font-size:16px;border:1px solid #ccd;border-radius:8px}button{width:100%;margin-top:14px;padding:12px;font-size:16px;
border:0;border-radius:8px;background:#635bff;color:#fff;cursor:pointer}.cancel{background:#eee;color:#333}
.err{background:#fee;color:#b00;padding:10px;border-radius:8px;margin-bottom:12px}small{color:#777;display:block;margin-top:14px;line-height:1.6}
.badge{display:inline-block;background:#ffe7a3;color:#6b4e00;font-size:11px;padding:2px 6px;border-radius:4px}"""
    if session is None:
        return f"<!doctype html><title>Checkout</title><style>{style}</style><main><h1>{html.escape(message or '')}</h1></main>"
    pay = session["mode"] == "payment"
    amount = f"${session['amount_total'] / 100:,.2f}" if pay else "Save a card"
    errors = {"declined": "Your card was declined.", "unknown_card": "Use one of the sandbox test cards below."}
    err = f'<div class="err" data-testid="checkout-error">{errors.get(error, "")}</div>' if error else ""
    return f"""<!doctype html><html><head><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Checkout - OrcaPulse (sandbox)</title><style>{style}</style></head><body><main>
<span class="badge">TEST MODE · offline sandbox</span><h1>OrcaPulse Billing</h1>
<div class="amount" data-testid="checkout-amount">{html.escape(amount)}</div>{err}
<form method="post"><label for="card">Card number</label>
<input id="card" name="card" inputmode="numeric" autocomplete="cc-number" placeholder="4242 4242 4242 4242" data-testid="checkout-card">
<button name="action" value="pay" data-testid="checkout-pay">{"Pay " + html.escape(amount) if pay else "Save card"}</button>
<button name="action" value="cancel" class="cancel" data-testid="checkout-cancel" formnovalidate>Cancel</button></form>
<small>Test cards: 4242 4242 4242 4242 succeeds · 4000 0000 0000 0002 is declined ·
4000 0000 0000 0077 settles later · 4000 0000 0000 9995 fails later.</small></main></body></html>"""


def create_app(sandbox: Sandbox) -> Starlette:
    api, once = sandbox.api, IdempotencyKeys().wrap
    return Starlette(
        routes=[
            Route("/v1/checkout/sessions", once(sandbox.create_session), methods=["POST"]),
            Route("/v1/checkout/sessions", sandbox.list_sessions, methods=["GET"]),
            Route("/v1/checkout/sessions/{id}", sandbox.get_session, methods=["GET"]),
            Route("/v1/checkout/sessions/{id}/expire", once(sandbox.expire_session), methods=["POST"]),
            Route("/v1/payment_intents", api.list_payment_intents, methods=["GET"]),
            Route("/v1/disputes", api.list_disputes, methods=["GET"]),
            Route("/v1/disputes/{id}", api.get_dispute, methods=["GET"]),
            Route("/v1/events", api.list_events, methods=["GET"]),
            Route("/v1/events/{id}", api.get_event, methods=["GET"]),
            Route("/_config/webhook", sandbox.configure_webhook, methods=["POST"]),
            Route("/_config/disputes", api.create_dispute, methods=["POST"]),
            Route("/_config/disputes/{id}/close", api.close_dispute, methods=["POST"]),
            Route("/_config/refunds/{id}/fail", api.fail_refund, methods=["POST"]),
            Route("/_config/events", api.sent_events, methods=["GET"]),
            Route("/_config/events/resend", api.resend_event, methods=["POST"]),
            Route("/pay/{id}", sandbox.page, methods=["GET"]),
            Route("/pay/{id}", sandbox.pay, methods=["POST"]),
            Route("/v1/payment_intents/{id}/confirm", once(sandbox.three_ds.confirm), methods=["POST"]),
            Route("/authenticate/{id}", sandbox.three_ds.page, methods=["GET"]),
            Route("/authenticate/{id}", sandbox.three_ds.authenticate, methods=["POST"]),
            Route("/v1/{path:path}", once(api.proxy), methods=["GET", "POST", "DELETE"]),
        ]
    )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="offline Stripe Checkout stand-in (in front of localstripe)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--localstripe", default="http://127.0.0.1:8420")
    parser.add_argument("--public-url", help="base URL browsers use for the hosted page (default: own address)")
    parser.add_argument("--webhook-url")
    parser.add_argument("--webhook-secret")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="stripe-sandbox: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    public = args.public_url or f"http://{'localhost' if args.host == '127.0.0.1' else args.host}:{args.port}"
    app = create_app(Sandbox(args.localstripe, public, args.webhook_url, args.webhook_secret))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
