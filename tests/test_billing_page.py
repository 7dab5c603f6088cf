"""Sign-in, the billing page's stat cards and sign-out, in Chromium against the running app."""

from __future__ import annotations

import re

import httpx
import sqlalchemy as sa
from playwright.sync_api import expect

from orcapulse_billing.db import make_engine
from orcapulse_billing.ledger import get_account
from orcapulse_billing.money import fmt_balance
from orcapulse_billing.seed import DEMO_MEMBER, DEMO_OWNER


def sign_in(page, app, email, password):
    page.goto(app.base_url + "/login")
    page.get_by_test_id("login-email").fill(email)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()


def _demo_account(app_database):
    engine = make_engine(app_database)
    with engine.connect() as conn:
        org_id = conn.execute(sa.text("SELECT id FROM organization WHERE name = 'Demo Org'")).scalar()
        acct = get_account(conn, organization_id=org_id)
    engine.dispose()
    return acct


def test_owner_signs_in_and_sees_the_demo_balance_from_the_ledger(app, app_database, page):
    acct = _demo_account(app_database)
    sign_in(page, app, *DEMO_OWNER)
    expect(page).to_have_url(re.compile(r"/billing$"), timeout=30_000)
    expect(page.get_by_test_id("balance-value")).to_have_text(fmt_balance(acct.balance_units), timeout=30_000)
    expect(page.get_by_test_id("credits-added-value")).to_have_text("+" + fmt_balance(acct.lifetime_added_units))
    expect(page.get_by_test_id("credits-consumed-value")).to_have_text("-" + fmt_balance(acct.lifetime_consumed_units))
    expect(page.get_by_test_id("transaction-count-value")).to_have_text(str(acct.transaction_count))
    expect(page.get_by_test_id("signed-in-role")).to_have_text("owner")
    cookie = next(c for c in page.context.cookies() if c["name"] == "opb_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert page.evaluate("document.cookie").find("opb_session") == -1  # invisible to page scripts


def test_member_signs_in_then_out(app, page):
    sign_in(page, app, *DEMO_MEMBER)
    expect(page.get_by_test_id("signed-in-role")).to_have_text("member", timeout=30_000)
    page.get_by_test_id("logout-button").click()
    expect(page).to_have_url(re.compile(r"/login$"), timeout=30_000)
    page.goto(app.base_url + "/billing")
    expect(page).to_have_url(re.compile(r"/login$"), timeout=30_000)


def test_wrong_password_shows_an_error_and_no_session(app, page):
    sign_in(page, app, DEMO_OWNER[0], "not the password")
    expect(page.get_by_test_id("login-error")).to_have_text("Wrong email or password.", timeout=30_000)
    assert not [c for c in page.context.cookies() if c["name"] == "opb_session"]


def test_signed_out_visit_goes_to_login(app, page):
    page.goto(app.base_url + "/billing")
    expect(page).to_have_url(re.compile(r"/login$"), timeout=30_000)
    expect(page.get_by_test_id("login-submit")).to_be_visible()


def test_a_forged_client_cookie_is_not_identity(app, page):
    page.context.add_cookies([{"name": "opb_session", "value": "forged-token", "url": app.base_url}])
    page.goto(app.base_url + "/billing")
    expect(page).to_have_url(re.compile(r"/login$"), timeout=30_000)


def test_backend_answers_health_and_ping(app):
    backend = app.backend.servers[0].sockets[0].getsockname()
    base = f"http://{backend[0]}:{backend[1]}"
    assert httpx.get(base + "/ping").json() == "pong"
    assert httpx.get(base + "/api/health").json() == {"status": "ok", "database": "ok"}
    # the sign-in form refuses posts from other sites
    r = httpx.post(base + "/api/auth/login-form", data={"email": DEMO_OWNER[0], "password": DEMO_OWNER[1]},
                   headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "set-cookie" not in r.headers
