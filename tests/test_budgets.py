"""Spend budgets through real parts, on SQLite and PostgreSQL (the `engine` fixture): many threads
posting usage at once cross 50, 80 and 100 % and each threshold writes exactly one email and one
webhook message per budget; a hard stop refuses at 100 % (reports, batches, holds) and the month's
spend never passes the budget; per-key and per-member budgets count only their usage; a new month
starts from zero; a budget set mid-month starts from the month's usage."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from orcapulse_billing import holds, webhooks
from orcapulse_billing.budget_settings import BudgetInputError, list_budgets, remove_budget, set_budget
from orcapulse_billing.budgets import BudgetExceeded
from orcapulse_billing.metering import record_usage
from orcapulse_billing.metering_batch import UsageEvent, record_usage_batch

from .apiutil import Org

MARKUP = Decimal(20)
REPORT_UNITS = 504  # ai_call, 3 minutes: $0.0504, a whole number of ledger units (nothing carried)


def report(org: Org, key: str, *, role: str = "owner", api_key_id: int | None = None, created_at=None):
    return record_usage(
        org.ledger,
        org.id,
        operation="ai_call",
        quantity=Decimal(3),
        status="completed",
        idempotency_key=key,
        markup_percent=MARKUP,
        actor_user_id=org.user_ids[role],
        api_key_id=api_key_id,
        created_at=created_at,
    )


def key_id(org: Org, role: str) -> int:
    with org.engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT id FROM api_key WHERE user_id = :u ORDER BY id LIMIT 1"), {"u": org.user_ids[role]}
        ).scalar_one()


def alert_rows(org: Org) -> tuple[list[str], list[str]]:
    """(the budget alert emails' dedupe keys, the budget.threshold_reached messages' payload keys)."""
    with org.engine.connect() as conn:
        emails = conn.execute(
            sa.text("SELECT dedupe_key FROM email_outbox WHERE organization_id = :o AND kind = 'budget_alert'"),
            {"o": org.id},
        ).scalars()
        messages = conn.execute(
            sa.text(
                "SELECT msg_id FROM webhook_message WHERE organization_id = :o AND event_type = 'budget.threshold_reached'"
            ),
            {"o": org.id},
        ).scalars()
        return sorted(emails), sorted(messages)


def hammer(count: int, threads: int, work) -> list[BaseException]:
    """`work(i)` for i in range(count), from `threads` threads released together; the errors raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(threads)
    lock = threading.Lock()

    def run(offset: int) -> None:
        start.wait()
        for i in range(offset, count, threads):
            try:
                work(i)
            except BaseException as exc:  # noqa: BLE001 - collected for the assertions
                with lock:
                    errors.append(exc)

    pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return errors


def spent(org: Org, now=None) -> dict[str, tuple[int, int]]:
    with org.engine.connect() as conn:
        return {s.name: (s.spent_units, s.level) for s in list_budgets(conn, org.id, now=now)}


@pytest.fixture
def funded(engine, ledger):
    org = Org(engine, ledger, roles=("owner", "admin", "member"))
    org.post("purchase", "100")
    webhooks.add_endpoint(engine, org.id, "http://127.0.0.1:9/hook", ["budget.threshold_reached"], production=False)
    return org


def test_each_threshold_once_under_concurrent_usage_and_no_hard_stop_lets_usage_through(funded):
    org = funded
    owner_key = key_id(org, "owner")
    set_budget(org.ledger, org.id, "1.00")  # alerts only
    set_budget(org.ledger, org.id, "1.50", api_key_id=owner_key)
    run = uuid.uuid4().hex
    errors = hammer(40, 8, lambda i: report(org, f"{run}-{i}", api_key_id=owner_key))
    assert errors == []
    total = 40 * REPORT_UNITS  # $2.016: past both budgets, nothing refused
    assert spent(org) == {"Organization": (total, 100), f"API key {org_key_name(org, owner_key)}": (total, 100)}
    emails, messages = alert_rows(org)
    assert len(emails) == 6 and len(set(emails)) == 6  # 50, 80, 100 for each budget, to the one owner
    assert {e.split(":")[3] for e in emails} == {"50", "80", "100"}
    assert len(messages) == 6 and len(set(messages)) == 6  # one endpoint: one message per threshold and budget
    # more usage this month alerts no more
    report(org, f"{run}-again", api_key_id=owner_key)
    assert alert_rows(org) == (emails, messages)


def org_key_name(org: Org, api_key_id: int) -> str:
    with org.engine.connect() as conn:
        return conn.execute(sa.text("SELECT name FROM api_key WHERE id = :k"), {"k": api_key_id}).scalar() or str(
            api_key_id
        )


def test_hard_stop_refuses_at_100_percent_under_concurrency_and_never_overshoots(funded):
    org = funded
    set_budget(org.ledger, org.id, "1.00", hard_stop=True)
    run = uuid.uuid4().hex
    errors = hammer(40, 8, lambda i: report(org, f"{run}-{i}"))
    fits = 10000 // REPORT_UNITS  # 19 reports: $0.9576; the 20th would make $1.008
    assert len(errors) == 40 - fits and all(isinstance(e, BudgetExceeded) for e in errors)
    assert errors[0].code == "budget_exceeded"
    assert spent(org)["Organization"] == (fits * REPORT_UNITS, 80)
    with org.engine.connect() as conn:  # the ledger agrees: nothing refused was written
        usage = conn.execute(
            sa.text("SELECT count(*), -sum(amount) FROM ledger_entry WHERE account_id = :a AND type = 'usage'"),
            {"a": org.account_id},
        ).one()
    assert tuple(usage) == (fits, fits * REPORT_UNITS)
    emails, messages = alert_rows(org)
    assert len(emails) == 2 and len(messages) == 2  # 50 and 80; 100 was never reached

    # batches, several at once, are judged per event on the same spend
    set_budget(org.ledger, org.id, "1.20", hard_stop=True)  # room for 4 more reports (2016 units of 2424)
    results: list = []

    def batch(i: int) -> None:
        events = [UsageEvent("ai_call", Decimal(3), "completed", f"{run}-b{i}-{n}") for n in range(3)]
        results.extend(record_usage_batch(org.ledger, org.id, events, markup_percent=MARKUP))

    assert hammer(4, 4, batch) == []
    charged = [r for r in results if r.status == "charged"]
    refused = [r for r in results if r.status == "refused"]
    assert len(charged) == 4 and len(refused) == 8
    assert {r.error.code for r in refused} == {"budget_exceeded"}
    assert spent(org)["Organization"] == ((fits + 4) * REPORT_UNITS, 80)

    # a hold whose estimate would pass the budget is refused, one that fits is placed
    with pytest.raises(BudgetExceeded):
        holds.place_hold(org.ledger, org.id, "ai_call", Decimal(30), f"{run}-h1", MARKUP)
    placed = holds.place_hold(org.ledger, org.id, "ai_call", Decimal(1), f"{run}-h2", MARKUP)
    assert placed.hold.status == "active"


def test_per_key_and_per_member_budgets_count_only_their_usage(funded):
    org = funded
    owner_key, admin_key = key_id(org, "owner"), key_id(org, "admin")
    set_budget(org.ledger, org.id, "10")
    set_budget(org.ledger, org.id, "10", api_key_id=owner_key)
    set_budget(org.ledger, org.id, "10", user_id=org.user_ids["admin"])
    run = uuid.uuid4().hex
    for i in range(3):
        report(org, f"{run}-o{i}", api_key_id=owner_key)
    for i in range(2):
        report(org, f"{run}-a{i}", role="admin", api_key_id=admin_key)
    with org.engine.connect() as conn:
        found = {(s.budget.scope, s.spent_units) for s in list_budgets(conn, org.id)}
    assert found == {("organization", 5 * REPORT_UNITS), ("api_key", 3 * REPORT_UNITS), ("member", 2 * REPORT_UNITS)}

    # a hard stop on one key refuses that key only
    set_budget(org.ledger, org.id, "1.00", api_key_id=admin_key, hard_stop=True)  # 19 reports fit, 2 are done
    for i in range(2, 19):
        report(org, f"{run}-a{i}", role="admin", api_key_id=admin_key)
    with pytest.raises(BudgetExceeded, match="API key"):
        report(org, f"{run}-a19", role="admin", api_key_id=admin_key)
    report(org, f"{run}-o3", api_key_id=owner_key)


def test_a_new_month_starts_from_zero(funded):
    org = funded
    november, december = datetime(2030, 11, 20, tzinfo=UTC), datetime(2030, 12, 1, tzinfo=UTC)
    set_budget(org.ledger, org.id, "1.00", hard_stop=True, now=november)
    run = uuid.uuid4().hex
    for i in range(19):
        report(org, f"{run}-n{i}", created_at=november)
    with pytest.raises(BudgetExceeded):
        report(org, f"{run}-n19", created_at=november)
    assert spent(org, november)["Organization"] == (19 * REPORT_UNITS, 80)
    assert spent(org, december)["Organization"] == (0, 0)
    report(org, f"{run}-d0", created_at=december)  # the hard stop let go on the 1st
    assert spent(org, december)["Organization"] == (REPORT_UNITS, 0)
    assert spent(org, november)["Organization"] == (19 * REPORT_UNITS, 80)


def test_a_budget_set_mid_month_starts_from_the_months_usage_and_removing_the_last_one(funded, engine):
    org = funded
    run = uuid.uuid4().hex
    for i in range(3):
        report(org, f"{run}-{i}", api_key_id=key_id(org, "owner"))
    status = set_budget(org.ledger, org.id, "1.00", api_key_id=key_id(org, "owner"))
    assert status.spent_units == 3 * REPORT_UNITS and status.percent == Decimal("15.1")
    assert remove_budget(org.ledger, org.id, api_key_id=key_id(org, "owner"))
    assert not remove_budget(org.ledger, org.id, api_key_id=key_id(org, "owner"))
    with engine.connect() as conn:
        assert conn.execute(
            sa.text("SELECT budgeted FROM credit_account WHERE id = :a"), {"a": org.account_id}
        ).scalar() in (
            False,
            0,
        )


@pytest.mark.parametrize(
    "amount, target, code",
    [
        ("0.50", {}, "invalid_amount"),
        ("1.001", {}, "invalid_amount"),
        ("abc", {}, "invalid_amount"),
        ("10", {"api_key_id": 2_000_000_000}, "not_found"),
        ("10", {"user_id": 2_000_000_000}, "not_found"),
    ],
)
def test_bad_budgets_are_refused_and_write_nothing(funded, amount, target, code):
    org = funded
    with pytest.raises(BudgetInputError) as refused:
        set_budget(org.ledger, org.id, amount, **target)
    assert refused.value.code == code
    with org.engine.connect() as conn:
        assert list_budgets(conn, org.id) == []


def test_a_phone_rental_counts_but_is_never_refused_by_a_hard_stop(funded):
    from orcapulse_billing.jobs import add_phone_number, bill_phone_numbers

    org = funded
    set_budget(org.ledger, org.id, "1.00", hard_stop=True)
    run = uuid.uuid4().hex
    for i in range(19):
        report(org, f"{run}-{i}")
    number = "+1555" + str(uuid.uuid4().int)[:7]
    add_phone_number(org.engine, org.id, number, Decimal("1.15"), datetime.now(UTC))
    billed = bill_phone_numbers(org.engine, org.ledger, datetime.now(UTC).date())
    assert len([d for d in billed.billed if "Phone number rental" in d]) >= 1
    assert spent(org)["Organization"] == (19 * REPORT_UNITS + 11_500, 100)  # past the budget: alerted at 100 %
    assert len(alert_rows(org)[0]) == 3
    with pytest.raises(BudgetExceeded):
        report(org, f"{run}-after")
