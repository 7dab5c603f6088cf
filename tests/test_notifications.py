"""Low-balance and balance-recovered emails: one per crossing of the threshold, to the owners, over real SMTP on loopback
(aiosmtpd), or kept in the outbox when no SMTP server is configured."""

from __future__ import annotations

import dataclasses
import time
import uuid
from decimal import Decimal

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from orcapulse_billing.accounts import account_id_for, add_user, create_organization
from orcapulse_billing.config import load_settings
from orcapulse_billing.ledger import Ledger, Posting
from orcapulse_billing.notifications import Notifier
from orcapulse_billing.services import notification_listeners

from .conftest import GRACE
from .sandboxes import free_port


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.rcpt_tos, envelope.content.decode()))
        return "250 OK"


@pytest.fixture
def smtp_server():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, inbox
    controller.stop()


def _org(engine, ledger):
    tag = uuid.uuid4().hex[:8]
    org = create_organization(engine, ledger, f"Notify {tag}", welcome_credit=Decimal(0))
    add_user(engine, org, f"owner-{tag}@example.test", "owner", "a-long-password")
    add_user(engine, org, f"member-{tag}@example.test", "member", "a-long-password")
    return org, account_id_for(engine, org.id), f"owner-{tag}@example.test"


def _wait_for(predicate, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _outbox(engine, organization_id: int) -> list[tuple[str, bool]]:
    """(kind, sent) of the organization's emails, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT kind, sent_at FROM email_outbox WHERE organization_id = :o ORDER BY id"),
            {"o": organization_id},
        ).all()
    return [(r[0], r[1] is not None) for r in rows]


def test_one_email_per_crossing_over_real_smtp(engine, smtp_server):
    controller, inbox = smtp_server
    settings = dataclasses.replace(
        load_settings(),
        smtp_host="127.0.0.1",
        smtp_port=controller.port,
        smtp_starttls=False,
        app_url="http://billing.example",
    )
    notifier = Notifier(engine, settings)
    ledger = Ledger(engine, grace_limit=GRACE)
    listeners = notification_listeners(engine, notifier)  # as the app's ledger
    for listener in listeners:
        ledger.add_listener(listener)
    org, account_id, owner = _org(engine, ledger)

    def mine():  # the outbox also flushes mail other tests left queued in this database
        return [m for m in inbox.messages if org.name in m[1]]

    def all_sent(*kinds):
        """The outbox holds exactly these emails, each recorded as sent by the mailer (which records
        it after the SMTP server took it): the condition itself, polled up to a deadline."""
        return _wait_for(lambda: _outbox(engine, org.id) == [(kind, True) for kind in kinds])

    ledger.post(Posting(account_id, "purchase", "20", "top-up"))  # the first credit: nothing to recover
    for amount in ("-10", "-6", "-0.5", "-1"):  # crosses below 5.00 on the second debit, then stays below
        ledger.post(Posting(account_id, "usage", amount, "usage", category="ai_call"))
    assert all_sent("low_balance")
    assert len(mine()) == 1
    recipients, content = mine()[0]
    assert recipients == [owner]  # owners only
    assert f"Subject: Low balance: $4.00 left for {org.name}" in content.replace("\r\n", "\n").replace("=\n", "")
    assert "http://billing.example/billing" in content
    ledger.post(Posting(account_id, "purchase", "10", "top-up"))  # 12.50: recovered, re-armed
    ledger.post(Posting(account_id, "usage", "-9", "usage", category="ai_call"))  # 3.50: a second crossing
    assert all_sent("low_balance", "balance_recovered", "low_balance")
    subjects = [line for _, content in mine() for line in content.splitlines() if line.startswith("Subject:")]
    assert subjects == [
        f"Subject: Low balance: $4.00 left for {org.name}",
        f"Subject: Balance recovered: $12.50 for {org.name}",
        f"Subject: Low balance: $3.50 left for {org.name}",
    ]


def test_without_smtp_the_email_waits_in_the_outbox(engine):
    settings = dataclasses.replace(load_settings(), smtp_host=None)
    notifier = Notifier(engine, settings)
    ledger = Ledger(engine, grace_limit=GRACE)
    listeners = notification_listeners(engine, notifier)  # as the app's ledger
    for listener in listeners:
        ledger.add_listener(listener)
    org, account_id, owner = _org(engine, ledger)
    ledger.post(Posting(account_id, "bonus", "6", "grant"))
    entry = ledger.post(Posting(account_id, "usage", "-2", "usage", category="sms"))
    for listener in listeners:
        listener([entry])  # a second delivery of the same posting writes nothing new
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT to_address, kind, sent_at FROM email_outbox WHERE organization_id = :o"), {"o": org.id}
        ).all()
    assert [tuple(r) for r in rows] == [(owner, "low_balance", None)]


def test_a_backlog_longer_than_one_batch_is_sent_to_the_end(engine, smtp_server):
    """After an SMTP outage the outbox holds more than one batch (100): all of it goes out, the newest too."""
    from datetime import UTC, datetime

    from orcapulse_billing.models import EmailOutbox

    controller, inbox = smtp_server
    tag = uuid.uuid4().hex[:8]
    with engine.begin() as conn:
        for n in range(150):
            conn.execute(
                sa.insert(EmailOutbox).values(
                    dedupe_key=f"backlog-{tag}-{n}",
                    kind="test",
                    to_address="owner@example.test",
                    subject=f"backlog {tag} {n}",
                    body="queued during an outage\n",
                    created_at=datetime.now(UTC),
                )
            )
    settings = dataclasses.replace(
        load_settings(), smtp_host="127.0.0.1", smtp_port=controller.port, smtp_starttls=False
    )
    Notifier(engine, settings).send_pending()
    subjects = {line for _, content in inbox.messages for line in content.splitlines() if line.startswith("Subject:")}
    assert {f"Subject: backlog {tag} {n}" for n in range(150)} <= subjects
    with engine.connect() as conn:
        left = conn.execute(
            sa.text("SELECT COUNT(*) FROM email_outbox WHERE dedupe_key LIKE :k AND sent_at IS NULL"),
            {"k": f"backlog-{tag}-%"},
        ).scalar()
    assert left == 0
