"""Sessions under pressure (issue 15): one tab, two users; a burst of sign-ins and key reads on the
embedded default; failed sign-ins audited; state helpers not callable from a socket. Real parts: the
app on SQLite, Chromium, real HTTP."""

from __future__ import annotations

import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import sqlalchemy as sa
from playwright.sync_api import expect

from .apiutil import PASSWORD, Org
from .browser import sign_in


def _open_billing(page, app, org: Org) -> None:
    sign_in(page, app.base_url, org.emails["owner"], PASSWORD)
    expect(page).to_have_url(re.compile(r"/billing$"), timeout=30_000)
    expect(page.get_by_test_id("balance-value")).not_to_have_text("", timeout=30_000)


def test_one_tab_two_users_follows_the_new_organization_and_forgets_the_old(app, page, app_engine, app_ledger):
    first = Org(app_engine, app_ledger, roles=("owner",), welcome=Decimal(10))
    second = Org(app_engine, app_ledger, roles=("owner",), welcome=Decimal(20))
    _open_billing(page, app, first)
    expect(page.get_by_test_id("balance-value")).to_have_text("$10.00")
    page.get_by_test_id("add-credits-button").click()
    page.get_by_test_id("custom-amount").fill("7.25")  # something of the first user's in the tab's state
    page.keyboard.press("Escape")
    page.get_by_test_id("logout-button").click()
    expect(page).to_have_url(re.compile(r"/login$"), timeout=30_000)

    _open_billing(page, app, second)  # the same tab: the same Reflex state token
    expect(page.get_by_test_id("balance-value")).to_have_text("$20.00", timeout=30_000)
    expect(page.get_by_test_id("org-name")).to_have_text(second.org.name)
    time.sleep(1)  # the new listener subscribes
    second.post("usage", "-2", category="ai_call")
    expect(page.get_by_test_id("balance-value")).to_have_text("$18.00", timeout=3_000)
    first.post("usage", "-5", category="ai_call")  # the first organization's: never shown here
    time.sleep(2)
    expect(page.get_by_test_id("balance-value")).to_have_text("$18.00")
    expect(page.get_by_test_id("org-name")).to_have_text(second.org.name)
    page.get_by_test_id("add-credits-button").click()
    expect(page.get_by_test_id("custom-amount")).to_have_value("")  # the first user's input is gone


def test_a_burst_of_sign_ins_and_key_reads_on_the_embedded_default_answers_no_5xx(app, app_engine, app_ledger):
    """40 sign-ins (half with a wrong password) and 40 API-key reads at once, over HTTP, on SQLite."""
    orgs = [Org(app_engine, app_ledger, roles=("owner",), welcome=Decimal(5)) for _ in range(4)]
    url = app.backend_url

    def sign_in_once(i: int) -> int:
        org = orgs[i % len(orgs)]
        password = PASSWORD if i % 2 == 0 else "wrong-password-" + uuid.uuid4().hex[:6]
        r = httpx.post(url + "/api/auth/login", json={"email": org.emails["owner"], "password": password}, timeout=60)
        return r.status_code

    def read_balance(i: int) -> int:
        org = orgs[i % len(orgs)]
        return httpx.get(url + "/api/credits/balance", headers=org.auth("owner"), timeout=60).status_code

    with ThreadPoolExecutor(max_workers=80) as pool:
        futures = [pool.submit(sign_in_once, i) for i in range(40)] + [pool.submit(read_balance, i) for i in range(40)]
        statuses = [f.result() for f in futures]
    assert not [s for s in statuses if s >= 500], statuses
    assert statuses[40:] == [200] * 40
    assert set(statuses[:40]) <= {200, 401, 429}
    with app_engine.connect() as conn:
        failed = conn.execute(
            sa.text("SELECT COUNT(*) FROM audit_log WHERE action = 'login_failed' AND details LIKE :e"),
            {"e": "%" + orgs[1].emails["owner"] + "%"},
        ).scalar()
    assert failed >= 1  # the failed attempts were audited, not rolled back with the failure


def test_a_failed_sign_in_is_audited(client, app_engine, app_ledger):
    org = Org(app_engine, app_ledger, roles=("owner",))
    r = client.post("/api/auth/login", json={"email": org.emails["owner"], "password": "not-the-password"})
    assert r.status_code == 401
    unknown = f"nobody-{uuid.uuid4().hex[:8]}@example.test"
    assert client.post("/api/auth/login", json={"email": unknown, "password": "whatever-123"}).status_code == 401
    with app_engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT user_id, details FROM audit_log WHERE action = 'login_failed' ORDER BY id DESC LIMIT 2")
        ).all()
    assert rows[1].user_id == org.user_ids["owner"] and org.emails["owner"] in str(rows[1].details)
    assert rows[0].user_id is None and unknown in str(rows[0].details)


def test_state_helpers_are_not_event_handlers():
    """Only event handlers are callable by name from a socket: the principal helpers are private."""
    from orcapulse_billing.pages.billing import BillingState
    from orcapulse_billing.state import SessionState

    for state in (SessionState, BillingState):
        handlers = set(state.event_handlers)
        assert not {"current_principal", "live_principal", "binding"} & handlers, handlers
