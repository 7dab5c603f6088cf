"""Auto-recharge on the billing page, in Chromium: a decline shows its reason and the next attempt's time
live, and a charge the bank wants confirmed pauses it with a button to the provider's page, where
confirming it credits the payment and turns auto-recharge back on (the sandbox's webhook, as in
production). An owner's unsaved edits outlive live updates, and the panel says when the saved
settings changed elsewhere meanwhile."""

from __future__ import annotations

import re
import time
from decimal import Decimal

from playwright.sync_api import expect

from orcapulse_billing.ledger import Ledger, Posting
from orcapulse_billing.services import get_auto_recharger

from .apiutil import Org
from .conftest import GRACE
from .test_auto_recharge import _card
from .test_auto_recharge_behaves import AUTHENTICATES, DECLINES, _owner
from .test_billing_page import open_billing


def _enable(org: Org) -> None:
    get_auto_recharger(org.engine).update(
        _owner(org.engine, org.id), enabled=True, threshold=Decimal(10), amount=Decimal(20), monthly_cap=None, ip=None
    )


def _drop(org: Org) -> None:
    """$25 of usage, through a ledger without listeners (the test triggers by itself)."""
    Ledger(org.engine, grace_limit=GRACE).post(Posting(org.account_id, "usage", "-25", "call", category="ai_call"))


def test_a_decline_shows_the_reason_and_the_next_attempt_live(app, page, app_engine, app_ledger):
    org = Org(app_engine, app_ledger, welcome=Decimal(30))
    _card(app_engine, org.id, DECLINES)
    _enable(org)
    open_billing(page, app, org, "owner")
    expect(page.get_by_test_id("auto-status")).to_have_count(0)
    _drop(org)
    assert get_auto_recharger(app_engine).maybe_recharge(org.id) == "failed"
    status = page.get_by_test_id("auto-status")
    expect(status).to_contain_text("Last charge failed: Your card was declined. Next attempt: ", timeout=20_000)
    expect(status).to_contain_text("UTC (1 of 3 failed in a row)")
    expect(page.get_by_test_id("auto-enabled")).to_be_checked()


def test_a_charge_needing_3d_secure_is_confirmed_from_the_page_and_resumes_it(app, page, app_engine, app_ledger):
    org = Org(app_engine, app_ledger, welcome=Decimal(30))
    _card(app_engine, org.id, AUTHENTICATES)
    _enable(org)
    open_billing(page, app, org, "owner")
    _drop(org)
    assert get_auto_recharger(app_engine).maybe_recharge(org.id) == "requires_action"
    expect(page.get_by_test_id("auto-disabled-note")).to_contain_text("confirm", timeout=20_000)
    expect(page.get_by_test_id("auto-enabled")).not_to_be_checked()
    confirm = page.get_by_test_id("auto-confirm")
    with page.expect_popup() as popup_info:
        confirm.click()
    popup = popup_info.value
    expect(popup.get_by_test_id("authenticate-amount")).to_have_text("$20.00")
    popup.get_by_test_id("authenticate-complete").click()
    expect(popup).to_have_url(re.compile(r"/billing\?payment_intent=pi_"), timeout=20_000)
    # the webhook credits the confirmed payment and turns auto-recharge back on: the page shows both
    expect(page.get_by_test_id("balance-value")).to_have_text("$25.00", timeout=20_000)
    expect(page.get_by_test_id("auto-enabled")).to_be_checked(timeout=20_000)
    expect(page.get_by_test_id("auto-disabled-note")).to_have_count(0)
    expect(page.get_by_test_id("auto-confirm")).to_have_count(0)


def test_live_updates_leave_unsaved_edits_alone_and_say_when_the_settings_changed_elsewhere(
    app, page, client, app_engine, app_ledger
):
    org = Org(app_engine, app_ledger, welcome=Decimal(30))
    _card(app_engine, org.id, "4242424242424242")
    _enable(org)  # below 10, add 20
    open_billing(page, app, org, "owner")
    threshold, amount = page.get_by_test_id("auto-threshold"), page.get_by_test_id("auto-amount")
    expect(threshold).to_have_value("10.00")
    time.sleep(1)  # the tab's listener subscribes

    def put(**settings):  # another owner, through the REST API (the balance stays above any threshold)
        r = client.put("/api/credits/auto-recharge", json={"enabled": True, **settings}, headers=org.auth("owner"))
        assert r.status_code == 200 and r.json()["recharge"] is None, r.text

    threshold.fill("12")
    expect(page.get_by_test_id("auto-discard")).to_be_visible()  # the edit reached the tab's state
    r = client.post(
        "/api/credits/usage",
        headers={**org.auth("owner"), "Idempotency-Key": f"edit-{org.id}"},
        json={"operation": "voice_pipeline", "quantity": "10", "status": "completed"},
    )
    assert r.status_code == 200, r.text
    # the live update's figures (its read counts the new entry) arrive, and leave the typed value alone
    expect(page.get_by_test_id("balance-value")).to_have_text("$29.27", timeout=10_000)
    expect(page.get_by_test_id("transaction-count-value")).to_have_text("2", timeout=10_000)
    expect(threshold).to_have_value("12")
    expect(page.get_by_test_id("auto-changed-elsewhere")).to_have_count(0)

    put(threshold="15", amount="25")
    note = page.get_by_test_id("auto-changed-elsewhere")
    expect(note).to_contain_text("Changed elsewhere since you started editing", timeout=10_000)
    expect(threshold).to_have_value("12")
    expect(amount).to_have_value("20.00")
    page.get_by_test_id("auto-load-saved").click()  # discard: the saved settings, following live again
    expect(threshold).to_have_value("15.00")
    expect(amount).to_have_value("25.00")
    expect(note).to_have_count(0)
    expect(page.get_by_test_id("auto-discard")).to_have_count(0)

    threshold.fill("11")
    expect(page.get_by_test_id("auto-discard")).to_be_visible()
    put(threshold="15", amount="30")
    expect(note).to_be_visible(timeout=10_000)
    page.get_by_test_id("auto-save").click()  # the owner was told: the last writer wins
    expect(page.get_by_text("Auto-recharge saved")).to_be_visible(timeout=10_000)
    expect(note).to_have_count(0)
    policy = get_auto_recharger(app_engine).get(org.id)
    assert (policy.enabled, policy.threshold, policy.amount) == (True, Decimal("11"), Decimal("25"))
    expect(threshold).to_have_value("11.00")
    expect(amount).to_have_value("25.00")

    put(threshold="16", amount="25")  # saved: the form follows live updates again
    expect(threshold).to_have_value("16.00", timeout=10_000)
    expect(note).to_have_count(0)
