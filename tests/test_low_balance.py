"""An organization's own low-balance threshold (an amount, or a percentage of the last top-up) and
its crossings: one low-balance and one balance-recovered email per owner and one `balance.low` /
`balance.recovered` webhook message per crossing, under concurrent postings too; owners'
notification preferences. Real SQLite and PostgreSQL (the `engine` fixture), the real ledger and its
listeners as the app wires them (services.py)."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

import orcapulse_billing
from orcapulse_billing import low_balance, notification_preferences, webhooks
from orcapulse_billing.accounts import add_user
from orcapulse_billing.config import get_settings, load_settings
from orcapulse_billing.db import writer
from orcapulse_billing.ledger import Ledger
from orcapulse_billing.models import EmailOutbox, WebhookMessage
from orcapulse_billing.money import to_units
from orcapulse_billing.notifications import Notifier
from orcapulse_billing.payments.flow import credit_postings
from orcapulse_billing.services import notification_listeners

from .apiutil import Org
from .conftest import GRACE

DEFAULT = to_units(get_settings().low_balance_threshold)


class Wired:
    """An organization on a ledger with the app's crossing listeners: emails (kept in the outbox:
    no SMTP) and webhooks (an endpoint subscribed to both balance events, never delivered here)."""

    def __init__(self, engine, roles=("owner", "admin", "member"), *, listening: bool = True):
        self.engine = engine
        self.ledger = Ledger(engine, grace_limit=GRACE)
        self.notifier = Notifier(engine, dataclasses.replace(load_settings(), smtp_host=None))
        # as the app's ledger (services.py): the crossings once for the emails and the webhooks; without
        # them (`listening=False`), as a worker that died between its commits and its listeners
        listeners = notification_listeners(engine, self.notifier)
        self.crossing_listener = listeners[0]
        for listener in listeners if listening else ():
            self.ledger.add_listener(listener)
        self.org = Org(engine, self.ledger, roles=roles)
        self.id = self.org.id
        webhooks.add_endpoint(
            engine,
            self.id,
            "http://127.0.0.1:9/hook",
            ["balance.low", "balance.recovered"],
            production=False,
            user_id=self.org.user_ids["owner"],
        )

    def set_threshold(self, **data) -> None:
        setting = low_balance.validate_setting(data)
        with writer(self.engine).begin() as conn:
            low_balance.save_setting(conn, self.id, setting, self.org.user_ids["owner"])

    def threshold(self) -> low_balance.Threshold:
        with self.engine.connect() as conn:
            return low_balance.current_threshold(conn, self.id, DEFAULT)

    def post(self, type_: str, amount: str):
        return self.org.post(type_, amount, category="ai_call" if type_ == "usage" else None)

    def topup(self, credits: str, bonus: str = "0", *, auto_recharge: bool = False):
        """A top-up posted exactly as the payment flows post one (purchase, then its volume bonus)."""
        postings = credit_postings(
            self.org.account_id,
            to_units(credits),
            to_units(bonus),
            provider="stripe",
            key=f"stripe:pi_{uuid.uuid4().hex}",
            label="Test",
            metadata={},
            actor_user_id=None,
            actor_ip=None,
            package_id=None,
            auto_recharge=auto_recharge,
        )
        return self.ledger.post_many(postings)

    def emails(self) -> list[tuple[str, str]]:
        """(kind, recipient) of the organization's outbox, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(EmailOutbox.kind, EmailOutbox.to_address)
                .where(EmailOutbox.organization_id == self.id)
                .order_by(EmailOutbox.id)
            ).all()
        return [tuple(r) for r in rows]

    def events(self) -> list[tuple[str, dict]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(WebhookMessage.event_type, WebhookMessage.payload)
                .where(WebhookMessage.organization_id == self.id)
                .order_by(WebhookMessage.id)
            ).all()
        return [(r.event_type, json.loads(r.payload)["data"]) for r in rows]


def test_a_percentage_follows_the_last_top_up_whatever_paid_for_it(engine):
    wired = Wired(engine, roles=("owner",))
    wired.set_threshold(mode="percent", percent=20)
    # before any top-up: the deployment's threshold
    assert wired.threshold() == low_balance.Threshold(DEFAULT, "default_before_topup")
    wired.post("bonus", "3")  # a grant is no top-up
    assert wired.threshold().basis == "default_before_topup"
    wired.topup("50", bonus="5")  # the volume bonus does not count
    assert wired.threshold() == low_balance.Threshold(to_units("10"), "percent", to_units("50"))
    wired.topup("30", auto_recharge=True)  # an auto-recharge is a top-up like any other
    assert wired.threshold() == low_balance.Threshold(to_units("6"), "percent", to_units("30"))
    wired.topup("33.33")  # 20% = 6.666: rounded down to the cent
    assert wired.threshold().units == to_units("6.66")
    wired.set_threshold(mode="amount", amount="12.50")
    assert wired.threshold() == low_balance.Threshold(to_units("12.50"), "amount")
    wired.set_threshold(mode="default")
    assert wired.threshold() == low_balance.Threshold(DEFAULT, "default")


def test_down_then_up_is_one_low_and_one_recovered_email_and_webhook(engine):
    wired = Wired(engine)
    owner = wired.org.emails["owner"]
    wired.set_threshold(mode="amount", amount="10")
    wired.post("bonus", "15")  # the account's first credit: nothing to recover from
    wired.post("usage", "-3")  # 12
    low = wired.post("usage", "-4")  # 8: below
    wired.post("usage", "-1")  # 7: staying below sends nothing
    [purchase] = wired.topup("5")  # 12: recovered
    wired.topup("1")  # 13: staying above sends nothing
    wired.post("usage", "-2.5")  # 10.5
    wired.crossing_listener([low, purchase])  # heard again (another worker): written once
    assert wired.emails() == [("low_balance", owner), ("balance_recovered", owner)]  # owners only
    assert wired.events() == [
        (
            "balance.low",
            {"organization_id": wired.id, "balance": "8.0000", "threshold": "10.0000", "ledger_entry_id": low.id},
        ),
        (
            "balance.recovered",
            {
                "organization_id": wired.id,
                "balance": "12.0000",
                "threshold": "10.0000",
                "ledger_entry_id": purchase.id,
            },
        ),
    ]
    wired.post("usage", "-1")  # 9.5: a second crossing, a second pair
    wired.topup("5")  # 14.5
    assert [kind for kind, _ in wired.emails()] == ["low_balance", "balance_recovered"] * 2
    assert [t for t, _ in wired.events()] == ["balance.low", "balance.recovered"] * 2


def test_each_entry_is_judged_by_the_percentage_in_force_for_it(engine):
    """A top-up raises the percentage's base: the entry that posts it is judged by the new threshold,
    the entries before it by the old one."""
    wired = Wired(engine, roles=("owner",))
    wired.set_threshold(mode="percent", percent=50)
    wired.topup("20")  # threshold 10
    wired.post("usage", "-11")  # 9: low
    [big] = wired.topup("100")  # threshold 50, balance 109: recovered
    wired.post("usage", "-60")  # 49: low again (below 50)
    assert [t for t, _ in wired.events()] == ["balance.low", "balance.recovered", "balance.low"]
    assert wired.events()[1][1]["threshold"] == "50.0000" and wired.events()[1][1]["ledger_entry_id"] == big.id
    assert wired.events()[2][1]["threshold"] == "50.0000"
    assert [k for k, _ in wired.emails()] == ["low_balance", "balance_recovered", "low_balance"]


def test_concurrent_postings_cross_once_each_way(engine):
    """Eight writers debit at once across the threshold, then four top up at once back over it:
    the account's lock orders the entries, so exactly one crosses each way."""
    wired = Wired(engine, roles=("owner",))
    wired.set_threshold(mode="amount", amount="20")
    wired.post("bonus", "40")

    def race(count: int, work) -> None:
        barrier = threading.Barrier(count)
        errors: list[BaseException] = []

        def run(n: int) -> None:
            barrier.wait()
            try:
                work(n)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []

    race(8, lambda n: [wired.post("usage", "-1") for _ in range(4)])  # 40 -> 8
    race(4, lambda n: wired.topup("5"))  # 8 -> 28
    assert wired.org.account().balance_units == to_units("28")
    assert [k for k, _ in wired.emails()] == ["low_balance", "balance_recovered"]
    assert [t for t, _ in wired.events()] == ["balance.low", "balance.recovered"]


def test_an_owner_who_turned_a_category_off_does_not_get_it(engine):
    wired = Wired(engine, roles=("owner", "member"))
    second, _ = add_user(
        engine, wired.org.org, f"second-owner-{uuid.uuid4().hex[:8]}@example.test", "owner", "a-long-password"
    )
    first = wired.org.emails["owner"]
    with writer(engine).begin() as conn:
        notification_preferences.save_preferences(conn, wired.id, wired.org.user_ids["owner"], {"low_balance": False})
        notification_preferences.save_preferences(conn, wired.id, second.id, {"auto_recharge": False})
    with engine.connect() as conn:
        mine = notification_preferences.get_preferences(conn, wired.id, wired.org.user_ids["owner"])
    assert mine == {**dict.fromkeys(notification_preferences.CATEGORIES, True), "low_balance": False}
    wired.post("bonus", "6")
    wired.post("usage", "-2")  # below 5.00 (the deployment's threshold)
    wired.topup("10")  # recovered: both owners kept that one
    # a 3-D Secure confirmation link always goes, whatever the owner's auto-recharge switch
    wired.notifier.notify_owners(wired.id, "auto_recharge_action_required", f"3ds:{wired.id}", "Confirm", "link\n")
    wired.notifier.notify_owners(wired.id, "auto_recharge_failed", f"fail:{wired.id}", "Declined", "card\n")
    assert sorted(wired.emails()) == sorted(
        [
            ("low_balance", second.email),
            ("balance_recovered", first),
            ("balance_recovered", second.email),
            ("auto_recharge_action_required", first),
            ("auto_recharge_action_required", second.email),
            ("auto_recharge_failed", first),
        ]
    )


def test_every_email_kind_sent_to_owners_has_a_category_or_always_goes():
    """Each `notify_owners(org, "kind", ...)` in the code maps to a preference (or is one of the few
    that always go), so no new email slips past the owners' switches unnoticed."""
    source = Path(orcapulse_billing.__file__).parent
    kinds = set()
    for path in source.rglob("*.py"):
        kinds |= set(re.findall(r"notify_owners\(\s*[\w.]+,\s*\"(\w+)\"", path.read_text()))
    assert {"auto_recharge_failed", "auto_recharge_action_required", "payment_disputed"} <= kinds  # found
    kinds |= {"receipt", "credit_note"}  # a document's kind (Notifier.document_emails)
    kinds |= {"low_balance", "balance_recovered"}  # a crossing's (Notifier.crossed)
    known = set(notification_preferences.KIND_CATEGORIES) | set(notification_preferences.ALWAYS_SENT)
    assert kinds - known == set()
    assert set(notification_preferences.KIND_CATEGORIES.values()) == set(notification_preferences.CATEGORIES)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mode": "sometimes"}, "mode must be one of"),
        ({"mode": "amount"}, "amount is required"),
        ({"mode": "amount", "amount": "-1"}, "between 0 and"),
        ({"mode": "amount", "amount": "1.005"}, "at most 2 decimal places"),
        ({"mode": "amount", "amount": 2.5}, "amount is required"),
        ({"mode": "amount", "amount": "NaN"}, "decimal number"),
        ({"mode": "percent", "percent": 0}, "from 1 to 100"),
        ({"mode": "percent", "percent": 101}, "from 1 to 100"),
        ({"mode": "percent", "percent": "20"}, "from 1 to 100"),
        ({"mode": "percent", "percent": True}, "from 1 to 100"),
        ({"mode": "percent", "percent": 20, "amount": "5"}, "only for mode amount"),
        ({"mode": "default", "extra": 1}, "unknown field"),
    ],
)
def test_a_threshold_that_is_not_acceptable_is_refused(data, message):
    with pytest.raises(low_balance.ThresholdError, match=message):
        low_balance.validate_setting(data)


def test_preferences_that_are_not_acceptable_are_refused():
    for data, message in [
        ({}, "at least one"),
        ({"low_balance": "no"}, "true or false"),
        ({"low_balance": 0}, "true or false"),
        ({"marketing": False}, "unknown category"),
    ]:
        with pytest.raises(notification_preferences.PreferenceError, match=message):
            notification_preferences.validate_changes(data)
    assert notification_preferences.validate_changes({"receipts": False}) == {"receipts": False}


def test_amount_threshold_parses_exactly():
    assert low_balance.validate_setting({"mode": "amount", "amount": "0"}).amount_units == 0
    assert low_balance.validate_setting({"mode": "amount", "amount": "1000000"}).amount_units == to_units(
        Decimal(1_000_000)
    )
