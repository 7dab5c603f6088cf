"""The app serves a page showing the demo organisation's balance (real app, real browser)."""

from __future__ import annotations

import sqlalchemy as sa
from playwright.sync_api import expect

from orcapulse_billing.db import make_engine
from orcapulse_billing.ledger import get_account
from orcapulse_billing.money import fmt_balance


def test_overview_shows_the_demo_balance_from_the_ledger(app, app_database, page):
    engine = make_engine(app_database)
    with engine.connect() as conn:
        org_id = conn.execute(sa.text("SELECT id FROM organization WHERE name = 'Demo Org'")).scalar()
        acct = get_account(conn, organization_id=org_id)
    engine.dispose()

    page.goto(app.base_url + "/")
    expect(page.get_by_test_id("balance-value")).to_have_text(fmt_balance(acct.balance_units), timeout=30_000)
    expect(page.get_by_test_id("credits-added-value")).to_have_text("+" + fmt_balance(acct.lifetime_added_units))
    expect(page.get_by_test_id("credits-consumed-value")).to_have_text("-" + fmt_balance(acct.lifetime_consumed_units))
    expect(page.get_by_test_id("transaction-count-value")).to_have_text(str(acct.transaction_count))


def test_backend_answers_health_and_ping(app):
    import httpx

    backend = app.backend.servers[0].sockets[0].getsockname()
    base = f"http://{backend[0]}:{backend[1]}"
    assert httpx.get(base + "/ping").json() == "pong"
    assert httpx.get(base + "/api/health").json() == {"status": "ok", "database": "ok"}
