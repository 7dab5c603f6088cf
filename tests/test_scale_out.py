"""The scale-out deployment: three backend workers on PostgreSQL + Redis, Reflex in production mode.

The tabs' sockets are on the first worker; a Stripe webhook handled by the second worker, a usage
report handled by the third and a CLI grant from a process of its own all reach them live, through
Redis. A tab of another organization on the same worker sees none of it.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from decimal import Decimal

import httpx
import pytest
from playwright.sync_api import expect

from orcapulse_billing.db import make_engine, upgrade
from orcapulse_billing.ledger import Ledger, check_invariants
from orcapulse_billing.sandbox.stripe_checkout import sign

from .apiutil import PASSWORD, Org
from .browser import screenshot_name, sign_in
from .deployment import start_deployment
from .test_payments import SECRET, _event, _session_object

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="module")
def scale_out(pg_database_factory, app_database, stripe_sandbox, lemon_sandbox):
    """`app_database` put the sandboxes' settings in the environment the workers inherit."""
    url = pg_database_factory()
    upgrade(url)
    engine = make_engine(url)
    deployment = start_deployment(url, REDIS_URL, shape="ports", workers=3)
    try:
        yield deployment, engine
    finally:
        deployment.stop()
        engine.dispose()


def _sign_in(tab, base: str, email: str) -> None:
    sign_in(tab, base, email, PASSWORD)
    expect(tab.get_by_test_id("balance-value")).not_to_have_text("", timeout=30_000)


def test_postings_on_any_worker_reach_the_tabs_on_another(scale_out, browser, request):
    deployment, engine = scale_out
    page_worker, webhook_worker, api_worker = deployment.workers
    ledger = Ledger(engine, grace_limit=Decimal(5))  # only to set the organizations up, before any tab opens
    org = Org(engine, ledger, roles=("owner", "member"), welcome=Decimal(10))
    other = Org(engine, ledger, roles=("owner",), welcome=Decimal(10))
    contexts = [browser.new_context(viewport={"width": 1280, "height": 800}) for _ in range(3)]
    try:
        owner_tab, member_tab, other_tab = (context.new_page() for context in contexts)
        _sign_in(owner_tab, page_worker.url, org.emails["owner"])
        _sign_in(member_tab, page_worker.url, org.emails["member"])
        _sign_in(other_tab, page_worker.url, other.emails["owner"])
        tabs = (owner_tab, member_tab)
        for tab in (*tabs, other_tab):
            expect(tab.get_by_test_id("balance-value")).to_have_text("$10.00")
        member_tab.evaluate(
            "window.__billing = []; window.addEventListener('billingUpdated', e => window.__billing.push(e.detail))"
        )
        owner_tab.wait_for_timeout(1000)  # every tab's listener subscribes

        # A Stripe Checkout, created through the third worker, completed by a signed webhook that
        # the second worker handles.
        created = httpx.post(
            api_worker.url + "/api/credits/create-checkout",
            json={"package_id": "pkg_50"},
            headers=org.auth("owner"),
            timeout=30,
        )
        assert created.status_code == 200, created.text
        session_id = created.json()["session_id"]
        event = _event(
            "checkout.session.completed",
            _session_object(
                None, org, session_id, payment_status="paid", status="complete", payment_intent="pi_scale_out"
            ),
        )
        payload = json.dumps(event).encode()
        r = httpx.post(
            webhook_worker.url + "/api/credits/webhook",
            content=payload,
            timeout=30,
            headers={"Stripe-Signature": sign(payload, SECRET), "Content-Type": "application/json"},
        )
        assert r.status_code == 200 and r.json()["outcome"] == "processed", r.text
        for tab in tabs:
            expect(tab.get_by_test_id("balance-value")).to_have_text("$60.00", timeout=10_000)
        expect(member_tab.get_by_text("Credits added: +$50.00")).to_be_visible()
        detail = member_tab.evaluate("window.__billing")[-1]
        assert (detail["type"], detail["balance"]) == ("credit_added", "60.0000")

        # Usage reported to the third worker.
        r = httpx.post(
            api_worker.url + "/api/credits/usage",
            headers={**org.auth("owner"), "Idempotency-Key": "so-1"},
            json={"operation": "voice_pipeline", "quantity": "10", "status": "completed"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        for tab in tabs:
            expect(tab.get_by_test_id("balance-value")).to_have_text("$59.27", timeout=10_000)
            expect(tab.get_by_test_id("history-row").first).to_contain_text("Voice call session")
        assert member_tab.evaluate("window.__billing")[-1]["type"] == "credit_consumed"

        # An operator's grant from the CLI: a process that is no worker at all.
        grant = subprocess.run(
            [
                sys.executable,
                "-m",
                "orcapulse_billing.cli",
                "grant",
                str(org.id),
                "2.5",
                "--type",
                "bonus",
                "--description",
                "Goodwill credit",
            ],
            env=deployment.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert grant.returncode == 0, grant.stderr
        for tab in tabs:
            expect(tab.get_by_test_id("balance-value")).to_have_text("$61.77", timeout=10_000)

        expect(other_tab.get_by_test_id("balance-value")).to_have_text("$10.00")
        assert other_tab.get_by_test_id("history-row").count() == 1

        # The production build: the CSV export is a download from the page's own origin (not a
        # client-side route, not the build's host name).
        with owner_tab.expect_download() as download:
            owner_tab.get_by_test_id("export-csv").click()
        with open(download.value.path(), newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [(r["type"], r["source"]) for r in rows] == [
            ("bonus", "manual"),
            ("usage", ""),
            ("purchase", "purchase"),
            ("bonus", "welcome"),
        ]
        with engine.connect() as conn:
            assert check_invariants(conn, org.account_id) == []
    finally:
        owner_tab.screenshot(path=str(screenshot_name(request.node.nodeid)))
        for context in contexts:
            context.close()


def test_a_burst_of_debits_across_the_workers_makes_exactly_one_auto_recharge(scale_out, browser):
    """50 concurrent usage reports spread over the three workers cross the threshold together: the
    workers' triggers race, one charge is made, and the recharged balance reaches the tab live."""
    from concurrent.futures import ThreadPoolExecutor

    import sqlalchemy as sa

    from .test_auto_recharge import _card

    deployment, engine = scale_out
    org = Org(engine, Ledger(engine, grace_limit=Decimal(5)), roles=("owner",), welcome=Decimal(30))
    _card(engine, org.id, "4242424242424242")
    first = deployment.workers[0]
    r = httpx.put(
        first.url + "/api/credits/auto-recharge",
        headers=org.auth("owner"),
        timeout=30,
        json={"enabled": True, "threshold": "10", "amount": "20"},
    )
    assert r.status_code == 200, r.text
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        tab = context.new_page()
        _sign_in(tab, first.url, org.emails["owner"])
        expect(tab.get_by_test_id("balance-value")).to_have_text("$30.00")
        tab.wait_for_timeout(1000)

        def debit(n: int) -> int:  # 8 minutes of voice: $0.584 each, $29.20 in all
            worker = deployment.workers[n % len(deployment.workers)]
            return httpx.post(
                worker.url + "/api/credits/usage",
                timeout=60,
                headers={**org.auth("owner"), "Idempotency-Key": f"burst-{n}"},
                json={"operation": "voice_pipeline", "quantity": "8", "status": "completed"},
            ).status_code

        with ThreadPoolExecutor(max_workers=50) as pool:
            assert set(pool.map(debit, range(50))) == {200}
        # 30 - 29.20 + 20: whenever the one recharge lands, the balance ends here, live in the tab
        expect(tab.get_by_test_id("balance-value")).to_have_text("$20.80", timeout=30_000)
    finally:
        context.close()
    with engine.connect() as conn:
        autos = conn.execute(
            sa.text("SELECT COUNT(*) FROM checkout_session WHERE organization_id = :o AND mode = 'auto'"), {"o": org.id}
        ).scalar()
        purchases = (
            conn.execute(
                sa.text("SELECT amount FROM ledger_entry WHERE account_id = :a AND type = 'purchase'"),
                {"a": org.account_id},
            )
            .scalars()
            .all()
        )
        assert check_invariants(conn, org.account_id) == []
    assert autos == 1 and purchases == [200_000]
