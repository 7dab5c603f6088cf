"""Auto-recharge that behaves (issue 19): declines back off (1 h, then 6 h) and pause after the third, a
charge needing 3-D Secure pauses it until the owner confirms it on the provider's page, never more than
4 charges in 24 hours whatever the traffic, one charge that closes a deep gap, a recharge at once when an
owner turns it on while the balance is low, and buying by hand never turns it back on.

Charges go over real HTTP to the offline Stripe sandbox (localstripe behind our stand-in, which answers
an off-session charge needing authentication as Stripe does and serves the hosted 3-D Secure page);
bursts of concurrent triggers run on SQLite and PostgreSQL. The recharger's clock is moved forward to
pass a backoff: the database's own times stay real."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import sqlalchemy as sa

from orcapulse_billing.auth import Principal
from orcapulse_billing.config import get_settings
from orcapulse_billing.ledger import Ledger, Posting, check_invariants
from orcapulse_billing.metering import DEBT_FLOOR
from orcapulse_billing.models import CheckoutSession
from orcapulse_billing.payments.auto_recharge_outcomes import when
from orcapulse_billing.payments.auto_recharge_policy import DAY, recharge_amount
from orcapulse_billing.payments.flow import choose
from orcapulse_billing.sandbox.stripe_wire import sign
from orcapulse_billing.services import get_auto_recharger, get_stripe_purchases

from .conftest import GRACE
from .test_auto_recharge import _auto_purchases, _card, _setup

SUCCEEDS, DECLINES, AUTHENTICATES = "4242424242424242", "4000000000000341", "4000002500003155"


def _burst(n: int, fn) -> list:
    """`fn` from n threads released at once; their results (an exception fails the test)."""
    barrier, results, errors = threading.Barrier(n), [], []

    def run():
        try:
            barrier.wait()
            results.append(fn())
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return results


def _auto_rows(engine, organization_id: int) -> list:
    t = CheckoutSession.__table__
    with engine.connect() as conn:
        return conn.execute(
            sa.select(t.c.amount, t.c.status, t.c.created_at)
            .where(t.c.organization_id == organization_id, t.c.mode == "auto")
            .order_by(t.c.id)
        ).all()


def _mails(engine, organization_id: int, kind_like: str = "auto_recharge%") -> list:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT kind, subject, body FROM email_outbox WHERE organization_id = :o AND kind LIKE :k ORDER BY id"
            ),
            {"o": organization_id, "k": kind_like},
        ).all()


def _balance(engine, account_id: int) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT balance FROM credit_account WHERE id = :a"), {"a": account_id}).scalar()


def _owner(engine, organization_id: int) -> Principal:
    with engine.connect() as conn:
        user_id, email = conn.execute(
            sa.text(
                "SELECT u.id, u.email FROM app_user u JOIN membership m ON m.user_id = u.id "
                "WHERE m.organization_id = :o AND m.role = 'owner'"
            ),
            {"o": organization_id},
        ).one()
    return Principal(user_id, email, organization_id, "owner", "session")


def test_the_charge_closes_the_gap_counting_what_is_in_flight():
    units = 10_000  # one credit
    assert recharge_amount(balance=9 * units, in_flight=0, threshold=10 * units, amount=20 * units) == 20 * units
    # a deep drop: one charge back up to the threshold, in whole cents, not one charge per $20
    assert recharge_amount(balance=-1_701_234, in_flight=0, threshold=100_000, amount=200_000) == 1_801_300
    # a payment being confirmed counts: nothing more is needed, or only what it leaves open
    assert recharge_amount(balance=5 * units, in_flight=50 * units, threshold=10 * units, amount=20 * units) == 0
    assert recharge_amount(balance=-100 * units, in_flight=50 * units, threshold=10 * units, amount=20 * units) == (
        60 * units
    )
    assert recharge_amount(balance=-(10**9), in_flight=0, threshold=10 * units, amount=20 * units) == 10_000 * units


def test_a_deep_drop_makes_one_charge_that_closes_the_gap(engine, app_database):
    ledger, recharger, org, account_id = _setup(engine, SUCCEEDS, "30")
    ledger.post(Posting(account_id, "usage", "-200.1234", "a long call", category="ai_call", floor=DEBT_FLOOR))
    assert _auto_purchases(engine, account_id) == [1_801_300]  # $180.13, once
    assert _balance(engine, account_id) == 100_066  # back above the $10 threshold
    (mail,) = _mails(engine, org.id)
    assert mail.subject == "Auto-recharge added $180.13 of credits" and "was not enough" in mail.body
    with engine.connect() as conn:
        assert check_invariants(conn, account_id) == []


def test_declines_back_off_an_hour_then_six_and_pause_after_the_third(engine, app_database):
    start = datetime.now(UTC)
    clock = [start]
    ledger, recharger, org, account_id = _setup(engine, DECLINES, "30", clock=lambda: clock[0])
    debit = lambda: ledger.post(Posting(account_id, "usage", "-0.5", "call", category="ai_call"))  # noqa: E731
    trigger = lambda: recharger.maybe_recharge(org.id)  # noqa: E731

    _burst(50, debit)  # 30 -> 5: every debit below $10 triggers, concurrently; one charge is tried
    policy = recharger.get(org.id)
    assert len(_auto_rows(engine, org.id)) == 1 and policy.consecutive_failures == 1 and policy.enabled
    assert "declined" in policy.last_error and policy.next_attempt_at == start + timedelta(hours=1)
    (first,) = _mails(engine, org.id)  # the owners hear of the first decline, with its reason and what next
    assert first.subject == f"Auto-recharge failed: {policy.last_error}"
    assert f"try again at {when(start + timedelta(hours=1))}" in first.body

    clock[0] = start + timedelta(minutes=59)  # traffic during the backoff charges nothing
    assert set(_burst(20, trigger)) == {"waiting"} and recharger.sweep() == 0
    _burst(10, debit)
    assert len(_auto_rows(engine, org.id)) == 1

    clock[0] = start + timedelta(hours=1)  # the backoff is over: one trigger of a burst tries again
    outcomes = Counter(_burst(20, trigger))
    assert outcomes["failed"] == 1 and set(outcomes) <= {"failed", "in_flight", "waiting"}
    policy = recharger.get(org.id)
    assert policy.consecutive_failures == 2 and policy.next_attempt_at == clock[0] + timedelta(hours=6)
    assert len(_mails(engine, org.id)) == 1  # not an email per decline

    clock[0] += timedelta(hours=6) - timedelta(seconds=1)
    assert set(_burst(20, trigger)) == {"waiting"}
    clock[0] += timedelta(seconds=1)
    outcomes = Counter(_burst(20, trigger))
    assert outcomes["disabled"] == 1 and set(outcomes) <= {"disabled", "in_flight", "waiting", "off"}
    policy = recharger.get(org.id)
    assert not policy.enabled and policy.consecutive_failures == 3 and policy.next_attempt_at is None
    assert policy.disabled_reason.startswith("paused after 3 failed charges in a row: ")
    assert [m.subject for m in _mails(engine, org.id)][1:] == ["Auto-recharge is now off after 3 failed charges"]
    assert [r.status for r in _auto_rows(engine, org.id)] == ["failed"] * 3

    # buying credits by hand (another card) does not turn it back on; only an owner does
    purchases = get_stripe_purchases(engine)
    sdk = purchases.gateway.client
    pm = sdk.v1.payment_methods.create(
        params={"type": "card", "card": {"number": SUCCEEDS, "exp_month": 12, "exp_year": 2030, "cvc": "123"}}
    )
    sdk.v1.payment_methods.attach(pm["id"], params={"customer": purchases.customer_for(org.id)})
    purchases.save_card(org.id, purchases.gateway.card(pm["id"]), make_default=False)
    owner = _owner(engine, org.id)
    purchases.quick_purchase(
        owner, choose(get_settings(), amount="50"), payment_method_id=pm["id"], request_key=uuid.uuid4().hex, ip=None
    )
    clock[0] += timedelta(days=2)
    assert not recharger.get(org.id).enabled and trigger() == "off"
    assert len(_auto_rows(engine, org.id)) == 3 and _auto_purchases(engine, account_id) == []


def test_never_more_than_4_charges_in_24_hours_whatever_the_traffic(engine, app_database):
    ledger, recharger, org, account_id = _setup(engine, SUCCEEDS, "30")

    def traffic():
        for _ in range(12):
            ledger.post(Posting(account_id, "usage", "-7", "call", category="ai_call", floor=DEBT_FLOOR))

    _burst(8, traffic)  # $672 of calls from 8 threads, each debit below $10 a trigger
    ledger.post(Posting(account_id, "usage", "-50", "call", category="ai_call", floor=DEBT_FLOOR))  # and more
    rows = _auto_rows(engine, org.id)
    assert len(rows) == 4 and {r.status for r in rows} == {"completed"} and min(r.amount for r in rows) >= 200_000
    first = min(r.created_at for r in rows)
    first = first.replace(tzinfo=first.tzinfo or UTC)
    policy = recharger.get(org.id)
    assert policy.enabled and policy.charges_last_24h == 4 and policy.next_attempt_at == first + DAY
    (limit,) = _mails(engine, org.id, "auto_recharge_daily_limit")
    assert f"next can be made at {when(first + DAY)}" in limit.body
    assert set(_burst(20, lambda: recharger.maybe_recharge(org.id))) == {"waiting"}
    assert len(_auto_rows(engine, org.id)) == 4 and _balance(engine, account_id) < 100_000
    with engine.connect() as conn:
        assert check_invariants(conn, account_id) == []

    recharger.clock = lambda: first + DAY + timedelta(minutes=1)  # a day after the first: one more may go
    assert recharger.maybe_recharge(org.id) == "charged" and len(_auto_rows(engine, org.id)) == 5


def test_a_payment_being_confirmed_counts_toward_the_gap(engine, app_database):
    ledger, recharger, org, account_id = _setup(engine, SUCCEEDS, "30")
    owner = _owner(engine, org.id)
    with engine.begin() as conn:  # a $50 quick purchase whose answer was lost: being confirmed
        conn.execute(
            sa.text(
                "INSERT INTO checkout_session (organization_id, user_id, provider, provider_id, idempotency_key, mode, "
                "amount, bonus, currency, status, created_at) VALUES (:o, :u, 'stripe', :p, :k, 'quick', 500000, 0, "
                "'usd', 'unknown', :t)"
            ),
            {"o": org.id, "u": owner.user_id, "p": f"attempt:q-{org.id}", "k": f"q-{org.id}", "t": datetime.now(UTC)},
        )
    Ledger(engine, grace_limit=GRACE).post(Posting(account_id, "usage", "-25", "call", category="ai_call"))  # 5 left
    assert recharger.maybe_recharge(org.id) == "in_flight" and _auto_rows(engine, org.id) == []
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE checkout_session SET status = 'failed' WHERE idempotency_key = :k"), {"k": f"q-{org.id}"}
        )
    assert recharger.maybe_recharge(org.id) == "charged" and _auto_purchases(engine, account_id) == [200_000]


# -- through the REST API --------------------------------------------------------------------------


def _put(client, org, **body):
    r = client.put("/api/credits/auto-recharge", json=body, headers=org.auth("owner"))
    assert r.status_code == 200, r.text
    return r.json()


def test_turning_it_on_or_changing_it_while_low_recharges_at_once(client, org):
    _card(org.engine, org.id, SUCCEEDS)
    org.post("purchase", "6")
    assert _put(client, org, enabled=True, threshold="10", amount="20")["recharge"] == "charged"
    assert org.account().balance == Decimal(26)
    answer = _put(client, org, enabled=True, threshold="30", amount="20")  # now below the new threshold
    assert answer["recharge"] == "charged" and answer["charges_last_24h"] == 2
    assert org.account().balance == Decimal(46)
    assert _put(client, org, enabled=True, threshold="30", amount="20")["recharge"] is None  # not below it now
    assert _put(client, org, enabled=False, threshold="100", amount="20")["recharge"] is None
    assert org.account().balance == Decimal(46) and len(_auto_purchases(org.engine, org.account_id)) == 2


def _deliver_sent(client, stripe_sandbox, kind: str, intent_id: str) -> str:
    """Delivers the last event of that kind the sandbox sent for that PaymentIntent, signed, to the webhook route."""
    sent = httpx.get(stripe_sandbox.api_base + "/_config/events", params={"type": kind}).json()["data"]
    event = [e for e in sent if e["data"]["object"]["id"] == intent_id][-1]
    payload = json.dumps(event).encode()
    r = client.post(
        "/api/credits/webhook",
        content=payload,
        headers={"Stripe-Signature": sign(payload, get_settings().stripe_webhook_secrets[-1])},
    )
    assert r.status_code == 200, r.text
    return r.json()["outcome"]


def _low(org) -> None:
    """A debit below the threshold, through a ledger without listeners: the test triggers by itself."""
    Ledger(org.engine, grace_limit=GRACE).post(Posting(org.account_id, "usage", "-25", "call", category="ai_call"))


def test_a_card_needing_authentication_pauses_it_until_the_owner_confirms_the_payment(client, org, stripe_sandbox):
    from orcapulse_billing.payments.reconcile import Reconciler

    _card(org.engine, org.id, AUTHENTICATES)
    org.post("purchase", "30")
    _put(client, org, enabled=True, threshold="10", amount="20")
    _low(org)
    assert get_auto_recharger(org.engine).maybe_recharge(org.id) == "requires_action"
    policy = client.get("/api/credits/auto-recharge", headers=org.auth("member")).json()
    assert not policy["enabled"] and "confirm" in policy["disabled_reason"] and policy["action_url"] is None
    link = client.get("/api/credits/auto-recharge", headers=org.auth("owner")).json()["action_url"]
    assert link.startswith(stripe_sandbox.api_base + "/authenticate/pi_")
    (mail,) = _mails(org.engine, org.id, "auto_recharge_action_required")
    assert mail.subject == "Confirm your auto-recharge payment of $20.00" and link in mail.body
    assert get_auto_recharger(org.engine).maybe_recharge(org.id) == "off"  # paused: no second charge

    # buying by hand does not resume it
    _card(org.engine, org.id, SUCCEEDS)
    r = client.post(
        "/api/credits/quick-purchase",
        json={"amount": "20"},
        headers={**org.auth("owner"), "Idempotency-Key": uuid.uuid4().hex},
    )
    assert r.status_code == 200, r.text
    assert client.get("/api/credits/auto-recharge", headers=org.auth("owner")).json()["action_url"] == link

    # the owner confirms it on the provider's page, which returns to the billing page
    page = httpx.get(link)
    assert page.status_code == 200 and "$20.00" in page.text
    done = httpx.post(link, data={"action": "complete"})
    assert done.status_code == 303
    assert done.headers["location"].startswith(get_settings().app_url.rstrip("/") + "/billing?payment_intent=")
    intent_id = link.rsplit("/", 1)[1]
    assert _deliver_sent(client, stripe_sandbox, "payment_intent.succeeded", intent_id) in ("processed", "duplicate")
    policy = client.get("/api/credits/auto-recharge", headers=org.auth("owner")).json()
    assert policy["enabled"] and policy["action_url"] is None and policy["disabled_reason"] is None
    assert _auto_purchases(org.engine, org.account_id) == [200_000]
    assert org.account().balance == Decimal(45)  # 30 - 25 + 20 by hand + 20 confirmed
    assert [m.kind for m in _mails(org.engine, org.id, "auto_recharge_resumed")] == ["auto_recharge_resumed"]
    reconciler = Reconciler(get_stripe_purchases(org.engine))
    assert intent_id not in reconciler.run().credited and intent_id not in reconciler.run().credited
    assert _auto_purchases(org.engine, org.account_id) == [200_000]


def test_a_failed_authentication_leaves_it_paused_until_an_owner_turns_it_on(client, org, stripe_sandbox):
    _card(org.engine, org.id, AUTHENTICATES)
    org.post("purchase", "30")
    _put(client, org, enabled=True, threshold="10", amount="20")
    _low(org)
    assert get_auto_recharger(org.engine).maybe_recharge(org.id) == "requires_action"
    link = client.get("/api/credits/auto-recharge", headers=org.auth("owner")).json()["action_url"]
    done = httpx.post(link, data={"action": "fail"})
    assert done.status_code == 303 and "redirect_status=failed" in done.headers["location"]
    intent_id = link.rsplit("/", 1)[1]
    _deliver_sent(client, stripe_sandbox, "payment_intent.payment_failed", intent_id)
    assert not client.get("/api/credits/auto-recharge", headers=org.auth("owner")).json()["enabled"]
    assert _auto_purchases(org.engine, org.account_id) == []
    # the owner turns it back on: the balance is low, so it tries at once, and the bank asks again
    answer = _put(client, org, enabled=True, threshold="10", amount="20")
    assert answer["recharge"] == "requires_action" and answer["action_url"] not in (None, link)


def test_an_owner_turning_it_off_is_not_undone_by_confirming_the_payment_later(client, org, stripe_sandbox):
    _card(org.engine, org.id, AUTHENTICATES)
    org.post("purchase", "30")
    _put(client, org, enabled=True, threshold="10", amount="20")
    _low(org)
    assert get_auto_recharger(org.engine).maybe_recharge(org.id) == "requires_action"
    link = client.get("/api/credits/auto-recharge", headers=org.auth("owner")).json()["action_url"]
    assert _put(client, org, enabled=False, threshold="10", amount="20")["action_url"] is None
    assert httpx.post(link, data={"action": "complete"}).status_code == 303  # the emailed link, used later
    intent_id = link.rsplit("/", 1)[1]
    assert _deliver_sent(client, stripe_sandbox, "payment_intent.succeeded", intent_id) in ("processed", "duplicate")
    assert _auto_purchases(org.engine, org.account_id) == [200_000]  # the payment is credited...
    assert not client.get("/api/credits/auto-recharge", headers=org.auth("owner")).json()["enabled"]  # ...it stays off


# -- the CLI -----------------------------------------------------------------------------------------


def test_the_cli_shows_the_backoff_and_a_run_respects_it(tmp_path, stripe_sandbox):
    from .test_cli import _make_cli

    run = _make_cli(tmp_path, STRIPE_SECRET_KEY="sk_test_sandbox", STRIPE_API_BASE=stripe_sandbox.api_base)
    run("create-org", "Acme")
    run("add-user", "Acme", "owner@acme.test", "--role", "owner", "--password", "a-long-password")
    out = run("auto-recharge", "Acme").stdout.splitlines()
    assert out == [
        "Acme: auto-recharge off: below 10.00 credits, add at least $50.00, no monthly cap",
        "  charges in the last 24 hours: 0 of 4",
    ]
    next_at = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    with run.engine.begin() as conn:  # after a first decline, as the recharger leaves it
        conn.execute(
            sa.text(
                "INSERT INTO auto_recharge_policy (organization_id, enabled, threshold, amount, owner_user_id, "
                "attempts, consecutive_failures, last_error, next_attempt_at, updated_at) "
                "VALUES (1, 1, 100000, 200000, 1, 1, 1, 'Your card was declined.', :n, :n)"
            ),
            {"n": next_at},
        )
    assert run("auto-recharge", "1", "--run").stdout.splitlines() == [
        "recharge: waiting",  # the balance (5.00) is below 10, but the backoff holds
        "Acme: auto-recharge on: below 10.00 credits, add at least $20.00, no monthly cap",
        "  charges in the last 24 hours: 0 of 4",
        "  last charge failed: Your card was declined. (1 of 3 in a row)",
        f"  next attempt: {when(next_at)}",
    ]
    bad = run("auto-recharge", "Nobody", ok=False)
    assert bad.returncode == 2 and bad.stderr == "orcapulse-billing: error: no organization 'Nobody'\n"
    bare = _make_cli(tmp_path / "bare", STRIPE_SECRET_KEY="")
    bare("create-org", "Acme")
    bad = bare("auto-recharge", "Acme", "--run", ok=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "STRIPE_SECRET_KEY" in bad.stderr
