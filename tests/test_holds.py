"""Holds: credits reserved for operations in progress, through the real service on SQLite and
PostgreSQL, the REST API over ASGI, and the page in Chromium.

The rule (README "Holds"): a hold may be placed only while the available balance (balance minus
active holds) is above zero, and must fit within the available balance plus the grace limit. A
completed operation is always recorded (capture, usage reports), past the grace limit as debt, which
blocks new holds and checks until it is paid.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from orcapulse_billing.holds import (
    HoldConflict,
    HoldNotFound,
    HoldRefused,
    capture,
    expire_holds,
    held_units,
    place_hold,
    release,
    reserved_units,
)
from orcapulse_billing.ledger import Ledger, Posting, check_invariants, get_account
from orcapulse_billing.metering import MeteringError, check, record_usage
from orcapulse_billing.money import to_units

from .conftest import GRACE

MARKUP = Decimal(20)
MINUTE = to_units(Decimal("0.11"))  # voice_realtime, per minute
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def org_of(engine, account_id: int) -> int:
    with engine.connect() as conn:
        return get_account(conn, account_id=account_id).organization_id


def funded(engine, ledger, new_account, credits: str) -> tuple[int, int]:
    account_id = new_account()
    ledger.post(Posting(account_id, "purchase", Decimal(credits), "seed money"))
    return account_id, org_of(engine, account_id)


def hold(ledger, org_id: int, minutes: str = "1", key: str | None = None, **kwargs):
    return place_hold(ledger, org_id, "voice_realtime", Decimal(minutes), key or uuid.uuid4().hex, MARKUP, **kwargs)


def figures(engine, account_id: int) -> dict:
    """The account's money and its holds, as the database has them."""
    with engine.connect() as conn:
        acct = get_account(conn, account_id=account_id)
        holds = conn.execute(
            sa.text("SELECT id, status, amount, captured_entry_id FROM credit_hold WHERE account_id = :a ORDER BY id"),
            {"a": account_id},
        ).all()
        return {
            "balance": acct.balance_units,
            "held": held_units(conn, account_id),
            "active": sum(h.amount for h in holds if h.status == "active"),
            "holds": [tuple(h) for h in holds],
            "entries": acct.transaction_count,
            "invariants": check_invariants(conn, account_id),
        }


# -- concurrency ---------------------------------------------------------------------------------

HOLDERS = 50


@pytest.mark.parametrize("grace", [Decimal(0), GRACE], ids=["no-grace", "grace"])
def test_fifty_concurrent_holds_never_reserve_more_than_is_available(engine, ledger, new_account, grace):
    """50 threads, each with its own Ledger (on SQLite they contend in the database), place a hold of
    2 minutes (0.2200) on an account of 5.0000: exactly as many are granted as the rule allows, in
    any interleaving, and `held` is the sum of the active holds. Then half are captured and half
    released concurrently: nothing stays reserved and the ledger is exact."""
    account_id, org_id = funded(engine, ledger, new_account, "5")
    barrier = threading.Barrier(HOLDERS)
    placed: list = [None] * HOLDERS
    errors: list[BaseException] = []

    def holder(n: int) -> None:
        mine = Ledger(engine, grace_limit=grace)
        barrier.wait()
        try:
            placed[n] = hold(mine, org_id, "2", key=f"call-{n}")
        except HoldRefused as exc:
            placed[n] = exc
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=holder, args=(n,)) for n in range(HOLDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    granted = [p for p in placed if not isinstance(p, HoldRefused)]
    refused = [p for p in placed if isinstance(p, HoldRefused)]
    available, each = to_units(Decimal(5)), 2 * MINUTE
    # the rule, applied one hold at a time: above zero before, within available + grace after
    expected = 0
    while available - expected * each > 0 and available - (expected + 1) * each >= -to_units(grace):
        expected += 1
    assert len(granted) == expected == (22 if grace == 0 else 23)
    assert sum(p.hold.amount_units for p in granted) <= available + to_units(grace)
    if grace == 0:
        assert sum(p.hold.amount_units for p in granted) <= available
    assert all(r.needed_units == each for r in refused) and len(refused) == HOLDERS - expected
    state = figures(engine, account_id)
    assert state["held"] == state["active"] == expected * each
    assert state["balance"] == to_units(Decimal(5)) and state["entries"] == 1  # a hold posts nothing

    # settle them all at once: even ones captured (a minute more than held), odd ones released
    barrier = threading.Barrier(len(granted))

    def settle(n: int, placed_hold) -> None:
        mine = Ledger(engine, grace_limit=grace)
        barrier.wait()
        try:
            if n % 2 == 0:
                capture(mine, org_id, placed_hold.hold.id, Decimal(3), markup_percent=MARKUP)
            else:
                release(mine, org_id, placed_hold.hold.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=settle, args=(n, p)) for n, p in enumerate(granted)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    captured = (len(granted) + 1) // 2
    state = figures(engine, account_id)
    assert state["held"] == state["active"] == 0
    assert state["balance"] == to_units(Decimal(5)) - captured * 3 * MINUTE
    assert state["entries"] == 1 + captured and state["invariants"] == []


# -- capture, release, replays -------------------------------------------------------------------


def test_capture_of_more_than_the_hold_posts_the_full_cost_and_releases_the_hold(engine, ledger, new_account):
    account_id, org_id = funded(engine, ledger, new_account, "10")
    placed = hold(ledger, org_id, "5", model="gpt-realtime")  # 0.5500 reserved
    assert placed.hold.amount_units == 5 * MINUTE and placed.available_units == to_units(Decimal("9.45"))
    assert figures(engine, account_id)["held"] == 5 * MINUTE
    done = capture(ledger, org_id, placed.hold.id, Decimal("12.5"), markup_percent=MARKUP)  # 1.3750: more than held
    assert done.entry is not None and done.entry.amount_units == -to_units(Decimal("1.375"))
    assert done.released_units == 5 * MINUTE and done.hold.status == "captured"
    assert (done.entry.type, done.entry.category) == ("usage", "ai_call")
    assert done.entry.description == "Voice call session - unknown agent - 12.5 min"  # as a usage report's
    assert done.entry.metadata == {
        "provider": "orcapulse",
        "feature": "voice_realtime",
        "quantity": "12.5",
        "model": "gpt-realtime",
        "hold_id": str(placed.hold.id),
    }
    state = figures(engine, account_id)
    assert state["balance"] == to_units(Decimal("8.625")) and state["held"] == 0
    assert state["holds"] == [(placed.hold.id, "captured", 5 * MINUTE, done.entry.id)]
    assert state["invariants"] == []


def test_a_capture_that_fails_writes_nothing(engine, ledger, new_account):
    """Pricing fails inside the capture's transaction: the hold stays active, nothing is posted."""
    account_id, org_id = funded(engine, ledger, new_account, "1")
    chat = place_hold(ledger, org_id, "chat", Decimal(10), "chat-1", MARKUP)
    before = figures(engine, account_id)
    with pytest.raises(MeteringError):
        capture(ledger, org_id, chat.hold.id, Decimal("2.5"), markup_percent=MARKUP)  # whole messages only
    assert figures(engine, account_id) == before


def test_release_and_the_replays_of_place_capture_and_release(engine, ledger, new_account):
    account_id, org_id = funded(engine, ledger, new_account, "10")
    first = hold(ledger, org_id, "1", key="k1")
    again = hold(ledger, org_id, "1", key="k1")
    assert again.replayed and again.hold == first.hold and figures(engine, account_id)["held"] == MINUTE
    with pytest.raises(HoldConflict):
        hold(ledger, org_id, "2", key="k1")  # the same key for another estimate
    # release, twice: the second is a replay that gives nothing back again
    gone = release(ledger, org_id, first.hold.id)
    assert gone.released_units == MINUTE and gone.hold.status == "released" and not gone.replayed
    assert release(ledger, org_id, first.hold.id).replayed
    assert figures(engine, account_id)["held"] == 0
    with pytest.raises(HoldConflict):  # released: the operation failed, it cannot be charged now
        capture(ledger, org_id, first.hold.id, Decimal(1), markup_percent=MARKUP)
    # capture, twice: one entry
    second = hold(ledger, org_id, "1", key="k2")
    done = capture(ledger, org_id, second.hold.id, Decimal(2), markup_percent=MARKUP)
    before = figures(engine, account_id)
    replay = capture(ledger, org_id, second.hold.id, Decimal(2), markup_percent=MARKUP)
    assert replay.replayed and replay.entry is not None and replay.entry.id == done.entry.id
    assert replay.released_units == 0 and figures(engine, account_id) == before
    with pytest.raises(HoldConflict):  # captured with another quantity
        capture(ledger, org_id, second.hold.id, Decimal(3), markup_percent=MARKUP)
    with pytest.raises(HoldConflict):  # captured: it cannot be released
        release(ledger, org_id, second.hold.id)
    assert figures(engine, account_id) == before
    # another organization's hold is not found
    other_account, other_org = funded(engine, ledger, new_account, "1")
    with pytest.raises(HoldNotFound):
        release(ledger, other_org, second.hold.id)
    assert before["invariants"] == [] and figures(engine, other_account)["held"] == 0


# -- expiry --------------------------------------------------------------------------------------


def test_holds_expire_after_their_ttl(engine, ledger, new_account):
    account_id, org_id = funded(engine, ledger, new_account, "1")
    a = hold(ledger, org_id, "5", now=T0, ttl_seconds=600)  # 0.5500 of 1.0000
    b = hold(ledger, org_id, "4", now=T0 + timedelta(minutes=5), ttl_seconds=600)  # 0.4400
    with engine.connect() as conn:
        assert reserved_units(conn, account_id, T0 + timedelta(minutes=9)) == 9 * MINUTE
        assert reserved_units(conn, account_id, T0 + timedelta(minutes=10)) == 4 * MINUTE  # a's time is up
    assert expire_holds(ledger, now=T0 + timedelta(minutes=9, seconds=59)) == {}
    assert expire_holds(ledger, now=T0 + timedelta(minutes=10)) == {org_id: 1}
    assert expire_holds(ledger, now=T0 + timedelta(minutes=10)) == {}  # idempotent
    state = figures(engine, account_id)
    assert state["held"] == state["active"] == 4 * MINUTE
    assert [h[1] for h in state["holds"]] == ["expired", "active"]
    # b expires lazily: a new hold of the account sweeps it first, and then fits
    c = hold(ledger, org_id, "9", now=T0 + timedelta(minutes=15))  # 0.9900: fits only without b
    assert c.available_units == to_units(Decimal("0.01"))
    assert [h[1] for h in figures(engine, account_id)["holds"]] == ["expired", "expired", "active"]
    # an expired hold released: nothing more to give back; captured: the work was done, it is charged
    assert release(ledger, org_id, a.hold.id, now=T0 + timedelta(minutes=20)).replayed
    done = capture(ledger, org_id, b.hold.id, Decimal(1), markup_percent=MARKUP, now=T0 + timedelta(minutes=20))
    assert done.released_units == 0 and done.entry is not None and done.entry.amount_units == -MINUTE
    state = figures(engine, account_id)
    assert state["held"] == state["active"] == 9 * MINUTE and state["invariants"] == []
    assert state["balance"] == to_units(Decimal(1)) - MINUTE


# -- completed usage is always recorded: debt ----------------------------------------------------


def test_completed_usage_past_the_floor_is_debt_that_blocks_holds_and_checks_until_paid(engine, ledger, new_account):
    account_id, org_id = funded(engine, ledger, new_account, "1")
    started = hold(ledger, org_id, "5")  # 0.5500: the call starts with credit
    # it runs for 100 minutes: 11.0000, far past the hold and past the grace limit: all of it is charged
    done = capture(ledger, org_id, started.hold.id, Decimal(100), markup_percent=MARKUP)
    assert done.entry is not None and done.entry.balance_after == Decimal(-10)
    # a usage report past the floor is recorded too
    report = record_usage(
        ledger,
        org_id,
        operation="voice_realtime",
        quantity=Decimal(10),
        status="completed",
        idempotency_key="after-debt",
        markup_percent=MARKUP,
    )
    assert report.charged and report.entry is not None and report.entry.balance_after == Decimal("-11.1")
    assert figures(engine, account_id)["invariants"] == []
    # debt: no new operations, no holds
    assert not check(engine, org_id, "sms_twilio", Decimal(1), markup_percent=MARKUP).allowed
    before = figures(engine, account_id)
    with pytest.raises(HoldRefused) as refused:
        hold(ledger, org_id, "1")
    assert refused.value.available_units == to_units(Decimal("-11.1")) and "at or below zero" in str(refused.value)
    assert figures(engine, account_id) == before
    # paid back to exactly zero: still blocked; above zero: free again
    ledger.post(Posting(account_id, "purchase", Decimal("11.1"), "pays the debt"))
    assert not check(engine, org_id, "sms_twilio", Decimal(1), markup_percent=MARKUP).allowed
    with pytest.raises(HoldRefused):
        hold(ledger, org_id, "1")
    ledger.post(Posting(account_id, "purchase", Decimal("1"), "credit"))
    assert check(engine, org_id, "sms_twilio", Decimal(1), markup_percent=MARKUP).allowed
    assert hold(ledger, org_id, "1").available_units == to_units(Decimal("0.89"))


def test_active_holds_count_against_check(engine, ledger, new_account):
    account_id, org_id = funded(engine, ledger, new_account, "1")
    hold(ledger, org_id, "9")  # 0.9900 of 1.0000
    result = check(engine, org_id, "sms_twilio", Decimal(1), markup_percent=MARKUP)
    assert result.allowed and result.available_units == 100
    hold(ledger, org_id, "1")  # 0.1100: within the grace limit, leaves -0.1000 available
    result = check(engine, org_id, "sms_twilio", Decimal(1), markup_percent=MARKUP)
    assert not result.allowed and result.available_units == -1000 and result.balance_units == to_units(Decimal(1))


# -- REST ------------------------------------------------------------------------------------------


def holds_written(org) -> tuple:
    """What a hold request may write for the organization."""
    with org.engine.connect() as conn:
        return tuple(
            conn.execute(
                sa.text(
                    "SELECT (SELECT count(*) || ' ' || count(settled_at) FROM credit_hold WHERE account_id = :a), "
                    "(SELECT held || ' ' || balance || ' ' || transaction_count FROM credit_account WHERE id = :a)"
                ),
                {"a": org.account_id},
            ).one()
        )


def test_holds_over_rest_as_a_usage_key(client, org):
    org.post("purchase", "10")
    owner = org.auth("owner")  # owners' and admins' keys carry usage:write
    body = {"operation": "voice_realtime", "estimated_quantity": "5", "idempotency_key": "call-1"}
    r = client.post("/api/credits/holds", json=body, headers=owner)
    assert r.status_code == 201, r.text
    placed = r.json()
    assert placed["amount"] == "0.5500" and placed["available"] == "9.4500" and placed["status"] == "active"
    assert placed["estimated_quantity"] == "5" and not placed["replayed"]
    expires = datetime.fromisoformat(placed["expires_at"]) - datetime.fromisoformat(placed["created_at"])
    assert expires == timedelta(minutes=15)  # HOLD_TTL_SECONDS' default
    again = client.post("/api/credits/holds", json=body, headers=org.auth("admin"))
    assert again.status_code == 201 and again.json()["id"] == placed["id"] and again.json()["replayed"]
    balance = client.get("/api/credits/balance", headers=org.auth("member")).json()
    assert (balance["balance"], balance["available"], balance["reserved"]) == ("10.0000", "9.4500", "0.5500")
    listed = client.get("/api/credits/holds", headers=org.auth("member")).json()
    assert [h["id"] for h in listed["holds"]] == [placed["id"]] and listed["reserved"] == "0.5500"
    # the call ran longer than estimated: all of it is charged, the whole hold released
    r = client.post(f"/api/credits/holds/{placed['id']}/capture", json={"quantity": "7.5"}, headers=owner)
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["entry"]["amount"] == "-0.8250" and done["entry"]["balance_after"] == "9.1750"
    assert done["released"] == "0.5500" and done["hold"]["status"] == "captured"
    assert done["hold"]["captured_entry_id"] == done["entry"]["id"] and done["entry"]["type"] == "usage"
    replay = client.post(f"/api/credits/holds/{placed['id']}/capture", json={"quantity": "7.5"}, headers=owner)
    assert replay.status_code == 200 and replay.json()["replayed"] and replay.json()["released"] == "0.0000"
    assert replay.json()["entry"]["id"] == done["entry"]["id"]
    conflict = client.post(f"/api/credits/holds/{placed['id']}/release", headers=owner)
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "conflict"
    # a failed call: released, nothing charged
    second = client.post(
        "/api/credits/holds", json={**body, "idempotency_key": "call-2", "estimated_quantity": "1"}, headers=owner
    ).json()
    r = client.post(f"/api/credits/holds/{second['id']}/release", headers=owner)
    assert r.status_code == 200 and r.json()["entry"] is None and r.json()["released"] == "0.1100"
    balance = client.get("/api/credits/balance", headers=owner).json()
    assert (balance["balance"], balance["available"], balance["reserved"]) == ("9.1750", "9.1750", "0.0000")
    assert client.get("/api/credits/holds", headers=owner).json()["holds"] == []
    # too big to fit: 402 with what is available and what was needed, nothing reserved
    before = holds_written(org)
    r = client.post(
        "/api/credits/holds", json={**body, "idempotency_key": "big", "estimated_quantity": "200"}, headers=owner
    )
    assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_credits"
    assert "available 9.1750, needed 22.0000" in r.json()["error"]["message"]
    assert holds_written(org) == before
    with org.engine.connect() as conn:
        assert check_invariants(conn, org.account_id) == []


def test_holds_refuse_members_keys_and_bad_input_and_write_nothing(client, org, other):
    org.post("purchase", "10")
    owner, member = org.auth("owner"), org.auth("member")
    body = {"operation": "sms_twilio", "estimated_quantity": "2", "idempotency_key": "sms-1"}
    placed = client.post("/api/credits/holds", json=body, headers=owner).json()
    before = holds_written(org)
    for path, payload in (
        ("/api/credits/holds", {**body, "idempotency_key": "sms-2"}),
        (f"/api/credits/holds/{placed['id']}/capture", {"quantity": "2"}),
        (f"/api/credits/holds/{placed['id']}/release", None),
    ):
        r = client.post(path, json=payload, headers=member)
        assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope", r.text
    bad = [
        ("/api/credits/holds", {**body, "estimated_quantity": 0}),
        ("/api/credits/holds", {**body, "estimated_quantity": "-1"}),
        ("/api/credits/holds", {**body, "estimated_quantity": "1.2345678"}),
        ("/api/credits/holds", {k: v for k, v in body.items() if k != "estimated_quantity"}),
        ("/api/credits/holds", {k: v for k, v in body.items() if k != "idempotency_key"}),
        ("/api/credits/holds", {**body, "operation": "teleport"}),
        ("/api/credits/holds", {**body, "operation": "chat", "estimated_quantity": "1.5"}),
        ("/api/credits/holds", {**body, "operation": "openai_input_tokens"}),  # no model
        ("/api/credits/holds", {**body, "amount": "1.0000"}),  # unknown field
        (f"/api/credits/holds/{placed['id']}/capture", {}),
        (f"/api/credits/holds/{placed['id']}/capture", {"quantity": "abc"}),
        (f"/api/credits/holds/{placed['id']}/capture", {"quantity": "2", "extra": 1}),
        ("/api/credits/holds/0/release", None),
    ]
    for path, payload in bad:
        r = client.post(path, json=payload, headers=owner)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", (path, payload, r.text)
    r = client.post("/api/credits/holds", json={**body, "estimated_quantity": "3"}, headers=owner)
    assert r.status_code == 409  # the key names another hold
    chat = client.post(
        "/api/credits/holds", json={**body, "operation": "chat", "idempotency_key": "chat-1"}, headers=owner
    ).json()
    before = holds_written(org)
    r = client.post(f"/api/credits/holds/{chat['id']}/capture", json={"quantity": "1.5"}, headers=owner)
    assert r.status_code == 400 and "whole messages" in r.json()["error"]["message"]
    # another organization's hold, or none at all: 404
    for hold_id in (placed["id"], 10**12):
        r = client.post(f"/api/credits/holds/{hold_id}/release", headers=other.auth("owner"))
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert holds_written(org) == before


# -- the page --------------------------------------------------------------------------------------


def test_the_page_shows_available_and_reserved_live(app, page, app_engine, app_ledger):
    """A hold placed and captured through the REST API (real HTTP to the app's backend) shows in an
    open billing tab without a reload: Reserved and Available move, the balance only with the capture;
    the hold itself raises no toast."""
    import httpx
    from playwright.sync_api import expect

    from .apiutil import Org
    from .test_billing_page import open_billing

    org = Org(app_engine, app_ledger, welcome=Decimal(10))
    open_billing(page, app, org, "member")
    balance, available, reserved = (
        page.get_by_test_id(t) for t in ("balance-value", "available-value", "reserved-value")
    )
    expect(balance).to_have_text("$10.00")
    expect(available).to_have_text("$10.00")
    expect(reserved).to_have_text("$0.00")
    page.wait_for_timeout(1000)  # let the tab's listener subscribe

    api = httpx.Client(base_url=app.backend_url, headers=org.auth("owner"), timeout=30)
    r = api.post(
        "/api/credits/holds",
        json={"operation": "voice_realtime", "estimated_quantity": "10", "idempotency_key": "live-call"},
    )
    assert r.status_code == 201, r.text
    expect(reserved).to_have_text("$1.10", timeout=10_000)
    expect(available).to_have_text("$8.90")
    expect(balance).to_have_text("$10.00")
    expect(page.locator("[data-sonner-toast]")).to_have_count(0)

    r = api.post(f"/api/credits/holds/{r.json()['id']}/capture", json={"quantity": "20"})
    assert r.status_code == 200, r.text
    expect(balance).to_have_text("$7.80", timeout=10_000)
    expect(reserved).to_have_text("$0.00", timeout=10_000)
    expect(available).to_have_text("$7.80")
    expect(page.get_by_test_id("history-row").first).to_contain_text("Voice call session")
