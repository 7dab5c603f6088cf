"""Auto-recharge on the billing page, in Chromium: a decline shows its reason and the next attempt's time
live, and a charge the bank wants confirmed pauses it with a button to the provider's page, where
confirming it credits the payment and turns auto-recharge back on (the sandbox's webhook, as in
production)."""

from __future__ import annotations

import re
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
