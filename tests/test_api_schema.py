"""Schemathesis against /api/openapi.json: the document says exactly what the server accepts.

Every check schemathesis has (`checks all`: no 5xx, documented statuses, content types, headers and
bodies; schema-violating requests refused, schema-valid ones accepted, missing required headers
refused, 405 with `Allow` for undeclared methods, auth enforced, nothing used after it was freed,
created things readable), with positive and negative data, through the examples, coverage and
fuzzing phases as an owner (and a smaller run as a member), then the stateful phase (schemathesis'
state machine over the document's links), all with a fixed seed.

Three things generated data cannot do by itself, done here exactly as the document describes them:

- Rules across fields (JSON Schema cannot compare two values; the descriptions state them): a
  usage key in the body or in the Idempotency-Key header (the same when both), `from` not after `to`,
  a session not ending before it starts, a monthly cap not below the recharge amount. Positive
  (schema-valid) requests are made to keep them; a request breaking one is refused with 400.
- The world outside: a webhook endpoint's host must resolve to addresses it may point at (public ones;
  loopback outside production), which no schema can say; a positive request to register one names a
  loopback URL (this app is not in production mode), its path and query generated.
- State: a session is billed once (a new id per generated report), a chat hold is captured in whole
  messages, and enabling auto-recharge or a one-click purchase needs a saved card (one is saved
  again when a generated DELETE removed it);
  a generated DELETE /api/keys/{id} may revoke the caller's own key (it gets a new one, with its
  role's scopes: the owner's reports usage, the member's reads only).
- Provider signatures: a webhook request whose signature header is schema-valid gets a real
  signature over the exact bytes sent (`SignWebhooks`, playing Stripe and Lemon Squeezy), so the
  event handlers see generated events; missing or malformed signatures are left as they are.

`/api/auth/login` is left out of the generated calls: it is rate limited per address and per email
(10 a minute), so generated sign-ins would only measure the limiter; test_api.py covers it.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import re
import uuid
from decimal import Decimal

import hypothesis
import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck
from schemathesis.config import SchemathesisConfig

from orcapulse_billing.api import create_api_app
from orcapulse_billing.api.openapi import LINKS
from orcapulse_billing.api.schemas import parse_timestamp
from orcapulse_billing.sandbox.stripe_checkout import sign

# Fixed, so a run is reproducible; OPB_SCHEMA_SEED / OPB_SCHEMA_SCALE explore further by hand.
SEED = int(os.environ.get("OPB_SCHEMA_SEED", "20261202"))
SCALE = float(os.environ.get("OPB_SCHEMA_SCALE", "1"))
OWNER_EXAMPLES = int(40 * SCALE)  # per operation, on top of the coverage phase's own cases
MEMBER_EXAMPLES = int(10 * SCALE)
STATEFUL_SCENARIOS, STATEFUL_STEPS = int(30 * SCALE), 8
# A schema-valid request may still be refused for the state it meets: 402 when the balance or the
# card cannot pay, besides schemathesis' own list (401, 403, 404, 409, 429).
POSITIVE_STATUSES = ["2xx", "3xx", "401", "402", "403", "404", "409", "429", "5xx"]

CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": SEED,
        "checks": {"enabled": True, "positive_data_acceptance": {"expected-statuses": POSITIVE_STATUSES}},
        "generation": {"mode": "all"},
        "phases": {"stateful": {"max-steps": STATEFUL_STEPS}},
    }
)
STRIPE_WEBHOOK, LEMON_WEBHOOK = "/api/credits/webhook", "/api/credits/lemonsqueezy/webhook"


class SignWebhooks:
    """ASGI wrapper: signs webhook requests that carry a schema-valid signature header."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        header = {STRIPE_WEBHOOK: b"stripe-signature", LEMON_WEBHOOK: b"x-signature"}.get(scope.get("path"))
        if scope["type"] != "http" or header is None:
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = [(k, v if k != header or not _signable(k, v) else _signature(k, body)) for k, v in scope["headers"]]

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)


def _signable(name: bytes, value: bytes) -> bool:
    if name == b"x-signature":
        return len(value) == 64 and all(c in b"0123456789abcdefABCDEF" for c in value)
    return bool(value)


def _signature(name: bytes, body: bytes) -> bytes:
    from orcapulse_billing.config import get_settings

    settings = get_settings()
    if name == b"x-signature":
        return hmac.new(settings.lemonsqueezy_webhook_secret.encode(), body, hashlib.sha256).hexdigest().encode()
    return sign(body, settings.stripe_webhook_secrets[-1]).encode()


schema = schemathesis.openapi.from_asgi("/api/openapi.json", SignWebhooks(create_api_app()), config=CONFIG).exclude(
    path="/api/auth/login"
)
CALLER: dict = {}  # who the generated requests are sent as: set by each test
CALLER_KEY = "opb_caller"  # cases may be generated before the caller exists; swapped at call time


@schema.auth(refresh_interval=None)
class AsCaller:
    """The caller's API key, as configured auth (so ignored_auth knows it is the real one)."""

    def get(self, case, ctx):
        return CALLER_KEY

    def set(self, case, data, ctx):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


# -- what generated data cannot know --------------------------------------------------------------

SESSION_IDS = itertools.count(1)


def _header(case, name: str) -> str | None:
    return next((k for k in (case.headers or {}) if k.lower() == name.lower()), None)


def keep_rules(case) -> None:
    """Makes a schema-valid request keep the rules its description states beyond JSON Schema."""
    org = CALLER["org"]
    _ensure_key()
    if (name := _header(case, "Authorization")) and case.headers[name] == f"Bearer {CALLER_KEY}":
        case.headers[name] = f"Bearer {CALLER['key']}"
    if case.meta is not None and not case.meta.generation.mode.is_positive:
        return
    query, body = case.query if isinstance(case.query, dict) else {}, case.body
    if isinstance(query.get("from"), str) and isinstance(query.get("to"), str):
        if parse_timestamp(query["to"]) < parse_timestamp(query["from"]):
            query["from"], query["to"] = query["to"], query["from"]
    if case.path == "/api/credits/usage" and isinstance(body, dict):
        name = _header(case, "Idempotency-Key")
        if body.get("idempotency_key") is None and name is None:
            case.headers = {**(case.headers or {}), "Idempotency-Key": uuid.uuid4().hex}
        elif body.get("idempotency_key") is not None and name is not None:
            del case.headers[name]  # the body's key alone (it may not even fit in a header)
        session = body.get("session")
        if isinstance(session, dict):
            session["id"] = f"gen-{next(SESSION_IDS)}-{session['id']}"[:100]
            start, end = session.get("started_at"), session.get("ended_at")
            if isinstance(start, str) and isinstance(end, str) and parse_timestamp(end) < parse_timestamp(start):
                session["started_at"], session["ended_at"] = end, start
    if case.path == "/api/credits/holds/{hold_id}/capture" and isinstance(body, dict) and "quantity" in body:
        # a chat hold is captured in whole messages (its description says so)
        with org.engine.connect() as conn:
            operation = conn.execute(
                sa.text("SELECT operation FROM credit_hold WHERE id = :h"),
                {"h": (case.path_parameters or {}).get("hold_id")},
            ).scalar()
        if operation == "chat" and Decimal(str(body["quantity"])) % 1:
            body["quantity"] = "1"
    if case.path == "/api/credits/auto-recharge" and case.method == "PUT" and isinstance(body, dict):
        if body.get("monthly_cap") is not None and Decimal(body["monthly_cap"]) < Decimal(body["amount"]):
            body["monthly_cap"] = body["amount"]
    if case.path == "/api/webhooks/endpoints" and case.method == "POST" and isinstance(body, dict):
        if isinstance(body.get("url"), str):
            body["url"] = "http://127.0.0.1:9/" + body["url"].partition("://")[2].partition("/")[2]
    if case.path in ("/api/credits/auto-recharge", "/api/credits/quick-purchase") and case.method != "GET":
        _ensure_card(org)


def _ensure_key() -> None:
    """A generated DELETE /api/keys/{id} may revoke the caller's own key: the caller gets a new one."""
    from orcapulse_billing.accounts import ROLE_SCOPES, create_api_key
    from orcapulse_billing.auth import principal_for_api_key

    org, role = CALLER["org"], CALLER["role"]
    if principal_for_api_key(org.engine, CALLER["key"]) is None:
        org.keys[role] = CALLER["key"] = create_api_key(org.engine, org.emails[role], ROLE_SCOPES[role]).key


def _ensure_card(org) -> None:
    from orcapulse_billing.models import PaymentMethod
    from orcapulse_billing.services import get_stripe_purchases

    with org.engine.connect() as conn:
        if conn.execute(sa.select(PaymentMethod.id).where(PaymentMethod.organization_id == org.id)).first():
            return
    purchases = get_stripe_purchases(org.engine)
    sdk = purchases.gateway.client
    pm = sdk.v1.payment_methods.create(
        params={"type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}}
    )
    sdk.v1.payment_methods.attach(pm["id"], params={"customer": purchases.customer_for(org.id)})
    purchases.save_card(org.id, purchases.gateway.card(pm["id"]))


WRITTEN = sa.text(
    """SELECT
        (SELECT count(*) FROM ledger_entry WHERE account_id = :a
            AND (metadata IS NULL OR metadata NOT LIKE '%autoRecharge%')),
        (SELECT count(*) FROM billing_session WHERE account_id = :a),
        (SELECT count(*) || ' ' || count(settled_at) FROM credit_hold WHERE account_id = :a),
        (SELECT held FROM credit_account WHERE id = :a),
        (SELECT count(*) FROM checkout_session WHERE organization_id = :o),
        (SELECT count(*) FROM payment_method WHERE organization_id = :o),
        (SELECT count(*) FROM audit_log WHERE organization_id = :o),
        (SELECT count(*) FROM webhook_event),
        (SELECT count(*) || ' ' || count(deleted_at) || ' ' || coalesce(sum(enabled), 0) FROM webhook_endpoint
            WHERE organization_id = :o),
        (SELECT count(*) FROM webhook_message WHERE organization_id = :o),
        (SELECT count(*) || ' ' || coalesce(sum(amount), 0) FROM spend_budget WHERE organization_id = :o),
        (SELECT count(*) || ' ' || count(revoked_at) FROM api_key WHERE organization_id = :o
            OR user_id IN (SELECT user_id FROM membership WHERE organization_id = :o)),
        (SELECT enabled || ' ' || threshold || ' ' || amount || ' ' || coalesce(monthly_cap, '-')
            FROM auto_recharge_policy WHERE organization_id = :o),
        (SELECT mode || ' ' || coalesce(amount, '-') || ' ' || coalesce(percent, '-') || ' ' || updated_at
            FROM low_balance_setting WHERE organization_id = :o),
        (SELECT count(*) || ' ' || coalesce(max(updated_at), '-') FROM notification_preference
            WHERE organization_id = :o)"""
)


def written(org) -> tuple:
    """What a request could have written for the organization (the app's database is SQLite here).
    Auto-recharges are left out: they run in the background on their own schedule."""
    with org.engine.connect() as conn:
        return tuple(conn.execute(WRITTEN, {"a": org.account_id, "o": org.id}).one())


def call_and_check(case, **kwargs):
    """Sends the case and runs every check; a refusal (4xx) must also have written nothing."""
    org = CALLER["org"]
    before = written(org)
    response = case.call(**kwargs)
    if 400 <= response.status_code < 500:
        assert written(org) == before, f"{case.method} {case.path} answered {response.status_code} and wrote"
    case.validate_response(response)
    return response


# -- the runs --------------------------------------------------------------------------------------


def _org(app_engine, app_ledger, role: str):
    from .apiutil import Org

    org = Org(app_engine, app_ledger, roles=("owner", "member"))
    org.post("purchase", "100")
    org.session("s1")
    _ensure_card(org)
    return org, role


@pytest.fixture(scope="module")
def owner(app_engine, app_ledger, stripe_sandbox):
    return _org(app_engine, app_ledger, "owner")


@pytest.fixture(scope="module")
def member(app_engine, app_ledger, stripe_sandbox):
    return _org(app_engine, app_ledger, "member")


def _as(caller) -> None:
    org, role = caller
    CALLER.update(org=org, role=role, key=org.keys[role])


@schema.parametrize()
@hypothesis.settings(max_examples=OWNER_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_contract_as_owner(case, owner):
    _as(owner)
    keep_rules(case)
    call_and_check(case)


member_schema = schema.include(method="GET")


@member_schema.parametrize()
@hypothesis.settings(max_examples=MEMBER_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_contract_as_member(case, member):
    _as(member)
    keep_rules(case)
    call_and_check(case)


def test_stateful_workflows_as_owner(app_engine, app_ledger, stripe_sandbox, monkeypatch):
    """Scenarios follow the document's links (a usage report to its session, the saved cards to a
    purchase with one and to removing it, the packages to buying one). Each starts on a fresh
    organization, so a replayed scenario meets the same state."""
    from orcapulse_billing import accounts

    monkeypatch.setattr(accounts, "hash_password", lambda password: "unused")  # these users only use API keys
    steps = []

    # The scenarios walk the routes that take part in links only (the contract runs above cover every
    # route): with every route in, each new one reshuffled the fixed-seed scenarios so that they stopped
    # reaching the links' targets (and a generated hard-stopped budget turned spending calls into 402s).
    linked = {path for (path, _, _), links in LINKS.items()} | {
        link["target"][0] for links in LINKS.values() for link in links.values()
    }
    workflows = schema.include(path_regex="^(" + "|".join(re.escape(p) for p in sorted(linked)) + ")$")

    class Workflows(workflows.as_state_machine()):
        def setup(self):
            _as(_org(app_engine, app_ledger, "owner"))

        def before_call(self, case):
            keep_rules(case)
            self.before = written(CALLER["org"])

        def after_call(self, response, case):
            super().after_call(response, case)
            steps.append((case.method, case.path, response.status_code))
            if 400 <= response.status_code < 500:
                assert written(CALLER["org"]) == self.before, f"{case.method} {case.path} refused and wrote"

    Workflows.run(
        settings=hypothesis.settings(
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=STATEFUL_STEPS,
            deadline=None,
            derandomize="OPB_SCHEMA_SEED" not in os.environ,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    # Only a link can name a real saved card: these prove the scenarios went past single calls.
    assert ("DELETE", "/api/credits/payment-methods", 204) in steps
    assert ("POST", "/api/credits/quick-purchase", 200) in steps
