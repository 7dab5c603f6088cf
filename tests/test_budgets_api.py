"""Spend budgets through the REST API (roles, refusals that write nothing, the 402 `budget_exceeded` of a
hard stop on usage, batches and holds, OpenAPI) and the CLI (real processes on a database file)."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from .test_cli import _make_cli


def _budget_rows(engine, org_id: int) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text("SELECT target, amount, hard_stop FROM spend_budget WHERE organization_id = :o ORDER BY id"),
                {"o": org_id},
            )
        ]


def _key_id(engine, user_id: int) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT id FROM api_key WHERE user_id = :u"), {"u": user_id}).scalar_one()


def _usage(client, org, role="owner", minutes="3"):
    body = {"operation": "ai_call", "quantity": minutes, "status": "completed", "idempotency_key": uuid.uuid4().hex}
    return client.post("/api/credits/usage", json=body, headers=org.auth(role))


def test_owners_set_and_remove_budgets_admins_read_members_do_not(client, org, other, app_engine):
    org.post("purchase", "50")
    body = {"amount": "1.00", "hard_stop": True}
    # refusals first: each writes nothing
    for role in ("admin", "member"):
        answer = client.put("/api/credits/budgets/organization", json=body, headers=org.auth(role))
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "forbidden"
    assert client.get("/api/credits/budgets", headers=org.auth("member")).status_code == 403
    assert client.put("/api/credits/budgets/organization", json=body).status_code == 401
    for payload in ({"amount": "0.99"}, {"amount": "1.001"}, {"amount": 5}, {"amount": "-5"}, {}, {**body, "x": 1}):
        answer = client.put("/api/credits/budgets/organization", json=payload, headers=org.auth("owner"))
        assert answer.status_code == 400, (payload, answer.text)
    other_key = _key_id(app_engine, other.user_ids["owner"])
    for path in (
        f"/api/credits/budgets/api-keys/{other_key}",
        f"/api/credits/budgets/members/{other.user_ids['owner']}",
    ):
        answer = client.put(path, json=body, headers=org.auth("owner"))
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
    assert client.delete("/api/credits/budgets/organization", headers=org.auth("owner")).status_code == 404
    assert _budget_rows(app_engine, org.id) == []

    assert _usage(client, org).status_code == 200  # $0.0504 before the budget: it starts from the month's usage
    answer = client.put("/api/credits/budgets/organization", json=body, headers=org.auth("owner"))
    assert answer.status_code == 200, answer.text
    budget = answer.json()
    assert (budget["scope"], budget["amount"], budget["spent"], budget["percent"], budget["level"]) == (
        "organization",
        "1.0000",
        "0.0504",
        "5.0",
        0,
    )
    admin_key = _key_id(app_engine, org.user_ids["admin"])
    member_budget = client.put(
        f"/api/credits/budgets/members/{org.user_ids['admin']}", json={"amount": "25"}, headers=org.auth("owner")
    )
    assert member_budget.status_code == 200 and member_budget.json()["hard_stop"] is False
    key_budget = client.put(
        f"/api/credits/budgets/api-keys/{admin_key}", json={"amount": "30"}, headers=org.auth("owner")
    )
    assert key_budget.status_code == 200 and key_budget.json()["api_key_id"] == admin_key

    listed = client.get("/api/credits/budgets", headers=org.auth("admin"))
    assert listed.status_code == 200
    assert [b["scope"] for b in listed.json()["budgets"]] == ["organization", "api_key", "member"]
    assert client.get("/api/credits/budgets", headers=other.auth("owner")).json()["budgets"] == []

    # the hard stop: 19 reports fit in $1.00, the 20th is 402 budget_exceeded and records nothing
    for _ in range(18):
        assert _usage(client, org, "admin").status_code == 200
    balance = org.account().balance_units
    refused = _usage(client, org, "admin")
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "budget_exceeded"
    assert org.account().balance_units == balance
    events = [
        {"operation": "ai_call", "quantity": "3", "status": "completed", "idempotency_key": uuid.uuid4().hex}
        for _ in range(2)
    ]
    batch = client.post("/api/credits/usage/batch", json={"events": events}, headers=org.auth("owner")).json()
    assert [(r["status"], r["error"]["code"]) for r in batch["results"]] == [("refused", "budget_exceeded")] * 2
    hold = {"operation": "ai_call", "estimated_quantity": "3", "idempotency_key": uuid.uuid4().hex}
    placed = client.post("/api/credits/holds", json=hold, headers=org.auth("owner"))
    assert placed.status_code == 402 and placed.json()["error"]["code"] == "budget_exceeded"
    # the pre-flight check says so before the work is done, and lets through what still fits
    asked = {"operation": "ai_call", "estimated_quantity": "3"}
    checked = client.post("/api/credits/check", json=asked, headers=org.auth("owner"))
    assert checked.status_code == 402 and checked.json()["error"]["code"] == "budget_exceeded"
    small = {"operation": "sms_twilio", "estimated_quantity": "1"}
    checked = client.post("/api/credits/check", json=small, headers=org.auth("owner"))
    assert checked.status_code == 200 and checked.json()["allowed"] is True
    listed = {b["scope"]: b for b in client.get("/api/credits/budgets", headers=org.auth("owner")).json()["budgets"]}
    assert (listed["organization"]["spent"], listed["organization"]["level"]) == ("0.9576", 80)
    assert listed["member"]["spent"] == listed["api_key"]["spent"] == "0.9072"  # the admin's 18 reports

    # remove: owners only
    assert client.delete("/api/credits/budgets/organization", headers=org.auth("admin")).status_code == 403
    assert client.delete("/api/credits/budgets/organization", headers=org.auth("owner")).status_code == 204
    assert _usage(client, org, "admin").status_code == 200
    assert client.delete(f"/api/credits/budgets/api-keys/{admin_key}", headers=org.auth("owner")).status_code == 204
    path = f"/api/credits/budgets/members/{org.user_ids['admin']}"
    assert client.delete(path, headers=org.auth("owner")).status_code == 204
    assert client.delete(path, headers=org.auth("owner")).status_code == 404
    assert _budget_rows(app_engine, org.id) == []


def test_the_budget_routes_are_documented(client):
    document = client.get("/api/openapi.json").json()
    paths = document["paths"]
    assert set(paths["/api/credits/budgets"]) == {"get"}
    for path in (
        "/api/credits/budgets/organization",
        "/api/credits/budgets/api-keys/{api_key_id}",
        "/api/credits/budgets/members/{user_id}",
    ):
        assert set(paths[path]) == {"put", "delete"}
    assert "402" in paths["/api/credits/usage"]["post"]["responses"]
    assert "budget_exceeded" in paths["/api/credits/holds"]["post"]["responses"]["402"]["description"]
    amount = document["components"]["schemas"]["BudgetIn"]["properties"]["amount"]
    assert amount["type"] == "string" and "pattern" in amount


def test_the_cli_lists_sets_and_removes_budgets(tmp_path):
    cli = _make_cli(tmp_path)
    try:
        cli("create-org", "Acme")
        cli("add-user", "Acme", "ops@acme.test", "--role", "admin", "--password", "a-long-test-password")
        assert "no spend budgets" in cli("budgets", "Acme").stdout
        out = cli("budgets", "Acme", "set", "--amount", "250", "--hard-stop").stdout
        assert "Organization" in out and "$0.00 of $250.00 (0.0%)" in out and "hard stop" in out
        out = cli("budgets", "Acme", "set", "--amount", "40", "--member", "ops@acme.test").stdout
        assert "Member ops@acme.test" in out and "alerts only" in out
        listed = cli("budgets", "Acme").stdout.splitlines()
        assert len(listed) == 2 and "Organization" in listed[0] and "ops@acme.test" in listed[1]
        out = cli("budgets", "Acme", "set", "--amount", "300", "--no-hard-stop").stdout
        assert "$300.00" in out and "alerts only" in out

        # bad input: one line, exit status 2, nothing written
        with cli.engine.connect() as conn:
            before = conn.execute(sa.text("SELECT target, amount, hard_stop FROM spend_budget ORDER BY id")).all()
        for args in (
            ("budgets", "Acme", "set", "--amount", "0.5"),
            ("budgets", "Acme", "set", "--amount", "ten"),
            ("budgets", "Acme", "set", "--amount", "10", "--member", "nobody@acme.test"),
            ("budgets", "Acme", "set", "--amount", "10", "--key", "999"),
            ("budgets", "Acme", "set", "--amount", "10", "--key", "1", "--member", "ops@acme.test"),
            ("budgets", "Acme", "remove", "--key", "999"),
            ("budgets", "Nobody"),
            ("budgets", "Acme", "set"),
        ):
            result = cli(*args, ok=False)
            assert result.returncode == 2, (args, result.stderr)
            assert result.stderr.startswith("orcapulse-billing: error: ") and result.stderr.count("\n") == 1
        with cli.engine.connect() as conn:
            after = conn.execute(sa.text("SELECT target, amount, hard_stop FROM spend_budget ORDER BY id")).all()
        assert after == before
        assert "budget removed" in cli("budgets", "Acme", "remove", "--member", "ops@acme.test").stdout
        assert "budget removed" in cli("budgets", "Acme", "remove").stdout
        assert "no spend budgets" in cli("budgets", "Acme").stdout
    finally:
        cli.engine.dispose()
