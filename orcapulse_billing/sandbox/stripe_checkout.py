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

    python -m orcapulse_billing.sandbox.stripe_checkout --port 12111 --localstripe http://127.0.0.1:8420 \\
        --webhook-url http://127.0.0.1:8000/api/credits/webhook --webhook-secret whsec_...
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
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

log = logging.getLogger("stripe-sandbox")
SUCCESS, DECLINE, ASYNC_OK, ASYNC_FAIL = "4242424242424242", "4000000000000002", "4000000000000077", "4000000000009995"
# localstripe accepts any valid 16-digit number; the async cards settle with its plain success card
SETTLE_WITH = {SUCCESS: SUCCESS, ASYNC_OK: SUCCESS, ASYNC_FAIL: SUCCESS}


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


def stripe_error(status: int, message: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    error = {"type": "invalid_request_error", "message": message}
    if code:
        error["code"] = code
    if param:
        error["param"] = param
    return JSONResponse({"error": error}, status_code=status)


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    t = int(timestamp if timestamp is not None else time.time())
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


class Sandbox:
    def __init__(self, localstripe_url: str, public_url: str, webhook_url: str | None, webhook_secret: str | None):
        self.localstripe_url = localstripe_url.rstrip("/")
        self.public_url = public_url.rstrip("/")
        self.webhook_url, self.webhook_secret = webhook_url, webhook_secret
        self.sessions: dict[str, dict] = {}
        self.http = httpx.AsyncClient(timeout=10)
        self.retry_delays = (1, 2, 5, 10, 30)

    # -- localstripe -----------------------------------------------------------------------

    async def ls(self, method: str, path: str, data: dict | None = None) -> dict:
        r = await self.http.request(method, self.localstripe_url + path, data=data, auth=("sk_test_sandbox", ""))
        body = r.json()
        if r.status_code >= 400:
            raise RuntimeError(body.get("error", {}).get("message", "localstripe error"))
        return body

    # -- events ------------------------------------------------------------------------------

    def event(self, kind: str, obj: dict) -> dict:
        return {
            "id": "evt_" + secrets.token_hex(12),
            "object": "event",
            "api_version": "2024-06-20",
            "created": int(time.time()),
            "type": kind,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "data": {"object": dict(obj)},
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

    def send(self, kind: str, obj: dict) -> None:
        asyncio.get_running_loop().create_task(self.deliver(self.event(kind, obj)))

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

    async def expire_session(self, request: Request) -> Response:
        session = self.sessions.get(request.path_params["id"])
        if session is None:
            return stripe_error(404, "No such checkout.session", code="resource_missing")
        if session["status"] != "open":
            return stripe_error(400, "Only open sessions can be expired.")
        session["status"] = "expired"
        self.send("checkout.session.expired", session)
        return JSONResponse(session)

    async def configure_webhook(self, request: Request) -> Response:
        body = await request.json()
        self.webhook_url, self.webhook_secret = body["url"], body["secret"]
        return JSONResponse({"url": self.webhook_url})

    async def proxy(self, request: Request) -> Response:
        """Everything else is localstripe's (customers, payment methods, intents, refunds)."""
        r = await self.http.request(
            request.method,
            self.localstripe_url + request.url.path,
            params=request.query_params,
            content=await request.body(),
            headers={
                k: v
                for k, v in request.headers.items()
                if k.lower() in ("authorization", "content-type", "idempotency-key")
            },
        )
        return Response(r.content, status_code=r.status_code, media_type="application/json")

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
            session.update(status="complete", payment_intent=intent["id"])
            if number == SUCCESS:
                session["payment_status"] = "paid"
                self.send("checkout.session.completed", session)
            else:  # a delayed payment: completed now, settled (or not) a moment later
                self.send("checkout.session.completed", session)
                settled = dict(session, payment_status="paid" if number == ASYNC_OK else "unpaid")
                kind = (
                    "checkout.session.async_payment_succeeded"
                    if number == ASYNC_OK
                    else "checkout.session.async_payment_failed"
                )
                asyncio.get_running_loop().call_later(1.0, lambda: self.send(kind, settled))
                session.update(payment_status=settled["payment_status"])
        return RedirectResponse(session["success_url"].replace("{CHECKOUT_SESSION_ID}", session["id"]), status_code=303)


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
    return Starlette(
        routes=[
            Route("/v1/checkout/sessions", sandbox.create_session, methods=["POST"]),
            Route("/v1/checkout/sessions/{id}", sandbox.get_session, methods=["GET"]),
            Route("/v1/checkout/sessions/{id}/expire", sandbox.expire_session, methods=["POST"]),
            Route("/_config/webhook", sandbox.configure_webhook, methods=["POST"]),
            Route("/pay/{id}", sandbox.page, methods=["GET"]),
            Route("/pay/{id}", sandbox.pay, methods=["POST"]),
            Route("/v1/{path:path}", sandbox.proxy, methods=["GET", "POST", "DELETE"]),
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
