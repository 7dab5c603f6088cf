"""POST /api/credits/usage/batch through the real app (ASGI) with real API keys, on the app's database.

Each event has its own result in request order (charged, not charged, replayed, refused with its own
error) and the others are recorded; entries are shaped as the single report's; the summary agrees with
the balance; a request that is not a batch (no list, none or more than 1,000 events, an event that is not
an object, bad JSON) is a 400 with the error body and writes nothing; only keys with `usage:write` spend.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from orcapulse_billing.api import schemas as s
from orcapulse_billing.ledger import check_invariants

from .apiutil import Org
from .test_api_scopes import SAME_ORIGIN, assert_insufficient_scope

BATCH = "/api/credits/usage/batch"


def sms(key: str, quantity: str = "1", **extra) -> dict:
    return {"operation": "sms_twilio", "quantity": quantity, "status": "completed", "idempotency_key": key, **extra}


def written(org: Org) -> tuple:
    acct = org.account()
    return acct.balance_units, acct.transaction_count, acct.version


def test_each_event_gets_its_own_result_in_order(client, org: Org):
    org.post("purchase", "10")
    tag = uuid.uuid4().hex[:8]
    single = client.post("/api/credits/usage", json=sms(f"{tag}-earlier", "2"), headers=org.auth("owner"))
    assert single.status_code == 200, single.text
    call = {"id": f"call-{tag}", "agent_id": "agent_1", "started_at": "2026-01-01T10:00:00Z"}
    events = [
        sms(f"{tag}-a", "3"),  # 0: charged
        {
            "operation": "openai_input_tokens",
            "quantity": 277,
            "model": "gpt-4o-mini",
            "status": "completed",
            "idempotency_key": f"{tag}-tiny",
        },  # 1: 0.4986 units, carried
        sms(f"{tag}-failed", status="failed"),  # 2: never charged
        {**sms(f"{tag}-bad"), "operation": "teleport"},  # 3: refused, bad operation
        {"operation": "sms_twilio", "quantity": "1", "status": "completed"},  # 4: refused, no key
        sms(f"{tag}-a", "3"),  # 5: the same key again, same report: replayed
        sms(f"{tag}-earlier", "2"),  # 6: reported before through the single endpoint: replayed
        sms(f"{tag}-earlier", "5"),  # 7: that key with another report: refused, conflict
        {
            "operation": "voice_pipeline",
            "quantity": "2.5",
            "status": "completed",
            "idempotency_key": f"{tag}-call",
            "session": call,
        },  # 8: charged, with its session
        {
            "operation": "chat",
            "quantity": "2",
            "status": "completed",
            "idempotency_key": f"{tag}-chat",
            "session": {"id": f"call-{tag}"},
        },  # 9: refused, that session was billed by 8
        {
            "operation": "chat",
            "quantity": "1.5",
            "status": "completed",
            "idempotency_key": f"{tag}-half",
        },  # 10: refused
    ]
    response = client.post(BATCH, json={"events": events}, headers=org.auth("owner"))
    assert response.status_code == 200, response.text
    # the answer is built as plain data: byte for byte what its documented model dumps (fields, their order,
    # nulls, money and timestamp formats)
    assert s.UsageBatchResponse.model_validate_json(response.content).model_dump_json() == response.text
    body = response.json()
    results = body["results"]
    assert [r["index"] for r in results] == list(range(len(events)))
    assert [r["status"] for r in results] == [
        "charged",
        "not_charged",
        "not_charged",
        "refused",
        "refused",
        "replayed",
        "replayed",
        "refused",
        "charged",
        "refused",
        "refused",
    ]
    assert [r["idempotency_key"] for r in results] == [e.get("idempotency_key") for e in events]
    errors = [(r["error"] or {}).get("code") for r in results]
    assert errors == [
        None,
        None,
        None,
        "invalid_request",
        "invalid_request",
        None,
        None,
        "idempotency_conflict",
        None,
        "invalid_request",
        "invalid_request",
    ]
    assert "teleport" in results[3]["error"]["message"] and "idempotency_key" in results[4]["error"]["message"]
    assert "already billed" in results[9]["error"]["message"] and "quantity" in results[10]["error"]["message"]
    a, tiny, call_result = results[0], results[1], results[8]
    assert a["cost"] == "0.0270" and a["entry"]["amount"] == "-0.0270" and a["balance"] == a["entry"]["balance_after"]
    assert tiny["entry"] is None and tiny["balance"] is None and tiny["cost"] == "0.0000"
    assert results[5]["entry"] == a["entry"]  # the replay answers the first entry
    assert results[6]["entry"] == single.json()["entry"]
    assert call_result["session_id"] == f"call-{tag}" and call_result["entry"]["usage_session_id"] == f"call-{tag}"
    # a charged event's entry is what the single endpoint answers for its key
    again = client.post("/api/credits/usage", json=sms(f"{tag}-a", "3"), headers=org.auth("owner")).json()
    assert again["replayed"] and again["entry"] == a["entry"]
    history = client.get("/api/credits/history", headers=org.auth("member")).json()["items"]
    by_id = {item["id"]: item for item in history}
    assert a["entry"] == by_id[a["entry"]["id"]] and call_result["entry"] == by_id[call_result["entry"]["id"]]
    session = client.get(f"/api/credits/sessions/call-{tag}", headers=org.auth("member")).json()
    assert session["ledger_entry_id"] == call_result["entry"]["id"]
    assert session["cost"]["total"] == call_result["entry"]["amount"].lstrip("-")
    balance = client.get("/api/credits/balance", headers=org.auth("member")).json()["balance"]
    assert body["summary"] == {"charged": 2, "not_charged": 2, "replayed": 2, "refused": 5, "balance": balance}
    charged = sum(Decimal(r["entry"]["amount"]) for r in results if r["status"] == "charged")
    assert Decimal(balance) == Decimal("10") + Decimal(single.json()["entry"]["amount"]) + charged
    with org.engine.connect() as conn:
        assert check_invariants(conn, org.account_id) == []


def test_sending_the_batch_again_replays_it(client, org: Org):
    org.post("purchase", "5")
    tag = uuid.uuid4().hex[:8]
    events = [sms(f"{tag}-{n}") for n in range(50)]
    first = client.post(BATCH, json={"events": events}, headers=org.auth("admin")).json()
    before = written(org)
    again = client.post(BATCH, json={"events": events}, headers=org.auth("admin")).json()
    assert written(org) == before
    assert again["summary"] == {**first["summary"], "charged": 0, "replayed": 50}
    assert [r["entry"] for r in again["results"]] == [r["entry"] for r in first["results"]]


def test_a_thousand_events_are_one_batch_and_a_thousand_and_one_are_refused(client, org: Org):
    org.post("purchase", "100")
    tag = uuid.uuid4().hex[:8]
    events = [sms(f"{tag}-{n}") for n in range(1001)]
    before = written(org)
    refused = client.post(BATCH, json={"events": events}, headers=org.auth("owner"))
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "invalid_request" and "1000" in refused.json()["error"]["message"]
    assert written(org) == before
    ok = client.post(BATCH, json={"events": events[:1000]}, headers=org.auth("owner"))
    assert ok.status_code == 200, ok.text
    assert ok.json()["summary"]["charged"] == 1000
    assert org.account().balance == Decimal("100") - 1000 * Decimal("0.0090")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"events": []},
        {"events": "sms"},
        {"events": {"0": {}}},
        {"events": [sms("x"), 7]},
        {"events": [sms("x"), None]},
        {"events": [sms("x")], "dry_run": True},
        [sms("x")],
    ],
    ids=["no-events", "empty", "a-string", "an-object", "a-number-event", "a-null-event", "extra-field", "a-bare-list"],
)
def test_a_request_that_is_not_a_batch_is_400_and_writes_nothing(client, org: Org, body):
    org.post("purchase", "1")
    before = written(org)
    response = client.post(BATCH, json=body, headers=org.auth("owner"))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["message"] and "Traceback" not in response.text
    assert written(org) == before


def test_bad_json_is_400_and_writes_nothing(client, org: Org):
    before = written(org)
    for body in (b'{"events": [', b'{"events": [{"operation": "sms_twilio", "quantity": NaN}]}'):
        response = client.post(BATCH, content=body, headers={**org.auth("owner"), "Content-Type": "application/json"})
        assert response.status_code == 400 and response.json()["error"]["code"] in ("invalid_json", "invalid_request")
    assert written(org) == before


def test_only_a_key_with_usage_write_reports_a_batch(client, org: Org):
    org.post("purchase", "1")
    before = written(org)
    body = {"events": [sms(uuid.uuid4().hex)]}
    assert_insufficient_scope(client.post(BATCH, json=body, headers=org.auth("member")))
    assert client.post(BATCH, json=body).status_code == 401
    signed_in = client.post("/api/auth/login", json={"email": org.emails["owner"], "password": org.password})
    assert signed_in.status_code == 200
    refused = client.post(BATCH, json=body, headers={"Origin": SAME_ORIGIN})
    assert_insufficient_scope(refused)
    assert "session" in refused.json()["error"]["message"]
    assert written(org) == before
