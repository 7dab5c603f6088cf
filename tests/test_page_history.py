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

import re  # noqa: E402
import time  # noqa: E402

import sqlalchemy as sa  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

from orcapulse_billing.money import fmt_money4  # noqa: E402

from .apiutil import PASSWORD, Org  # noqa: E402
from .browser import ARTIFACTS, sign_in  # noqa: E402

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
        headers={**org.auth("member"), "Idempotency-Key": "detail-call-1"},
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
    expect(panel.get_by_test_id("detail-actor")).to_have_text(org.emails["member"])
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
            headers={**org.auth("member"), "Idempotency-Key": f"burst-{n}"},
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
