"""The notice sweep (notice_sweep.py): the low-balance notices and purchase emails of committed
postings whose listeners never ran are written by the next round, once; what the listeners wrote is
not written again; history before the watermark and entries older than MAX_AGE are passed over; a
round that fails to write leaves the watermark for the next. A worker killed between its commit and its
listeners, for real, loses nothing. Real SQLite and PostgreSQL, each a database of this module's own (a
round sweeps every account of its database)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from orcapulse_billing import notice_sweep
from orcapulse_billing.db import make_engine, upgrade, writer
from orcapulse_billing.models import NoticeWatermark
from orcapulse_billing.services import sweep_notices

from .test_low_balance import Wired

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def engine(request, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sweep') / 'sweep.db'}"
    else:
        url = request.getfixturevalue("pg_database_factory")()
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def _watermark(engine, account_id: int) -> int | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(NoticeWatermark.judged_seq).where(NoticeWatermark.account_id == account_id)
        ).scalar()


def _last_seq(engine, account_id: int) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT transaction_count FROM credit_account WHERE id = :a"), {"a": account_id}
        ).scalar_one()


def _go_low_and_back(wired: Wired) -> None:
    wired.post("bonus", "15")  # the account's first credit: nothing to recover from
    wired.post("usage", "-12")  # 3: below the default 5
    wired.post("usage", "-1")  # 2: staying below sends nothing
    wired.topup("10")  # 12: recovered


def test_notices_whose_listeners_never_ran_are_written_by_the_next_round_once(engine):
    wired = Wired(engine, listening=False)  # its commits land, its listeners never run
    _go_low_and_back(wired)
    assert wired.emails() == [] and wired.events() == []
    sweep_notices(engine)
    owner = wired.org.emails["owner"]
    assert wired.emails() == [("low_balance", owner), ("balance_recovered", owner)]
    assert [(kind, data["balance"]) for kind, data in wired.events()] == [
        ("balance.low", "3.0000"),
        ("balance.recovered", "12.0000"),
    ]
    assert _watermark(engine, wired.org.account_id) == _last_seq(engine, wired.org.account_id)
    sweep_notices(engine)  # nothing past the watermark: nothing new
    wired.post("usage", "-1")  # 11: above, nothing to say
    sweep_notices(engine)
    assert len(wired.emails()) == 2 and len(wired.events()) == 2
    assert _watermark(engine, wired.org.account_id) == _last_seq(engine, wired.org.account_id)


def test_what_the_listeners_wrote_is_not_written_again(engine):
    wired = Wired(engine)  # the app's listeners: they write the notices at each commit
    _go_low_and_back(wired)
    emails, events = wired.emails(), wired.events()
    assert len(emails) == 2 and len(events) == 2
    run = sweep_notices(engine)
    assert run.crossings >= 2 and run.failed == 0  # judged again, and found written
    assert wired.emails() == emails and wired.events() == events


def test_a_percent_threshold_is_judged_entry_by_entry(engine):
    wired = Wired(engine, listening=False)
    wired.set_threshold(mode="percent", percent=50)
    wired.topup("40")  # threshold 20; an account's first credit recovers nothing
    wired.post("usage", "-25")  # 15: below 20
    wired.topup("100")  # 115, and the threshold is 50 now: recovered
    sweep_notices(engine)
    thresholds = [(kind, data["threshold"]) for kind, data in wired.events()]
    assert thresholds == [("balance.low", "20.0000"), ("balance.recovered", "50.0000")]


def test_history_and_entries_older_than_an_hour_are_passed_over(engine):
    history = Wired(engine, listening=False)
    _go_low_and_back(history)
    with writer(engine).begin() as conn:
        notice_sweep.mark_judged(conn, history.org.account_id)  # as the demo seed marks its history
    sweep_notices(engine)
    assert history.emails() == [] and history.events() == []

    stale = Wired(engine, listening=False)
    _go_low_and_back(stale)
    later = datetime.now(UTC) + notice_sweep.MAX_AGE + timedelta(minutes=1)
    written: list = []
    notice_sweep.sweep_notices(engine, 50_000, written.extend, written.extend, now=later)
    assert written == []  # an hour late, a low-balance notice misleads: none
    assert _watermark(engine, stale.org.account_id) == _last_seq(engine, stale.org.account_id)  # judged all the same
    sweep_notices(engine)
    assert stale.emails() == [] and stale.events() == []


def test_a_round_reads_at_most_entries_per_round_and_the_next_goes_on(engine, monkeypatch):
    sweep_notices(engine)  # every other account of this database judged
    wired = Wired(engine, listening=False)
    # three entries may call for something: the first credit (from 0 to 15; it recovers nothing), the
    # one going low, the top-up
    _go_low_and_back(wired)
    monkeypatch.setattr(notice_sweep, "ENTRIES_PER_ROUND", 1)
    seen = []
    for _ in range(3):
        sweep_notices(engine)
        seen.append(([kind for kind, _ in wired.events()], _watermark(engine, wired.org.account_id)))
    last = _last_seq(engine, wired.org.account_id)
    assert seen == [
        ([], 1),
        (["balance.low"], 2),
        (["balance.low", "balance.recovered"], last),
    ]


def test_a_round_that_fails_to_write_leaves_the_watermark_for_the_next(engine):
    sweep_notices(engine)  # every other account of this database judged
    wired = Wired(engine, listening=False)
    _go_low_and_back(wired)

    def failing(crossed) -> None:
        raise RuntimeError("the outbox could not be written")

    run = notice_sweep.sweep_notices(engine, 50_000, failing, lambda documents: None)
    assert (run.accounts, run.failed) == (1, 1)
    assert _watermark(engine, wired.org.account_id) is None
    sweep_notices(engine)
    assert [kind for kind, _ in wired.events()] == ["balance.low", "balance.recovered"]
    assert _watermark(engine, wired.org.account_id) == _last_seq(engine, wired.org.account_id)


def test_a_purchase_whose_listener_never_ran_gets_its_email_and_receipt_once(engine):
    from orcapulse_billing.models import EmailAttachment, EmailOutbox
    from orcapulse_billing.payments.flow import credit_checkout

    from .test_receipt_numbers import _open_purchases

    wired = Wired(engine, listening=False)
    (purchase,) = _open_purchases(engine, wired.org, 1)
    with wired.ledger.transaction() as conn:  # the webhook's transaction: credits and the receipt
        row = conn.execute(sa.text("SELECT * FROM checkout_session WHERE id = :i"), {"i": purchase}).one()
        credit_checkout(wired.ledger, conn, row, provider_reference=f"pi_{purchase}", metadata={"feature": "checkout"})
    assert wired.emails() == []
    sweep_notices(engine)
    sweep_notices(engine)
    assert wired.emails() == [("receipt", wired.org.emails["owner"])]
    with engine.connect() as conn:
        files = conn.execute(
            sa.select(EmailAttachment.filename, EmailAttachment.content)
            .join(EmailOutbox, EmailOutbox.id == EmailAttachment.email_id)
            .where(EmailOutbox.organization_id == wired.org.id)
        ).all()
    assert len(files) == 1 and files[0].content.startswith(b"%PDF")


KILLED_WORKER = textwrap.dedent(
    """
    import os, sys
    from decimal import Decimal
    from orcapulse_billing.db import get_engine
    from orcapulse_billing.ledger import Posting
    from orcapulse_billing.services import get_ledger

    ledger = get_ledger()
    # the process dies after the commit, before the app's listeners (emails, webhooks) run
    ledger._listeners.insert(0, lambda entries: os._exit(9))
    ledger.post(Posting(int(sys.argv[1]), "usage", Decimal("-12"), "A call", category="ai_call"))
    """
)


def test_a_worker_killed_between_its_commit_and_its_listeners_loses_no_notice(engine):
    wired = Wired(engine)
    wired.post("bonus", "15")
    env = {**os.environ, "DATABASE_URL": engine.url.render_as_string(hide_password=False), "PYTHONPATH": str(ROOT)}
    env.pop("REDIS_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WORKER, str(wired.org.account_id)], env=env, cwd=ROOT, capture_output=True
    )
    assert done.returncode == 9, done.stderr.decode()[-2000:]
    with engine.connect() as conn:
        balance = conn.execute(
            sa.text("SELECT balance FROM credit_account WHERE id = :a"), {"a": wired.org.account_id}
        ).scalar()
    assert balance == 30_000  # committed: 3.0000 left
    assert wired.emails() == [] and wired.events() == []  # and nothing said of it
    sweep_notices(engine)
    assert wired.emails() == [("low_balance", wired.org.emails["owner"])]
    assert [kind for kind, _ in wired.events()] == ["balance.low"]
