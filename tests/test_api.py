"""The REST API through real HTTP handling (ASGI) against the app's real SQLite database."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from orcapulse_billing.ledger import check_invariants
from orcapulse_billing.metering import OPERATIONS
from orcapulse_billing.pricing import RATE_CARD

from .apiutil import Org


def test_packages_are_public_and_exact(client):
    body = client.get("/api/credits/packages").json()
    assert [(p["id"], p["credits"], p["price"], p["bonus_credits"], p["bonus_percent"]) for p in body["packages"]] == [
        ("pkg_50", "50.0000", "50.0000", "0.0000", "0"),
        ("pkg_200", "200.0000", "200.0000", "4.0000", "2"),
        ("pkg_500", "500.0000", "500.0000", "25.0000", "5"),
        ("pkg_1000", "1000.0000", "1000.0000", "100.0000", "10"),
    ]
    assert body["custom"] == {"min": "1.0000", "max": "100.0000", "currency": "USD"}


def test_login_sets_an_httponly_cookie_and_logout_revokes_it(client, org: Org):
    response = client.post("/api/auth/login", json={"email": org.emails["owner"], "password": org.password})
    assert response.status_code == 200 and response.json()["role"] == "owner"
    cookie = response.headers["set-cookie"]
    assert "opb_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    token = client.cookies.get("opb_session")
    assert client.get("/api/auth/me").json()["email"] == org.emails["owner"]
    assert client.post("/api/auth/logout").status_code == 403  # a signed-in write names its origin
    assert client.post("/api/auth/logout", headers={"Origin": "http://testserver"}).status_code == 204
    client.cookies.set("opb_session", token)  # a stolen copy of the old cookie
    assert client.get("/api/credits/balance").status_code == 401


def test_wrong_password_unknown_user_and_rate_limit(client, org: Org):
    bad = client.post("/api/auth/login", json={"email": org.emails["member"], "password": "wrong password"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_credentials"
    assert client.post("/api/auth/login", json={"email": "ghost@nowhere.test", "password": "x"}).status_code == 401
    statuses = [
        client.post("/api/auth/login", json={"email": org.emails["admin"], "password": "nope"}).status_code
        for _ in range(12)
    ]
    assert statuses[:10] == [401] * 10 and statuses[10:] == [429, 429]


def test_expired_session_is_refused(client, org: Org, app_engine):
    client.post("/api/auth/login", json={"email": org.emails["member"], "password": org.password})
    assert client.get("/api/credits/balance").status_code == 200
    with app_engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE auth_session SET expires_at = :t WHERE user_id = :u"),
            {"t": datetime.now(UTC) - timedelta(minutes=1), "u": org.user_ids["member"]},
        )
    assert client.get("/api/credits/balance").status_code == 401


def test_api_keys(client, org: Org, app_engine):
    ok = client.get("/api/credits/balance", headers=org.auth("admin"))
    assert ok.status_code == 200
    for header in (
        {"Authorization": "Bearer opb_not-a-key"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer "},
    ):
        r = client.get("/api/credits/balance", headers=header)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    with app_engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE api_key SET revoked_at = :t WHERE user_id = :u"),
            {"t": datetime.now(UTC), "u": org.user_ids["admin"]},
        )
    assert client.get("/api/credits/balance", headers=org.auth("admin")).status_code == 401


def test_balance_flags_low_balance_grace_and_operations(client, org: Org):
    body = client.get("/api/credits/balance", headers=org.auth("member")).json()
    assert body == {
        "balance": "0.0000",
        "available": "0.0000",
        "reserved": "0.0000",
        "currency": "USD",
        "low_balance": True,
        "low_balance_threshold": "5.0000",
        "grace_limit": "5.0000",
        "in_grace_period": False,
        "can_start_operations": False,
        "lifetime_added": "0.0000",
        "lifetime_consumed": "0.0000",
        "transaction_count": 0,
    }
    org.post("purchase", "5")
    body = client.get("/api/credits/balance", headers=org.auth("member")).json()
    assert (body["balance"], body["low_balance"], body["can_start_operations"]) == ("5.0000", False, True)
    org.post("usage", "-7.5", category="ai_call")
    body = client.get("/api/credits/balance", headers=org.auth("member")).json()
    assert (body["balance"], body["in_grace_period"], body["can_start_operations"]) == ("-2.5000", True, False)


def test_history_pages_through_120_entries_newest_first(client, org: Org):
    for n in range(1, 121):
        org.post(
            "purchase" if n % 4 == 0 else "usage",
            str(n) if n % 4 == 0 else "-0.0001",
            category=None if n % 4 == 0 else "sms",
            description=f"entry {n}",
            created_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=n),
        )
    seen = []
    for page in (1, 2, 3):
        body = client.get(
            "/api/credits/history", params={"page": page, "page_size": 50}, headers=org.auth("member")
        ).json()
        assert (body["page"], body["page_size"], body["total"], body["total_pages"]) == (page, 50, 120, 3)
        seen += [item["description"] for item in body["items"]]
    assert seen == [f"entry {n}" for n in range(120, 0, -1)]
    item = client.get("/api/credits/history", params={"page_size": 10}, headers=org.auth("member")).json()["items"][0]
    assert (
        item["type"] == "purchase"
        and item["amount"] == "120.0000"
        and item["created_at"].endswith("Z")
        or "+00:00" in item["created_at"]
    )
    topups = client.get(
        "/api/credits/history", params={"type": "topup", "page_size": 25, "page": 2}, headers=org.auth("member")
    ).json()
    assert topups["total"] == 30 and topups["total_pages"] == 2 and len(topups["items"]) == 5
    assert all(i["type"] == "purchase" for i in topups["items"])
    usage = client.get(
        "/api/credits/history", params={"type": "usage", "page_size": 100}, headers=org.auth("member")
    ).json()
    assert usage["total"] == 90 and all(i["amount"] == "-0.0001" for i in usage["items"])
    window = client.get(
        "/api/credits/history",
        headers=org.auth("member"),
        params={"from": "2026-01-01T10:00:00Z", "to": "2026-01-01T20:00:00Z"},
    ).json()
    assert [i["description"] for i in window["items"]] == [f"entry {n}" for n in range(19, 9, -1)]
    beyond = client.get("/api/credits/history", params={"page": 99}, headers=org.auth("member")).json()
    assert beyond["items"] == [] and beyond["total"] == 120


@pytest.mark.parametrize(
    "params, message",
    [
        ({"page_size": 7}, "page_size"),
        ({"page_size": "abc"}, "page_size"),
        ({"type": "gifts"}, "type"),
        ({"page": 0}, "page"),
        ({"page": "x"}, "page"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "'to' must not be before 'from'"),
    ],
)
def test_history_bad_input_is_400(client, org: Org, params, message):
    r = client.get("/api/credits/history", params=params, headers=org.auth("member"))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    assert message in r.json()["error"]["message"]


def test_csv_export_has_the_same_rows_as_the_history(client, org: Org):
    for n in range(30):
        org.post(
            "usage" if n % 3 else "bonus",
            "-0.25" if n % 3 else "1",
            category="sms" if n % 3 else None,
            description=f'row, "{n}"',
        )
    r = client.get("/api/credits/history.csv", params={"type": "usage"}, headers=org.auth("member"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    api = client.get(
        "/api/credits/history", params={"type": "usage", "page_size": 100}, headers=org.auth("member")
    ).json()
    assert [(x["id"], x["amount"], x["description"]) for x in rows] == [
        (str(i["id"]), i["amount"], i["description"]) for i in api["items"]
    ]
    assert len(rows) == 20


def test_usage_summary_by_category(client, org: Org):
    org.post("purchase", "100")
    for amount, category in (("-1.5", "ai_call"), ("-2.25", "ai_call"), ("-0.009", "sms"), ("-0.3", "tts")):
        org.post("usage", amount, category=category)
    body = client.get("/api/credits/usage-summary", headers=org.auth("member")).json()
    assert body["categories"] == [
        {"category": "ai_call", "amount": "3.7500", "count": 2},
        {"category": "tts", "amount": "0.3000", "count": 1},
        {"category": "sms", "amount": "0.0090", "count": 1},
    ]
    assert (body["total"], body["count"]) == ("4.0590", 4)
    future = client.get(
        "/api/credits/usage-summary", params={"from": "2099-01-01T00:00:00Z"}, headers=org.auth("member")
    )
    assert future.json()["categories"] == [] and future.json()["total"] == "0.0000"


EXPECTED_RATES = {
    "ai_call": ("10", "0.168"),
    "call_recording": ("10", "0.03"),
    "whatsapp": ("10", "0.06"),
    "sms_twilio": ("10", "0.09"),
    "sms_telnyx": ("10", "0.06"),
    "email": ("1000", "0.36"),
    "transcription_deepgram": ("10", "0.0708"),
    "tts_elevenlabs": ("2500", "0.09"),
    "voice_pipeline": ("3.5", "0.2555"),
    "voice_realtime": ("10", "1.1"),
    "chat": ("25", "0.025"),
    "openai_input_tokens": ("1000000", "0.18"),
    "openai_output_tokens": ("100000", "0.072"),
}


@pytest.mark.parametrize("operation", OPERATIONS)
def test_metering_charges_exactly_the_rate_card(client, org: Org, operation):
    quantity, expected = EXPECTED_RATES[operation]
    org.post("purchase", "50")
    body = {"operation": operation, "quantity": quantity, "status": "completed", "idempotency_key": uuid.uuid4().hex}
    if operation.startswith("openai"):
        body["model"] = "gpt-4o-mini"
    r = client.post("/api/credits/usage", json=body, headers=org.auth("owner"))
    assert r.status_code == 200, r.text
    cost = Decimal(expected).quantize(Decimal("0.0001"))
    assert r.json()["cost"] == f"{cost:.4f}" and r.json()["entry"]["amount"] == f"{-cost:.4f}"
    assert r.json()["balance"] == f"{Decimal(50) - cost:.4f}"
    if operation in RATE_CARD:
        assert r.json()["entry"]["category"] == RATE_CARD[operation].category


def test_voice_session_description_and_rounding(client, org: Org):
    org.post("purchase", "10")
    r = client.post(
        "/api/credits/usage",
        headers=org.auth("owner"),
        json={"operation": "ai_call", "quantity": 0.7, "status": "completed", "idempotency_key": "r1"},
    )
    assert r.json()["cost"] == "0.0118"  # 0.01176 rounds half-up at posting
    r = client.post(
        "/api/credits/usage",
        headers=org.auth("owner"),
        json={
            "operation": "voice_pipeline",
            "quantity": "3.5",
            "status": "completed",
            "idempotency_key": "r2",
            "session": {"id": "sess_1", "agent_id": "agent_abc123"},
        },
    )
    assert r.json()["entry"]["description"] == "Voice call session - agent_abc123 - 3.5 min"


def test_failed_operations_are_never_charged(client, org: Org):
    org.post("purchase", "10")
    r = client.post(
        "/api/credits/usage",
        headers=org.auth("owner"),
        json={"operation": "voice_pipeline", "quantity": "30", "status": "failed", "idempotency_key": "f1"},
    )
    assert r.status_code == 200 and r.json()["charged"] is False and r.json()["entry"] is None
    assert org.account().transaction_count == 1 and org.account().balance == Decimal(10)


def test_check_refuses_at_zero_and_completed_calls_are_charged_into_grace_and_debt(client, org: Org):
    org.post("purchase", "1")
    ok = client.post(
        "/api/credits/check", json={"operation": "ai_call", "estimated_quantity": "5"}, headers=org.auth("member")
    )
    assert ok.status_code == 200 and ok.json() == {
        "allowed": True,
        "balance": "1.0000",
        "estimated_cost": "0.0840",
        "reason": None,
    }
    # a call that started with credit runs long: it is charged into the grace period
    r = client.post(
        "/api/credits/usage",
        headers=org.auth("owner"),
        json={"operation": "voice_realtime", "quantity": "50", "status": "completed", "idempotency_key": "long"},
    )
    assert r.status_code == 200 and r.json()["balance"] == "-4.5000"
    refused = client.post("/api/credits/check", json={"operation": "sms_twilio"}, headers=org.auth("member"))
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "insufficient_credits"
    # beyond the grace limit a completed operation is still recorded (never free): the balance is debt
    r = client.post(
        "/api/credits/usage",
        headers=org.auth("owner"),
        json={"operation": "voice_realtime", "quantity": "10", "status": "completed", "idempotency_key": "past-grace"},
    )
    assert r.status_code == 200 and r.json()["balance"] == "-5.6000" and r.json()["charged"]
    assert org.account().balance == Decimal("-5.6")
    # and the debt blocks new operations and holds until it is paid
    refused = client.post("/api/credits/check", json={"operation": "sms_twilio"}, headers=org.auth("member"))
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "insufficient_credits"
    held = client.post(
        "/api/credits/holds",
        headers=org.auth("owner"),
        json={"operation": "sms_twilio", "estimated_quantity": "1", "idempotency_key": "after-debt"},
    )
    assert held.status_code == 402 and held.json()["error"]["code"] == "insufficient_credits"
    org.post("purchase", "5.6")
    refused = client.post("/api/credits/check", json={"operation": "sms_twilio"}, headers=org.auth("member"))
    assert refused.status_code == 402  # at zero: still nothing new
    org.post("purchase", "1")
    assert (
        client.post("/api/credits/check", json={"operation": "sms_twilio"}, headers=org.auth("member")).status_code
        == 200
    )


def test_usage_idempotency(client, org: Org):
    org.post("purchase", "10")
    body = {"operation": "sms_twilio", "quantity": "3", "status": "completed"}
    first = client.post("/api/credits/usage", json=body, headers={**org.auth("owner"), "Idempotency-Key": "sms-1"})
    again = client.post("/api/credits/usage", json=body, headers={**org.auth("owner"), "Idempotency-Key": "sms-1"})
    assert first.status_code == again.status_code == 200
    assert again.json()["replayed"] and again.json()["entry"]["id"] == first.json()["entry"]["id"]
    other = client.post(
        "/api/credits/usage", json={**body, "quantity": "4"}, headers={**org.auth("owner"), "Idempotency-Key": "sms-1"}
    )
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
    missing = client.post("/api/credits/usage", json=body, headers=org.auth("owner"))
    assert missing.status_code == 400
    assert org.account().transaction_count == 2


@pytest.mark.parametrize(
    "body",
    [
        {"operation": "sms_twilio", "quantity": "-1", "status": "completed", "idempotency_key": "k"},
        {"operation": "sms_twilio", "quantity": "abc", "status": "completed", "idempotency_key": "k"},
        {"operation": "sms_twilio", "quantity": 0, "status": "completed", "idempotency_key": "k"},
        {"operation": "sms_twilio", "quantity": "NaN", "status": "completed", "idempotency_key": "k"},
        {"operation": "teleport", "quantity": "1", "status": "completed", "idempotency_key": "k"},
        {"operation": "sms_twilio", "quantity": "1", "status": "maybe", "idempotency_key": "k"},
        {"operation": "chat", "quantity": "2.5", "status": "completed", "idempotency_key": "k"},
        {
            "operation": "openai_input_tokens",
            "quantity": "10",
            "status": "completed",
            "idempotency_key": "k",
            "model": "gpt-9",
        },
        {"operation": "sms_twilio", "quantity": "1", "status": "completed", "idempotency_key": "k", "surprise": 1},
        {
            "operation": "voice_pipeline",
            "quantity": "1",
            "status": "completed",
            "idempotency_key": "k",
            "session": {"id": "s", "started_at": "2026-01-02T00:00:00Z", "ended_at": "2026-01-01T00:00:00Z"},
        },
    ],
)
def test_bad_usage_input_is_400_and_writes_nothing(client, org: Org, body):
    org.post("purchase", "10")
    before = org.account()
    r = client.post("/api/credits/usage", json=body, headers=org.auth("owner"))
    assert r.status_code == 400 and r.json()["error"]["code"] in ("invalid_request", "invalid_json")
    assert org.account() == before


def test_malformed_json_is_400(client, org: Org):
    r = client.post(
        "/api/credits/usage", content=b"{not json", headers={**org.auth("owner"), "Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] in ("invalid_json", "invalid_request")


def test_billing_session_keeps_its_breakdown_and_entry(client, org: Org, other: Org):
    org.post("purchase", "10")
    session = {
        "id": "call_42",
        "agent_id": "agent_abc123",
        "agent_name": "Sales bot",
        "transcript": "Hi!",
        "recording_url": "https://rec.example/call_42.mp3",
        "analysis": {"sentiment": "positive"},
        "started_at": "2026-11-20T10:00:00Z",
        "ended_at": "2026-11-20T10:03:30Z",
    }
    r = client.post(
        "/api/credits/usage",
        headers=org.auth("owner"),
        json={
            "operation": "voice_pipeline",
            "quantity": "3.5",
            "status": "completed",
            "idempotency_key": "c42",
            "session": session,
        },
    )
    entry = r.json()["entry"]
    assert entry["usage_session_id"] == "call_42"
    got = client.get("/api/credits/sessions/call_42", headers=org.auth("member")).json()
    assert got["cost"] == {"base": "0.1750", "llm": "0.0525", "stt": "0.0105", "tts": "0.0175", "total": "0.2555"}
    assert (got["architecture"], got["duration_minutes"], got["ledger_entry_id"]) == ("pipeline", "3.5", entry["id"])
    assert got["transcript"] == "Hi!" and got["analysis"] == {"sentiment": "positive"}
    assert client.get("/api/credits/sessions/call_42", headers=other.auth("owner")).status_code == 404
    assert client.get("/api/credits/sessions/nope", headers=org.auth("member")).status_code == 404
    dup = client.post(
        "/api/credits/usage",
        headers=org.auth("owner"),
        json={
            "operation": "voice_pipeline",
            "quantity": "1",
            "status": "completed",
            "idempotency_key": "c43",
            "session": session,
        },
    )
    assert dup.status_code == 400 and "already billed" in dup.json()["error"]["message"]
    with org.engine.connect() as conn:
        assert check_invariants(conn, org.account_id) == []


ENDPOINTS = [
    ("GET", "/api/credits/balance", None),
    ("GET", "/api/credits/history", None),
    ("GET", "/api/credits/history.csv", None),
    ("GET", "/api/credits/usage-summary", None),
    ("GET", "/api/credits/sessions/s1", None),
    ("POST", "/api/credits/check", {"operation": "sms_twilio"}),
    ("POST", "/api/credits/usage", {"operation": "sms_twilio", "quantity": "1", "status": "completed"}),
    ("GET", "/api/auth/me", None),
]


@pytest.fixture(scope="module")
def matrix_orgs(app_engine, app_ledger):
    from .apiutil import Org

    org, other = Org(app_engine, app_ledger), Org(app_engine, app_ledger, roles=("owner", "member"))
    org.post("purchase", "10")
    org.session("s1")
    other.post("purchase", "3")
    return org, other


@pytest.mark.parametrize("method, path, body", ENDPOINTS)
@pytest.mark.parametrize("who", ["owner", "admin", "member", "other", "anonymous"])
def test_role_matrix(client, matrix_orgs, who, method, path, body):
    """Every member role can view its own organization, owners' and admins' usage:write keys meter it
    and members' keys cannot (403 insufficient_scope); another organization's member sees only their
    own; anonymous callers get 401 and write nothing."""
    org, other = matrix_orgs
    headers = {} if who == "anonymous" else (other.auth("member") if who == "other" else org.auth(who))
    headers["Idempotency-Key"] = uuid.uuid4().hex
    mine, theirs = (other, org) if who == "other" else (org, other)
    mine_before, theirs_before = mine.account(), theirs.account()
    r = client.request(method, path, json=body, headers=headers)
    if who == "anonymous":
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
        assert (org.account(), other.account()) == (mine_before, theirs_before)
        return
    if path.endswith("/sessions/s1") and who == "other":
        assert r.status_code == 404
        return
    if path == "/api/credits/usage" and who in ("member", "other"):
        assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope", r.text
        assert (mine.account(), theirs.account()) == (mine_before, theirs_before)
        return
    assert r.status_code == 200, r.text
    assert theirs.account() == theirs_before  # nothing crosses organizations
    if path == "/api/credits/balance":
        assert r.json()["balance"] == f"{mine_before.balance:.4f}"
        assert r.json()["transaction_count"] == mine_before.transaction_count
    if path == "/api/credits/usage":
        assert mine.account().transaction_count == mine_before.transaction_count + 1
        assert r.json()["entry"]["amount"] == "-0.0090"
    if path == "/api/credits/check":
        assert r.json()["allowed"] is True


# -- the contract: what the OpenAPI document says is what the server does (see test_api_schema.py) --


def test_undeclared_methods_get_405_with_allow_also_inside_reflex(client):
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.testclient import TestClient

    from orcapulse_billing.api import create_api_app

    r = client.request("TRACE", "/api/credits/auto-recharge")
    assert r.status_code == 405 and r.headers["allow"] == "GET, PUT"
    assert r.json() == {"error": {"code": "method_not_allowed", "message": "TRACE is not supported here; use GET, PUT"}}
    assert client.patch("/api/credits/sessions/s1").headers["allow"] == "GET"
    options = client.options("/api/credits/payment-methods")
    assert options.status_code == 204 and options.headers["allow"] == "GET, DELETE"
    # Reflex mounts its own app under the API's routes (rx.App(api_transformer=...)): still 405
    api = create_api_app()
    api.mount("", Starlette(routes=[], exception_handlers={404: lambda *_: PlainTextResponse("reflex", 404)}))
    with TestClient(api) as mounted:
        assert mounted.delete("/api/credits/balance").status_code == 405
        assert mounted.get("/somewhere/else").text == "reflex"


@pytest.mark.parametrize("value", ["0.5", "1700000000", "2026-01-01", "2026-01-01T00:00", "2026-02-30T00:00:00Z"])
def test_timestamps_are_rfc3339_date_times(client, org: Org, value):
    for path in ("/api/credits/history", "/api/credits/history.csv", "/api/credits/usage-summary"):
        r = client.get(path, params={"to": value}, headers=org.auth("member"))
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", (path, r.text)


def test_instants_beyond_python_years_clamp_instead_of_failing(client, org: Org):
    org.post("purchase", "10")
    r = client.get(
        "/api/credits/usage-summary",
        params={"from": "0000-01-01T00:00:00Z", "to": "9999-12-31T23:59:59-23:59"},
        headers=org.auth("member"),
    )
    assert r.status_code == 200 and r.json()["to"] == "9999-12-31T23:59:59.999999Z"
    leap = client.get("/api/credits/history", params={"to": "2016-12-31T23:59:60Z"}, headers=org.auth("member"))
    assert leap.status_code == 200


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/credits/create-checkout", {"amount": 25}),  # money is a decimal string
        ("/api/credits/create-checkout", {"amount": "25.00", "package_id": None}),
        ("/api/credits/create-checkout", {"package_id": None}),
        ("/api/credits/create-checkout", {"amount": " 25"}),
        ("/api/credits/create-checkout", {"amount": "2.5e1"}),
        ("/api/credits/create-checkout", {"package_id": "pkg_50", "payment_method_id": "pm_1"}),
        ("/api/credits/quick-purchase", {"package_id": "pkg_50", "provider": "stripe"}),
        ("/api/credits/usage", {"operation": "openai_input_tokens", "quantity": "10", "status": "completed"}),
        ("/api/credits/usage", {"operation": "sms_twilio", "quantity": "0.0000001", "status": "completed"}),
        ("/api/credits/usage", {"operation": "sms_twilio", "quantity": "1e3", "status": "completed"}),
        ("/api/credits/usage", {"operation": "sms_twilio", "quantity": True, "status": "completed"}),
        ("/api/credits/check", {"operation": "chat", "estimated_quantity": "2.5"}),
    ],
)
def test_requests_outside_the_document_are_400_and_write_nothing(client, org: Org, path, body):
    org.post("purchase", "10")
    before = org.account()
    headers = {**org.auth("owner"), "Idempotency-Key": uuid.uuid4().hex}
    r = client.post(path, json=body, headers=headers)
    assert r.status_code == 400 and set(r.json()["error"]) == {"code", "message"}, r.text
    assert org.account() == before


def test_auto_recharge_money_is_a_decimal_string(client, org: Org):
    for bad in ({"threshold": 10}, {"threshold": "10.00001"}, {"amount": "1e2"}, {"monthly_cap": "5"}):
        body = {"enabled": False, "threshold": "10", "amount": "25", **bad}
        assert client.put("/api/credits/auto-recharge", json=body, headers=org.auth("owner")).status_code == 400


def test_usage_quantity_numbers_round_to_six_places_and_analysis_numbers_are_kept(client, org: Org):
    org.post("purchase", "10")
    r = client.post(
        "/api/credits/usage",
        headers=org.auth("owner"),
        json={
            "operation": "voice_pipeline",
            "quantity": 1.00000049,
            "status": "completed",
            "idempotency_key": uuid.uuid4().hex,
            "session": {"id": "num-1", "analysis": {"score": 0.25, "turns": 3, "big": 1e30}},
        },
    )
    assert r.status_code == 200, r.text
    got = client.get("/api/credits/sessions/num-1", headers=org.auth("member")).json()
    assert got["duration_minutes"] == "1" and got["analysis"] == {"score": 0.25, "turns": 3, "big": 1e30}
    nan = b'{"operation": "sms_twilio", "quantity": NaN, "status": "completed", "idempotency_key": "n"}'
    r = client.post(
        "/api/credits/usage", content=nan, headers={**org.auth("owner"), "Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] in ("invalid_json", "invalid_request")


def test_signed_provider_events_of_the_wrong_shape_are_400_not_500(client, app_engine):
    import hashlib
    import hmac

    from orcapulse_billing.config import get_settings
    from orcapulse_billing.sandbox.stripe_checkout import sign

    settings = get_settings()
    for event in (
        [1, 2],
        {"id": "evt_1", "type": "checkout.session.completed", "data": {"object": {"metadata": [1]}}},
        {"id": "evt_2", "type": "charge.refunded", "data": {"object": {"amount_refunded": "12"}}},
        {"id": "evt_3", "type": "x"},
    ):
        payload = json.dumps(event).encode()
        signature = sign(payload, settings.stripe_webhook_secrets[-1])
        r = client.post("/api/credits/webhook", content=payload, headers={"Stripe-Signature": signature})
        assert r.status_code == 400, r.text
    for body in (
        {"meta": {"event_name": "order_created", "custom_data": {"organization_id": "99999999999999999999"}}},
        {"meta": {"event_name": "order_created"}, "data": {"type": "orders", "id": "1", "attributes": {"total": "5"}}},
    ):
        payload = json.dumps(body).encode()
        signature = hmac.new(settings.lemonsqueezy_webhook_secret.encode(), payload, hashlib.sha256).hexdigest()
        r = client.post("/api/credits/lemonsqueezy/webhook", content=payload, headers={"X-Signature": signature})
        assert r.status_code == 400, r.text
    bad_signature = client.post(
        "/api/credits/lemonsqueezy/webhook", content=b"{}", headers={"X-Signature": "é".encode("latin-1")}
    )
    assert bad_signature.status_code == 400


def test_the_document_states_the_contract(client):
    doc = client.get("/api/openapi.json").json()
    text = json.dumps(doc)
    assert '"422"' not in text and "HTTPValidationError" not in text  # refusals are 400 with the error body
    schemas = doc["components"]["schemas"]
    checkout = schemas["CheckoutRequest"]
    assert checkout["oneOf"] == [{"required": ["package_id"]}, {"required": ["amount"]}]
    assert checkout["properties"]["amount"]["pattern"] and checkout["properties"]["amount"]["type"] == "string"
    assert all("pattern" in schemas["AutoRechargeUpdate"]["properties"][f] for f in ("threshold", "amount"))
    assert set(doc["components"]["securitySchemes"]) == {"ApiKey", "Session"}
    history = {p["name"]: p for p in doc["paths"]["/api/credits/history"]["get"]["parameters"]}
    assert history["from"]["schema"] == {**history["from"]["schema"], "type": "string", "format": "date-time"}
    assert "must not be before `from`" in history["to"]["description"]
    webhook = doc["paths"]["/api/credits/webhook"]["post"]
    assert webhook["parameters"][0]["name"] == "Stripe-Signature" and webhook["parameters"][0]["required"] is True
    assert "links" in doc["paths"]["/api/credits/usage"]["post"]["responses"]["200"]


def test_a_served_api_freezes_its_start_up_heap_once(client):
    """heap.py: served, the API's start-up objects leave the cyclic collector's generations, once per process
    (here the `client` fixture has served it); later objects are still collected."""
    import gc

    from orcapulse_billing.heap import OLDER_THRESHOLDS, YOUNG_THRESHOLD, freeze_startup_heap

    frozen = gc.get_freeze_count()
    assert frozen > 10_000
    assert gc.get_threshold() == (YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    freeze_startup_heap()
    assert gc.get_freeze_count() == frozen

    class Cycle:
        pass

    cycle = Cycle()
    cycle.me = cycle  # type: ignore[attr-defined]
    del cycle
    assert gc.collect() >= 1  # made after the freeze: still garbage collected
    assert client.get("/api/health").json()["status"] == "ok"
