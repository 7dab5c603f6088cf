"""The history, finished against document 003: its order and date range (in history.py, on both
databases), and in Chromium the row detail (who and where), the date range and order in the URL and
the CSV export, one toast per purchase and per burst of usage, and the 30 s catch-up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from orcapulse_billing.history import HistoryQuery, history_page, iter_history
from orcapulse_billing.ledger import Posting

# -- history.py: order and date range, against a plain reading of every entry ------------------


def test_history_pages_in_either_order_by_type_and_date_range(engine, ledger, new_account):
    account_id = new_account()
    day0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    kinds = ["usage", "usage", "purchase", "usage", "refund", "bonus", "usage", "adjustment"]
    for n in range(41):
        kind = kinds[n % len(kinds)]
        amount = "-0.25" if kind in ("usage", "adjustment") else "1"
        # posting order and timestamps disagree now and then (a back-dated entry): seq is the order
        at = day0 + timedelta(hours=7 * n) - (timedelta(days=3) if n % 11 == 5 else timedelta(0))
        ledger.post(Posting(account_id, kind, Decimal(amount), f"entry {n}", created_at=at))
    with engine.connect() as conn:
        everything = list(iter_history(conn, account_id, HistoryQuery()))
        assert [i.seq for i in everything] == list(range(41, 0, -1))
        types = {"all": None, "topup": {"purchase", "bonus"}, "usage": {"usage"}, "refund": {"refund"}}
        ranges = [(None, None), (day0 + timedelta(days=2), day0 + timedelta(days=7)), (day0 + timedelta(days=20), None)]
        for type_, kinds_in in types.items():
            for start, end in ranges:
                for order in ("newest", "oldest"):
                    query = HistoryQuery(type_, start, end, order)
                    expected = [
                        i
                        for i in everything
                        if (kinds_in is None or i.type in kinds_in)
                        and (start is None or i.created_at >= start)
                        and (end is None or i.created_at < end)
                    ]
                    if order == "oldest":
                        expected.reverse()
                    assert [i.seq for i in iter_history(conn, account_id, query, batch=4)] == [i.seq for i in expected]
                    for size in (10, 25):
                        pages = -(-len(expected) // size) or 1
                        for n in range(1, pages + 2):  # one page past the end: empty
                            got = history_page(conn, account_id, query, page=n, page_size=size)
                            assert got.total == len(expected)
                            assert [i.seq for i in got.items] == [i.seq for i in expected[(n - 1) * size : n * size]], (
                                type_,
                                start,
                                order,
                                size,
                                n,
                            )


def test_history_query_refuses_an_unknown_order():
    with pytest.raises(ValueError, match="order"):
        HistoryQuery("all", order="sideways")


# -- the page in Chromium ------------------------------------------------------------------------

import csv  # noqa: E402
import io  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import httpx  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

from orcapulse_billing.money import fmt_money4  # noqa: E402

from .apiutil import PASSWORD, Org  # noqa: E402
from .browser import ARTIFACTS, screenshot_name, sign_in  # noqa: E402

PHONE = {"width": 390, "height": 844}


def open_billing(page, app, org: Org, role: str = "owner", path: str = "/billing") -> None:
    sign_in(page, app.base_url, org.emails[role], PASSWORD)
    expect(page).to_have_url(re.compile(r"/billing$"), timeout=30_000)
    if path != "/billing":
        page.goto(app.base_url + path)
    expect(page.get_by_test_id("balance-value")).not_to_have_text("", timeout=30_000)


def visible_rows(page):
    """The history's entries as shown: table rows, or cards on a phone."""
    return page.locator("[data-testid=history-row]:visible, [data-testid=history-card]:visible")


def toasts(page, text: str):
    return page.locator("[data-sonner-toast]", has_text=text)


def entries(engine, account_id: int, type_: str) -> list:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT id, amount, balance_before, balance_after, metadata, actor_user_id, actor_ip "
                "FROM ledger_entry WHERE account_id = :a AND type = :t ORDER BY seq"
            ),
            {"a": account_id, "t": type_},
        ).all()


def _metadata(value) -> dict:
    import json

    return value if isinstance(value, dict) else json.loads(value)


def test_purchases_through_the_page_record_the_ip_show_who_and_where_and_toast_once(
    app, page, client, app_engine, app_ledger
):
    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    open_billing(page, app, org, "owner")
    added = toasts(page, "Credits added")

    # a checkout in the popup: the webhook's live update and the checkout watcher make one toast
    page.get_by_test_id("add-credits-button").click()
    with page.expect_popup() as popup_info:
        page.get_by_test_id("checkout-pkg_50").click()
    popup = popup_info.value
    popup.get_by_test_id("checkout-card").fill("4242 4242 4242 4242")
    popup.get_by_test_id("checkout-pay").click()
    expect(page.get_by_test_id("balance-value")).to_have_text("$55.00", timeout=20_000)
    expect(added).to_have_count(1, timeout=20_000)
    expect(added).to_contain_text("Credits added successfully! +$50.00")
    page.wait_for_timeout(2500)  # the live update has long arrived: still one toast
    expect(added).to_have_count(1)

    (purchase,) = entries(app_engine, org.account_id, "purchase")
    meta = _metadata(purchase.metadata)
    assert purchase.actor_user_id == org.user_ids["owner"] and purchase.actor_ip == "127.0.0.1"
    visible_rows(page).first.click()
    panel = page.get_by_test_id("session-panel")
    expect(panel).to_contain_text("Credit top-up via Stripe - $50.00")
    expect(panel.get_by_test_id("detail-balance-before")).to_have_text("$5.0000")
    expect(panel.get_by_test_id("detail-balance-after")).to_have_text("$55.0000")
    expect(panel.get_by_test_id("detail-source")).to_have_text("Purchase")
    expect(panel.get_by_test_id("detail-actor")).to_have_text(org.emails["owner"])
    expect(panel.get_by_test_id("detail-ip")).to_have_text("127.0.0.1")
    expect(panel).to_contain_text("Stripe checkout session")
    expect(panel).to_contain_text(meta["stripeCheckoutSessionId"])
    page.screenshot(path=str(ARTIFACTS / "history_detail_checkout_purchase.png"))
    page.keyboard.press("Escape")
    expect(panel).to_have_count(0)
    expect(added).to_have_count(0, timeout=15_000)  # the first toast has gone

    # one click with the saved card: one toast too, and the same who and where
    page.get_by_test_id("add-credits-button").click()
    page.get_by_test_id("quick-pkg_50").click()
    expect(page.get_by_test_id("balance-value")).to_have_text("$105.00", timeout=20_000)
    expect(added).to_have_count(1, timeout=10_000)
    expect(added).to_contain_text("Credits added successfully! +$50.00")
    page.wait_for_timeout(2500)
    expect(added).to_have_count(1)
    quick = entries(app_engine, org.account_id, "purchase")[-1]
    assert quick.actor_ip == "127.0.0.1"
    visible_rows(page).first.click()
    expect(panel.get_by_test_id("detail-balance-before")).to_have_text("$55.0000")
    expect(panel.get_by_test_id("detail-balance-after")).to_have_text("$105.0000")
    expect(panel.get_by_test_id("detail-ip")).to_have_text("127.0.0.1")
    expect(panel).to_contain_text("Stripe payment intent")
    expect(panel).to_contain_text(_metadata(quick.metadata)["stripePaymentIntentId"])
    page.keyboard.press("Escape")

    # the page's other owner actions record the browser's address too
    page.get_by_test_id("auto-enabled").click()
    page.get_by_test_id("auto-threshold").fill("10")
    page.get_by_test_id("auto-amount").fill("20")
    page.get_by_test_id("auto-save").click()
    expect(page.get_by_text("Auto-recharge saved")).to_be_visible(timeout=10_000)
    with app_engine.connect() as conn:
        audited = conn.execute(
            sa.text(
                "SELECT ip, user_id FROM audit_log WHERE organization_id = :o AND action = 'auto_recharge_updated'"
            ),
            {"o": org.id},
        ).all()
    assert [tuple(a) for a in audited] == [("127.0.0.1", org.user_ids["owner"])]

    # a usage charge reported through the API: its session breakdown, and who and where as well
    r = client.post(
        "/api/credits/usage",
        headers={**org.auth("owner"), "Idempotency-Key": "detail-call-1"},
        json={
            "operation": "voice_pipeline",
            "quantity": "3.5",
            "status": "completed",
            "session": {"id": "detail-call-1", "agent_id": "agent_abc123", "agent_name": "Front desk"},
        },
    )
    assert r.status_code == 200, r.text
    expect(visible_rows(page).first).to_contain_text("Voice call session", timeout=10_000)
    visible_rows(page).first.click()
    expect(panel).to_contain_text("Billing session")
    for text in ("Front desk", "Pipeline", "3.5 min", "$0.1750", "$0.0525", "$0.2555"):
        expect(panel).to_contain_text(text)
    expect(panel.get_by_test_id("detail-balance-before")).to_have_text("$105.0000")
    expect(panel.get_by_test_id("detail-balance-after")).to_have_text("$104.7445")
    expect(panel.get_by_test_id("detail-actor")).to_have_text(org.emails["owner"])
    expect(panel.get_by_test_id("detail-ip")).to_have_text("testclient")  # the API request's own address
    expect(panel.get_by_test_id("detail-source")).to_have_count(0)  # a debit has no source
    page.screenshot(path=str(ARTIFACTS / "history_detail_usage.png"))


def test_a_burst_of_usage_makes_one_toast(app, page, client, app_engine, app_ledger):
    org = Org(app_engine, app_ledger, welcome=Decimal(10))
    open_billing(page, app, org, "member")
    time.sleep(1)  # the tab's listener subscribes
    for n in range(3):
        r = client.post(
            "/api/credits/usage",
            headers={**org.auth("owner"), "Idempotency-Key": f"burst-{n}"},
            json={"operation": "sms_twilio", "quantity": "3", "status": "completed"},
        )
        assert r.status_code == 200, r.text
    charged = sum(e.amount for e in entries(app_engine, org.account_id, "usage"))
    usage = toasts(page, "usage charge")
    expect(usage).to_have_count(1, timeout=10_000)
    expect(usage).to_have_text(f"3 usage charges: {fmt_money4(charged)}")
    expect(page.get_by_test_id("transaction-count-value")).to_have_text("4")
    page.wait_for_timeout(3000)
    expect(usage).to_have_count(1)  # nothing more for the same burst
    page.screenshot(path=str(ARTIFACTS / "history_usage_toast.png"))


def _dated_history(org: Org) -> None:
    """Three usage charges a day and one purchase, 25 October to 15 November 2026."""
    day = datetime(2026, 10, 25, tzinfo=UTC)
    while day < datetime(2026, 11, 16, tzinfo=UTC):
        org.post("purchase", "5", description=f"top-up {day:%m-%d}", created_at=day + timedelta(hours=8))
        for k in range(3):
            org.post(
                "usage",
                "-0.0500",
                category="sms",
                description=f"usage {day:%m-%d} #{k}",
                created_at=day + timedelta(hours=9 + k),
            )
        day += timedelta(days=1)


def _expected(org: Org, type_: str, start: str, end: str, order: str, page: int, size: int) -> list[str]:
    from orcapulse_billing.pages.billing.data import history_query

    with org.engine.connect() as conn:
        result = history_page(conn, org.account_id, history_query(type_, start, end, order), page=page, page_size=size)
    return [i.description for i in result.items]


def _shown(page) -> list[str]:
    return [t.strip() for t in page.get_by_test_id("history-row").locator("td:nth-child(3)").all_inner_texts()]


def test_date_range_and_order_live_in_the_url_and_the_csv_export(app, page, browser, app_engine, app_ledger):
    org = Org(app_engine, app_ledger)
    _dated_history(org)
    open_billing(page, app, org, "member")
    page.get_by_test_id("type-filter").click()
    page.get_by_role("option", name="Usage").click()
    page.get_by_test_id("page-size-select").click()
    page.get_by_role("option", name="10 per page").click()
    page.get_by_test_id("pagination-next").click()
    expect(page).to_have_url(re.compile(r"/billing\?type=usage&page=2&size=10$"))
    # any filter change goes back to page 1
    page.get_by_test_id("history-date-from").fill("2026-11-01")
    expect(page).to_have_url(re.compile(r"/billing\?type=usage&from=2026-11-01&size=10$"))
    page.get_by_test_id("history-date-to").fill("2026-11-10")
    expect(page.get_by_test_id("pagination-total")).to_have_text("Showing 1–10 of 30 transactions")
    page.get_by_test_id("pagination-next").click()
    expect(page).to_have_url(re.compile(r"&page=2&size=10$"))
    expect(page.get_by_test_id("history-order")).to_have_text("Newest first")
    page.get_by_test_id("history-order").click()
    expect(page.get_by_test_id("history-order")).to_have_text("Oldest first")
    expect(page).to_have_url(re.compile(r"/billing\?type=usage&from=2026-11-01&to=2026-11-10&order=oldest&size=10$"))
    page.get_by_test_id("pagination-next").click()
    view = "/billing?type=usage&from=2026-11-01&to=2026-11-10&order=oldest&page=2&size=10"
    expect(page).to_have_url(app.base_url + view)
    want = _expected(org, "usage", "2026-11-01", "2026-11-10", "oldest", 2, 10)
    assert want[0] == "usage 11-04 #1" and want[-1] == "usage 11-07 #1"
    expect(page.get_by_test_id("pagination-total")).to_have_text("Showing 11–20 of 30 transactions")
    assert _shown(page) == want

    # a reload shows the same view
    page.reload()
    expect(page.get_by_test_id("pagination-total")).to_have_text("Showing 11–20 of 30 transactions", timeout=30_000)
    assert _shown(page) == want
    expect(page).to_have_url(app.base_url + view)
    expect(page.get_by_test_id("history-date-from")).to_have_value("2026-11-01")
    expect(page.get_by_test_id("history-date-to")).to_have_value("2026-11-10")
    expect(page.get_by_test_id("history-order")).to_have_text("Oldest first")
    expect(page.get_by_test_id("type-filter")).to_have_text("Usage")
    expect(page.get_by_test_id("page-size-select")).to_have_text("10 per page")

    # the CSV export follows the same filter (the whole range, in the same order)
    link = page.get_by_test_id("export-csv").get_attribute("href")
    assert "type=usage" in link and "order=oldest" in link
    assert "from=2026-11-01T00%3A00%3A00Z" in link and "to=2026-11-11T00%3A00%3A00Z" in link
    cookie = next(c["value"] for c in page.context.cookies() if c["name"] == "opb_session")
    r = httpx.get(link, cookies={"opb_session": cookie})
    assert r.status_code == 200, r.text
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["description"] for row in rows] == [f"usage 11-{d:02d} #{k}" for d in range(1, 11) for k in range(3)]

    # a from date after the to date: an error, and nothing changes
    page.get_by_test_id("history-date-from").fill("2026-11-20")
    expect(page.get_by_test_id("history-range-error")).to_have_text("The From date must be on or before the To date.")
    page.wait_for_timeout(500)
    expect(page).to_have_url(app.base_url + view)
    expect(page.get_by_test_id("pagination-total")).to_have_text("Showing 11–20 of 30 transactions")
    assert _shown(page) == want
    assert page.get_by_test_id("export-csv").get_attribute("href") == link
    page.screenshot(path=str(ARTIFACTS / "history_range_error.png"))
    page.get_by_test_id("history-date-from").fill("2026-11-01")
    expect(page.get_by_test_id("history-range-error")).to_have_count(0)
    expect(page).to_have_url(app.base_url + view)

    # a shared link opens the same view for another member of the organization
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        other = context.new_page()
        open_billing(other, app, org, "owner", path=view)
        expect(other.get_by_test_id("pagination-total")).to_have_text("Showing 11–20 of 30 transactions")
        assert _shown(other) == want
        expect(other.get_by_test_id("history-order")).to_have_text("Oldest first")
        # the dates alone, newest first: the first page shows the newest of the range
        other.goto(app.base_url + "/billing?from=2026-11-14")
        expect(other.get_by_test_id("pagination-total")).to_have_text("Showing 1–8 of 8 transactions", timeout=30_000)
        assert _shown(other)[0] == "usage 11-15 #2"
        other.get_by_test_id("history-date-clear").click()
        expect(other).to_have_url(app.base_url + "/billing")
        expect(other.get_by_test_id("pagination-total")).to_have_text("Showing 1–50 of 88 transactions")
    finally:
        context.close()


def test_date_range_and_row_detail_on_a_phone(app, browser, app_engine, app_ledger):
    org = Org(app_engine, app_ledger)
    _dated_history(org)
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    try:
        open_billing(page, app, org, "owner", path="/billing?type=topup&from=2026-11-01&to=2026-11-05")
        rows = visible_rows(page)
        expect(rows).to_have_count(5)
        expect(rows.first).to_contain_text("top-up 11-05")
        page.get_by_test_id("history-order").click()
        expect(rows.first).to_contain_text("top-up 11-01")
        expect(page).to_have_url(re.compile(r"\?type=topup&from=2026-11-01&to=2026-11-05&order=oldest$"))
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        page.screenshot(path=str(screenshot_name("test_history_dates_phone")), full_page=True)
        page.get_by_test_id("history-date-to").fill("2026-10-01")
        expect(page.get_by_test_id("history-range-error")).to_be_visible()
        expect(rows).to_have_count(5)
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        page.get_by_test_id("history-date-to").fill("2026-11-05")
        # the error goes once the server has the range back, and the rows move up into its place: a click
        # before that can land where a row no longer is
        expect(page.get_by_test_id("history-range-error")).to_be_hidden()
        rows.first.click()
        panel = page.get_by_test_id("session-panel")
        with app_engine.connect() as conn:
            before, after = conn.execute(
                sa.text(
                    "SELECT balance_before, balance_after FROM ledger_entry "
                    "WHERE account_id = :a AND description = 'top-up 11-01'"
                ),
                {"a": org.account_id},
            ).one()
        expect(panel).to_contain_text("top-up 11-01")
        expect(panel.get_by_test_id("detail-balance-before")).to_have_text(fmt_money4(before))
        expect(panel.get_by_test_id("detail-balance-after")).to_have_text(fmt_money4(after))
        expect(panel.get_by_test_id("detail-actor")).to_have_text("System")
        box = panel.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
        page.screenshot(path=str(screenshot_name("test_history_detail_phone")))
    finally:
        context.close()


def test_a_tab_that_missed_an_event_catches_up_within_35_seconds(app, page, app_database, app_engine, app_ledger):
    """The tab's listener is alive, but the posting is never announced to it: a ledger of its own
    (its own engine, no listeners) on the app's database publishes nothing to the app's event bus,
    like a CLI grant on the embedded default or an event lost in a Redis blip."""
    from orcapulse_billing.db import make_engine
    from orcapulse_billing.ledger import Ledger
    from orcapulse_billing.services import get_event_bus

    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    open_billing(page, app, org, "member")
    expect(page.get_by_test_id("balance-value")).to_have_text("$5.00")
    time.sleep(1)
    assert get_event_bus().listener_count(org.id) == 1  # the live listener is up
    engine = make_engine(app_database)
    try:
        Ledger(engine, grace_limit=Decimal(5)).post(
            Posting(
                org.account_id, "adjustment", Decimal("20"), "Manual credit grant - Admin adjustment", source="manual"
            )
        )
    finally:
        engine.dispose()
    posted = time.monotonic()
    page.wait_for_timeout(2000)
    expect(page.get_by_test_id("balance-value")).to_have_text("$5.00")  # not announced: nothing yet
    expect(page.get_by_test_id("balance-value")).to_have_text("$25.00", timeout=35_000)
    assert time.monotonic() - posted < 35
    expect(page.get_by_test_id("transaction-count-value")).to_have_text("2")
    expect(visible_rows(page).first).to_contain_text("Manual credit grant - Admin adjustment")
    assert get_event_bus().listener_count(org.id) == 1  # caught up while listening, not by a restart
