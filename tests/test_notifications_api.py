"""Notification settings through the REST API (roles checked server-side, refusals that write
nothing, OpenAPI) and the CLI (real processes on a database file)."""

from __future__ import annotations

import sqlalchemy as sa

from orcapulse_billing import notification_preferences
from orcapulse_billing.accounts import account_id_for
from orcapulse_billing.api.notifications import PreferencesIn
from orcapulse_billing.config import get_settings
from orcapulse_billing.ledger import Ledger, Posting

from .conftest import GRACE
from .test_cli import _make_cli

THRESHOLD = "/api/organization/low-balance-threshold"
PREFERENCES = "/api/organization/notification-preferences"
DEFAULT = f"{get_settings().low_balance_threshold:.4f}"


def _written(engine, org_id: int) -> tuple:
    with engine.connect() as conn:
        return tuple(
            conn.execute(
                sa.text(
                    "SELECT (SELECT count(*) FROM low_balance_setting WHERE organization_id = :o),"
                    " (SELECT count(*) FROM notification_preference WHERE organization_id = :o),"
                    " (SELECT count(*) FROM audit_log WHERE organization_id = :o)"
                ),
                {"o": org_id},
            ).one()
        )


def test_owners_set_the_threshold_everyone_reads_it_and_bad_input_writes_nothing(client, org, other, app_engine):
    for role in ("owner", "admin", "member"):
        answer = client.get(THRESHOLD, headers=org.auth(role))
        assert answer.status_code == 200
        assert answer.json() == {
            "mode": "default",
            "amount": None,
            "percent": None,
            "threshold": DEFAULT,
            "basis": "default",
            "last_topup": None,
            "default_threshold": DEFAULT,
        }
    before = _written(app_engine, org.id)
    for role in ("admin", "member"):
        answer = client.put(THRESHOLD, json={"mode": "amount", "amount": "20"}, headers=org.auth(role))
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "forbidden"
    assert client.put(THRESHOLD, json={"mode": "amount", "amount": "20"}).status_code == 401
    for body in (
        {"mode": "amount"},
        {"mode": "amount", "amount": "-1"},
        {"mode": "amount", "amount": "1000000.01"},
        {"mode": "amount", "amount": "1.234"},
        {"mode": "amount", "amount": 20},
        {"mode": "percent", "percent": 0},
        {"mode": "percent", "percent": 101},
        {"mode": "percent", "percent": "20"},
        {"mode": "percent", "percent": 20.5},
        {"mode": "percent", "percent": 20, "amount": "5"},
        {"mode": "sometimes"},
        {},
    ):
        answer = client.put(THRESHOLD, json=body, headers=org.auth("owner"))
        assert answer.status_code == 400, (body, answer.text)
        assert set(answer.json()["error"]) >= {"code", "message"}
    assert _written(app_engine, org.id) == before

    answer = client.put(THRESHOLD, json={"mode": "percent", "percent": 25}, headers=org.auth("owner"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["basis"] == "default_before_topup" and answer.json()["threshold"] == DEFAULT
    org.post("purchase", "80")
    now = client.get(THRESHOLD, headers=org.auth("member")).json()
    assert (now["mode"], now["percent"], now["threshold"], now["basis"], now["last_topup"]) == (
        "percent",
        25,
        "20.0000",
        "percent",
        "80.0000",
    )
    # the balance answers with the organization's threshold
    balance = client.get("/api/credits/balance", headers=org.auth("member")).json()
    assert balance["low_balance_threshold"] == "20.0000" and balance["low_balance"] is False
    # another organization keeps the deployment's
    assert client.get(THRESHOLD, headers=other.auth("owner")).json()["threshold"] == DEFAULT
    answer = client.put(THRESHOLD, json={"mode": "amount", "amount": "100.50"}, headers=org.auth("owner"))
    assert answer.json()["threshold"] == "100.5000" and answer.json()["amount"] == "100.5000"
    assert client.get("/api/credits/balance", headers=org.auth("owner")).json()["low_balance"] is True
    answer = client.put(THRESHOLD, json={"mode": "default"}, headers=org.auth("owner"))
    assert answer.json()["mode"] == "default" and answer.json()["threshold"] == DEFAULT


def test_each_owner_reads_and_sets_their_own_preferences_only(client, org, app_engine):
    from orcapulse_billing.accounts import ROLE_SCOPES, add_user, create_api_key

    second_email = f"second-{org.id}@example.test"
    add_user(app_engine, org.org, second_email, "owner", "a-long-password")
    second_key = create_api_key(app_engine, second_email, ROLE_SCOPES["owner"]).key
    mine = client.get(PREFERENCES, headers=org.auth("owner"))
    assert mine.status_code == 200
    assert mine.json()["preferences"] == dict.fromkeys(notification_preferences.CATEGORIES, True)
    assert [c["key"] for c in mine.json()["categories"]] == list(notification_preferences.CATEGORIES)
    assert mine.json()["always_sent"] == ["auto_recharge_action_required", "payment_disputed"]
    before = _written(app_engine, org.id)
    for role in ("admin", "member"):  # they get no billing emails: nothing to choose
        for answer in (
            client.get(PREFERENCES, headers=org.auth(role)),
            client.put(PREFERENCES, json={"receipts": False}, headers=org.auth(role)),
        ):
            assert answer.status_code == 403 and answer.json()["error"]["code"] == "forbidden"
    for body in ({}, {"receipts": "no"}, {"receipts": None}, {"receipts": 0}, {"marketing": False}, []):
        answer = client.put(PREFERENCES, json=body, headers=org.auth("owner"))
        assert answer.status_code == 400, (body, answer.text)
    assert _written(app_engine, org.id) == before

    answer = client.put(PREFERENCES, json={"low_balance": False, "receipts": False}, headers=org.auth("owner"))
    assert answer.status_code == 200, answer.text
    expected = {**dict.fromkeys(notification_preferences.CATEGORIES, True), "low_balance": False, "receipts": False}
    assert answer.json()["preferences"] == expected
    answer = client.put(PREFERENCES, json={"receipts": True}, headers=org.auth("owner"))  # the others keep theirs
    assert answer.json()["preferences"] == {**expected, "receipts": True}
    # the other owner's are their own
    theirs = client.get(PREFERENCES, headers={"Authorization": f"Bearer {second_key}"}).json()["preferences"]
    assert theirs == dict.fromkeys(notification_preferences.CATEGORIES, True)


def test_the_notification_routes_are_documented(client):
    document = client.get("/api/openapi.json").json()
    paths = document["paths"]
    assert set(paths[THRESHOLD]) == {"get", "put"} and set(paths[PREFERENCES]) == {"get", "put"}
    assert "403" in paths[THRESHOLD]["put"]["responses"] and "403" in paths[PREFERENCES]["put"]["responses"]
    schemas = document["components"]["schemas"]
    assert set(schemas["PreferencesIn"]["properties"]) == set(notification_preferences.CATEGORIES)
    assert schemas["PreferencesIn"]["additionalProperties"] is False
    assert schemas["ThresholdPercent"]["properties"]["percent"]["maximum"] == 100
    assert set(PreferencesIn.model_fields) == set(notification_preferences.CATEGORIES)


def test_the_cli_sets_the_threshold_and_an_owners_preferences(tmp_path):
    cli = _make_cli(tmp_path)
    try:
        cli("create-org", "Acme")
        cli("add-user", "Acme", "owner@acme.test", "--role", "owner", "--password", "correct horse")
        out = cli("notifications", "Acme").stdout
        assert "low-balance threshold the deployment's default" in out and "owner@acme.test: all emails" in out
        out = cli("notifications", "Acme", "--threshold", "20%").stdout
        assert "20% of the last top-up" in out and "no top-up yet" in out
        # a top-up, as the payment flows post it (the CLI buys nothing)
        Ledger(cli.engine, grace_limit=GRACE).post(
            Posting(account_id_for(cli.engine, 1), "purchase", "50", "Credit top-up", idempotency_key="topup-1")
        )
        assert "in force now: $10.00 (20% of $50.00)" in cli("notifications", "Acme").stdout
        out = cli("notifications", "Acme", "--owner", "owner@acme.test", "--off", "receipts", "--off", "low_balance")
        assert "owner@acme.test: all emails except low_balance, receipts" in out.stdout
        with cli.engine.connect() as conn:
            before = conn.execute(
                sa.text("SELECT (SELECT count(*) FROM notification_preference), (SELECT mode FROM low_balance_setting)")
            ).one()
        for args in (
            ("notifications", "Acme", "--threshold", "-5"),
            ("notifications", "Acme", "--threshold", "150%"),
            ("notifications", "Acme", "--threshold", "lots"),
            ("notifications", "Acme", "--owner", "nobody@acme.test", "--on", "receipts"),
            ("notifications", "Acme", "--on", "receipts"),
            ("notifications", "Acme", "--owner", "owner@acme.test", "--on", "receipts", "--off", "receipts"),
            ("notifications", "Acme", "--owner", "owner@acme.test", "--off", "marketing"),
            ("notifications", "Nobody"),
        ):
            result = cli(*args, ok=False)
            assert result.returncode == 2, (args, result.stderr)
            assert len(result.stderr.strip().splitlines()) == 1 or "usage:" in result.stderr
        with cli.engine.connect() as conn:
            after = conn.execute(
                sa.text("SELECT (SELECT count(*) FROM notification_preference), (SELECT mode FROM low_balance_setting)")
            ).one()
        assert tuple(after) == tuple(before) == (2, "percent")
        assert "threshold $7.50" in cli("notifications", "Acme", "--threshold", "7.50").stdout
    finally:
        cli.engine.dispose()
