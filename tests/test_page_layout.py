"""The billing page's shell and layout at desktop (1280 px) and phone (390 px) widths, in Chromium:
navigation (Studio → Billing & Credits), the member's disabled Add Credits button and its reason,
history cards on phones, no horizontal scrolling, the dialog inside the screen, and every usage
category labelled in the chart. Screenshots of each state go to test-artifacts/."""

from __future__ import annotations

import re
from datetime import UTC
from decimal import Decimal

import pytest
import sqlalchemy as sa
from playwright.sync_api import expect

from orcapulse_billing.models import LedgerEntry
from orcapulse_billing.money import fmt_money4, fmt_signed_amount

from .apiutil import PASSWORD, Org
from .browser import ARTIFACTS, screenshot_name, sign_in

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# every usage category the page knows, with the label it shows (orcapulse_billing/pages/billing/data.py)
CATEGORIES = {
    "ai_call": "AI calls",
    "call_recording": "Recording",
    "whatsapp": "WhatsApp",
    "sms": "SMS",
    "email": "Email",
    "transcription": "Transcription",
    "tts": "TTS",
    "llm_tokens": "LLM tokens",
    "chat": "Chat",
    "phone_rental": "Phone numbers",
    "other": "Other",
}


@pytest.fixture
def phone(browser, request):
    """A phone-sized browser context (390 × 844); a screenshot of the end state goes to test-artifacts/."""
    context = browser.new_context(viewport=PHONE, device_scale_factor=1)
    tab = context.new_page()
    yield tab
    try:
        tab.screenshot(path=str(screenshot_name(request.node.nodeid)), full_page=True)
    finally:
        context.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"layout_{name}.png"), full_page=True)


def open_billing(page, app, org: Org, role: str) -> None:
    sign_in(page, app.base_url, org.emails[role], PASSWORD)
    expect(page).to_have_url(re.compile(r"/billing$"), timeout=30_000)
    expect(page.get_by_test_id("balance-value")).to_have_text(re.compile(r"\$"), timeout=30_000)


def busy_org(app_engine, app_ledger) -> Org:
    """An organization with a top-up, a billing session and one usage entry in every category."""
    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    org.post("purchase", "200", description="Credit top-up via Lemon Squeezy - $200.00")
    for n, category in enumerate(CATEGORIES):
        org.post("usage", f"-{n + 1}.{n:02d}37", category=category, description=f"{CATEGORIES[category]} usage")
    org.session("layout-call-1", minutes="3.5")
    return org


def ledger_rows(org: Org) -> list[dict[str, str]]:
    """The organization's entries as the history shows them, newest first, read from the database."""
    with org.engine.connect() as conn:
        entries = conn.execute(
            sa.select(LedgerEntry.created_at, LedgerEntry.description, LedgerEntry.amount, LedgerEntry.balance_after)
            .where(LedgerEntry.account_id == org.account_id)
            .order_by(LedgerEntry.seq.desc())
        ).all()
    rows = []
    for created_at, description, amount, balance_after in entries:
        v = (created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)).astimezone(UTC)
        rows.append(
            {
                "when": f"{v:%b} {v.day}, {v:%Y %H:%M}",
                "description": description,
                "amount": fmt_signed_amount(amount),
                "balance": fmt_money4(balance_after),
            }
        )
    return rows


def assert_no_horizontal_scroll(page, width: int) -> None:
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    assert page.evaluate("document.body.scrollWidth") <= width


def assert_every_category_labelled(page, width: int) -> None:
    """Each category's label is drawn on the chart's axis, in full, inside the chart and the screen,
    no two overlapping; and listed with its amount beside or under the chart."""
    chart = page.get_by_test_id("usage-bars")
    expect(chart.locator(".recharts-yAxis-tick-labels .recharts-cartesian-axis-tick-value")).to_have_count(
        len(CATEGORIES), timeout=10_000
    )
    ticks = chart.evaluate(
        """el => {
            const box = el.getBoundingClientRect();
            return {box: {left: box.left, right: box.right},
                    ticks: [...el.querySelectorAll('.recharts-yAxis-tick-labels .recharts-cartesian-axis-tick-value')].map(t => {
                        const r = t.getBoundingClientRect();
                        // a label wrapped over two lines is one <text> of several <tspan>s
                        const text = [...t.querySelectorAll('tspan')].map(s => s.textContent).join(' ') || t.textContent;
                        return {text, left: r.left, right: r.right, top: r.top, bottom: r.bottom};
                    })};
        }"""
    )
    assert sorted(t["text"] for t in ticks["ticks"]) == sorted(CATEGORIES.values())
    for t in ticks["ticks"]:
        assert t["right"] > t["left"], t
        assert ticks["box"]["left"] <= t["left"] and t["right"] <= ticks["box"]["right"], t
        assert 0 <= t["left"] and t["right"] <= width, t
    by_top = sorted(ticks["ticks"], key=lambda t: t["top"])
    for a, b in zip(by_top, by_top[1:], strict=False):
        assert a["bottom"] <= b["top"] + 0.5, (a, b)
    legend = page.get_by_test_id("usage-category")
    expect(legend).to_have_count(len(CATEGORIES))
    for label in CATEGORIES.values():
        expect(legend.filter(has_text=re.compile(rf"^{re.escape(label)}"))).to_be_visible()


# -- desktop -------------------------------------------------------------------------------------


def test_desktop_sidebar_studio_billing_is_active_and_navigates(app, page, app_engine, app_ledger):
    org = busy_org(app_engine, app_ledger)
    page.set_viewport_size(DESKTOP)
    open_billing(page, app, org, "owner")

    sidebar = page.get_by_test_id("sidebar")
    expect(sidebar).to_be_visible()
    expect(page.get_by_test_id("nav-menu-button")).to_be_hidden()
    studio = sidebar.get_by_test_id("nav-group-studio")
    expect(studio).to_contain_text("Studio")
    link = studio.get_by_test_id("nav-billing")
    expect(link).to_be_visible()
    expect(link).to_have_text("Billing & Credits")
    expect(link).to_have_attribute("aria-current", "page")
    expect(link).to_have_attribute("href", "/billing")
    # no dead links: the only page behind the sign-in is this one
    expect(sidebar.locator("a")).to_have_count(1)
    expect(page.get_by_test_id("breadcrumb")).to_have_text(re.compile(r"Studio\s*Billing & Credits"))
    # the top bar keeps who is signed in and sign-out
    expect(page.get_by_test_id("signed-in-email")).to_have_text(org.emails["owner"])
    expect(page.get_by_test_id("signed-in-role")).to_have_text("owner")
    expect(page.get_by_test_id("logout-button")).to_be_visible()

    # desktop: the table, not the cards; the four stat cards side by side
    expect(page.get_by_test_id("history-row")).to_have_count(len(ledger_rows(org)))
    expect(page.get_by_test_id("history-table")).to_be_visible()
    expect(page.get_by_test_id("history-cards")).to_be_hidden()
    tops = {round(page.get_by_test_id(t).bounding_box()["y"]) for t in ("balance-value", "transaction-count-value")}
    assert len(tops) == 1
    assert_every_category_labelled(page, DESKTOP["width"])
    assert_no_horizontal_scroll(page, DESKTOP["width"])
    shot(page, "desktop_nav")

    # the link navigates: from a scrolled page with a filter changed, back to a fresh Billing & Credits
    page.get_by_test_id("type-filter").click()
    page.get_by_role("option", name="Top-ups").click()
    expect(page.get_by_test_id("pagination-total")).to_have_text("Showing 1–2 of 2 transactions")
    page.mouse.wheel(0, 2000)
    link.click()
    expect(page).to_have_url(re.compile(r"/billing$"))
    expect(page.get_by_role("heading", name="Billing & Credits")).to_be_in_viewport()
    expect(page.get_by_test_id("history-row")).to_have_count(len(ledger_rows(org)), timeout=10_000)
    expect(link).to_have_attribute("aria-current", "page")


def test_member_sees_add_credits_disabled_with_the_reason(app, page, browser, app_engine, app_ledger):
    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    page.set_viewport_size(DESKTOP)
    open_billing(page, app, org, "member")
    button = page.get_by_test_id("add-credits-button")
    reason = page.get_by_test_id("add-credits-reason")
    expect(button).to_be_visible()
    expect(button).to_be_disabled()
    expect(reason).to_be_visible()
    expect(reason).to_have_text("Only owners can add credits")
    expect(button).to_have_attribute("aria-describedby", "add-credits-reason")
    # the reason sits with the button: under it, at the right-hand end of the header
    b, r = button.bounding_box(), reason.bounding_box()
    assert r["y"] >= b["y"] + b["height"] - 1 and abs((r["x"] + r["width"]) - (b["x"] + b["width"])) < 2
    button.hover(force=True)  # the tooltip says it too
    expect(page.get_by_role("tooltip")).to_contain_text("Only owners can add credits", timeout=5_000)
    shot(page, "desktop_member_add_credits")
    # an owner gets the live button and no reason
    owner = browser.new_context(viewport=DESKTOP)
    try:
        tab = owner.new_page()
        open_billing(tab, app, org, "owner")
        expect(tab.get_by_test_id("add-credits-button")).to_be_enabled()
        expect(tab.get_by_test_id("add-credits-reason")).to_have_count(0)
    finally:
        owner.close()


# -- phone ---------------------------------------------------------------------------------------


def test_phone_menu_opens_the_navigation_drawer(app, phone, app_engine, app_ledger):
    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    open_billing(phone, app, org, "member")
    expect(phone.get_by_test_id("sidebar")).to_be_hidden()
    expect(phone.get_by_test_id("breadcrumb")).to_be_hidden()
    expect(phone.get_by_test_id("signed-in-role")).to_have_text("member")
    expect(phone.get_by_test_id("logout-button")).to_be_in_viewport()
    expect(phone.get_by_test_id("nav-drawer")).to_have_count(0)
    menu = phone.get_by_test_id("nav-menu-button")
    expect(menu).to_be_in_viewport()
    menu.click()

    drawer = phone.get_by_test_id("nav-drawer")
    expect(drawer).to_be_visible()
    box = drawer.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] and box["y"] >= 0
    expect(drawer.get_by_test_id("nav-group-studio")).to_contain_text("Studio")
    link = drawer.get_by_test_id("nav-billing")
    expect(link).to_be_visible()
    expect(link).to_have_text("Billing & Credits")
    expect(link).to_have_attribute("aria-current", "page")
    expect(drawer.locator("a")).to_have_count(1)
    # exactly one navigation link is visible at a time: the drawer's (the sidebar's is hidden)
    expect(phone.locator("[data-testid=nav-billing]:visible")).to_have_count(1)
    shot(phone, "phone_nav_drawer")

    link.click()  # navigates and closes the drawer
    expect(phone).to_have_url(re.compile(r"/billing$"))
    expect(drawer).to_have_count(0)
    expect(phone.get_by_test_id("balance-value")).to_have_text("$5.00", timeout=10_000)
    # the close button closes it as well
    menu.click()
    expect(drawer).to_be_visible()
    phone.get_by_test_id("nav-close").click()
    expect(drawer).to_have_count(0)
    assert_no_horizontal_scroll(phone, PHONE["width"])


def test_phone_history_cards_show_the_ledger_figures(app, phone, app_engine, app_ledger):
    org = busy_org(app_engine, app_ledger)
    open_billing(phone, app, org, "member")
    expected = ledger_rows(org)
    cards = phone.get_by_test_id("history-card")
    expect(cards).to_have_count(len(expected))
    expect(phone.get_by_test_id("history-table")).to_be_hidden()
    for i, row in enumerate(expected):
        card = cards.nth(i)
        expect(card.get_by_test_id("card-when")).to_have_text(row["when"])
        expect(card.get_by_test_id("card-description")).to_have_text(row["description"])
        expect(card.get_by_test_id("card-amount")).to_have_text(row["amount"])
        expect(card.get_by_test_id("card-balance")).to_have_text(row["balance"])
    expect(cards.first).to_be_visible()
    # compact: every card inside the screen
    for i in range(len(expected)):
        box = cards.nth(i).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (i, box)
    assert_no_horizontal_scroll(phone, PHONE["width"])

    # stat cards stacked, one under the other, full width
    boxes = [
        phone.get_by_test_id(t).bounding_box()
        for t in ("balance-value", "credits-added-value", "credits-consumed-value", "transaction-count-value")
    ]
    assert all(a["y"] + a["height"] < b["y"] for a, b in zip(boxes, boxes[1:], strict=False))
    assert len({round(b["x"]) for b in boxes}) == 1
    # header buttons wrap inside the screen
    for t in ("refresh-button", "add-credits-button"):
        box = phone.get_by_test_id(t).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (t, box)
    assert_every_category_labelled(phone, PHONE["width"])
    shot(phone, "phone_history_cards")

    # a card opens the same detail as the table row: the billing session's breakdown
    cards.first.click()
    panel = phone.get_by_test_id("session-panel")
    expect(panel).to_be_visible()
    expect(panel).to_contain_text(expected[0]["description"])
    expect(panel).to_contain_text("Test agent")
    assert_no_horizontal_scroll(phone, PHONE["width"])
    shot(phone, "phone_row_detail")


def test_phone_add_credits_dialog_fits_the_screen(app, phone, app_engine, app_ledger):
    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    open_billing(phone, app, org, "owner")
    expect(phone.get_by_test_id("add-credits-reason")).to_have_count(0)
    phone.get_by_test_id("add-credits-button").click()
    dialog = phone.get_by_test_id("add-credits-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_test_id("checkout-pkg_1000")).to_be_attached()
    box = dialog.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
    # its controls too: none pushed past the right edge
    for el in dialog.locator("button, input").all():
        if el.is_visible():
            b = el.bounding_box()
            assert b["x"] >= box["x"] - 0.5 and b["x"] + b["width"] <= box["x"] + box["width"] + 0.5, b
    assert_no_horizontal_scroll(phone, PHONE["width"])
    shot(phone, "phone_add_credits_dialog")
