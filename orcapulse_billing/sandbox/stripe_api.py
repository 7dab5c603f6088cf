"""The Stripe API the sandbox front door serves around localstripe (over HTTP only: localstripe is
GPL and never imported): the proxy to localstripe with the events Stripe would send for its answers,
PaymentIntent lists with Stripe's filters, disputes, failed refunds, the events sent, and the shaping
of localstripe's objects into Stripe's current shapes (`latest_charge` as an id, card errors as
`card_error` with the PaymentIntent, charges with failed refunds given back).

The test controls (`/_config/...`) are described in stripe_checkout's module docstring.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .stripe_wire import decode_form, list_page, stripe_error

if TYPE_CHECKING:
    from .stripe_checkout import Sandbox

PAYMENT_INTENT_WRITE = re.compile(r"/v1/payment_intents(/[^/]+/confirm)?")
OPEN_DISPUTE = ("warning_needs_response", "warning_under_review", "needs_response", "under_review")


def _missing(kind: str, ident: str, param: str | None = None) -> Response:
    return stripe_error(404, f"No such {kind}: '{ident}'", "resource_missing", param)


async def _json(request: Request) -> dict:
    body = await request.body()
    if not body:
        return {}
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return decode_form(body)
    return json.loads(body)


class StripeApi:
    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox
        self.disputes: dict[str, dict] = {}
        self.failed_refunds: dict[str, dict] = {}  # refund id -> {"charge", "amount", "failure_reason"}

    # -- localstripe's objects in Stripe's shapes ---------------------------------------------------

    def shape(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.shape(v) for v in value]
        if not isinstance(value, dict):
            return value
        out = {k: self.shape(v) for k, v in value.items()}
        kind = out.get("object")
        if kind == "payment_intent":
            if isinstance(out.get("latest_charge"), dict):
                out["latest_charge"] = out["latest_charge"]["id"]
            out.pop("charges", None)  # removed from PaymentIntents in API version 2022-11-15
            if out.get("last_payment_error"):
                error = out["last_payment_error"]
                out["last_payment_error"] = {"type": "card_error", "decline_code": "generic_decline", **error}
            out = self.sandbox.three_ds.shape(out)  # one waiting for its customer's authentication
        elif kind == "charge":
            failed = sum(f["amount"] for f in self.failed_refunds.values() if f["charge"] == out.get("id"))
            if failed and "amount_refunded" in out:
                out["amount_refunded"] -= failed
                out["refunded"] = out["amount_refunded"] >= out["amount"]
            out["disputed"] = any(d["charge"] == out.get("id") for d in self.disputes.values())
        elif kind == "refund" and out.get("id") in self.failed_refunds:
            out.update(status="failed", failure_reason=self.failed_refunds[out["id"]]["failure_reason"])
        return out

    async def get(self, path: str) -> dict | None:
        r = await self.sandbox.ls_request("GET", path)
        return self.shape(r.json()) if r.status_code == 200 else None

    # -- the proxy -------------------------------------------------------------------------------------

    async def proxy(self, request: Request) -> Response:
        """Everything else is localstripe's (customers, payment methods, intents, refunds, charges)."""
        path = request.url.path
        r = await self.sandbox.ls_request(request.method, path, request.query_params, await request.body(), request)
        try:
            body = self.shape(r.json())
        except ValueError:
            return Response(r.content, status_code=r.status_code, media_type=r.headers.get("content-type"))
        key = request.headers.get("idempotency-key")
        if request.method == "POST" and PAYMENT_INTENT_WRITE.fullmatch(path):
            if r.status_code == 200 and body.get("status") == "succeeded":
                self.sandbox.send("payment_intent.succeeded", body, key)
            elif r.status_code == 402:
                body = await self._declined(body, key)
            elif (
                r.status_code == 200
                and body.get("status") == "requires_action"
                and str(decode_form(await request.body()).get("off_session", "")).lower() == "true"
            ):  # Stripe declines an off-session charge that needs authentication (stripe_3ds)
                body = await self.sandbox.three_ds.off_session_declined(body, key)
                return JSONResponse(body, status_code=402)
        elif request.method == "POST" and path == "/v1/refunds" and r.status_code == 200:
            charge = await self.get(f"/v1/charges/{body['charge']}")
            if charge is not None:
                self.sandbox.send("charge.refunded", charge, key)
        return JSONResponse(body, status_code=r.status_code)

    async def _declined(self, body: dict, key: str | None) -> dict:
        """A card decline as Stripe answers it (a `card_error` carrying the PaymentIntent and its
        payment method), and the `payment_intent.payment_failed` event."""
        error = dict(body.get("error", {}), type="card_error")
        error.setdefault("decline_code", "generic_decline")
        charge = await self.get(f"/v1/charges/{error['charge']}") if error.get("charge") else None
        intent = await self.get(f"/v1/payment_intents/{charge['payment_intent']}") if charge else None
        if intent is not None:
            error["payment_intent"] = intent
            method = await self.get(f"/v1/payment_methods/{intent['payment_method']}")
            if method is not None:
                error["payment_method"] = method
            self.sandbox.send("payment_intent.payment_failed", intent, key)
        return {"error": error}

    async def list_payment_intents(self, request: Request) -> Response:
        """localstripe lists without filters, oldest first: fetch all its pages, then filter here."""
        intents: list[dict] = []
        params: dict[str, str] = {"limit": "100"}
        while True:
            r = await self.sandbox.ls_request("GET", "/v1/payment_intents", params)
            page = r.json()
            if r.status_code != 200:
                return JSONResponse(page, status_code=r.status_code)
            intents += page["data"]
            if not page["has_more"] or not page["data"]:
                break
            params["starting_after"] = page["data"][-1]["id"]
        query = decode_form(request.url.query.encode())
        return list_page(self.shape(intents), query, "/v1/payment_intents", ("customer",))

    # -- disputes ------------------------------------------------------------------------------------

    async def create_dispute(self, request: Request) -> Response:
        params = await _json(request)
        pi = str(params.get("payment_intent") or "")
        intent = await self.get(f"/v1/payment_intents/{pi}") if pi.startswith("pi_") else None
        if intent is None:
            return _missing("payment_intent", pi, "payment_intent")
        if intent["status"] != "succeeded" or not intent.get("latest_charge"):
            return stripe_error(400, f"PaymentIntent {pi} has no successful charge to dispute.", param="payment_intent")
        charge = await self.get(f"/v1/charges/{intent['latest_charge']}")
        if charge is None:
            return _missing("charge", intent["latest_charge"])
        try:
            amount = int(params.get("amount", charge["amount"] - charge["amount_refunded"]))
        except (TypeError, ValueError):
            return stripe_error(400, "Invalid integer: amount", "parameter_invalid_integer", "amount")
        if not 0 < amount <= charge["amount"]:
            return stripe_error(400, "The dispute amount must be between 1 and the charge's amount.", param="amount")
        dispute = {
            "id": "dp_" + secrets.token_hex(12),
            "object": "dispute",
            "amount": amount,
            "currency": charge["currency"],
            "charge": charge["id"],
            "payment_intent": pi,
            "status": "needs_response",
            "reason": params.get("reason", "fraudulent"),
            "is_charge_refundable": False,
            "balance_transactions": [],
            "created": int(time.time()),
            "livemode": False,
            "metadata": {},
        }
        self.disputes[dispute["id"]] = dispute
        self.sandbox.send("charge.dispute.created", dispute)
        return JSONResponse(dispute)

    async def close_dispute(self, request: Request) -> Response:
        dispute = self.disputes.get(request.path_params["id"])
        if dispute is None:
            return _missing("dispute", request.path_params["id"])
        status = (await _json(request)).get("status")
        if status not in ("won", "lost"):
            return stripe_error(400, "Invalid status: must be one of won, lost", param="status")
        if dispute["status"] not in OPEN_DISPUTE:
            return stripe_error(400, f"Dispute {dispute['id']} is already closed ({dispute['status']}).")
        dispute["status"] = status
        self.sandbox.send("charge.dispute.closed", dispute)
        return JSONResponse(dispute)

    async def get_dispute(self, request: Request) -> Response:
        dispute = self.disputes.get(request.path_params["id"])
        return JSONResponse(dispute) if dispute else _missing("dispute", request.path_params["id"])

    async def list_disputes(self, request: Request) -> Response:
        query = decode_form(request.url.query.encode())
        return list_page(list(self.disputes.values()), query, "/v1/disputes", ("payment_intent", "charge"))

    # -- failed refunds ---------------------------------------------------------------------------------

    async def fail_refund(self, request: Request) -> Response:
        refund_id = request.path_params["id"]
        refund = await self.get(f"/v1/refunds/{refund_id}")
        if refund is None:
            return _missing("refund", refund_id)
        if refund_id in self.failed_refunds:
            return stripe_error(400, f"Refund {refund_id} has already failed.")
        reason = (await _json(request)).get("failure_reason", "expired_or_canceled_card")
        self.failed_refunds[refund_id] = {
            "charge": refund["charge"],
            "amount": refund["amount"],
            "failure_reason": reason,
        }
        refund = self.shape(refund)
        self.sandbox.send("charge.refund.updated", refund)
        return JSONResponse(refund)

    # -- events ------------------------------------------------------------------------------------------

    async def list_events(self, request: Request) -> Response:
        query = decode_form(request.url.query.encode())
        return list_page(self.sandbox.events, query, "/v1/events", ("type",))

    async def get_event(self, request: Request) -> Response:
        event = next((e for e in self.sandbox.events if e["id"] == request.path_params["id"]), None)
        return JSONResponse(event) if event else _missing("event", request.path_params["id"])

    async def sent_events(self, request: Request) -> Response:
        """Test control: every event sent, oldest first (optionally `?type=`)."""
        kind = request.query_params.get("type")
        events = [e for e in self.sandbox.events if kind in (None, e["type"])]
        return JSONResponse({"object": "list", "data": events, "has_more": False, "url": "/_config/events"})

    async def resend_event(self, request: Request) -> Response:
        """Test control: deliver a sent event again, unchanged (same id), as Stripe's retries do."""
        event_id = (await _json(request)).get("id")
        event = next((e for e in self.sandbox.events if e["id"] == event_id), None)
        if event is None:
            return _missing("event", str(event_id), "id")
        self.sandbox.deliver_later(event)
        return JSONResponse(event)
