"""Receipts on the billing page, in Chromium against the running app: the history row of a purchase
downloads its receipt (the same PDF bytes as the REST API), owners edit the billing details the next
receipts are made out to, admins see them, members see neither."""

from __future__ import annotations

import io
from decimal import Decimal

import sqlalchemy as sa
from playwright.sync_api import expect
from pypdf import PdfReader

from .apiutil import Org
from .test_billing_page import open_billing
from .test_payments import _attach_test_card


def _text(data: bytes) -> str:
    return "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(data)).pages)


def _quick_buy(page) -> None:
    page.get_by_test_id("add-credits-button").click()
    page.get_by_test_id("quick-pkg_50").click()
    expect(page.get_by_test_id("balance-value")).to_have_text("$55.00", timeout=20_000)
    page.keyboard.press("Escape")


def _receipt_download(page, number: str) -> bytes:
    link = page.get_by_test_id("history-table").get_by_test_id("receipt-link").filter(has_text=number)
    expect(link).to_be_visible(timeout=20_000)
    with page.expect_download() as download_info:
        link.click()
    download = download_info.value
    assert download.suggested_filename == f"orcapulse-receipt-{number}.pdf"
    return open(download.path(), "rb").read()


def _checkout_buy(page) -> None:
    """Through the hosted checkout popup, paying with the sandbox's test card."""
    page.get_by_test_id("add-credits-button").click()
    with page.expect_popup() as popup_info:
        page.get_by_test_id("checkout-pkg_50").click()
    popup = popup_info.value
    popup.get_by_test_id("checkout-card").fill("4242 4242 4242 4242")
    popup.get_by_test_id("checkout-pay").click()
    popup.wait_for_event("close", timeout=15_000)
    expect(page.get_by_test_id("balance-value")).to_have_text("$55.00", timeout=20_000)


def test_an_owner_downloads_the_receipt_of_a_purchase_from_its_history_row(app, page, app_engine, app_ledger):
    """A hosted checkout's receipt names the card the checkout charged (read from the provider)."""
    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    open_billing(page, app, org, "owner")
    _checkout_buy(page)
    with app_engine.connect() as conn:
        number, receipt_id = conn.execute(
            sa.text("SELECT number, id FROM receipt WHERE organization_id = :o"), {"o": org.id}
        ).one()
    shown = f"R-{number:06d}"
    pdf = _receipt_download(page, shown)
    text = _text(pdf)
    assert f"No. {shown}" in text and org.org.name in text and "Visa ending in 4242" in text
    assert "Total paid $50.00 USD" in text
    expect(page.get_by_test_id("session-panel")).to_have_count(0)  # the link did not open the row's detail
    page.get_by_test_id("history-row").filter(has_text=shown).click()  # the row's detail links it too
    expect(page.get_by_test_id("session-panel").get_by_test_id("receipt-link")).to_contain_text(shown)
    page.keyboard.press("Escape")
    # the same bytes the REST API answers
    import httpx

    r = httpx.get(f"{app.backend_url}/api/credits/receipts/{receipt_id}.pdf", headers=org.auth("owner"), timeout=30)
    assert r.status_code == 200 and r.content == pdf


def test_owners_edit_the_billing_details_admins_see_them_members_see_nothing(
    app, page, browser, app_engine, app_ledger
):
    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    _attach_test_card(org, "4242424242424242")
    open_billing(page, app, org, "owner")
    card = page.get_by_test_id("billing-profile-card")
    expect(card.get_by_test_id("billing-name")).to_have_text(org.org.name, timeout=20_000)
    page.get_by_test_id("billing-edit").click()
    dialog = page.get_by_test_id("billing-profile-dialog")
    dialog.get_by_test_id("billing-name").fill("   ")
    dialog.get_by_test_id("billing-save").click()
    expect(dialog.get_by_test_id("billing-error")).to_contain_text("Name is required")
    dialog.get_by_test_id("billing-name").fill("Zürich Voice AG")
    dialog.get_by_test_id("billing-address-line1").fill("Bahnhofstrasse 1")
    dialog.get_by_test_id("billing-postal-code").fill("8001")
    dialog.get_by_test_id("billing-city").fill("Zürich")
    dialog.get_by_test_id("billing-country").fill("Switzerland")
    dialog.get_by_test_id("billing-tax-id").fill("CHE-123.456.789")
    dialog.get_by_test_id("billing-save").click()
    expect(dialog).to_have_count(0)
    expect(card.get_by_test_id("billing-name")).to_have_text("Zürich Voice AG")
    expect(card.get_by_test_id("billing-address")).to_have_text("Bahnhofstrasse 1, 8001 Zürich, Switzerland")

    _quick_buy(page)
    with app_engine.connect() as conn:
        number = conn.execute(sa.text("SELECT number FROM receipt WHERE organization_id = :o"), {"o": org.id}).scalar()
    text = _text(_receipt_download(page, f"R-{number:06d}"))
    assert "Zürich Voice AG" in text and "8001 Zürich" in text and "Tax ID: CHE-123.456.789" in text

    for role, sees in (("admin", True), ("member", False)):
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        try:
            other = context.new_page()
            open_billing(other, app, org, role)
            rows = other.get_by_test_id("history-row")
            expect(rows.first).to_be_visible(timeout=20_000)
            profile = other.get_by_test_id("billing-profile-card")
            links = other.get_by_test_id("history-table").get_by_test_id("receipt-link")
            if sees:
                expect(profile.get_by_test_id("billing-name")).to_have_text("Zürich Voice AG", timeout=20_000)
                expect(other.get_by_test_id("billing-edit")).to_have_count(0)
                expect(links).to_have_count(1)
            else:
                expect(other.get_by_test_id("balance-value")).not_to_have_text("")
                expect(profile).to_have_count(0)
                expect(links).to_have_count(0)
        finally:
            context.close()
