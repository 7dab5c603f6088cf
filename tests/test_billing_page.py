"""Sign-in, the billing page's stat cards and sign-out, in Chromium against the running app."""

from __future__ import annotations

import re
import time

import httpx
import sqlalchemy as sa
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import expect

from orcapulse_billing.db import make_engine
from orcapulse_billing.ledger import get_account
from orcapulse_billing.money import fmt_balance
from orcapulse_billing.seed import DEMO_MEMBER, DEMO_OWNER

from .browser import sign_in


def _demo_account(app_database):
    engine = make_engine(app_database)
    with engine.connect() as conn:
        org_id = conn.execute(sa.text("SELECT id FROM organization WHERE name = 'Demo Org'")).scalar()
        acct = get_account(conn, organization_id=org_id)
    engine.dispose()
    return acct


def test_owner_signs_in_and_sees_the_demo_balance_from_the_ledger(app, app_database, page):
    acct = _demo_account(app_database)
    sign_in(page, app.base_url, *DEMO_OWNER)
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
    sign_in(page, app.base_url, *DEMO_MEMBER)
    expect(page.get_by_test_id("signed-in-role")).to_have_text("member", timeout=30_000)
    page.get_by_test_id("logout-button").click()
    expect(page).to_have_url(re.compile(r"/login$"), timeout=30_000)
    page.goto(app.base_url + "/billing")
    expect(page).to_have_url(re.compile(r"/login$"), timeout=30_000)


def test_wrong_password_shows_an_error_and_no_session(app, page):
    sign_in(page, app.base_url, DEMO_OWNER[0], "not the password")
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
    r = httpx.post(
        base + "/api/auth/login-form",
        data={"email": DEMO_OWNER[0], "password": DEMO_OWNER[1]},
        headers={"Origin": "http://evil.example"},
    )
    assert r.status_code == 403 and "set-cookie" not in r.headers


# -- the Billing & Credits page (document 003), section by section ------------------------------

from decimal import Decimal  # noqa: E402

from orcapulse_billing.money import fmt_money4, fmt_signed_amount  # noqa: E402

from .apiutil import PASSWORD, Org  # noqa: E402
from .browser import ARTIFACTS  # noqa: E402


def open_billing(page, app, org: Org, role: str = "owner"):
    sign_in(page, app.base_url, org.emails[role], PASSWORD)
    expect(page).to_have_url(re.compile(r"/billing$"), timeout=30_000)
    expect(page.get_by_test_id("balance-value")).not_to_have_text("", timeout=30_000)


def test_member_cannot_add_credits_in_the_page_or_on_the_server(app, page, app_engine, app_ledger):
    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    open_billing(page, app, org, "member")
    button = page.get_by_test_id("add-credits-button")
    expect(button).to_be_disabled()
    # Bypass the disabled button the way a curious user could, by calling React's own click
    # handler, which sends the event to the server: the server still refuses.
    button.evaluate("""b => {
        const key = Object.keys(b).find(k => k.startsWith('__reactProps'));
        b[key].onClick({preventDefault() {}, stopPropagation() {}, persist() {}, nativeEvent: new MouseEvent('click')});
    }""")
    expect(page.get_by_text("Only owners can add credits.")).to_be_visible(timeout=10_000)
    expect(page.get_by_test_id("add-credits-dialog")).to_have_count(0)


def test_owner_buys_the_50_package_through_the_checkout_popup(app, page, app_engine, app_ledger):
    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    open_billing(page, app, org, "owner")
    page.get_by_test_id("add-credits-button").click()
    dialog = page.get_by_test_id("add-credits-dialog")
    expect(dialog).to_contain_text("+25 bonus credits (5%)")
    with page.expect_popup() as popup_info:
        page.get_by_test_id("checkout-pkg_50").click()
    popup = popup_info.value
    expect(popup.get_by_test_id("checkout-amount")).to_have_text("$50.00")
    expect(page.get_by_test_id("waiting-banner")).to_contain_text("Waiting for payment confirmation")
    expect(page.get_by_test_id("balance-value")).to_have_text("$5.00")  # nothing before the webhook
    assert org.account().transaction_count == 1
    popup.get_by_test_id("checkout-card").fill("4242 4242 4242 4242")
    popup.get_by_test_id("checkout-pay").click()
    popup.wait_for_event("close", timeout=15_000)  # the return page closes the window
    expect(page.get_by_text("Credits added successfully!")).to_be_visible(timeout=20_000)
    expect(page.get_by_test_id("balance-value")).to_have_text("$55.00")
    expect(page.get_by_test_id("waiting-banner")).to_have_count(0)
    assert org.account().balance == Decimal("55.0000")  # exactly 50.0000 more
    # the card used is saved: a one-click purchase is offered next time
    page.get_by_test_id("add-credits-button").click()
    expect(page.get_by_test_id("quick-pkg_50")).to_contain_text("Pay now with Visa •••• 4242")
    page.get_by_test_id("quick-pkg_50").click()
    expect(page.get_by_test_id("balance-value")).to_have_text("$105.00", timeout=20_000)


def settled_box(page, locator) -> dict:
    """The element's box once it stops moving (two reads 100 ms apart agree): animations are over."""
    box = None
    for _ in range(50):
        previous, box = box, locator.bounding_box()
        if box is not None and box == previous:
            return box
        page.wait_for_timeout(100)
    raise AssertionError(f"the element kept moving: {box}")


def test_custom_amounts_in_the_dialog(app, page, app_engine, app_ledger):
    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    open_billing(page, app, org, "owner")
    page.get_by_test_id("add-credits-button").click()
    button = page.get_by_test_id("custom-checkout")
    where = settled_box(page, button)  # once the dialog's opening animation is over
    for bad, said in (("0.50", "between $1.00"), ("150", "between $1.00"), ("abc", "whole cents")):
        page.get_by_test_id("custom-amount").fill(bad)
        button.click()
        expect(page.get_by_test_id("purchase-error")).to_contain_text(said)
        # the error appearing or clearing moves nothing above it: a centred dialog moved the button under
        # the pointer between mouse-down (whose blur clears the error) and mouse-up, and the click was lost
        assert settled_box(page, button) == where
    expect(page.get_by_test_id("purchase-error")).to_contain_text("amount")
    page.get_by_test_id("custom-amount").fill("150")
    page.get_by_test_id("custom-checkout").click()
    expect(page.get_by_test_id("purchase-error")).to_contain_text("between $1.00 and $100.00")
    # typed and clicked at once: the click buys what was typed last, not the amount before it
    page.get_by_test_id("custom-amount").fill("")
    page.get_by_test_id("custom-amount").press_sequentially("7.25")
    try:
        with page.expect_popup() as popup_info:
            page.get_by_test_id("custom-checkout").click()
        popup = popup_info.value
    except PlaywrightTimeoutError:
        errors = page.get_by_test_id("purchase-error")
        shown = errors.inner_text() if errors.count() else "no purchase error"
        raise AssertionError(f"no checkout popup; the dialog shows: {shown}") from None
    expect(popup.get_by_test_id("checkout-amount")).to_have_text("$7.25")
    popup.get_by_test_id("checkout-card").fill("4242424242424242")
    popup.get_by_test_id("checkout-pay").click()
    expect(page.get_by_test_id("balance-value")).to_have_text("$12.25", timeout=20_000)
    with org.engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT COUNT(*) FROM checkout_session WHERE organization_id = :o"), {"o": org.id}
            ).scalar()
            == 1
        )  # the refused amounts created nothing


def test_stat_cards_match_the_ledger(app, page, app_engine, app_ledger):
    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    org.post("purchase", "200")
    org.post("usage", "-12.3456", category="ai_call")
    org.post("refund", "1.5")
    open_billing(page, app, org, "admin")
    acct = org.account()
    expect(page.get_by_test_id("balance-value")).to_have_text(fmt_balance(acct.balance_units))
    expect(page.get_by_test_id("credits-added-value")).to_have_text("+$206.50")
    expect(page.get_by_test_id("credits-consumed-value")).to_have_text("-$12.35")
    expect(page.get_by_test_id("transaction-count-value")).to_have_text("4")
    first = page.get_by_test_id("history-row").first
    expect(first).to_contain_text("Refund")
    expect(first).to_contain_text("+$1.5000")
    expect(first).to_contain_text(fmt_money4(acct.balance_units))


def test_paging_filter_and_page_size(app, page, app_engine, app_ledger):
    org = Org(app_engine, app_ledger)
    for n in range(1, 121):
        org.post(
            "purchase" if n % 10 == 0 else "usage",
            "1" if n % 10 == 0 else "-0.01",
            category=None if n % 10 == 0 else "sms",
            description=f"entry {n:03d}",
        )
    open_billing(page, app, org, "member")
    rows = page.get_by_test_id("history-row")
    expect(rows).to_have_count(50)
    expect(page.get_by_test_id("pagination-total")).to_have_text("Showing 1–50 of 120 transactions")
    expect(page.get_by_test_id("pagination-prev")).to_be_disabled()
    expect(rows.first).to_contain_text("entry 120")
    page.get_by_test_id("pagination-next").click()
    expect(page.get_by_test_id("pagination-total")).to_have_text("Showing 51–100 of 120 transactions")
    expect(rows.first).to_contain_text("entry 070")
    page.get_by_test_id("pagination-next").click()
    expect(rows).to_have_count(20)
    expect(rows.last).to_contain_text("entry 001")
    expect(page.get_by_test_id("pagination-next")).to_be_disabled()
    # filter: back to page 1
    page.get_by_test_id("type-filter").click()
    page.get_by_role("option", name="Top-ups").click()
    expect(page.get_by_test_id("pagination-total")).to_have_text("Showing 1–12 of 12 transactions")
    expect(rows).to_have_count(12)
    page.get_by_test_id("type-filter").click()
    page.get_by_role("option", name="Usage").click()
    page.get_by_test_id("pagination-next").click()
    expect(page.get_by_test_id("pagination-total")).to_have_text("Showing 51–100 of 108 transactions")
    # page size: back to page 1
    page.get_by_test_id("page-size-select").click()
    page.get_by_role("option", name="10 per page").click()
    expect(page.get_by_test_id("pagination-total")).to_have_text("Showing 1–10 of 108 transactions")
    expect(page.get_by_test_id("pagination-page")).to_have_count(5)  # 1 2 3 4 … 11
    expect(page.get_by_text("…")).to_be_visible()
    page.get_by_test_id("pagination-page").last.click()
    expect(page.get_by_test_id("pagination-total")).to_have_text("Showing 101–108 of 108 transactions")


def test_empty_state_and_filtered_empty_state(app, page, app_engine, app_ledger):
    org = Org(app_engine, app_ledger)
    open_billing(page, app, org, "member")
    expect(page.get_by_test_id("empty-state")).to_contain_text("No transactions found")
    expect(page.get_by_test_id("empty-state")).to_contain_text("Your transaction history is empty")
    org.post("usage", "-0.5", category="sms")
    page.get_by_test_id("type-filter").click()
    page.get_by_role("option", name="Top-ups").click()
    expect(page.get_by_test_id("empty-state")).to_contain_text("No Top-ups transactions in your history")


def test_error_state_when_the_data_source_fails(app, page, app_engine, app_ledger, monkeypatch):
    from orcapulse_billing.pages.billing import data as billing  # the page's reads

    def broken(*args, **kwargs):
        raise ConnectionError("database unreachable")

    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    monkeypatch.setattr(billing, "history_page", broken)  # the app runs in this process
    sign_in(page, app.base_url, org.emails["member"], PASSWORD)
    alert = page.get_by_test_id("error-alert")
    expect(alert).to_contain_text("Failed to load transaction history", timeout=30_000)
    expect(alert).to_contain_text("Please try again later")
    monkeypatch.undo()
    page.get_by_test_id("refresh-button").click()
    expect(page.get_by_test_id("history-row")).to_have_count(1, timeout=10_000)
    expect(page.get_by_test_id("error-alert")).to_have_count(0)


def test_skeleton_then_data(app, page, app_engine, app_ledger, monkeypatch):
    import time

    from orcapulse_billing.pages.billing import data as billing  # the page's reads

    real = billing._load

    def slow(*args, **kwargs):
        time.sleep(2)
        return real(*args, **kwargs)

    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    monkeypatch.setattr(billing, "_load", slow)
    sign_in(page, app.base_url, org.emails["member"], PASSWORD)
    expect(page.get_by_test_id("skeleton-cards")).to_be_visible(timeout=30_000)
    expect(page.get_by_test_id("skeleton-row")).to_have_count(5)
    expect(page.get_by_test_id("balance-value")).to_have_text("$5.00", timeout=30_000)
    expect(page.get_by_test_id("skeleton-cards")).to_have_count(0)


def test_row_click_opens_the_session_panel(app, page, app_engine, app_ledger):
    from orcapulse_billing.metering import SessionInfo, record_usage

    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    record_usage(
        app_ledger,
        org.id,
        operation="voice_pipeline",
        quantity=Decimal("3.5"),
        status="completed",
        idempotency_key="call-1",
        markup_percent=Decimal(20),
        session=SessionInfo(
            id="call-1",
            agent_id="agent_abc123",
            agent_name="Front desk",
            transcript="Caller: hello",
            analysis={"sentiment": "positive"},
        ),
    )
    open_billing(page, app, org, "member")
    page.get_by_test_id("history-row").first.click()
    panel = page.get_by_test_id("session-panel")
    expect(panel).to_contain_text("Billing session")
    for text in (
        "Front desk",
        "Pipeline",
        "3.5 min",
        "$0.1750",
        "$0.0525",
        "$0.0105",
        "$0.0175",
        "$0.2555",
        "Caller: hello",
        "sentiment: positive",
    ):
        expect(panel).to_contain_text(text)


def test_csv_export_downloads_the_filtered_rows(app, page, app_engine, app_ledger):
    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    for n in range(7):
        org.post("usage", "-0.25", category="sms", description=f"sms batch {n}")
    open_billing(page, app, org, "member")
    page.get_by_test_id("type-filter").click()
    page.get_by_role("option", name="Usage").click()
    expect(page.get_by_test_id("pagination-total")).to_have_text("Showing 1–7 of 7 transactions")
    with page.expect_download() as download:
        page.get_by_test_id("export-csv").click()
    import csv

    with open(download.value.path(), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["description"] for r in rows] == [f"sms batch {n}" for n in range(6, -1, -1)]
    assert {r["amount"] for r in rows} == {"-0.2500"}


def test_balance_change_outside_the_page_shows_after_refresh(app, page, app_engine, app_ledger):
    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    open_billing(page, app, org, "member")
    expect(page.get_by_test_id("balance-value")).to_have_text("$5.00")
    entry = org.post("purchase", "50")
    page.get_by_test_id("refresh-button").click()
    expect(page.get_by_test_id("balance-value")).to_have_text("$55.00", timeout=10_000)
    expect(page.get_by_text("Billing data refreshed")).to_be_visible()
    expect(page.get_by_test_id("history-row").first).to_contain_text(fmt_signed_amount(entry.amount_units))


def test_low_balance_banner_and_grace_period(app, page, app_engine, app_ledger):
    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    org.post("usage", "-1", category="sms")
    open_billing(page, app, org, "owner")
    banner = page.get_by_test_id("low-balance-banner")
    expect(banner).to_contain_text("Low balance")
    org.post("usage", "-6.5", category="ai_call")
    page.get_by_test_id("refresh-button").click()
    expect(page.get_by_test_id("balance-value")).to_have_text("-$2.50", timeout=10_000)
    expect(banner).to_contain_text("new calls are blocked until credits are added")
    org.post("purchase", "50")
    page.get_by_test_id("refresh-button").click()
    expect(banner).to_have_count(0, timeout=10_000)


def test_phone_width_has_no_horizontal_scroll(app, browser, app_engine, app_ledger):
    from .browser import screenshot_name

    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    try:
        open_billing(page, app, org, "owner")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.screenshot(path=str(screenshot_name("test_phone_width")), full_page=True)
    finally:
        context.close()


def test_owner_buys_through_the_lemon_squeezy_overlay(app, page, app_engine, app_ledger):
    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    open_billing(page, app, org, "owner")
    page.get_by_test_id("add-credits-button").click()
    page.get_by_role("radio", name="Lemon Squeezy").click()
    expect(page.get_by_test_id("quick-pkg_50")).to_have_count(0)  # saved cards are Stripe's
    page.get_by_test_id("checkout-pkg_50").click()
    overlay = page.get_by_test_id("lemonsqueezy-overlay")
    expect(overlay).to_be_visible(timeout=10_000)
    expect(page.get_by_test_id("waiting-banner")).to_contain_text("Waiting for payment confirmation")
    frame = page.frame_locator("[data-testid=lemonsqueezy-overlay] iframe")
    expect(frame.get_by_test_id("ls-amount")).to_have_text("$50.00")
    assert org.account().balance == Decimal("5.0000")  # nothing before the webhook
    frame.get_by_test_id("ls-card").fill("4242 4242 4242 4242")
    frame.get_by_test_id("ls-pay").click()
    expect(page.get_by_text("Credits added successfully!")).to_be_visible(timeout=20_000)
    expect(page.get_by_test_id("balance-value")).to_have_text("$55.00")
    expect(overlay).to_have_count(0)
    expect(page.get_by_test_id("history-row").first).to_contain_text("Credit top-up via Lemon Squeezy - $50.00")


def test_live_updates_reach_every_tab_of_the_organization_and_no_other(app, browser, client, app_engine, app_ledger):
    from .apiutil import Org as _Org

    org = _Org(app_engine, app_ledger, welcome=Decimal(10))
    other = _Org(app_engine, app_ledger, roles=("owner",), welcome=Decimal(10))
    owner_context = browser.new_context(viewport={"width": 1280, "height": 800})
    member_context = browser.new_context(viewport={"width": 1280, "height": 800})
    other_context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        owner_tab = owner_context.new_page()
        open_billing(owner_tab, app, org, "owner")
        second_owner_tab = owner_context.new_page()
        second_owner_tab.goto(app.base_url + "/billing")  # same sign-in, second tab
        member_tab = member_context.new_page()
        open_billing(member_tab, app, org, "member")
        other_tab = other_context.new_page()
        open_billing(other_tab, app, other, "owner")
        tabs = (owner_tab, second_owner_tab, member_tab)
        for tab in tabs + (other_tab,):
            expect(tab.get_by_test_id("balance-value")).to_have_text("$10.00", timeout=30_000)
        member_tab.evaluate(
            "window.__billing = []; window.addEventListener('billingUpdated', e => window.__billing.push(e.detail))"
        )
        time.sleep(1)  # let every tab's listener subscribe

        r = client.post(
            "/api/credits/usage",
            headers={**org.auth("owner"), "Idempotency-Key": "live-1"},
            json={"operation": "voice_pipeline", "quantity": "10", "status": "completed"},
        )
        assert r.status_code == 200, r.text
        for tab in tabs:  # no reload, no refresh click
            expect(tab.get_by_test_id("balance-value")).to_have_text("$9.27", timeout=10_000)
            expect(tab.get_by_test_id("transaction-count-value")).to_have_text("2")
            expect(tab.get_by_test_id("history-row").first).to_contain_text("Voice call session")
        expect(other_tab.get_by_test_id("balance-value")).to_have_text("$10.00")
        details = member_tab.evaluate("window.__billing")
        assert details[-1]["type"] == "credit_consumed" and details[-1]["balance"] == "9.2700"

        org.post("purchase", "50")  # e.g. a webhook or a CLI grant: any posting reaches the tabs
        for tab in tabs:
            expect(tab.get_by_test_id("balance-value")).to_have_text("$59.27", timeout=10_000)
        expect(member_tab.get_by_text("Credits added: +$50.00")).to_be_visible()
        assert member_tab.evaluate("window.__billing")[-1]["type"] == "credit_added"
        expect(other_tab.get_by_test_id("balance-value")).to_have_text("$10.00")
        owner_tab.screenshot(path=str(ARTIFACTS / "test_live_updates_owner_tab.png"))
    finally:
        for context in (owner_context, member_context, other_context):
            context.close()


def test_a_signed_out_session_stops_receiving_live_updates(app, browser, client, app_engine, app_ledger, monkeypatch):
    import orcapulse_billing.state as session_state
    from orcapulse_billing.auth import SESSION_COOKIE, logout

    # live updates re-check the session at most every LIVE_RECHECK seconds (5 in production)
    monkeypatch.setattr(session_state, "LIVE_RECHECK", 0.2)
    org = Org(app_engine, app_ledger, welcome=Decimal(10))
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        tab = context.new_page()
        open_billing(tab, app, org, "member")
        expect(tab.get_by_test_id("balance-value")).to_have_text("$10.00")
        time.sleep(1)  # the tab's listener subscribes

        def report(key: str):
            r = client.post(
                "/api/credits/usage",
                headers={**org.auth("owner"), "Idempotency-Key": key},
                json={"operation": "voice_pipeline", "quantity": "10", "status": "completed"},
            )
            assert r.status_code == 200, r.text

        report("revoke-1")
        expect(tab.get_by_test_id("balance-value")).to_have_text("$9.27", timeout=10_000)
        # signed out elsewhere (another tab, or an administrator revoking the session)
        logout(app_engine, next(c["value"] for c in context.cookies() if c["name"] == SESSION_COOKIE))
        time.sleep(0.5)
        report("revoke-2")
        tab.wait_for_timeout(3000)
        expect(tab.get_by_test_id("balance-value")).to_have_text("$9.27")
        assert org.account().balance_units == 92_700 - 7_300
    finally:
        context.close()


def test_auto_recharge_panel_for_owners_and_members(app, page, app_engine, app_ledger):
    from .test_auto_recharge import _card

    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    open_billing(page, app, org, "owner")
    panel = page.get_by_test_id("auto-recharge-panel")
    page.get_by_test_id("auto-enabled").click()
    page.get_by_test_id("auto-save").click()
    expect(page.get_by_test_id("auto-error")).to_contain_text("saved card")
    _card(app_engine, org.id, "4242424242424242")
    page.get_by_test_id("auto-threshold").fill("4")
    page.get_by_test_id("auto-save").click()
    expect(page.get_by_test_id("auto-error")).to_contain_text("threshold must be 5")
    page.get_by_test_id("auto-threshold").fill("15")
    page.get_by_test_id("auto-amount").fill("20")
    page.get_by_test_id("auto-save").click()
    # the balance (5.00) is already below 15: saving it recharges once at once, and it shows live
    expect(page.get_by_text("so it recharged now")).to_be_visible(timeout=20_000)
    expect(page.get_by_test_id("balance-value")).to_have_text("$25.00", timeout=20_000)
    org.post("usage", "-1", category="sms")  # 24.00 is not below 15: nothing more
    expect(page.get_by_test_id("balance-value")).to_have_text("$24.00", timeout=20_000)
    expect(panel).to_be_visible()
    page.context.clear_cookies()
    open_billing(page, app, org, "member")
    expect(page.get_by_test_id("auto-enabled")).to_be_disabled()
    expect(page.get_by_test_id("auto-save")).to_have_count(0)
