"""Live updates by organization (pages/billing/fanout.py), in Chromium against the app: one read per
organization and view for all of a worker's tabs, each view getting its own history page, and a tab's
state taking the figures it was sent before it handles its next event."""

from __future__ import annotations

import time
from decimal import Decimal

from playwright.sync_api import expect

from orcapulse_billing.pages.billing import data

from .apiutil import Org
from .test_page_history import open_billing, visible_rows


def _post_usage(client, org: Org, key: str, quantity: str = "1"):
    r = client.post(
        "/api/credits/usage",
        headers={**org.auth("owner"), "Idempotency-Key": key},
        json={"operation": "voice_pipeline", "quantity": quantity, "status": "completed"},
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_one_read_per_view_for_every_tab_of_the_organization(app, browser, client, app_engine, app_ledger, monkeypatch):
    org = Org(app_engine, app_ledger, roles=("owner", "member"), welcome=Decimal(10))
    reads: list[tuple] = []
    real_load, real_newer = data._load, data._load_newer

    def counted(organization_id, *view):
        if organization_id == org.id:
            reads.append(view)
        return real_load(organization_id, *view)

    def counted_newer(organization_id, base, page_size):
        if organization_id == org.id:
            reads.append(("newer", page_size))
        return real_newer(organization_id, base, page_size)

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        tabs = [context.new_page() for _ in range(3)]
        open_billing(tabs[0], app, org, "member")
        for tab in tabs[1:]:
            tab.goto(app.base_url + "/billing")
        usage_tab = context.new_page()  # a fourth tab, on another view of the history
        usage_tab.goto(app.base_url + "/billing?type=usage")
        for tab in [*tabs, usage_tab]:
            expect(tab.get_by_test_id("balance-value")).to_have_text("$10.00", timeout=30_000)
        time.sleep(1)
        monkeypatch.setattr(data, "_load", counted)
        monkeypatch.setattr(data, "_load_newer", counted_newer)

        _post_usage(client, org, "fanout-1", "10")
        for tab in [*tabs, usage_tab]:
            expect(tab.get_by_test_id("balance-value")).to_have_text("$9.27", timeout=10_000)
            expect(visible_rows(tab).first).to_contain_text("Voice call session")
        time.sleep(1)
        # one read per view, not per tab: after usage, the first page of the whole history is the last
        # read brought up to date (data._load_newer), the usage view read whole
        assert sorted(v[0] for v in reads) == ["newer", "usage"]

        org.post("purchase", "50")  # not a usage: the usage view's history stays as it was
        for tab in [*tabs, usage_tab]:
            expect(tab.get_by_test_id("balance-value")).to_have_text("$59.27", timeout=10_000)
        for tab in tabs:
            expect(visible_rows(tab).first).to_contain_text("purchase 50")
        expect(visible_rows(usage_tab)).to_have_count(1)
        expect(visible_rows(usage_tab).first).to_contain_text("Voice call session")
    finally:
        context.close()


def test_a_tab_handles_its_next_event_with_the_figures_it_was_sent(app, page, client, app_engine, app_ledger):
    """The fan-out does not write the tab's stored state: the state takes the figures before the
    next event. Without that, Next would see one page where the tab shows two, and do nothing."""
    org = Org(app_engine, app_ledger, roles=("owner", "member"), welcome=Decimal(10))
    for n in range(9):
        org.post("usage", "-0.01", category="sms", description=f"SMS {n}")
    open_billing(page, app, org, "member", path="/billing?size=10")
    expect(page.get_by_test_id("pagination-total")).to_have_text("Showing 1–10 of 10 transactions")
    time.sleep(1)

    _post_usage(client, org, "fanout-next")
    expect(page.get_by_test_id("pagination-total")).to_have_text("Showing 1–10 of 11 transactions", timeout=10_000)
    page.get_by_test_id("pagination-next").click()
    expect(page.get_by_test_id("pagination-total")).to_have_text("Showing 11–11 of 11 transactions")
    expect(visible_rows(page)).to_have_count(1)
    expect(visible_rows(page).first).to_contain_text("Welcome")


def test_the_partial_read_after_usage_equals_the_whole_read(app, app_engine, app_ledger):
    """data._load_newer (3 queries) against data._load (10) after usage of several categories; a
    top-up, or a page's worth of postings, needs the whole read."""
    org = Org(app_engine, app_ledger, roles=("owner",), welcome=Decimal(20))
    org.post("usage", "-0.25", category="sms")
    view = ("all", 1, 10, "", "", "newest")
    base = data._load(org.id, *view)
    for n, category in enumerate(["sms", "ai_call", None, "sms", "tts"]):
        org.post("usage", f"-0.{n + 1}", category=category)
        newer = data._load_newer(org.id, base, 10)
        whole = data._load(org.id, *view)
        assert newer is not None
        same = {k: v for k, v in whole.items() if k not in ("read_at", "full_at")}
        assert {k: v for k, v in newer.items() if k not in ("read_at", "full_at")} == same
        assert newer["full_at"] == base["full_at"] < newer["read_at"]
        base = newer
    org.post("purchase", "5")
    assert data._load_newer(org.id, base, 10) is None
    base = data._load(org.id, *view)
    for _ in range(10):
        org.post("usage", "-0.01", category="sms")
    assert data._load_newer(org.id, base, 10) is None  # a whole page or more: read it all
