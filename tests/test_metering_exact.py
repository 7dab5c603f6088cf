"""Exact metering: usage below one ledger unit is carried per account and operation, never dropped.

For every account+operation the charged total is floor(cumulative exact cost) in ledger units (ten-
thousandths of a credit): within one unit of the exact sum and never above it; entries plus the carried
remainder equal the exact sum. Replays change nothing; concurrent reports queue on the remainder row
(PostgreSQL: two connections interleaved by hand); a session's stored parts add up to its charged total.
Every test runs on SQLite and PostgreSQL (the race itself on PostgreSQL), through the real ledger.
"""

from __future__ import annotations

import threading
import time
import uuid
from decimal import ROUND_FLOOR, Decimal, Inexact, getcontext

import pytest
import sqlalchemy as sa

from orcapulse_billing.accounts import account_id_for, create_organization
from orcapulse_billing.db import make_engine
from orcapulse_billing.ledger import IdempotencyConflict, Ledger, Posting, check_invariants
from orcapulse_billing.ledger import get_account as ledger_account
from orcapulse_billing.metering import SessionInfo, price, record_usage
from orcapulse_billing.metering_batch import UsageEvent, record_usage_batch
from orcapulse_billing.money import UNITS_PER_CREDIT, to_units
from orcapulse_billing.usage_remainders import carry

from .conftest import GRACE

MARKUP = Decimal(20)
TOKENS = Decimal(277)  # gpt-4o-mini input: 0.00004986 credits, half a unit rounds it to nothing
TOKEN_COST = price("openai_input_tokens", TOKENS, markup_percent=MARKUP, model="gpt-4o-mini").cost


def floor_units(credits: Decimal) -> int:
    return int((credits * UNITS_PER_CREDIT).to_integral_value(rounding=ROUND_FLOOR))


def report(ledger: Ledger, org_id: int, key: str, tokens: Decimal = TOKENS, operation: str = "openai_input_tokens"):
    return record_usage(
        ledger,
        org_id,
        operation=operation,
        quantity=tokens,
        status="completed",
        idempotency_key=key,
        markup_percent=MARKUP,
        model="gpt-4o-mini",
    )


def org_of(engine, account_id: int) -> int:
    with engine.connect() as conn:
        return ledger_account(conn, account_id=account_id).organization_id


def state(engine, account_id: int) -> dict:
    """Everything a report may change: the account, its entries, remainders and uncharged keys."""
    with engine.connect() as conn:
        acct = ledger_account(conn, account_id=account_id)
        q = {"a": account_id}
        return {
            "balance": acct.balance_units,
            "transactions": acct.transaction_count,
            "version": acct.version,
            "usage_units": conn.execute(
                sa.text("SELECT COALESCE(SUM(-amount), 0) FROM ledger_entry WHERE account_id = :a AND type = 'usage'"),
                q,
            ).scalar_one(),
            "remainders": {
                op: Decimal(text)
                for op, text in conn.execute(
                    sa.text("SELECT operation, remainder FROM usage_remainder WHERE account_id = :a"), q
                )
            },
            "uncharged_keys": conn.execute(
                sa.text("SELECT COUNT(*) FROM usage_report WHERE account_id = :a"), q
            ).scalar_one(),
            "invariants": check_invariants(conn, account_id),
        }


def assert_exact(engine, account_id: int, exact_by_operation: dict[str, Decimal]) -> None:
    """Entries + remainder == the exact sum; the charge is its floor: never free, never above it."""
    s = state(engine, account_id)
    assert s["invariants"] == []
    exact = sum(exact_by_operation.values(), Decimal(0))
    assert s["usage_units"] == sum(floor_units(v) for v in exact_by_operation.values())
    assert Decimal(s["usage_units"]) / UNITS_PER_CREDIT + sum(s["remainders"].values(), Decimal(0)) == exact
    assert Decimal(s["usage_units"]) / UNITS_PER_CREDIT <= exact
    for op, remainder in s["remainders"].items():
        assert 0 <= remainder * UNITS_PER_CREDIT < 1, (op, remainder)


def waiting_on_a_lock(watcher, query_part: str, timeout: float = 10) -> int:
    """How many sessions of this database wait on a lock while running a query that contains `query_part`,
    polled until one does or `timeout` passes (a blocked report is seen, not guessed from timing)."""
    waiting = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not waiting:
        with watcher.connect() as conn:
            waiting = conn.execute(
                sa.text(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE :q"
                ),
                {"q": f"%{query_part}%"},
            ).scalar_one()
        time.sleep(0.05)
    return waiting


def test_carry_is_exact_to_80_digits_or_refuses():
    """floor(carried + cost) units and the exact rest, past the 28 digits of the default context; more
    than 80 digits raise rather than round, a bad input is a ValueError, and the thread's context is untouched."""
    before = (getcontext().prec, getcontext().rounding, dict(getcontext().traps))
    assert carry(Decimal(0), Decimal("0.00027432")) == (2, Decimal("0.00007432"))
    assert carry(Decimal("0.00007432"), Decimal("0.00182448")) == (18, Decimal("0.0000988"))
    long = Decimal("12345678901234567890.123456789012345678901234567890123456789")
    units, rest = carry(Decimal("0.00001"), long)
    assert (units, rest) == (123456789012345678901234, Decimal("0.000066789012345678901234567890123456789"))
    with pytest.raises(Inexact):
        carry(Decimal("1E-70"), Decimal("1E+20"))
    for carried, cost in ((Decimal(0), Decimal("-0.0001")), (Decimal("0.0001"), Decimal(1)), (Decimal(-1), Decimal(1))):
        with pytest.raises(ValueError, match="cannot carry"):
            carry(carried, cost)
    assert (getcontext().prec, getcontext().rounding, dict(getcontext().traps)) == before


def test_a_thousand_tiny_reports_charge_the_floor_of_their_exact_sum(engine, ledger, new_account):
    account_id = new_account(Decimal(10))
    org_id = org_of(engine, account_id)
    assert TOKEN_COST == Decimal("0.00004986")
    charged = 0
    for n in range(1, 1001):
        result = report(ledger, org_id, f"tiny-{n}")
        if result.entry is not None:
            assert result.charged and not result.entry.replayed and result.entry.amount_units == -1
            charged -= result.entry.amount_units
        else:
            assert not result.charged
        # after every report: the floor of what was used so far, never more
        assert charged == floor_units(TOKEN_COST * n)
    assert charged == 498  # 1,000 x 0.4986 units = 498.6 units, not 0
    assert_exact(engine, account_id, {"openai_input_tokens": TOKEN_COST * 1000})
    assert state(engine, account_id)["remainders"] == {"openai_input_tokens": Decimal("0.00006")}  # 0.6 units
    assert state(engine, account_id)["balance"] == 10 * UNITS_PER_CREDIT - 498


def test_remainders_are_kept_per_operation_and_a_report_may_complete_a_unit(engine, ledger, new_account):
    account_id = new_account(Decimal(1))
    org_id = org_of(engine, account_id)
    output_cost = price("openai_output_tokens", Decimal(100), markup_percent=MARKUP, model="gpt-4o-mini").cost
    assert output_cost == Decimal("0.000072")  # 0.72 units: alone it rounds half-up to 1
    first = report(ledger, org_id, "out-1", Decimal(100), "openai_output_tokens")
    assert not first.charged and first.entry is None  # floor(0.72) = 0: carried, not charged
    second = report(ledger, org_id, "out-2", Decimal(100), "openai_output_tokens")
    assert second.entry is not None and second.entry.amount_units == -1  # floor(1.44)
    inputs = [report(ledger, org_id, f"in-{n}") for n in range(3)]  # input tokens carry on their own
    assert [r.charged for r in inputs] == [False, False, True]  # 0.4986, 0.9972, 1.4958
    assert_exact(engine, account_id, {"openai_output_tokens": 2 * output_cost, "openai_input_tokens": 3 * TOKEN_COST})


def test_replays_of_tiny_reports_change_nothing(engine, ledger, new_account):
    account_id = new_account(Decimal(5))
    org_id = org_of(engine, account_id)
    keys = [f"replay-{n}" for n in range(60)]
    first = [report(ledger, org_id, key) for key in keys]
    assert sum(r.charged for r in first) == floor_units(TOKEN_COST * 60) == 29  # of 29.916 units
    before = state(engine, account_id)
    assert before["uncharged_keys"] == 60 - 29 and before["transactions"] == 1 + 29
    for key, was in zip(keys * 2, first * 2, strict=True):
        again = report(ledger, org_id, key)
        assert again.replayed and again.charged == was.charged
        if was.entry is not None:
            assert again.entry is not None and again.entry.replayed and again.entry.id == was.entry.id
        else:
            assert again.entry is None
    assert state(engine, account_id) == before
    assert_exact(engine, account_id, {"openai_input_tokens": TOKEN_COST * 60})
    # a posted key replayed with a different report is a conflict, and changes nothing either
    posted = next(k for k, r in zip(keys, first, strict=True) if r.charged)
    with pytest.raises(IdempotencyConflict):
        report(ledger, org_id, posted, Decimal(278))
    assert state(engine, account_id) == before
    # so is a key that charged nothing (its cost went to the remainder), sent again with another report
    uncharged = next(k for k, r in zip(keys, first, strict=True) if not r.charged)
    with pytest.raises(IdempotencyConflict):
        report(ledger, org_id, uncharged, Decimal(100_000))
    assert state(engine, account_id) == before


def test_a_charge_past_the_floor_is_recorded_as_debt_and_stays_exact(engine, ledger, new_account):
    """Completed usage is always recorded (it used to be refused at the floor, which gave it away):
    past minus the grace limit the balance goes into debt, and the remainders stay exact."""
    account_id = new_account()
    org_id = org_of(engine, account_id)
    report(ledger, org_id, "before-floor-1")  # 0.4986 units carried
    ledger.post(Posting(account_id, "adjustment", -GRACE, "down to the floor"))
    past = report(ledger, org_id, "past-floor", Decimal(10_000))  # 0.0018 + 0.4986 units carried
    assert past.entry is not None and past.entry.amount_units == -18
    assert past.entry.balance_after_units == -to_units(GRACE) - 18  # below the floor: debt
    assert not report(ledger, org_id, "before-floor-2").charged  # 0.9972 units carried
    third = report(ledger, org_id, "before-floor-3")  # 1.4958 units: one unit posted, into the debt
    assert third.entry is not None and third.entry.amount_units == -1
    assert_exact(engine, account_id, {"openai_input_tokens": TOKEN_COST * 3 + past.charge.cost})
    assert state(engine, account_id)["balance"] == -to_units(GRACE) - 19


def session_report(ledger: Ledger, org_id: int, session_id: str, minutes: str, key: str | None = None):
    return record_usage(
        ledger,
        org_id,
        operation="voice_pipeline",
        quantity=Decimal(minutes),
        status="completed",
        idempotency_key=key or f"call-{session_id}",
        markup_percent=MARKUP,
        session=SessionInfo(id=session_id, agent_id="agent_abc123", agent_name="Front desk"),
    )


def session_row(engine, account_id: int, session_id: str) -> dict:
    with engine.connect() as conn:
        return dict(
            conn.execute(
                sa.text(
                    "SELECT ledger_entry_id, cost_base, cost_llm, cost_stt, cost_tts, cost_total "
                    "FROM billing_session WHERE account_id = :a AND external_id = :s"
                ),
                {"a": account_id, "s": session_id},
            )
            .one()
            ._mapping
        )


def test_a_sessions_parts_add_up_to_its_charged_total(engine, ledger, new_account):
    account_id = new_account(Decimal(10))
    org_id = org_of(engine, account_id)
    # 0.01 min: base 5, llm 1.5, stt 0.3, tts 0.5 units (7.3). Rounded one by one: 5+2+0+1 = 8 != 7.
    # Carried: 7.3 -> 7, 7.6 -> 7, 7.9 -> 7, 8.2 -> 8 units; then 7.123 min and one that carries on.
    expected = {"c1": (7, 5, 2, 0, 0), "c2": (7, 5, 2, 0, 0), "c3": (7, 5, 2, 0, 0), "c4": (8, 5, 2, 0, 1)}
    minutes = {"c1": "0.01", "c2": "0.01", "c3": "0.01", "c4": "0.01", "c5": "7.123", "c6": "0.0137"}
    exact = Decimal(0)
    for sid, q in minutes.items():
        result = session_report(ledger, org_id, sid, q)
        charge = result.charge
        exact += charge.cost
        assert result.charged and result.entry is not None and result.session_id == sid
        row = session_row(engine, account_id, sid)
        parts = (row["cost_base"], row["cost_llm"], row["cost_stt"], row["cost_tts"])
        assert row["ledger_entry_id"] == result.entry.id
        assert row["cost_total"] == -result.entry.amount_units == sum(parts)
        for got, name in zip(parts, ("base", "llm", "stt", "tts"), strict=True):
            assert abs(got - charge.breakdown[name] * UNITS_PER_CREDIT) < 1, (sid, name)
        if sid in expected:
            assert (row["cost_total"], *parts) == expected[sid]
    assert_exact(engine, account_id, {"voice_pipeline": exact})


def test_a_session_below_one_unit_is_kept_and_carried(engine, ledger, new_account):
    account_id = new_account(Decimal(1))
    org_id = org_of(engine, account_id)
    tiny = session_report(ledger, org_id, "short-1", "0.001")  # 0.73 units
    assert not tiny.charged and tiny.entry is None and tiny.session_id == "short-1"
    assert session_row(engine, account_id, "short-1") == {
        "ledger_entry_id": None,
        "cost_base": 0,
        "cost_llm": 0,
        "cost_stt": 0,
        "cost_tts": 0,
        "cost_total": 0,
    }
    again = session_report(ledger, org_id, "short-1", "0.001")
    assert again.replayed and not again.charged
    second = session_report(ledger, org_id, "short-2", "0.001")  # 1.46 units: one, and it goes to base (0.5)
    assert second.entry is not None and second.entry.amount_units == -1
    assert session_row(engine, account_id, "short-2")["cost_base"] == 1
    assert session_row(engine, account_id, "short-2")["cost_total"] == 1
    assert_exact(engine, account_id, {"voice_pipeline": Decimal("0.000146")})


def test_another_operation_reported_with_a_session_keeps_only_its_total(engine, ledger, new_account):
    account_id = new_account(Decimal(1))
    org_id = org_of(engine, account_id)
    result = record_usage(
        ledger,
        org_id,
        operation="sms_twilio",
        quantity=Decimal(2),
        status="completed",
        idempotency_key="sms-of-a-call",
        markup_percent=MARKUP,
        session=SessionInfo(id="call-with-sms"),
    )
    assert result.entry is not None and result.entry.amount_units == -180
    row = session_row(engine, account_id, "call-with-sms")
    assert row == {
        "ledger_entry_id": result.entry.id,
        "cost_base": 0,
        "cost_llm": 0,
        "cost_stt": 0,
        "cost_tts": 0,
        "cost_total": 180,
    }


def _remainder(engine, account_id: int, operation: str) -> Decimal:
    with engine.connect() as conn:
        text = conn.execute(
            sa.text("SELECT remainder FROM usage_remainder WHERE account_id = :a AND operation = :o"),
            {"a": account_id, "o": operation},
        ).scalar_one()
    return Decimal(text)


@pytest.mark.parametrize("row_exists", [False, True], ids=["first-report", "carried-remainder"])
def test_postgres_a_second_report_waits_for_the_first_on_the_remainder_row(pg_url, row_exists):
    """Report A has read and locked the remainder and is held there; report B, on another connection,
    must wait for it (seen waiting on a lock in pg_stat_activity), then build on A's remainder."""
    engine = make_engine(pg_url)
    watcher = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    ledger = Ledger(engine, grace_limit=GRACE)
    org = create_organization(engine, ledger, f"race-{uuid.uuid4().hex[:8]}", welcome_credit=Decimal(1))
    account_id = account_id_for(engine, org.id)
    tokens = Decimal(400)  # 0.72 units each: alone, every one rounds to nothing
    cost = price("openai_input_tokens", tokens, markup_percent=MARKUP, model="gpt-4o-mini").cost
    reports = 2
    if row_exists:
        report(ledger, org.id, "warm-up", tokens)
        reports += 1
    a_holds_the_lock, release_a = threading.Event(), threading.Event()

    def pause_a(conn, cursor, statement, parameters, context, executemany):
        if threading.current_thread().name == "report-A" and "usage_remainder" in statement:
            if "FOR UPDATE" in statement:  # A has read the remainder and holds its row
                a_holds_the_lock.set()
                assert release_a.wait(30)

    sa.event.listen(engine, "after_cursor_execute", pause_a)
    results: dict[str, object] = {}

    def run(name: str) -> None:
        try:
            results[name] = report(ledger, org.id, f"race-{name}", tokens)
        except BaseException as exc:  # surfaced by the asserts below
            results[name] = exc

    a = threading.Thread(target=run, args=("A",), name="report-A")
    b = threading.Thread(target=run, args=("B",), name="report-B")
    try:
        a.start()
        assert a_holds_the_lock.wait(10), "report A never locked the remainder row"
        b.start()
        waiting = waiting_on_a_lock(watcher, "usage_remainder")
        assert waiting == 1, "report B did not wait on the remainder row"
        assert b.is_alive() and "B" not in results  # B is still queued behind A
    finally:
        release_a.set()
        for t in (a, b):
            if t.ident is not None:  # started
                t.join(30)
        sa.event.remove(engine, "after_cursor_execute", pause_a)
    try:
        assert not isinstance(results["A"], BaseException), results["A"]
        assert not isinstance(results["B"], BaseException), results["B"]
        exact = cost * reports
        assert_exact(engine, account_id, {"openai_input_tokens": exact})
        assert _remainder(engine, account_id, "openai_input_tokens") == exact - Decimal(floor_units(exact)) / 10_000
        # the lost update this prevents: both reading 0.72 (or 0) and B charging nothing
        assert floor_units(exact) == reports - 1
    finally:
        engine.dispose()
        watcher.dispose()


THREADS = 20
REPORTS_PER_THREAD = 10
SHARED_KEYS = 5


def test_twenty_concurrent_reporters_end_at_the_floor_of_the_exact_sum(engine, new_account):
    """Each thread has its own Ledger (on SQLite they contend in the database, through BEGIN IMMEDIATE),
    reports its own keys and also races every other thread on a few shared keys."""
    account_id = new_account(Decimal(10))
    org_id = org_of(engine, account_id)
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []
    charged: list[int] = []

    def reporter(n: int) -> None:
        ledger = Ledger(engine, grace_limit=GRACE)
        try:
            barrier.wait()
            for i in range(REPORTS_PER_THREAD):
                result = report(ledger, org_id, f"t{n}-{i}")
                if result.entry is not None and not result.entry.replayed:
                    charged.append(-result.entry.amount_units)
                if i < SHARED_KEYS:
                    shared = report(ledger, org_id, f"shared-{(n + i) % SHARED_KEYS}")
                    if shared.entry is not None and not shared.entry.replayed:
                        charged.append(-shared.entry.amount_units)
        except BaseException as exc:  # a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=reporter, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and not any(t.is_alive() for t in threads)
    exact = TOKEN_COST * (THREADS * REPORTS_PER_THREAD + SHARED_KEYS)  # 205 x 0.4986 = 102.213 units
    assert sum(charged) == floor_units(exact) == 102
    assert_exact(engine, account_id, {"openai_input_tokens": exact})
    assert state(engine, account_id)["uncharged_keys"] == THREADS * REPORTS_PER_THREAD + SHARED_KEYS - 102


@pytest.mark.parametrize("second_via", ["report", "batch"])
@pytest.mark.parametrize("first", ["uncharged", "charged"])
def test_postgres_one_key_reused_for_two_operations_at_once_is_recorded_once(pg_url, first, second_via):
    """The same idempotency key sent at once for two operations (a client's bug): each operation has its
    own remainder row, so only the key's lock makes the second wait. It then finds the first's record and
    is refused as a conflict: one report recorded, whichever charged, never both (one charged and the
    other carried as uncharged). The second comes alone or in a batch (which takes the same locks)."""
    engine = make_engine(pg_url)
    watcher = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    ledger = Ledger(engine, grace_limit=GRACE)
    org = create_organization(engine, ledger, f"reuse-{uuid.uuid4().hex[:8]}", welcome_credit=Decimal(1))
    account_id = account_id_for(engine, org.id)
    tiny = {"operation": "openai_input_tokens", "tokens": TOKENS}  # below one unit: recorded uncharged
    sms = {"operation": "sms_twilio", "tokens": Decimal(3)}  # charged
    a_args, b_args = (tiny, sms) if first == "uncharged" else (sms, tiny)
    a_holds_the_lock, release_a = threading.Event(), threading.Event()

    def pause_a(conn, cursor, statement, parameters, context, executemany):
        if (
            threading.current_thread().name == "report-A"
            and "usage_remainder" in statement
            and "FOR UPDATE" in statement
        ):
            a_holds_the_lock.set()  # A holds its key's lock and its remainder row, has checked nothing yet
            assert release_a.wait(30)

    def run(name: str, args: dict) -> None:
        try:
            if name == "B" and second_via == "batch":
                event = UsageEvent(args["operation"], args["tokens"], "completed", "reused-key", model="gpt-4o-mini")
                (result,) = record_usage_batch(ledger, org.id, [event], markup_percent=MARKUP)
                assert result.status == "refused", result
                results[name] = result.error
            else:
                results[name] = report(ledger, org.id, "reused-key", args["tokens"], operation=args["operation"])
        except BaseException as exc:  # surfaced by the asserts below
            results[name] = exc

    sa.event.listen(engine, "after_cursor_execute", pause_a)
    results: dict[str, object] = {}
    a = threading.Thread(target=run, args=("A", a_args), name="report-A")
    b = threading.Thread(target=run, args=("B", b_args), name="report-B")
    try:
        a.start()
        assert a_holds_the_lock.wait(10), "report A never locked its remainder row"
        b.start()
        waiting = waiting_on_a_lock(watcher, "pg_advisory_xact_lock")
        assert waiting == 1, "report B did not wait on the key's lock"
        assert b.is_alive() and "B" not in results
    finally:
        release_a.set()
        for t in (a, b):
            if t.ident is not None:
                t.join(30)
        sa.event.remove(engine, "after_cursor_execute", pause_a)
    try:
        assert not isinstance(results["A"], BaseException), results["A"]
        assert isinstance(results["B"], IdempotencyConflict), results["B"]
        with engine.connect() as conn:
            entries = conn.execute(
                sa.text(
                    "SELECT COUNT(*) FROM ledger_entry WHERE account_id = :a AND idempotency_key = 'usage:reused-key'"
                ),
                {"a": account_id},
            ).scalar_one()
            uncharged = conn.execute(
                sa.text("SELECT COUNT(*) FROM usage_report WHERE account_id = :a AND idempotency_key = 'reused-key'"),
                {"a": account_id},
            ).scalar_one()
        assert (entries, uncharged) == ((0, 1) if first == "uncharged" else (1, 0))
        with engine.connect() as conn:
            assert check_invariants(conn, account_id) == []
    finally:
        engine.dispose()
        watcher.dispose()
