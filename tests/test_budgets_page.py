"""The spend budgets card in a real browser: an owner adds a budget in the dialog, usage posted through
the REST API moves its bar live (50 % reached), an admin sees the card without the buttons, a member
sees no card; an owner demoted meanwhile is refused by the server."""

from __future__ import annotations

import uuid
from decimal import Decimal

import httpx
import sqlalchemy as sa
from playwright.sync_api import expect

from .apiutil import Org
from .test_billing_page import open_billing


def _report(app, org: Org, minutes: str) -> None:
    body = {"operation": "ai_call", "quantity": minutes, "status": "completed", "idempotency_key": uuid.uuid4().hex}
    r = httpx.post(f"{app.backend_url}/api/credits/usage", json=body, headers=org.auth("owner"), timeout=30)
    assert r.status_code == 200, r.text


def _set_role(engine, org: Org, role: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE membership SET role = :r WHERE user_id = :u AND organization_id = :o"),
            {"r": role, "u": org.user_ids["owner"], "o": org.id},
        )


def test_owner_sets_a_budget_and_sees_the_bar_move_admins_read_members_see_nothing(
    app, page, browser, app_engine, app_ledger
):
    org = Org(app_engine, app_ledger, welcome=Decimal(50))
    open_billing(page, app, org, "owner")
    card = page.get_by_test_id("budgets-card")
    expect(card.get_by_test_id("budgets-empty")).to_be_visible(timeout=20_000)
    card.get_by_test_id("budget-add").click()
    dialog = page.get_by_test_id("budget-dialog")
    dialog.get_by_test_id("budget-amount").fill("0.50")
    dialog.get_by_test_id("budget-save").click()
    expect(dialog.get_by_test_id("budget-error")).to_contain_text("$1 to $9,999,999,999.99")
    dialog.get_by_test_id("budget-amount").fill("1.00")
    dialog.get_by_test_id("budget-hard-stop").click()
    dialog.get_by_test_id("budget-save").click()
    expect(dialog).to_have_count(0)
    row = card.get_by_test_id("budget-row")
    expect(row.get_by_test_id("budget-spent")).to_have_text("$0.00 of $1.00 (0.0%)")
    expect(row).to_contain_text("Hard stop at 100%")

    _report(app, org, "30")  # $0.504: the bar moves live, 50 % reached
    expect(row.get_by_test_id("budget-spent")).to_have_text("$0.50 of $1.00 (50.4%)", timeout=20_000)
    expect(row.get_by_test_id("budget-bar")).to_have_attribute("data-level", "50")
    expect(row.get_by_test_id("budget-reached")).to_have_text("50% reached")
    with app_engine.connect() as conn:
        emails = conn.execute(
            sa.text("SELECT count(*) FROM email_outbox WHERE organization_id = :o AND kind = 'budget_alert'"),
            {"o": org.id},
        ).scalar()
    assert emails == 1

    for role, sees in (("admin", True), ("member", False)):
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        try:
            other = context.new_page()
            open_billing(other, app, org, role)
            budgets = other.get_by_test_id("budgets-card")
            if sees:
                expect(budgets.get_by_test_id("budget-spent")).to_have_text("$0.50 of $1.00 (50.4%)", timeout=20_000)
                expect(budgets.get_by_test_id("budget-add")).to_have_count(0)
                expect(budgets.get_by_test_id("budget-edit")).to_have_count(0)
            else:
                expect(other.get_by_test_id("history-row").first).to_be_visible(timeout=20_000)
                expect(budgets).to_have_count(0)
        finally:
            context.close()

    # each handler re-reads the role: an owner demoted while the dialog is open saves nothing
    card.get_by_test_id("budget-add").click()
    dialog.get_by_test_id("budget-amount").fill("7")
    _set_role(app_engine, org, "admin")
    try:
        dialog.get_by_test_id("budget-save").click()
        expect(dialog.get_by_test_id("budget-error")).to_contain_text("Only owners can change spend budgets")
    finally:
        _set_role(app_engine, org, "owner")
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    with app_engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM spend_budget WHERE organization_id = :o"), {"o": org.id}
            ).scalar()
            == 1
        )

    # the owner removes it
    row.get_by_test_id("budget-remove").click()
    expect(card.get_by_test_id("budgets-empty")).to_be_visible()
    with app_engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM spend_budget WHERE organization_id = :o"), {"o": org.id}
            ).scalar()
            == 0
        )
