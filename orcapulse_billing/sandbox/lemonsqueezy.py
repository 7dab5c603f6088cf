"""The offline Lemon Squeezy stand-in: the JSON:API calls the product uses (checkouts, orders,
refunds), a hosted checkout page for the overlay, a lemon.js stand-in with the same globals and
events (`createLemonSqueezy`, `LemonSqueezy.Setup({eventHandler})`, `LemonSqueezy.Url.Open(url)`,
`Checkout.Success`), and order webhooks signed as Lemon Squeezy signs them (`X-Signature`: hex
HMAC-SHA256 of the raw body) with its retry schedule (3 more tries, about 5 s, 25 s, 125 s).

For the client's tests it can answer the next N API calls with a chosen error (`/_config/faults`)
and lists the requests it received (`/_config/requests`).

    python -m orcapulse_billing.sandbox.lemonsqueezy --port 12112 --webhook-url http://127.0.0.1:8000/api/credits/lemonsqueezy/webhook --webhook-secret ...
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import html
import json
import logging
import uuid
from datetime import UTC, datetime

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger("lemonsqueezy-sandbox")
JSONAPI = "application/vnd.api+json"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")


def jsonapi_error(status: int, detail: str) -> JSONResponse:
    return JSONResponse(
        {"jsonapi": {"version": "1.0"}, "errors": [{"status": str(status), "title": "Error", "detail": detail}]},
        status_code=status,
        media_type=JSONAPI,
    )


class LemonSandbox:
    def __init__(
        self,
        public_url: str,
        api_key: str,
        store_id: str,
        variant_id: str,
        webhook_url: str | None,
        webhook_secret: str | None,
        retry_delays=(5, 25, 125),
    ):
        self.public_url = public_url.rstrip("/")
        self.api_key, self.store_id, self.variant_id = api_key, store_id, variant_id
        self.webhook_url, self.webhook_secret = webhook_url, webhook_secret
        self.retry_delays = tuple(retry_delays)
        self.checkouts: dict[str, dict] = {}
        self.orders: dict[str, dict] = {}
        self.requests: list[dict] = []
        self.faults: list[int] = []
        self.http = httpx.AsyncClient(timeout=10)

    # -- API -----------------------------------------------------------------------------

    async def _guard(self, request: Request) -> Response | None:
        body = await request.body()
        self.requests.append(
            {
                "method": request.method,
                "path": request.url.path,
                "headers": dict(request.headers),
                "body": json.loads(body) if body else None,
            }
        )
        if self.faults:
            status = self.faults.pop(0)
            response = jsonapi_error(status, "sandbox fault")
            if status == 429:
                response.headers["Retry-After"] = "0"
            return response
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return jsonapi_error(401, "Unauthenticated.")
        if JSONAPI not in request.headers.get("accept", ""):
            return jsonapi_error(406, "Not Acceptable: use application/vnd.api+json")
        return None

    async def create_checkout(self, request: Request) -> Response:
        if (refused := await self._guard(request)) is not None:
            return refused
        try:
            data = (await request.json())["data"]
            attrs, rel = data["attributes"], data["relationships"]
            store, variant = rel["store"]["data"]["id"], rel["variant"]["data"]["id"]
            price = attrs.get("custom_price")
            custom = attrs.get("checkout_data", {}).get("custom", {})
        except (KeyError, TypeError, ValueError):
            return jsonapi_error(422, "The data field is required and must be a checkouts resource.")
        if data.get("type") != "checkouts":
            return jsonapi_error(409, "The resource type must be checkouts.")
        if str(store) != self.store_id or str(variant) != self.variant_id:
            return jsonapi_error(404, "The related store or variant was not found.")
        if not isinstance(price, int) or price <= 0:
            return jsonapi_error(422, "The custom price must be a positive integer (cents).")
        if not isinstance(custom, dict) or not all(isinstance(v, str) for v in custom.values()):
            return jsonapi_error(422, "checkout_data.custom values must be strings.")
        checkout_id = str(uuid.uuid4())
        embed = bool(attrs.get("checkout_options", {}).get("embed"))
        checkout = {
            "type": "checkouts",
            "id": checkout_id,
            "attributes": {
                "store_id": int(store),
                "variant_id": int(variant),
                "custom_price": price,
                "product_options": attrs.get("product_options", {}),
                "checkout_options": attrs.get("checkout_options", {}),
                "checkout_data": {"custom": custom},
                "test_mode": bool(attrs.get("test_mode")),
                "expires_at": None,
                "created_at": _now(),
                "updated_at": _now(),
                "url": f"{self.public_url}/checkout/buy/{checkout_id}" + ("?embed=1" if embed else ""),
            },
            "links": {"self": f"{self.public_url}/v1/checkouts/{checkout_id}"},
        }
        self.checkouts[checkout_id] = checkout
        return JSONResponse({"jsonapi": {"version": "1.0"}, "data": checkout}, status_code=201, media_type=JSONAPI)

    async def get_order(self, request: Request) -> Response:
        if (refused := await self._guard(request)) is not None:
            return refused
        order = self.orders.get(request.path_params["id"])
        if order is None:
            return jsonapi_error(404, "Order not found.")
        return JSONResponse({"jsonapi": {"version": "1.0"}, "data": order["data"]}, media_type=JSONAPI)

    async def refund_order(self, request: Request) -> Response:
        if (refused := await self._guard(request)) is not None:
            return refused
        order = self.orders.get(request.path_params["id"])
        if order is None:
            return jsonapi_error(404, "Order not found.")
        attrs = order["data"]["attributes"]
        body = await request.json() if await request.body() else {}
        amount = (body.get("data", {}).get("attributes") or {}).get("amount", attrs["total"] - attrs["refunded_amount"])
        if not isinstance(amount, int) or amount <= 0 or attrs["refunded_amount"] + amount > attrs["total"]:
            return jsonapi_error(422, "The refund amount is invalid.")
        attrs["refunded_amount"] += amount
        full = attrs["refunded_amount"] == attrs["total"]
        attrs.update(
            refunded=full,
            status="refunded" if full else "partial_refund",
            status_formatted="Refunded" if full else "Partial refund",
            refunded_at=_now(),
            updated_at=_now(),
        )
        self.send("order_refunded", order)
        return JSONResponse({"jsonapi": {"version": "1.0"}, "data": order["data"]}, media_type=JSONAPI)

    # -- the buyer's side ----------------------------------------------------------------------

    async def checkout_page(self, request: Request) -> Response:
        checkout = self.checkouts.get(request.path_params["id"])
        if checkout is None:
            return HTMLResponse("<h1>Checkout not found</h1>", status_code=404)
        cents = checkout["attributes"]["custom_price"]
        return HTMLResponse(
            _CHECKOUT_PAGE.replace("AMOUNT", html.escape(f"${cents / 100:,.2f}")).replace("CHECKOUT_ID", checkout["id"])
        )

    async def pay(self, request: Request) -> Response:
        checkout = self.checkouts.get(request.path_params["id"])
        if checkout is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        form = await request.json()
        if "".join(ch for ch in str(form.get("card", "")) if ch.isdigit()) != "4242424242424242":
            return JSONResponse({"error": "Your card was declined. Use 4242 4242 4242 4242."}, status_code=402)
        attrs = checkout["attributes"]
        order_id = str(len(self.orders) + 1000)
        cents = attrs["custom_price"]
        order = {
            "meta": {"custom_data": attrs["checkout_data"]["custom"]},
            "data": {
                "type": "orders",
                "id": order_id,
                "attributes": {
                    "store_id": attrs["store_id"],
                    "customer_id": 1,
                    "identifier": str(uuid.uuid4()),
                    "order_number": int(order_id),
                    "user_name": "Sandbox Buyer",
                    "user_email": "buyer@sandbox.test",
                    "currency": "USD",
                    "currency_rate": "1.00000000",
                    "subtotal": cents,
                    "discount_total": 0,
                    "tax": 0,
                    "total": cents,
                    "subtotal_usd": cents,
                    "total_usd": cents,
                    "tax_name": None,
                    "tax_rate": "0.00",
                    "status": "paid",
                    "status_formatted": "Paid",
                    "refunded": False,
                    "refunded_at": None,
                    "refunded_amount": 0,
                    "first_order_item": {
                        "order_id": int(order_id),
                        "variant_id": attrs["variant_id"],
                        "price": cents,
                        "quantity": 1,
                    },
                    "test_mode": attrs["test_mode"],
                    "created_at": _now(),
                    "updated_at": _now(),
                },
                "links": {"self": f"{self.public_url}/v1/orders/{order_id}"},
            },
        }
        self.orders[order_id] = order
        self.send("order_created", order)
        return JSONResponse({"order": {"id": order_id, "total": cents}})

    async def lemon_js(self, request: Request) -> Response:
        return Response(_LEMON_JS, media_type="application/javascript")

    # -- webhooks --------------------------------------------------------------------------

    def send(self, event_name: str, order: dict) -> None:
        body = {
            "meta": {
                "test_mode": True,
                "event_name": event_name,
                "custom_data": order["meta"]["custom_data"],
                "webhook_id": str(uuid.uuid4()),
            },
            "data": order["data"],
        }
        asyncio.get_running_loop().create_task(self.deliver(event_name, json.dumps(body).encode()))

    async def deliver(self, event_name: str, payload: bytes) -> None:
        if not (self.webhook_url and self.webhook_secret):
            log.warning("no webhook endpoint configured; %s not sent", event_name)
            return
        signature = hmac.new(self.webhook_secret.encode(), payload, hashlib.sha256).hexdigest()
        for delay in (0, *self.retry_delays):
            await asyncio.sleep(delay)
            try:
                r = await self.http.post(
                    self.webhook_url,
                    content=payload,
                    headers={"Content-Type": "application/json", "X-Event-Name": event_name, "X-Signature": signature},
                )
                if 200 <= r.status_code < 300:
                    return
                log.warning("webhook %s answered %s", event_name, r.status_code)
            except httpx.HTTPError as exc:
                log.warning("webhook %s failed: %s", event_name, exc)

    # -- test hooks ------------------------------------------------------------------------

    async def configure(self, request: Request) -> Response:
        body = await request.json()
        if "webhook_url" in body:
            self.webhook_url, self.webhook_secret = body["webhook_url"], body["webhook_secret"]
        if "retry_delays" in body:
            self.retry_delays = tuple(body["retry_delays"])
        if "faults" in body:
            self.faults = list(body["faults"])
        return JSONResponse({"ok": True})

    async def recorded(self, request: Request) -> Response:
        return JSONResponse(self.requests[-50:])


_CHECKOUT_PAGE = """<!doctype html><html><head><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Checkout - Lemon Squeezy (sandbox)</title><style>
body{font-family:system-ui,sans-serif;margin:0;background:#fff;display:flex;justify-content:center}
main{padding:28px;max-width:420px;width:100%}.badge{background:#ffe7a3;color:#6b4e00;font-size:11px;padding:2px 6px;border-radius:4px}
.amount{font-size:28px;font-weight:700;margin:10px 0 18px}input{width:100%;box-sizing:border-box;padding:12px;font-size:16px;
border:1px solid #ccd;border-radius:8px}button{width:100%;margin-top:14px;padding:12px;font-size:16px;border:0;border-radius:8px;
background:#7047eb;color:#fff}#err{color:#b00;margin-top:10px}</style></head><body><main>
<span class="badge">TEST MODE · Lemon Squeezy sandbox</span><h2>OrcaPulse credits</h2>
<div class="amount" data-testid="ls-amount">AMOUNT</div>
<label for="card">Card number</label><input id="card" data-testid="ls-card" placeholder="4242 4242 4242 4242">
<button id="pay" data-testid="ls-pay">Pay AMOUNT</button><div id="err" data-testid="ls-error"></div>
<small>Test card: 4242 4242 4242 4242</small></main><script>
document.getElementById('pay').onclick = async () => {
  const r = await fetch('/checkout/buy/CHECKOUT_ID/pay', {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({card: document.getElementById('card').value})});
  const body = await r.json();
  if (!r.ok) { document.getElementById('err').textContent = body.error; return; }
  const message = {event: 'Checkout.Success', data: {order: body.order}};
  if (window.parent !== window) window.parent.postMessage(message, '*');
  else document.body.innerHTML = '<main><h2 data-testid="ls-done">Thanks for your order!</h2></main>';
};
</script></body></html>"""

_LEMON_JS = """/* lemon.js stand-in for the offline sandbox: the same globals and events as Lemon Squeezy's. */
(function () {
  var handler = null, overlay = null;
  function close() { if (overlay) { overlay.remove(); overlay = null; } }
  window.addEventListener('message', function (e) {
    if (!e.data || typeof e.data.event !== 'string') return;
    if (handler) handler({event: e.data.event, data: e.data.data});
    if (e.data.event === 'Checkout.Success') setTimeout(close, 300);
  });
  window.createLemonSqueezy = function () {
    window.LemonSqueezy = {
      Setup: function (options) { handler = (options && options.eventHandler) || null; },
      Refresh: function () {},
      Url: {
        Open: function (url) {
          close();
          overlay = document.createElement('div');
          overlay.setAttribute('data-testid', 'lemonsqueezy-overlay');
          overlay.style.cssText = 'position:fixed;inset:0;background:rgba(15,23,42,.55);z-index:2147483000;display:flex;align-items:center;justify-content:center';
          var frame = document.createElement('iframe');
          frame.src = url; frame.title = 'Lemon Squeezy checkout';
          frame.style.cssText = 'width:min(460px,96vw);height:min(640px,92vh);border:0;border-radius:12px;background:#fff';
          var x = document.createElement('button');
          x.textContent = '\\u00d7'; x.setAttribute('aria-label', 'Close checkout');
          x.style.cssText = 'position:absolute;top:16px;right:20px;font-size:28px;background:none;border:0;color:#fff;cursor:pointer';
          x.onclick = function () { close(); if (handler) handler({event: 'Checkout.Closed'}); };
          overlay.appendChild(frame); overlay.appendChild(x); document.body.appendChild(overlay);
        },
        Close: close
      }
    };
    return window.LemonSqueezy;
  };
})();
"""


def create_app(sandbox: LemonSandbox) -> Starlette:
    return Starlette(
        routes=[
            Route("/v1/checkouts", sandbox.create_checkout, methods=["POST"]),
            Route("/v1/orders/{id}", sandbox.get_order, methods=["GET"]),
            Route("/v1/orders/{id}/refund", sandbox.refund_order, methods=["POST"]),
            Route("/checkout/buy/{id}", sandbox.checkout_page, methods=["GET"]),
            Route("/checkout/buy/{id}/pay", sandbox.pay, methods=["POST"]),
            Route("/js/lemon.js", sandbox.lemon_js, methods=["GET"]),
            Route("/_config", sandbox.configure, methods=["POST"]),
            Route("/_config/requests", sandbox.recorded, methods=["GET"]),
        ]
    )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="offline Lemon Squeezy stand-in")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12112)
    parser.add_argument("--public-url")
    parser.add_argument("--api-key", default="test_sandbox_key")
    parser.add_argument("--store-id", default="1")
    parser.add_argument("--variant-id", default="1")
    parser.add_argument("--webhook-url")
    parser.add_argument("--webhook-secret")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="lemonsqueezy-sandbox: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    public = args.public_url or f"http://localhost:{args.port}"
    uvicorn.run(
        create_app(
            LemonSandbox(public, args.api_key, args.store_id, args.variant_id, args.webhook_url, args.webhook_secret)
        ),
        host=args.host,
        port=args.port,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
