"""Outbound webhooks through the REST API (roles, refusals that write nothing, the secret shown once,
the test event delivered to a real receiver and visible in the delivery log, OpenAPI) and the CLI
(real processes on a database file)."""

from __future__ import annotations

import sqlalchemy as sa
import standardwebhooks

from orcapulse_billing import webhooks
from orcapulse_billing.models import WebhookEndpoint

from .test_cli import _make_cli
from .test_webhooks import Receiver, free_port


def _endpoint_count(engine, org_id: int) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.organization_id == org_id)
        ).scalar_one()


def test_owners_register_test_and_remove_endpoints_admins_read_members_do_not(client, org, other, app_engine):
    receiver = Receiver()
    try:
        body = {"url": receiver.url, "event_types": ["credits.added", "balance.low"], "description": "ops"}
        # refusals first: each writes nothing
        for role in ("admin", "member"):
            answer = client.post("/api/webhooks/endpoints", json=body, headers=org.auth(role))
            assert answer.status_code == 403 and answer.json()["error"]["code"] == "forbidden"
        bad = [
            ({**body, "url": "http://10.0.0.1/hook"}, "invalid_url"),
            ({**body, "url": "http://[fe80::1]/hook"}, "invalid_url"),
            ({**body, "url": "ftp://example.com/hook"}, "invalid_request"),
            ({**body, "url": "https://example.com/hook#part"}, "invalid_request"),
            ({**body, "event_types": ["credits.stolen"]}, "invalid_request"),
            ({**body, "event_types": []}, "invalid_request"),
            ({**body, "secret": "mine"}, "invalid_request"),
        ]
        for payload, code in bad:
            answer = client.post("/api/webhooks/endpoints", json=payload, headers=org.auth("owner"))
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["code"] == code
        assert client.post("/api/webhooks/endpoints", json=body).status_code == 401
        assert _endpoint_count(app_engine, org.id) == 0

        created = client.post("/api/webhooks/endpoints", json=body, headers=org.auth("owner"))
        assert created.status_code == 201, created.text
        endpoint = created.json()
        secret = endpoint["secret"]
        assert secret.startswith("whsec_") and endpoint["secret_hint"] == secret[:10] + "..."
        assert endpoint["event_types"] == ["credits.added", "balance.low"]

        for role in ("owner", "admin"):
            listed = client.get("/api/webhooks/endpoints", headers=org.auth(role))
            assert listed.status_code == 200
            [item] = listed.json()["endpoints"]
            assert "secret" not in item and item["id"] == endpoint["id"]
        assert client.get("/api/webhooks/endpoints", headers=org.auth("member")).status_code == 403
        assert client.get("/api/webhooks/deliveries", headers=org.auth("member")).status_code == 403
        assert client.get("/api/webhooks/endpoints", headers=other.auth("owner")).json() == {"endpoints": []}

        # another organization's owner neither tests nor removes it
        path = f"/api/webhooks/endpoints/{endpoint['id']}"
        assert client.post(path + "/test", headers=other.auth("owner")).status_code == 404
        assert client.delete(path, headers=other.auth("owner")).status_code == 404
        assert client.post(path + "/test", headers=org.auth("admin")).status_code == 403

        sent = client.post(path + "/test", headers=org.auth("owner"))
        assert sent.status_code == 202
        msg_id = sent.json()["msg_id"]
        assert webhooks.deliver_due(app_engine, organization_id=org.id, production=False).delivered == 1
        [request] = receiver.requests
        assert request["headers"]["webhook-id"] == msg_id
        payload = standardwebhooks.Webhook(secret).verify(request["body"], request["headers"])
        assert payload["type"] == "webhook.test" and payload["data"]["sent_by"] == org.emails["owner"]

        log = client.get("/api/webhooks/deliveries", headers=org.auth("admin")).json()["deliveries"]
        assert [(d["msg_id"], d["status"], d["last_status_code"]) for d in log] == [(msg_id, "delivered", 200)]
        assert [a["status_code"] for a in log[0]["log"]] == [200]
        assert client.get("/api/webhooks/deliveries", headers=other.auth("owner")).json() == {"deliveries": []}

        assert client.delete(path, headers=org.auth("admin")).status_code == 403
        assert client.delete(path, headers=org.auth("owner")).status_code == 204
        assert client.delete(path, headers=org.auth("owner")).status_code == 404
        assert client.get("/api/webhooks/endpoints", headers=org.auth("owner")).json() == {"endpoints": []}
    finally:
        receiver.stop()


def test_owners_disable_and_enable_an_endpoint(client, org, other, app_engine):
    """PATCH {enabled}: owners only, refusals write nothing; off cancels the queue and refuses test
    events, the receiver gets nothing; on again, it gets what comes next."""
    receiver = Receiver()
    try:
        body = {"url": receiver.url, "event_types": ["credits.added"]}
        endpoint = client.post("/api/webhooks/endpoints", json=body, headers=org.auth("owner")).json()
        path = f"/api/webhooks/endpoints/{endpoint['id']}"
        queued = client.post(path + "/test", headers=org.auth("owner")).json()["msg_id"]

        refusals = [
            (org.auth("admin"), {"enabled": False}, path, 403, "forbidden"),
            (org.auth("member"), {"enabled": False}, path, 403, "forbidden"),
            (other.auth("owner"), {"enabled": False}, path, 404, "not_found"),
            (org.auth("owner"), {"enabled": False}, "/api/webhooks/endpoints/2147483647", 404, "not_found"),
            (org.auth("owner"), {"enabled": False}, "/api/webhooks/endpoints/0", 400, "invalid_request"),
            (org.auth("owner"), {}, path, 400, "invalid_request"),
            (org.auth("owner"), {"enabled": "false"}, path, 400, "invalid_request"),
            (org.auth("owner"), {"enabled": 0}, path, 400, "invalid_request"),
            (org.auth("owner"), {"enabled": False, "url": "http://127.0.0.1:9/"}, path, 400, "invalid_request"),
        ]
        for headers, payload, where, status, code in refusals:
            answer = client.patch(where, json=payload, headers=headers)
            assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), (payload, answer.text)
        assert client.patch(path, json={"enabled": False}).status_code == 401
        assert [
            e["enabled"] for e in client.get("/api/webhooks/endpoints", headers=org.auth("owner")).json()["endpoints"]
        ] == [True]

        off = client.patch(path, json={"enabled": False}, headers=org.auth("owner"))
        assert off.status_code == 200 and off.json()["enabled"] is False and off.json()["id"] == endpoint["id"]
        assert client.patch(path, json={"enabled": False}, headers=org.auth("owner")).json()["enabled"] is False
        log = client.get("/api/webhooks/deliveries", headers=org.auth("admin")).json()["deliveries"]
        assert [(d["msg_id"], d["status"], d["last_error"]) for d in log] == [
            (queued, "cancelled", "endpoint disabled")
        ]
        refused = client.post(path + "/test", headers=org.auth("owner"))
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "endpoint_disabled"
        # an event while it is off is not queued for it
        assert webhooks.emit_now(app_engine, org.id, "credits.added", {"amount": "5.0000"}, key="while-off") == 0
        assert webhooks.deliver_due(app_engine, organization_id=org.id, production=False).delivered == 0
        assert receiver.requests == []

        on = client.patch(path, json={"enabled": True}, headers=org.auth("owner"))
        assert on.status_code == 200 and on.json()["enabled"] is True
        sent = client.post(path + "/test", headers=org.auth("owner")).json()["msg_id"]
        assert webhooks.deliver_due(app_engine, organization_id=org.id, production=False).delivered == 1
        assert [r["headers"]["webhook-id"] for r in receiver.requests] == [sent]
        with app_engine.connect() as conn:
            actions = (
                conn.execute(
                    sa.text(
                        "SELECT action FROM audit_log WHERE organization_id = :o AND action LIKE 'webhook_endpoint_%' ORDER BY id"
                    ),
                    {"o": org.id},
                )
                .scalars()
                .all()
            )
        assert actions == [
            "webhook_endpoint_added",
            "webhook_endpoint_disabled",
            "webhook_endpoint_disabled",
            "webhook_endpoint_enabled",
        ]
    finally:
        receiver.stop()


def test_the_webhook_routes_are_documented(client):
    document = client.get("/api/openapi.json").json()
    paths = document["paths"]
    assert set(paths["/api/webhooks/endpoints"]) == {"get", "post"}
    assert {"delete", "patch"} <= set(paths["/api/webhooks/endpoints/{endpoint_id}"])
    patch = paths["/api/webhooks/endpoints/{endpoint_id}"]["patch"]
    assert {"200", "400", "401", "403", "404"} <= set(patch["responses"])
    assert document["components"]["schemas"]["EndpointPatch"]["required"] == ["enabled"]
    assert "post" in paths["/api/webhooks/endpoints/{endpoint_id}/test"]
    assert "get" in paths["/api/webhooks/deliveries"]
    created = document["components"]["schemas"]["EndpointCreated"]
    assert "secret" in created["properties"]
    events = document["components"]["schemas"]["EndpointIn"]["properties"]["event_types"]["items"]
    assert set(events["enum"]) == set(webhooks.EVENT_TYPES)


def test_the_cli_adds_lists_tests_disables_enables_and_removes_endpoints(tmp_path):
    cli = _make_cli(tmp_path)
    try:
        cli("create-org", "Acme")
        receiver = Receiver()
        try:
            out = cli("webhooks", "add", "Acme", receiver.url, "--events", "credits.added,balance.low").stdout
            secret = out.split("signing secret (shown once): ")[1].strip()
            endpoint_id = out.split("endpoint ")[1].split(":")[0]
            listed = cli("webhooks", "list", "Acme").stdout
            assert receiver.url in listed and secret not in listed and secret[:10] in listed
            assert "queued test event msg_" in cli("webhooks", "test", "Acme", endpoint_id).stdout
            assert "1 delivered" in cli("webhooks", "deliver").stdout
            [request] = receiver.requests
            assert (
                standardwebhooks.Webhook(secret).verify(request["body"], request["headers"])["type"] == "webhook.test"
            )
            log = cli("webhooks", "deliveries", "Acme").stdout
            assert "webhook.test" in log and "delivered" in log and "codes 200" in log
        finally:
            receiver.stop()

        # bad input: one line, exit status 2, nothing written
        for args in (
            ("webhooks", "add", "Acme", "http://192.168.0.10/x", "--events", "credits.added"),
            ("webhooks", "add", "Acme", f"http://127.0.0.1:{free_port()}/x", "--events", "credits.stolen"),
            ("webhooks", "add", "Nobody", "http://127.0.0.1:9/x", "--events", "credits.added"),
            ("webhooks", "remove", "Acme", "999"),
            ("webhooks", "test", "Acme", "999"),
        ):
            result = cli(*args, ok=False)
            assert result.returncode == 2, (args, result.stderr)
            assert result.stderr.startswith("orcapulse-billing: error: ")
        with cli.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM webhook_endpoint")).scalar() == 1

        # off: listed as such, no test event (exit 2); on again
        assert f"disabled endpoint {endpoint_id}" in cli("webhooks", "disable", "Acme", endpoint_id).stdout
        assert "(disabled)" in cli("webhooks", "list", "Acme").stdout
        for args in (("webhooks", "test", "Acme", endpoint_id), ("webhooks", "enable", "Acme", "999")):
            result = cli(*args, ok=False)
            assert result.returncode == 2 and result.stderr.startswith("orcapulse-billing: error: "), result.stderr
        assert f"enabled endpoint {endpoint_id}" in cli("webhooks", "enable", "Acme", endpoint_id).stdout
        assert "(disabled)" not in cli("webhooks", "list", "Acme").stdout
        assert f"removed endpoint {endpoint_id}" in cli("webhooks", "remove", "Acme", endpoint_id).stdout
        assert "no webhook endpoints" in cli("webhooks", "list", "Acme").stdout
    finally:
        cli.engine.dispose()


def test_declined_auto_recharges_send_auto_recharge_failed(engine, app_database):
    """The Stripe sandbox's decline card: each failed charge is one auto_recharge.failed message (the
    backoff's next attempt in it), the third saying auto-recharge is now paused."""
    from datetime import UTC, datetime, timedelta

    from orcapulse_billing.ledger import Posting

    from .test_auto_recharge import _setup

    start = datetime.now(UTC).replace(microsecond=0)
    clock = [start]
    receiver = Receiver()
    try:
        ledger, recharger, org, account_id = _setup(engine, "4000000000000341", "30", clock=lambda: clock[0])
        _, secret = webhooks.add_endpoint(engine, org.id, receiver.url, ["auto_recharge.failed"], production=False)
        for _ in range(3):  # 30 -> 6: the third debit triggers a charge, which fails
            ledger.post(Posting(account_id, "usage", "-8", "call", category="ai_call"))
        assert recharger.maybe_recharge(org.id) == "waiting"  # the backoff: no attempt, no message
        clock[0] = start + timedelta(hours=1)
        assert recharger.maybe_recharge(org.id) == "failed"
        clock[0] += timedelta(hours=6)
        assert recharger.maybe_recharge(org.id) == "disabled"
        assert webhooks.deliver_due(engine, organization_id=org.id, production=False).delivered == 3
        events = [standardwebhooks.Webhook(secret).verify(r["body"], r["headers"]) for r in receiver.requests]
        assert {e["type"] for e in events} == {"auto_recharge.failed"}
        data = sorted((e["data"] for e in events), key=lambda d: d["consecutive_failures"])
        assert [(d["consecutive_failures"], d["paused"], d["amount"]) for d in data] == [
            (1, False, "20.0000"),
            (2, False, "20.0000"),
            (3, True, "20.0000"),
        ]
        assert data[0]["next_attempt_at"] == (start + timedelta(hours=1)).isoformat()
        assert data[2]["next_attempt_at"] is None
        assert all(d["organization_id"] == org.id and "declined" in d["reason"] for d in data)
        assert len({r["headers"]["webhook-id"] for r in receiver.requests}) == 3
    finally:
        receiver.stop()
