"""Who may spend (issue 15): API key scopes. Usage reports need a key with `usage:write`, which owners
and admins make (CLI and REST); members' keys and every session read only. Real parts: the REST API
over ASGI on the app's SQLite database, the CLI as a process on that same database, and the 0009
migration on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from alembic import command
from orcapulse_billing.db import alembic_config, make_engine

from .apiutil import Org
from .test_api import ENDPOINTS

CLI = str(Path(sys.executable).with_name("orcapulse-billing"))
SAME_ORIGIN = "http://testserver"  # the test client's own scheme://Host
USAGE = {"operation": "sms_twilio", "quantity": "3", "status": "completed"}  # 3 SMS: 0.0270 credits
# every read a member may make (test_api's role matrix), and the auto-recharge settings
READS = [e for e in ENDPOINTS if e[1] != "/api/credits/usage"] + [("GET", "/api/credits/auto-recharge", None)]


def report(client, headers: dict, key: str | None = None):
    return client.post(
        "/api/credits/usage", json=USAGE, headers={**headers, "Idempotency-Key": key or uuid.uuid4().hex}
    )


def assert_insufficient_scope(response) -> None:
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "insufficient_scope" and "usage:write" in error["message"], error


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_a_members_key_cannot_report_usage_while_an_owner_made_usage_write_key_can(client, org: Org):
    org.post("purchase", "10")
    before = org.account()
    refused = report(client, org.auth("member"))
    assert_insufficient_scope(refused)
    assert "member" in refused.json()["error"]["message"]
    assert org.account() == before  # balance, lifetime totals, transaction count: all unchanged

    made = client.post("/api/keys", json={"scopes": ["usage:write"], "name": "voice-worker"}, headers=org.auth("owner"))
    assert made.status_code == 201, made.text
    new = made.json()
    assert new["key"].startswith("opb_") and new["key"].startswith(new["prefix"])
    assert (new["email"], new["scopes"], new["name"], new["organization_id"]) == (
        org.emails["owner"],
        ["usage:write"],
        "voice-worker",
        org.id,
    )
    charged = report(client, bearer(new["key"]))
    assert charged.status_code == 200, charged.text
    assert charged.json()["balance"] == "9.9730" and org.account().balance == Decimal("9.9730")

    # a key the owner makes without the scope reads, and spends nothing
    read_only = client.post("/api/keys", json={}, headers=org.auth("owner")).json()
    assert read_only["scopes"] == []
    assert client.get("/api/credits/balance", headers=bearer(read_only["key"])).status_code == 200
    assert_insufficient_scope(report(client, bearer(read_only["key"])))
    assert org.account().transaction_count == 2


def test_a_browser_session_cannot_report_usage_but_reads(client, org: Org):
    org.post("purchase", "10")
    before = org.account()
    for role in ("owner", "member"):
        client.cookies.clear()
        signed_in = client.post("/api/auth/login", json={"email": org.emails[role], "password": org.password})
        assert signed_in.status_code == 200
        refused = report(client, {"Origin": SAME_ORIGIN})  # from the app's own page: past the cross-site guard
        assert_insufficient_scope(refused)
        assert "session" in refused.json()["error"]["message"]
        assert client.get("/api/credits/balance").json()["balance"] == "10.0000"
    assert org.account() == before


def test_members_still_read_everything_with_their_key_and_session(client, org: Org):
    org.post("purchase", "10")
    org.session("s1")
    before = org.account()
    for way in ("key", "session"):
        client.cookies.clear()
        headers = org.auth("member") if way == "key" else {"Origin": SAME_ORIGIN}
        if way == "session":
            client.post("/api/auth/login", json={"email": org.emails["member"], "password": org.password})
        for method, path, body in READS:
            r = client.request(method, path, json=body, headers=headers)
            assert r.status_code == 200, (way, path, r.text)
        assert_insufficient_scope(report(client, headers))
        # members manage no keys
        for method, path, body in (
            ("GET", "/api/keys", None),
            ("POST", "/api/keys", {}),
            ("DELETE", "/api/keys/1", None),
        ):
            r = client.request(method, path, json=body, headers=headers)
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", (way, method, r.text)
    assert org.account() == before


def test_keys_made_listed_and_revoked_through_the_api(client, org: Org, other: Org, app_engine):
    owner, admin = org.auth("owner"), org.auth("admin")
    made = client.post(
        "/api/keys", json={"email": org.emails["admin"], "scopes": ["usage:write"], "name": "sms"}, headers=owner
    ).json()
    listed = client.get("/api/keys", headers=admin)
    assert listed.status_code == 200
    keys = {k["id"]: k for k in listed.json()}
    assert set(keys[made["id"]]) == {
        "id",
        "prefix",
        "name",
        "email",
        "scopes",
        "organization_id",
        "created_at",
        "last_used_at",
        "revoked_at",
    }
    assert "key" not in keys[made["id"]] and made["key"] not in listed.text  # never a secret again
    assert {k["email"] for k in keys.values()} == set(org.emails.values())  # the org's own keys only
    assert keys[made["id"]]["scopes"] == ["usage:write"] and keys[made["id"]]["revoked_at"] is None
    assert [k["id"] for k in client.get("/api/keys", headers=other.auth("owner")).json()].count(made["id"]) == 0

    org.post("purchase", "5")
    assert report(client, bearer(made["key"])).status_code == 200
    used = next(k for k in client.get("/api/keys", headers=owner).json() if k["id"] == made["id"])
    assert used["last_used_at"] is not None

    # another organization cannot see or revoke it; a key made here acts only here
    assert client.delete(f"/api/keys/{made['id']}", headers=other.auth("owner")).status_code == 404
    assert (
        client.get("/api/credits/balance", headers={**bearer(made["key"]), "X-Organization-Id": str(other.id)})
    ).status_code == 401

    assert client.delete(f"/api/keys/{made['id']}", headers=owner).status_code == 204
    assert client.delete(f"/api/keys/{made['id']}", headers=owner).status_code == 204  # again: nothing changes
    refused = client.get("/api/credits/balance", headers=bearer(made["key"]))
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthenticated"
    assert report(client, bearer(made["key"])).status_code == 401
    revoked = next(k for k in client.get("/api/keys", headers=owner).json() if k["id"] == made["id"])
    assert revoked["revoked_at"] is not None
    with app_engine.connect() as conn:
        audited = conn.execute(
            sa.text("SELECT action, user_id FROM audit_log WHERE organization_id = :o AND action LIKE 'api_key_%'"),
            {"o": org.id},
        ).all()
    assert sorted(tuple(a) for a in audited) == [
        ("api_key_created", org.user_ids["owner"]),
        ("api_key_revoked", org.user_ids["owner"]),
    ]


def test_what_a_key_may_carry_is_checked_and_refusals_write_nothing(client, org: Org, other: Org, app_engine):
    def count() -> int:
        with app_engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM api_key")).scalar()

    before = count()
    cases = [
        (org.auth("owner"), {"email": org.emails["member"], "scopes": ["usage:write"]}, 403, "scope_not_allowed"),
        (org.auth("admin"), {"email": org.emails["owner"]}, 403, "forbidden"),  # no key acts above its maker
        (org.auth("owner"), {"email": other.emails["owner"]}, 404, "not_found"),  # not a user of this organization
        (org.auth("owner"), {"email": "ghost@nowhere.test"}, 404, "not_found"),
        (org.auth("owner"), {"scopes": ["billing:write"]}, 400, "invalid_request"),
        (org.auth("owner"), {"scopes": "usage:write"}, 400, "invalid_request"),
        (org.auth("owner"), {"name": "a\nb"}, 400, "invalid_request"),
        (org.auth("owner"), {"surprise": 1}, 400, "invalid_request"),
    ]
    for headers, body, status, code in cases:
        r = client.post("/api/keys", json=body, headers=headers)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (body, r.text)
    owners_key_id = next(
        k["id"] for k in client.get("/api/keys", headers=org.auth("owner")).json() if k["email"] == org.emails["owner"]
    )
    r = client.delete(f"/api/keys/{owners_key_id}", headers=org.auth("admin"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert client.delete("/api/keys/0", headers=org.auth("owner")).status_code == 400
    assert count() == before
    # an admin makes keys for members (read only) and for admins (usage:write)
    assert client.post("/api/keys", json={"email": org.emails["member"]}, headers=org.auth("admin")).status_code == 201
    made = client.post("/api/keys", json={"scopes": ["usage:write", "usage:write"]}, headers=org.auth("admin"))
    assert made.status_code == 201 and made.json()["scopes"] == ["usage:write"]


def test_a_demoted_users_key_loses_usage_write_at_once(client, org: Org, app_engine):
    org.post("purchase", "10")
    assert report(client, org.auth("admin")).status_code == 200
    with app_engine.begin() as conn:
        conn.execute(sa.text("UPDATE membership SET role = 'member' WHERE user_id = :u"), {"u": org.user_ids["admin"]})
    assert_insufficient_scope(report(client, org.auth("admin")))
    assert client.get("/api/credits/balance", headers=org.auth("admin")).status_code == 200


# -- the CLI ----------------------------------------------------------------------------------------


def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def test_cli_makes_scoped_keys_that_the_api_honours(client, org: Org, app_database):
    org.post("purchase", "10")
    made = _cli(app_database, "create-api-key", org.emails["admin"].upper(), "--scope", "usage:write", "--name", "cli")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert "scopes: usage:write" in made.stderr and "shown once" in made.stderr
    assert report(client, bearer(key)).status_code == 200

    read_only = _cli(app_database, "create-api-key", org.emails["member"], "--org", str(org.id))
    assert read_only.returncode == 0 and "scopes: none (read only)" in read_only.stderr
    assert client.get("/api/credits/balance", headers=bearer(read_only.stdout.strip())).status_code == 200
    assert_insufficient_scope(report(client, bearer(read_only.stdout.strip())))

    both = _cli(
        app_database, "create-api-key", org.emails["owner"], "--scope", "usage:write,", "--scope", "usage:write"
    )
    assert both.returncode == 0, both.stderr
    assert report(client, bearer(both.stdout.strip())).status_code == 200


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scope", "billing:write"], "unknown scope 'billing:write'; known scopes: usage:write"),
        (["--scope", "usage:write,usage:read"], "unknown scope 'usage:read'"),
        (["--member", "--scope", "usage:write"], "is a member: only owners' and admins' keys may have usage:write"),
        (["--org", "No Such Org"], "no organization 'No Such Org'"),
    ],
)
def test_cli_bad_scopes_are_one_line_exit_2_and_write_nothing(org: Org, app_database, app_engine, args, message):
    email = org.emails["member"] if "--member" in args else org.emails["owner"]
    args = [a for a in args if a != "--member"]
    with app_engine.connect() as conn:
        before = conn.execute(sa.text("SELECT count(*) FROM api_key")).scalar()
    result = _cli(app_database, "create-api-key", email, *args)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    with app_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM api_key")).scalar() == before


# -- the migration ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_upgrading_keys_gives_each_the_scope_its_role_had(kind, tmp_path, pg_database_factory, capsys):
    """A database at 0008 with keys of an owner, an admin, a member (one revoked) and a user who is an
    owner in one organization and a member in another: after the upgrade, owners' and admins' keys
    report usage (only where the user is an owner or admin) and members' read only."""
    from orcapulse_billing.auth import principal_for_api_key

    url = f"sqlite:///{tmp_path / 'keys.db'}" if kind == "sqlite" else pg_database_factory()
    cfg = alembic_config(url)
    command.upgrade(cfg, "0008")
    engine = make_engine(url)
    now = datetime.now(UTC)
    users = {"owner": 1, "admin": 2, "member": 3, "both": 4}
    keys = {"owner": 1, "admin": 2, "member": 3, "both": 4, "member-revoked": 5}
    with engine.begin() as conn:
        for org_id in (1, 2):
            conn.execute(
                sa.text("INSERT INTO organization (id, name, created_at) VALUES (:i, :n, :t)"),
                {"i": org_id, "n": f"Org {org_id}", "t": now},
            )
        for name, user_id in users.items():
            conn.execute(
                sa.text("INSERT INTO app_user (id, email, password_hash, created_at) VALUES (:i, :e, 'x', :t)"),
                {"i": user_id, "e": f"{name}@old.test", "t": now},
            )
        memberships = [(1, 1, "owner"), (2, 1, "admin"), (3, 1, "member"), (4, 1, "member"), (4, 2, "owner")]
        for n, (user_id, org_id, role) in enumerate(memberships, 1):
            conn.execute(
                sa.text(
                    "INSERT INTO membership (id, user_id, organization_id, role, created_at) VALUES (:i, :u, :o, :r, :t)"
                ),
                {"i": n, "u": user_id, "o": org_id, "r": role, "t": now},
            )
        for name, key_id in keys.items():
            conn.execute(
                sa.text(
                    "INSERT INTO api_key (id, user_id, prefix, key_hash, created_at, revoked_at) "
                    "VALUES (:i, :u, 'opb_old', :h, :t, :r)"
                ),
                {
                    "i": key_id,
                    "u": users[name.removesuffix("-revoked")],
                    "h": _hash(name),
                    "t": now,
                    "r": now if name.endswith("revoked") else None,
                },
            )
    engine.dispose()
    capsys.readouterr()

    command.upgrade(cfg, "head")

    note = capsys.readouterr().out
    assert "upgrade note (0009, API key scopes): 3 active key(s) of owners and admins got usage:write" in note
    assert "1 active key(s) of members got no scope and are now read only" in note
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            scopes = dict(conn.execute(sa.text("SELECT id, scopes FROM api_key")).all())
        assert scopes == {1: "usage:write", 2: "usage:write", 3: "", 4: "usage:write", 5: ""}
        # what each key may do now, through the real principal lookup
        for name, can_spend in (("owner", True), ("admin", True), ("member", False)):
            principal = principal_for_api_key(engine, f"old-{name}")
            assert principal is not None and principal.has_scope("usage:write") is can_spend, name
        assert principal_for_api_key(engine, "old-member-revoked") is None
        assert principal_for_api_key(engine, "old-both", 2).has_scope("usage:write")  # an owner in Org 2
        assert not principal_for_api_key(engine, "old-both", 1).has_scope("usage:write")  # a member in Org 1
    finally:
        engine.dispose()
    command.downgrade(cfg, "0008")  # and back: the columns go, the keys stay
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert "scopes" not in {c["name"] for c in sa.inspect(conn).get_columns("api_key")}
            assert conn.execute(sa.text("SELECT count(*) FROM api_key")).scalar() == 5
    finally:
        engine.dispose()


def _hash(name: str) -> str:
    from orcapulse_billing.accounts import hash_api_key

    return hash_api_key(f"old-{name}")
