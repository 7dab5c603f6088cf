"""Outbound webhooks on the billing page, in Chromium against the running app and real HTTP receivers on
127.0.0.1 (the app runs outside production mode, where the URL checks let loopback through, as the
backend's tests do; private addresses are refused there too): an owner adds endpoints (a refused URL
writes nothing, the secret is shown once), sends test events and sees in the log the delivery (the
receiver's body verifies with the `standardwebhooks` library and that secret) and the 500 with its retry
time, turns one off and on again, removes one after confirming; admins read, members see nothing, and a handler called by someone
no longer an owner writes nothing."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import sqlalchemy as sa
import standardwebhooks
from playwright.sync_api import expect

from orcapulse_billing import webhooks
from orcapulse_billing.db import as_utc, writer
from orcapulse_billing.models import Membership, WebhookEndpoint, WebhookMessage
from orcapulse_billing.pages.billing.webhooks import _when

from .apiutil import Org
from .test_billing_page import open_billing
from .test_webhooks import Receiver


def _endpoints(engine, org_id: int) -> list:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(WebhookEndpoint).where(WebhookEndpoint.organization_id == org_id).order_by(WebhookEndpoint.id)
        ).all()


def _messages(engine, org_id: int) -> list:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(WebhookMessage).where(WebhookMessage.organization_id == org_id).order_by(WebhookMessage.id)
        ).all()


def _wait_until_sent(engine, org_id: int) -> None:
    """Until the delivery loop (every 5 s) has tried every message once."""
    deadline = time.monotonic() + 30
    while any(m.status == "pending" and m.attempts == 0 for m in _messages(engine, org_id)):
        assert time.monotonic() < deadline, "the delivery loop sent nothing in 30 s"
        time.sleep(0.2)


def _add(page, url: str, event_types: tuple[str, ...]) -> None:
    page.get_by_test_id("webhook-add").click()
    dialog = page.get_by_test_id("webhook-dialog")
    dialog.get_by_test_id("webhook-form-url").fill(url)
    for event_type in event_types:
        dialog.get_by_test_id(f"webhook-event-{event_type}").click()
    dialog.get_by_test_id("webhook-form-save").click()


def test_owners_add_test_and_remove_endpoints_admins_read_members_see_nothing(
    app, page, browser, app_engine, app_ledger
):
    org = Org(app_engine, app_ledger, welcome=Decimal(5))
    ok, failing = Receiver(), Receiver(codes=[500] * 10)
    try:
        open_billing(page, app, org, "owner")
        card = page.get_by_test_id("webhooks-card")
        expect(card.get_by_test_id("webhook-empty")).to_be_visible(timeout=20_000)

        # a private address: the URL check's words in the form, nothing written
        _add(page, "http://10.1.2.3/hooks", ("credits.added",))
        dialog = page.get_by_test_id("webhook-dialog")
        expect(dialog.get_by_test_id("webhook-form-error")).to_contain_text(
            "10.1.2.3 resolves to 10.1.2.3, a private, link-local or reserved address"
        )
        assert _endpoints(app_engine, org.id) == []

        # the same form, a receiver that answers 200: the secret is shown once
        dialog.get_by_test_id("webhook-form-url").fill(ok.url)
        dialog.get_by_test_id("webhook-form-description").fill("ops")
        dialog.get_by_test_id("webhook-form-save").click()
        expect(dialog.get_by_test_id("webhook-secret")).to_contain_text("whsec_")
        secret = dialog.get_by_test_id("webhook-secret").inner_text()
        expect(dialog.get_by_test_id("webhook-secret-copy")).to_be_visible()
        [endpoint] = _endpoints(app_engine, org.id)
        assert (endpoint.url, endpoint.secret, endpoint.description) == (ok.url, secret, "ops")
        assert endpoint.event_types == ["credits.added"]
        dialog.get_by_test_id("webhook-secret-done").click()
        expect(dialog).to_have_count(0)
        endpoints = card.get_by_test_id("webhook-endpoint")
        expect(endpoints).to_have_count(1)
        expect(endpoints.first).to_contain_text(secret[:10] + "...")
        expect(page.get_by_text(secret)).to_have_count(0)  # the whole secret is gone from the page

        _add(page, failing.url, ("balance.low", "auto_recharge.failed"))
        expect(dialog.get_by_test_id("webhook-secret")).to_contain_text("whsec_")
        dialog.get_by_test_id("webhook-secret-done").click()
        expect(endpoints).to_have_count(2)

        # test events: the log shows each one's fate without a reload
        endpoints.filter(has_text=ok.url).get_by_test_id("webhook-test").click()
        endpoints.filter(has_text=failing.url).get_by_test_id("webhook-test").click()
        log = card.get_by_test_id("delivery-row")
        delivered = log.filter(has_text=ok.url)
        expect(delivered.get_by_test_id("delivery-status")).to_have_text("Delivered", timeout=30_000)
        expect(delivered.get_by_test_id("delivery-attempts")).to_contain_text("HTTP 200")
        retrying = log.filter(has_text=failing.url)
        expect(retrying.get_by_test_id("delivery-status")).to_have_text("Retrying", timeout=30_000)
        expect(retrying.get_by_test_id("delivery-attempts")).to_contain_text("#1 ")
        expect(retrying.get_by_test_id("delivery-attempts")).to_contain_text("HTTP 500")
        pending = next(m for m in _messages(app_engine, org.id) if m.status == "pending")
        expect(retrying.get_by_test_id("delivery-detail")).to_have_text(
            f"next attempt {_when(as_utc(pending.next_attempt_at))}"
        )
        [request] = ok.requests
        payload = standardwebhooks.Webhook(secret).verify(request["body"], request["headers"])
        assert payload["type"] == "webhook.test" and payload["data"]["organization_id"] == org.id
        assert json.loads(request["body"])["id"] == request["headers"]["webhook-id"]

        # removing asks first
        endpoints.filter(has_text=failing.url).get_by_test_id("webhook-remove").click()
        confirm = page.get_by_test_id("webhook-remove-dialog")
        expect(confirm).to_contain_text(failing.url)
        confirm.get_by_test_id("webhook-remove-confirm").click()
        expect(endpoints).to_have_count(1)
        assert [e.deleted_at is not None for e in _endpoints(app_engine, org.id)] == [False, True]

        # off (a badge, no test event) and on again; the switch writes it
        switch = endpoints.first.get_by_test_id("webhook-enabled")
        switch.click()
        expect(endpoints.first.get_by_test_id("webhook-disabled")).to_have_text("Disabled")
        expect(endpoints.first.get_by_test_id("webhook-test")).to_be_disabled()
        assert [e.enabled for e in _endpoints(app_engine, org.id)] == [False, False]  # the removed one is off too
        switch.click()
        expect(endpoints.first.get_by_test_id("webhook-disabled")).to_have_count(0)
        expect(endpoints.first.get_by_test_id("webhook-test")).to_be_enabled()
        assert [e.enabled for e in _endpoints(app_engine, org.id)] == [True, False]

        # admins read the endpoints and the log (Show more, Refresh); members see no card
        with app_engine.connect() as conn:
            ok_id = webhooks.list_endpoints(conn, org.id)[0].id
        for _ in range(10):
            webhooks.send_test_event(app_engine, org.id, ok_id)
        _wait_until_sent(app_engine, org.id)
        for role in ("admin", "member"):
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            try:
                other = context.new_page()
                open_billing(other, app, org, role)
                other_card = other.get_by_test_id("webhooks-card")
                if role == "member":
                    expect(other.get_by_test_id("history-row").first).to_be_visible(timeout=20_000)
                    expect(other_card).to_have_count(0)
                    continue
                expect(other_card.get_by_test_id("webhook-endpoint")).to_have_count(1, timeout=20_000)
                for button in ("webhook-add", "webhook-enabled", "webhook-test", "webhook-remove"):
                    expect(other.get_by_test_id(button)).to_have_count(0)
                rows = other_card.get_by_test_id("delivery-row")
                expect(rows).to_have_count(10)  # the newest 10 of 12
                other_card.get_by_test_id("webhook-log-more").click()
                expect(rows).to_have_count(12)
                expect(other_card.get_by_test_id("webhook-log-more")).to_have_count(0)
                expect(rows.filter(has_text="Delivered")).to_have_count(11)
                expect(rows.filter(has_text=failing.url)).to_contain_text("Cancelled")  # its endpoint is gone
                webhooks.send_test_event(app_engine, org.id, ok_id)
                other_card.get_by_test_id("webhook-log-refresh").click()
                expect(rows).to_have_count(13)
            finally:
                context.close()

        # the owner is made a member while the page is open: the handler refuses, writes nothing,
        # and the card goes
        def make(role: str) -> None:
            with writer(app_engine).begin() as conn:
                conn.execute(
                    sa.update(Membership)
                    .where(Membership.user_id == org.user_ids["owner"], Membership.organization_id == org.id)
                    .values(role=role)
                )

        before = len(_messages(app_engine, org.id))
        make("member")
        endpoints.first.get_by_test_id("webhook-test").click()
        expect(page.get_by_text("Only owners can change webhooks.")).to_be_visible()
        expect(card).to_have_count(0)
        assert len(_messages(app_engine, org.id)) == before
        # the same for the switch
        make("owner")
        page.reload()
        expect(endpoints).to_have_count(1, timeout=20_000)
        make("member")
        endpoints.first.get_by_test_id("webhook-enabled").click()
        expect(card).to_have_count(0)
        assert [e.enabled for e in _endpoints(app_engine, org.id)] == [True, False]
    finally:
        ok.stop()
        failing.stop()
