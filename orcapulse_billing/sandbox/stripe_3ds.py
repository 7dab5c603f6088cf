"""3-D Secure for off-session charges, as Stripe documents it, on top of localstripe (which answers an
off-session charge of an authentication card, such as 4000 0025 0000 3155, with a plain 200
`requires_action` and has no page to authenticate on).

- **The charge:** `POST /v1/payment_intents` with `confirm` and `off_session` for such a card is
  answered as Stripe answers it: HTTP 402, a `card_error` with code and decline code
  `authentication_required`, the PaymentIntent (status `requires_payment_method`, its
  `last_payment_error`) and the payment method in the error; `payment_intent.payment_failed` is sent.
- **Readying it for the customer:** `POST /v1/payment_intents/{id}/confirm` with a `return_url` (and
  optionally the same `payment_method`) answers the PaymentIntent in `requires_action` with
  `next_action.type` `redirect_to_url`, whose `url` is the hosted authentication page below (Stripe's
  manual 3-D Secure redirect). `off_session=true` there is declined again.
- **The hosted page:** `GET /authenticate/{id}` shows the amount with "Complete authentication" and
  "Fail authentication" (as Stripe's test page does). Completing it charges the card (localstripe's
  own `_authenticate`), sends `payment_intent.succeeded` and redirects to the `return_url` with
  `payment_intent`, `payment_intent_client_secret` and `redirect_status` (`succeeded` or `failed`);
  failing it sends `payment_intent.payment_failed`.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from .stripe_wire import decode_form, stripe_error

if TYPE_CHECKING:
    from .stripe_checkout import Sandbox

DECLINE_MESSAGE = "Your card was declined. This transaction requires authentication."


def _error_object(payment_method: Any) -> dict:
    return {
        "type": "card_error",
        "code": "authentication_required",
        "decline_code": "authentication_required",
        "message": DECLINE_MESSAGE,
        "doc_url": "https://stripe.com/docs/error-codes/authentication-required",
        "payment_method": payment_method,
    }


class ThreeDSecure:
    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox
        # PaymentIntents waiting for their customer: id -> {"stage": "declined" | "redirect", "return_url"}
        self.waiting: dict[str, dict[str, Any]] = {}

    def shape(self, intent: dict) -> dict:
        """A waiting PaymentIntent as Stripe shows it (localstripe keeps it in requires_action)."""
        state = self.waiting.get(intent.get("id", ""))
        if state is None:
            return intent
        if state["stage"] == "declined":
            intent.update(
                status="requires_payment_method",
                next_action=None,
                last_payment_error=_error_object({"id": intent.get("payment_method"), "object": "payment_method"}),
            )
        else:
            intent.update(
                status="requires_action",
                last_payment_error=None,
                next_action={
                    "type": "redirect_to_url",
                    "redirect_to_url": {
                        "url": f"{self.sandbox.public_url}/authenticate/{intent['id']}",
                        "return_url": state["return_url"],
                    },
                },
            )
        return intent

    async def off_session_declined(self, intent: dict, key: str | None) -> dict:
        """localstripe's 200 `requires_action` for an off-session charge, as Stripe's 402 body."""
        self.waiting[intent["id"]] = {"stage": "declined", "return_url": None}
        shaped = self.shape(dict(intent))
        method = await self.sandbox.api.get(f"/v1/payment_methods/{shaped['payment_method']}")
        self.sandbox.send("payment_intent.payment_failed", shaped, key)
        return {"error": {**_error_object(method), "payment_intent": shaped}}

    async def confirm(self, request: Request) -> Response:
        intent_id = request.path_params["id"]
        state = self.waiting.get(intent_id)
        if state is None:
            return await self.sandbox.api.proxy(request)
        params = decode_form(await request.body())
        intent = await self.sandbox.api.get(f"/v1/payment_intents/{intent_id}")
        if intent is None:
            return stripe_error(404, f"No such payment_intent: '{intent_id}'", "resource_missing")
        if str(params.get("off_session", "")).lower() == "true":  # still no customer to authenticate
            return JSONResponse({"error": {**_error_object(None), "payment_intent": intent}}, status_code=402)
        method = params.get("payment_method")
        if method and method != intent.get("payment_method"):
            return stripe_error(
                400, "This sandbox confirms a PaymentIntent with its own card only.", param="payment_method"
            )
        if not params.get("return_url"):
            return stripe_error(
                400, "This sandbox needs a return_url to confirm an authentication on its page.", param="return_url"
            )
        state.update(stage="redirect", return_url=params["return_url"])
        return JSONResponse(self.shape(intent))

    async def page(self, request: Request) -> Response:
        intent_id = request.path_params["id"]
        intent = await self.sandbox.api.get(f"/v1/payment_intents/{intent_id}")
        if intent is None or self.waiting.get(intent_id, {}).get("stage") != "redirect":
            return HTMLResponse(_page(None, "This payment needs no authentication now."), status_code=404)
        return HTMLResponse(_page(intent, None))

    async def authenticate(self, request: Request) -> Response:
        intent_id = request.path_params["id"]
        state = self.waiting.get(intent_id)
        if state is None or state["stage"] != "redirect":
            return HTMLResponse(_page(None, "This payment needs no authentication now."), status_code=404)
        form = dict(parse_qsl((await request.body()).decode()))
        success = form.get("action") == "complete"
        raw = await self.sandbox.ls("GET", f"/v1/payment_intents/{intent_id}")
        del self.waiting[intent_id]
        done = self.sandbox.api.shape(
            await self.sandbox.ls(
                "POST",
                f"/v1/payment_intents/{intent_id}/_authenticate",
                {"client_secret": raw["client_secret"], "success": "true" if success else "false"},
            )
        )
        succeeded = done.get("status") == "succeeded"
        self.sandbox.send("payment_intent.succeeded" if succeeded else "payment_intent.payment_failed", done)
        query = urlencode(
            {
                "payment_intent": intent_id,
                "payment_intent_client_secret": raw["client_secret"],
                "redirect_status": "succeeded" if succeeded else "failed",
            }
        )
        return_url = state["return_url"]
        return RedirectResponse(return_url + ("&" if "?" in return_url else "?") + query, status_code=303)


def _page(intent: dict | None, message: str | None) -> str:
    style = """body{font-family:system-ui,sans-serif;background:#f6f9fc;margin:0;display:flex;justify-content:center}
main{background:#fff;margin:40px 16px;padding:28px;border-radius:12px;box-shadow:0 2px 12px #0002;max-width:420px;width:100%}
h1{font-size:20px;margin:0 0 4px}.amount{font-size:28px;font-weight:700;margin:8px 0 18px}
button{width:100%;margin-top:14px;padding:12px;font-size:16px;border:0;border-radius:8px;background:#635bff;color:#fff;cursor:pointer}
.fail{background:#eee;color:#333}.badge{display:inline-block;background:#ffe7a3;color:#6b4e00;font-size:11px;padding:2px 6px;border-radius:4px}"""
    if intent is None:
        return f"<!doctype html><title>3D Secure</title><style>{style}</style><main><h1>{html.escape(message or '')}</h1></main>"
    amount = f"${intent['amount'] / 100:,.2f}"
    return f"""<!doctype html><html><head><meta name="viewport" content="width=device-width,initial-scale=1">
<title>3D Secure authentication (sandbox)</title><style>{style}</style></head><body><main>
<span class="badge">TEST MODE · offline sandbox</span><h1>Confirm this payment with your bank</h1>
<div class="amount" data-testid="authenticate-amount">{html.escape(amount)}</div>
<form method="post"><button name="action" value="complete" data-testid="authenticate-complete">Complete authentication</button>
<button name="action" value="fail" class="fail" data-testid="authenticate-fail">Fail authentication</button></form>
</main></body></html>"""
