"""Bulk usage ingestion (metering_batch): a batch is exactly `record_usage` once per event, in order.

Each test runs on SQLite and PostgreSQL through the real ledger: a batch against the same reports made one
by one on a twin account (entries, balances, remainders, uncharged keys with their fingerprints, sessions,
rollups, grants, check_invariants), refusals and replays that leave the other events recorded, keys
repeated inside a batch, a batch sent twice, a posting the ledger refuses, a fixed number of statements
whatever the batch's size; on PostgreSQL concurrent batches and single reports on one account, and a key
posted by another transaction while a batch is being planned.
"""

from __future__ import annotations

import random
import threading
import uuid
import zlib
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from orcapulse_billing.accounts import account_id_for, create_organization
from orcapulse_billing.db import make_engine
from orcapulse_billing.ledger import IdempotencyConflict, InvalidPosting, Ledger, LedgerError, check_invariants
from orcapulse_billing.metering import MeteringError, SessionInfo, price, record_usage
from orcapulse_billing.metering_batch import BatchResult, UsageEvent, record_usage_batch
from orcapulse_billing.usage_remainders import KEY_LOCK_BUCKETS

from .conftest import GRACE
from .test_metering_exact import MARKUP, assert_exact, org_of, state, waiting_on_a_lock

TOKENS = "openai_input_tokens"
EARLIER, LATER = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)


def tokens(key: str, n: str = "277", model: str = "gpt-4o-mini", status: str = "completed") -> UsageEvent:
    return UsageEvent(TOKENS, Decimal(n), status, key, model=model)


def event(key: str, operation: str, quantity: str, session: str | None = None, **kw) -> UsageEvent:
    info = (
        SessionInfo(  # every column of its billing_session row (insert_many sends the rows as JSON on PostgreSQL)
            id=session,
            agent_id="agent_b",
            agent_name="Batch desk é’",
            started_at=datetime(2026, 1, 1, 9, 0, tzinfo=UTC),
            ended_at=datetime(2026, 1, 1, 9, 7, 30, tzinfo=UTC),
            transcript="Caller: hello\nAgent: ¿qué tal?",
            recording_url=f"https://recordings.example/{session}.mp3",
            analysis={"sentiment": "positive", "score": 0.5, "tags": ["a", "b"], "none": None},
        )
        if session
        else None
    )
    return UsageEvent(operation, Decimal(quantity), kw.pop("status", "completed"), key, session=info, **kw)


def one_by_one(ledger: Ledger, org_id: int, events: list[UsageEvent], markup: Decimal = MARKUP) -> list[tuple]:
    """`record_usage` per event, in order, each outcome as (status, units posted, error type, error text)."""
    outcomes = []
    for e in events:
        try:
            r = record_usage(
                ledger,
                org_id,
                operation=e.operation,
                quantity=e.quantity,
                status=e.status,
                idempotency_key=e.idempotency_key,
                markup_percent=markup,
                model=e.model,
                session=e.session,
                created_at=e.created_at,
            )
        except (MeteringError, LedgerError) as exc:
            outcomes.append(("refused", None, type(exc), str(exc)))
            continue
        status = "replayed" if r.replayed else "charged" if r.charged else "not_charged"
        outcomes.append((status, r.entry.amount_units if r.entry else None, None, None))
    return outcomes


def outcomes_of(results: list[BatchResult]) -> list[tuple]:
    return [
        (
            r.status,
            r.entry.amount_units if r.entry else None,
            type(r.error) if r.error else None,
            r.error and str(r.error),
        )
        for r in results
    ]


def exact_sums(events: list[UsageEvent], outcomes: list[tuple], into: dict[str, Decimal]) -> dict[str, Decimal]:
    """Adds the exact cost of every completed report that was recorded (charged, or carried) per operation."""
    for e, (status, *_rest) in zip(events, outcomes, strict=True):
        if e.status == "completed" and status in ("charged", "not_charged"):
            cost = price(e.operation, e.quantity, markup_percent=MARKUP, model=e.model).cost
            into[e.operation] = into.get(e.operation, Decimal(0)) + cost
    return into


def batch(ledger: Ledger, org_id: int, events: list[UsageEvent], markup: Decimal = MARKUP) -> list[BatchResult]:
    return record_usage_batch(ledger, org_id, events, markup_percent=markup, actor_user_id=None, actor_ip="10.0.0.9")


def books(engine, account_id: int) -> dict:
    """Everything usage writes for an account, without the ids and clocks that differ between two accounts."""
    q = {"a": account_id}
    with engine.connect() as conn:

        def rows(sql: str) -> list[tuple]:
            return [tuple(r) for r in conn.execute(sa.text(sql), q)]

        return {
            **{k: v for k, v in state(engine, account_id).items() if k != "version"},
            "entries": rows(
                "SELECT seq, kind_seq, type, amount, balance_before, balance_after, description, category, "
                "idempotency_key FROM ledger_entry WHERE account_id = :a ORDER BY seq"
            ),
            "metadata": [
                r[0]
                for r in conn.execute(
                    sa.select(sa.text("metadata"))
                    .select_from(sa.text("ledger_entry"))
                    .where(sa.text("account_id = :a"))
                    .order_by(sa.text("seq")),
                    q,
                )
            ],
            "remainder_text": rows("SELECT operation, remainder FROM usage_remainder WHERE account_id = :a ORDER BY 1"),
            "uncharged": rows("SELECT idempotency_key, fingerprint FROM usage_report WHERE account_id = :a ORDER BY 1"),
            "sessions": rows(
                "SELECT s.external_id, s.operation, s.agent_id, s.agent_name, s.architecture, s.duration_minutes, "
                "s.message_count, s.started_at, s.ended_at, s.transcript, s.recording_url, s.analysis, "
                "s.cost_base, s.cost_llm, s.cost_stt, s.cost_tts, s.cost_total, e.seq "
                "FROM billing_session s LEFT JOIN ledger_entry e ON e.id = s.ledger_entry_id "
                "WHERE s.account_id = :a ORDER BY 1"
            ),
            "rollup": rows("SELECT category, amount, count FROM usage_rollup WHERE account_id = :a ORDER BY 1"),
            "grants": rows("SELECT source, amount, remaining FROM credit_grant WHERE account_id = :a ORDER BY id"),
            "consumed": rows(
                "SELECT e.seq, c.amount FROM grant_consumption c JOIN ledger_entry e ON e.id = c.entry_id "
                "WHERE e.account_id = :a ORDER BY 1"
            ),
        }


def twins(engine, ledger, welcome: Decimal = Decimal(1)) -> tuple[int, int, int, int]:
    """Two fresh organizations alike: (batch org, its account, one-by-one org, its account)."""
    made = []
    for _ in range(2):
        org = create_organization(engine, ledger, f"twin-{uuid.uuid4().hex[:10]}", welcome_credit=welcome)
        made += [org.id, account_id_for(engine, org.id)]
    return made[0], made[1], made[2], made[3]


def mixed_events(n: int, seed: int) -> list[UsageEvent]:
    """Every kind of event: tiny token reports that carry, whole-unit charges, sessions of each architecture,
    failed operations, bad input (unknown operation and model, zero quantity, a fractional chat, a session
    ending before it starts), keys repeated inside the batch (the same report, and another one), sessions
    billed twice under two keys."""
    rng = random.Random(seed)
    events: list[UsageEvent] = []
    for i in range(n):
        # keys beyond plain ASCII, with what array and JSON syntax quote (PostgreSQL gets them as one JSON array)
        k = f"ev-{seed}-{i}" + ("", ' "q", \\b', "{x,y} NULL", "caf\u00e9 \u2713 \U0001f4de")[i % 4]
        roll = rng.random()
        if roll < 0.35:
            events.append(tokens(k, str(rng.choice([1, 7, 277, 400, 2000]))))
        elif roll < 0.45:
            events.append(event(k, "openai_output_tokens", str(rng.choice([3, 100, 999])), model="gpt-4o-mini"))
        elif roll < 0.55:
            events.append(event(k, rng.choice(["sms_twilio", "email", "whatsapp"]), str(rng.randint(1, 3))))
        elif roll < 0.65:
            events.append(event(k, "voice_pipeline", rng.choice(["0.001", "0.01", "1.5", "7.123"]), session=f"c-{i}"))
        elif roll < 0.70:
            events.append(event(k, "chat", str(rng.randint(1, 9)), session=f"chat-{i}"))
        elif roll < 0.75:
            events.append(tokens(k, status="failed"))
        elif roll < 0.80 and events:
            events.append(rng.choice(events))  # a repeat: the same report again
        elif roll < 0.84 and events:
            again = rng.choice(events)
            events.append(UsageEvent(again.operation, again.quantity + 1, "completed", again.idempotency_key))
        elif roll < 0.88:
            events.append(event(k, "voice_realtime", "0.5", session=f"c-{rng.randint(0, i)}"))  # maybe billed
        else:
            events.append(
                rng.choice(
                    [
                        event(k, "teleport", "1"),
                        tokens(k, model="gpt-unknown"),
                        tokens(k, "0"),
                        event(k, "chat", "1.5", session=f"chat-half-{i}"),
                        UsageEvent(
                            "voice_pipeline",
                            Decimal(1),
                            "completed",
                            k,
                            session=SessionInfo(id=f"backwards-{i}", started_at=LATER, ended_at=EARLIER),
                        ),
                        event(k, "sms_twilio", "1", status="unknown"),
                    ]
                )
            )
    return events


def test_a_batch_is_record_usage_once_per_event_in_order(engine, ledger):
    batch_org, batch_account, single_org, single_account = twins(engine, ledger)
    earlier = mixed_events(40, seed=1)  # reported before, one by one, on both accounts: the batch meets them
    first = one_by_one(ledger, batch_org, earlier)
    assert one_by_one(ledger, single_org, earlier) == first
    events = mixed_events(400, seed=2) + earlier[::3]
    expected = one_by_one(ledger, single_org, events)
    results = batch(ledger, batch_org, events)
    assert outcomes_of(results) == expected
    assert {s for s, *_ in expected} == {"charged", "not_charged", "replayed", "refused"}
    assert {t for _, _, t, _ in expected if t} == {MeteringError, IdempotencyConflict}
    assert books(engine, batch_account) == books(engine, single_account)
    assert_exact(engine, batch_account, exact_sums(events, expected, exact_sums(earlier, first, {})))
    for e, r in zip(events, results, strict=True):  # what record_usage would have returned, field by field
        if r.status != "refused":
            assert r.usage().session_id == (e.session.id if e.session and e.status == "completed" else None)


def test_refused_and_replayed_events_leave_the_others_recorded(engine, ledger, new_account):
    account_id = new_account(Decimal(1))
    org_id = org_of(engine, account_id)
    record_usage(
        ledger,
        org_id,
        operation="sms_twilio",
        quantity=Decimal(1),
        status="completed",
        idempotency_key="sms-before",
        markup_percent=MARKUP,
    )
    one_by_one(ledger, org_id, [event("call-before", "voice_pipeline", "1", session="call-1")])
    before = state(engine, account_id)
    results = batch(
        ledger,
        org_id,
        [
            event("sms-1", "sms_twilio", "2"),
            event("bad-op", "teleport", "1"),
            event("sms-before", "sms_twilio", "1"),  # replayed: the same report as before
            event("sms-before-other", "sms_twilio", "1", session="call-1"),  # that session was billed
            event("sms-before", "sms_twilio", "3"),  # the key again with another report: a conflict
            tokens("bad-model", model="gpt-0"),
            tokens("zero", "0"),
            tokens("failed", status="failed"),
            event("sms-2", "sms_twilio", "1"),
        ],
    )
    assert [r.status for r in results] == [
        "charged",
        "refused",
        "replayed",
        "refused",
        "refused",
        "refused",
        "refused",
        "not_charged",
        "charged",
    ]
    assert "unknown operation 'teleport'" in str(results[1].error)
    assert (
        results[2].entry is not None
        and results[2].entry.replayed
        and results[2].entry.idempotency_key == "usage:sms-before"
    )
    assert isinstance(results[3].error, MeteringError) and "already billed" in str(results[3].error)
    assert isinstance(results[4].error, IdempotencyConflict)
    assert "unknown OpenAI model" in str(results[5].error) and "positive" in str(results[6].error)
    assert results[7].entry is None and results[7].charge is not None
    sms = price("sms_twilio", Decimal(1), markup_percent=MARKUP).cost
    assert results[0].entry.amount_units == -int(2 * sms * 10_000) and results[8].entry.amount_units == -int(
        sms * 10_000
    )
    assert results[8].entry.balance_after_units == before["balance"] - int(3 * sms * 10_000)
    after = state(engine, account_id)
    assert after["transactions"] == before["transactions"] + 2 and after["invariants"] == []
    # the refused events wrote nothing: no remainder row for an operation only they used
    assert set(after["remainders"]) == {"sms_twilio", "voice_pipeline"}


def test_a_key_repeated_inside_one_batch(engine, ledger, new_account):
    account_id = new_account(Decimal(1))
    org_id = org_of(engine, account_id)
    results = batch(
        ledger,
        org_id,
        [
            event("sms", "sms_twilio", "1"),
            event("sms", "sms_twilio", "1"),  # the same report: replayed, with the first one's entry
            event("sms", "sms_twilio", "2"),  # another report under that key: refused
            tokens("tiny"),  # 0.4986 units: carried, not charged
            tokens("tiny"),  # replayed, still nothing to show
            tokens("tiny", "278"),  # another report under that key: refused
            tokens("tiny-2"),  # 0.9972 units: still carried (the repeats added nothing)
            event("bad", "teleport", "1"),  # refused for its input: its key stays unused...
            event("bad", "sms_twilio", "1"),  # ...so the next report under it is recorded
        ],
    )
    assert [r.status for r in results] == [
        "charged",
        "replayed",
        "refused",
        "not_charged",
        "replayed",
        "refused",
        "not_charged",
        "refused",
        "charged",
    ]
    assert results[1].entry == replace_replayed(results[0].entry)
    assert isinstance(results[2].error, IdempotencyConflict) and isinstance(results[5].error, IdempotencyConflict)
    assert results[4].entry is None
    s = state(engine, account_id)
    assert s["transactions"] == 1 + 2 and s["uncharged_keys"] == 2 and s["invariants"] == []
    assert s["remainders"]["openai_input_tokens"] == Decimal("0.00009972")


def replace_replayed(entry):
    from dataclasses import replace

    return replace(entry, replayed=True)


def test_sending_a_batch_again_changes_nothing(engine, ledger, new_account):
    account_id = new_account(Decimal(2))
    org_id = org_of(engine, account_id)
    events = mixed_events(200, seed=3)
    first = batch(ledger, org_id, events)
    before = books(engine, account_id)
    again = batch(ledger, org_id, events)
    assert books(engine, account_id) == before
    for e, one, two in zip(events, first, again, strict=True):
        if one.status in ("charged", "not_charged") and e.status == "completed":
            assert two.status == "replayed"
            assert (two.entry.id if two.entry else None) == (one.entry.id if one.entry else None)
        elif (
            one.status == "refused" and isinstance(one.error, MeteringError) and "already billed" not in str(one.error)
        ):
            assert two.status == "refused" and str(two.error) == str(one.error)  # bad input stays refused
        else:
            assert two.status in ("replayed", "refused", "not_charged")
    assert sum(r.status == "replayed" for r in again) > 100


def test_a_posting_the_ledger_refuses_is_refused_alone_and_the_carry_stays_exact(engine, ledger):
    """A cost past the ledger's largest posting (a billion credits) is refused by the ledger itself, after
    the batch planned the carries of the reports behind it: they are planned again without it."""
    markup = Decimal("1E10")  # a hundred-million-fold price: 1e9 tokens cost more than the ledger takes
    events = [tokens("a", "3"), tokens("huge", "1000000000"), tokens("b", "5"), tokens("c", "7"), tokens("huge", "1")]
    batch_org, batch_account, single_org, single_account = twins(engine, ledger)
    expected = one_by_one(ledger, single_org, events, markup)
    assert [(s, t) for s, _, t, _ in expected] == [
        ("charged", None),
        ("refused", InvalidPosting),
        ("charged", None),
        ("charged", None),
        ("charged", None),  # the refused report left its key unused
    ]
    results = batch(ledger, batch_org, events, markup)
    assert outcomes_of(results) == expected
    assert books(engine, batch_account) == books(engine, single_account)


def test_a_batch_takes_a_fixed_number_of_statements(engine, ledger, new_account):
    """The batch's own reads and writes (the ledger's postings aside) do not grow with its size."""
    org_id = org_of(engine, new_account(Decimal(1)))
    counts = []
    for size in (10, 1000):
        statements: list[str] = []

        def count(conn, cursor, statement, parameters, context, executemany, statements=statements):
            if "ledger_entry" not in statement or "SELECT ledger_entry.id" in statement:
                statements.append(statement)

        events = [
            event(f"s{size}-{i}", "voice_pipeline", "0.01", session=f"s{size}-{i}")
            if i % 3 == 0
            else tokens(f"t{size}-{i}")
            for i in range(size)
        ]
        sa.event.listen(engine, "before_cursor_execute", count)
        try:
            results = batch(ledger, org_id, events)
        finally:
            sa.event.remove(engine, "before_cursor_execute", count)
        assert {r.status for r in results} == {"charged", "not_charged"}
        counts.append(len([s for s in statements if not s.lstrip().upper().startswith(("SAVEPOINT", "RELEASE"))]))
    assert counts[0] == counts[1] <= 12, counts


@pytest.fixture
def pg(pg_url):
    engine = make_engine(pg_url)
    yield engine, Ledger(engine, grace_limit=GRACE)
    engine.dispose()


THREADS = 3
BATCHES, BATCH_SIZE, SINGLES = 5, 100, 40


def stream_event(key: str) -> UsageEvent:
    """The report a key always stands for (so every thread sending it sends the same report)."""
    n = int(key.rsplit("-", 1)[1])
    if n % 4 == 0:
        return event(key, "sms_twilio", "1")
    if n % 4 == 1:
        return event(key, "openai_output_tokens", "100", model="gpt-4o-mini")  # 0.72 units: carried
    return tokens(key, str(277 + n % 3))  # about half a unit: carried


def test_postgres_concurrent_batches_and_single_reports_on_one_account_end_exact(pg):
    """Batches and single reports race on one account and its remainders, and on shared keys (each sent
    by several threads, as a retrying platform would): every key is recorded once, no deadlock, and
    every operation is charged the floor of its exact sum."""
    engine, _ = pg
    org = create_organization(
        engine, Ledger(engine, grace_limit=GRACE), f"race-{uuid.uuid4().hex[:8]}", welcome_credit=Decimal(1)
    )
    account_id = account_id_for(engine, org.id)
    barrier = threading.Barrier(2 * THREADS)
    errors: list[BaseException] = []
    fresh: list[str] = []  # keys recorded (charged or carried) by some thread

    def batcher(n: int) -> None:
        ledger = Ledger(engine, grace_limit=GRACE)
        try:
            barrier.wait()
            for b in range(BATCHES):
                keys = [f"b{n}-{b}-{i}" for i in range(BATCH_SIZE - 20)] + [f"shared-{b * 20 + i}" for i in range(20)]
                random.Random(n * 100 + b).shuffle(keys)
                for key, result in zip(keys, batch(ledger, org.id, [stream_event(k) for k in keys]), strict=True):
                    assert result.status != "refused", result.error
                    if result.status != "replayed":
                        fresh.append(key)
        except BaseException as exc:
            errors.append(exc)

    def single(n: int) -> None:
        ledger = Ledger(engine, grace_limit=GRACE)
        try:
            barrier.wait()
            for i in range(SINGLES):
                key = f"shared-{(i * 7 + n) % (BATCHES * 20)}" if i % 2 else f"s{n}-{i}"
                if one_by_one(ledger, org.id, [stream_event(key)])[0][0] != "replayed":
                    fresh.append(key)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=batcher, args=(n,)) for n in range(THREADS)]
    threads += [threading.Thread(target=single, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and not any(t.is_alive() for t in threads)
    assert len(fresh) == len(set(fresh))  # each key recorded exactly once
    assert len(fresh) == THREADS * BATCHES * (BATCH_SIZE - 20) + BATCHES * 20 + THREADS * SINGLES // 2
    events = [stream_event(k) for k in fresh]
    assert_exact(engine, account_id, exact_sums(events, [("charged",)] * len(events), {}))
    with engine.connect() as conn:
        assert check_invariants(conn, account_id) == []


def test_postgres_a_session_billed_while_a_batch_plans_is_found_on_the_next_attempt(pg):
    """Another report (its own key, in a key-lock bucket the batch does not hold, and another operation,
    whose remainder the batch does not lock) bills one of the batch's sessions after the batch read them
    and before it wrote. The unique index on the session stops the attempt; the next one finds what was
    committed and the event is refused as `record_usage` would refuse it then, while the others are
    recorded. (A key of the batch cannot be recorded meanwhile: see the test below.)"""
    engine, ledger = pg
    org = create_organization(engine, ledger, f"plan-{uuid.uuid4().hex[:8]}", welcome_credit=Decimal(1))
    account_id = account_id_for(engine, org.id)
    ours, theirs = (
        event("k", "voice_pipeline", "1", session="call-9"),
        event("k2", "sms_twilio", "1", session="call-9"),
    )
    assert zlib.crc32(b"k2") % KEY_LOCK_BUCKETS not in {
        zlib.crc32(k) % KEY_LOCK_BUCKETS for k in (b"before", b"k", b"after")
    }
    # their operation is none of the batch's: they do not wait for its remainder locks
    events = [tokens("before", "2000"), ours, event("after", "whatsapp", "2")]
    warm = [UsageEvent(e.operation, e.quantity, e.status, f"warm-{n}", e.model) for n, e in enumerate(events)]
    batch(ledger, org.id, warm)  # the batch's remainder rows exist: it only locks them
    planned, go_on = threading.Event(), threading.Event()
    attempts: list[str] = []

    last_read = "FROM billing_session"

    def pause(conn, cursor, statement, parameters, context, executemany):
        if threading.current_thread().name == "batch" and last_read in statement:
            attempts.append(statement)
            if len(attempts) == 1:  # the first attempt has read everything it plans with
                planned.set()
                assert go_on.wait(30)

    sa.event.listen(engine, "after_cursor_execute", pause)
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["results"] = batch(ledger, org.id, events)
        except BaseException as exc:
            out["results"] = exc

    worker = threading.Thread(target=run, name="batch")
    try:
        worker.start()
        assert planned.wait(10), "the batch never read its keys"
        assert one_by_one(ledger, org.id, [theirs])[0][0] in ("charged", "not_charged")
    finally:
        go_on.set()
        worker.join(30)
        sa.event.remove(engine, "after_cursor_execute", pause)
    results = out["results"]
    assert isinstance(results, list), results
    assert len(attempts) == 2  # planned again once
    expected = one_by_one(ledger, org.id, [ours])[0]  # what record_usage answers now
    assert expected[0] == "refused"
    assert [r.status for r in results] == ["charged", "refused", "charged"]
    assert (type(results[1].error), str(results[1].error)) == expected[2:]
    with engine.connect() as conn:
        assert check_invariants(conn, account_id) == []


@pytest.mark.parametrize("meanwhile", ["posted", "carried"])
def test_postgres_a_report_of_a_batch_key_waits_for_the_batch_and_is_refused(pg, meanwhile):
    """A report that reuses one of a planning batch's keys under another operation (whose remainder the
    batch does not lock) waits on the key's lock until the batch commits, then finds the batch's record
    and is refused as a conflict: the key is recorded once, by the batch, in one attempt."""
    engine, ledger = pg
    org = create_organization(engine, ledger, f"plan-{uuid.uuid4().hex[:8]}", welcome_credit=Decimal(1))
    account_id = account_id_for(engine, org.id)
    ours, theirs = {
        "posted": (tokens("k", "2000"), event("k", "sms_twilio", "1")),
        "carried": (tokens("k", "1"), event("k", "openai_output_tokens", "3", model="gpt-4o-mini")),
    }[meanwhile]
    events = [tokens("before", "2000"), ours, event("after", "whatsapp", "2")]
    planned, go_on = threading.Event(), threading.Event()
    attempts: list[str] = []

    def pause(conn, cursor, statement, parameters, context, executemany):
        if threading.current_thread().name == "batch" and "FROM usage_report" in statement:
            attempts.append(statement)
            if len(attempts) == 1:  # the batch holds its keys' locks and has read everything it plans with
                planned.set()
                assert go_on.wait(30)

    sa.event.listen(engine, "after_cursor_execute", pause)
    out: dict[str, object] = {}

    def run_batch() -> None:
        try:
            out["batch"] = batch(ledger, org.id, events)
        except BaseException as exc:
            out["batch"] = exc

    def run_theirs() -> None:
        out["theirs"] = one_by_one(ledger, org.id, [theirs])[0]

    worker, other = threading.Thread(target=run_batch, name="batch"), threading.Thread(target=run_theirs)
    watcher = sa.create_engine(engine.url, isolation_level="AUTOCOMMIT")
    try:
        worker.start()
        assert planned.wait(10), "the batch never read its keys"
        other.start()
        waiting = waiting_on_a_lock(watcher, "pg_advisory_xact_lock")
        assert waiting == 1 and other.is_alive(), "the report did not wait for the batch's key"
    finally:
        go_on.set()
        worker.join(30)
        other.join(30)
        sa.event.remove(engine, "after_cursor_execute", pause)
        watcher.dispose()
    results = out["batch"]
    assert isinstance(results, list), results
    assert len(attempts) == 1 and [r.status for r in results] == [
        "charged",
        "charged" if meanwhile == "posted" else "not_charged",
        "charged",
    ]
    assert out["theirs"][0] == "refused" and out["theirs"][2] is IdempotencyConflict
    with engine.connect() as conn:
        assert check_invariants(conn, account_id) == []
