"""The ledger's contract, on SQLite and on PostgreSQL (the `engine` fixture runs both)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from orcapulse_billing.ledger import (
    AccountNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidPosting,
    Posting,
    check_invariants,
    get_account,
)


def _account(engine, account_id):
    with engine.connect() as conn:
        return get_account(conn, account_id=account_id)


def _entries(engine, account_id):
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT seq, type, source, amount, balance_before, balance_after FROM ledger_entry "
                "WHERE account_id = :a ORDER BY seq"
            ),
            {"a": account_id},
        ).all()


def _assert_sound(engine, account_id):
    with engine.connect() as conn:
        assert check_invariants(conn, account_id) == []


def test_welcome_credit_is_a_bonus_from_source_welcome(engine, new_account):
    account_id = new_account(welcome=Decimal("5.00"))
    (entry,) = _entries(engine, account_id)
    assert entry.type == "bonus" and entry.source == "welcome" and entry.amount == 50_000
    assert _account(engine, account_id).balance == Decimal("5.0000")
    _assert_sound(engine, account_id)


def test_credit_then_debit_moves_balance_and_aggregates(engine, ledger, new_account):
    account_id = new_account()
    credit = ledger.post(
        Posting(
            account_id,
            "purchase",
            Decimal("50"),
            "Credit top-up via Stripe - $50.00",
            metadata={"provider": "stripe"},
            actor_user_id=None,
            actor_ip="203.0.113.9",
        )
    )
    debit = ledger.post(
        Posting(
            account_id, "usage", Decimal("-0.1523"), "Voice call session - agent_abc123 - 3.5 min", category="ai_call"
        )
    )
    assert (credit.seq, credit.balance_before, credit.balance_after) == (1, Decimal(0), Decimal("50.0000"))
    assert credit.source == "purchase" and credit.actor_ip == "203.0.113.9"
    assert credit.metadata == {"provider": "stripe"}
    assert credit.created_at.tzinfo is not None
    assert (debit.seq, debit.balance_before, debit.balance_after) == (2, Decimal("50.0000"), Decimal("49.8477"))
    assert debit.source is None and debit.category == "ai_call"
    acct = _account(engine, account_id)
    assert acct.balance == Decimal("49.8477")
    assert (acct.lifetime_added_units, acct.lifetime_consumed_units, acct.transaction_count) == (500_000, 1523, 2)
    assert acct.version == 2
    _assert_sound(engine, account_id)


def test_amounts_round_half_up_at_posting(ledger, new_account):
    account_id = new_account()
    ledger.post(Posting(account_id, "bonus", Decimal("1"), "start"))
    entry = ledger.post(
        Posting(
            account_id,
            "usage",
            Decimal("0.0168") * Decimal("3.5") * -1 - Decimal("0.00001"),
            "call",
            category="ai_call",
        )
    )
    # 0.0588 + 0.00001 = 0.05881 -> 0.0588; half-up on an exact half:
    assert entry.amount == Decimal("-0.0588")
    half = ledger.post(Posting(account_id, "usage", Decimal("-0.00005"), "tiny", category="email"))
    assert half.amount == Decimal("-0.0001")


def test_idempotent_replay_returns_first_entry_and_changes_nothing(engine, ledger, new_account):
    account_id = new_account()
    first = ledger.post(Posting(account_id, "purchase", "20", "top-up", idempotency_key="cs_123"))
    before = _account(engine, account_id)
    again = ledger.post(Posting(account_id, "purchase", "20", "top-up", idempotency_key="cs_123"))
    assert again.replayed and not first.replayed
    assert again.id == first.id and again.balance_after == first.balance_after
    assert _account(engine, account_id) == before


def test_text_beyond_ascii_is_stored_and_replayed_as_sent(engine, ledger, new_account):
    """Descriptions, categories, metadata and keys go to PostgreSQL's ledger functions as JSON text: accents,
    emoji, quotes and control characters come back exactly, in the entry, its replay and the rows."""
    account_id = new_account()
    ledger.post(Posting(account_id, "purchase", "5", "top-up"))
    text = 'Café ☕ "quoted" \\ tab\there, ligne\nsuivante, 日本語 \U0001f680'
    metadata = {"note": text, "nested": {"ünïcode": ["é", 1, None, True]}}
    posted = [
        ledger.post(
            Posting(account_id, "usage", "-0.5", text, category="ümlaut", metadata=metadata, idempotency_key=key)
        )
        for key in (f"clé-{n}-☕" for n in range(2))
    ]
    again = ledger.post(
        Posting(account_id, "usage", "-0.5", text, category="ümlaut", metadata=metadata, idempotency_key="clé-0-☕")
    )
    assert again.replayed and again.id == posted[0].id
    for entry in [*posted, again]:
        assert (entry.description, entry.category, entry.metadata) == (text, "ümlaut", metadata)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT description, category, idempotency_key FROM ledger_entry WHERE account_id = :a AND seq > 1"
            ),
            {"a": account_id},
        ).all()
    assert sorted(tuple(r) for r in rows) == [(text, "ümlaut", "clé-0-☕"), (text, "ümlaut", "clé-1-☕")]
    _assert_sound(engine, account_id)


def test_same_key_other_parameters_is_a_conflict(engine, ledger, new_account):
    account_id = new_account()
    ledger.post(Posting(account_id, "purchase", "20", "top-up", idempotency_key="k1"))
    before = _account(engine, account_id)
    with pytest.raises(IdempotencyConflict):
        ledger.post(Posting(account_id, "purchase", "21", "top-up", idempotency_key="k1"))
    with pytest.raises(IdempotencyConflict):
        ledger.post(Posting(account_id, "bonus", "20", "top-up", idempotency_key="k1"))
    assert _account(engine, account_id) == before


def test_replay_of_a_debit_succeeds_even_when_the_balance_could_no_longer_pay(engine, ledger, new_account):
    account_id = new_account()
    ledger.post(Posting(account_id, "bonus", "1", "start"))
    first = ledger.post(Posting(account_id, "usage", "-5.5", "big call", category="ai_call", idempotency_key="u1"))
    assert first.balance_after == Decimal("-4.5000")
    again = ledger.post(Posting(account_id, "usage", "-5.5", "big call", category="ai_call", idempotency_key="u1"))
    assert again.replayed and again.id == first.id


def test_floor_refuses_the_debit_and_writes_nothing(engine, ledger, new_account):
    account_id = new_account()
    ledger.post(Posting(account_id, "bonus", "1", "start"))
    ledger.post(Posting(account_id, "usage", "-6", "into grace", category="ai_call"))  # -5.0000 exactly: allowed
    before = _account(engine, account_id)
    assert before.balance == Decimal("-5.0000")
    with pytest.raises(InsufficientCredits) as err:
        ledger.post(Posting(account_id, "usage", "-0.0001", "one more", category="ai_call"))
    assert err.value.balance == Decimal("-5.0000") and err.value.floor == Decimal("-5.0000")
    assert _account(engine, account_id) == before
    # A caller-chosen floor (zero: "no new operations at or below zero")
    ledger.post(Posting(account_id, "purchase", "10", "top-up"))
    with pytest.raises(InsufficientCredits):
        ledger.post(Posting(account_id, "usage", "-5.0001", "too much", category="sms", floor=Decimal(0)))
    # Credits are never refused by a floor.
    _assert_sound(engine, account_id)


def test_post_many_is_all_or_nothing(engine, ledger, new_account):
    account_id = new_account()
    before = _account(engine, account_id)
    with pytest.raises(InsufficientCredits):
        ledger.post_many(
            [
                Posting(account_id, "purchase", "1", "ok"),
                Posting(account_id, "usage", "-100", "refused", category="sms"),
            ]
        )
    assert _account(engine, account_id) == before
    purchase, bonus = ledger.post_many(
        [
            Posting(account_id, "purchase", "1000", "Credit top-up - $1,000.00", idempotency_key="p"),
            Posting(account_id, "bonus", "100", "Volume bonus - 10%", idempotency_key="p:bonus"),
        ]
    )
    assert (purchase.seq, bonus.seq) == (1, 2) and bonus.balance_after == Decimal("1100.0000")
    _assert_sound(engine, account_id)


def test_post_in_commits_with_the_callers_transaction(engine, ledger, new_account):
    account_id = new_account()
    with pytest.raises(RuntimeError):
        with ledger.transaction() as conn:
            ledger.post_in(conn, Posting(account_id, "purchase", "5", "rolled back"))
            raise RuntimeError("the caller's other write failed")
    assert _account(engine, account_id).transaction_count == 0
    with ledger.transaction() as conn:
        entry = ledger.post_in(conn, Posting(account_id, "purchase", "5", "kept", idempotency_key="x"))
        replay = ledger.post_in(conn, Posting(account_id, "purchase", "5", "kept", idempotency_key="x"))
    assert replay.replayed and replay.id == entry.id
    assert _account(engine, account_id).balance == Decimal("5.0000")


@pytest.mark.parametrize(
    "posting, message",
    [
        (dict(type="gift", amount="1"), "unknown entry type"),
        (dict(type=["usage"], amount="-1"), "unknown entry type"),  # not even hashable
        (dict(type="dispute", amount="1"), "unknown credit source"),  # a credit without a source or a default
        (dict(type="adjustment", amount="1", source=["manual"]), "unknown credit source"),
        (dict(type="purchase", amount="-1"), "must be a credit"),
        (dict(type="bonus", amount="-1"), "must be a credit"),
        (dict(type="usage", amount="1"), "must be a debit"),
        (dict(type="usage", amount="0"), "must not be zero"),
        (dict(type="usage", amount="-0.00004"), "must not be zero"),
        (dict(type="purchase", amount=1.5), "never float"),
        (dict(type="purchase", amount="NaN"), "finite"),
        (dict(type="purchase", amount="1e12"), "out of range"),
        (dict(type="purchase", amount="1", description=""), "description"),
        (dict(type="purchase", amount="1", source="lottery"), "unknown credit source"),
        (dict(type="usage", amount="-1", source="purchase"), "only credits carry a source"),
    ],
)
def test_invalid_postings_are_refused_and_write_nothing(engine, ledger, new_account, posting, message):
    account_id = new_account()
    before = _account(engine, account_id)
    fields = {"description": "x", **posting}
    with pytest.raises(InvalidPosting, match=message):
        ledger.post(Posting(account_id=account_id, **fields))
    assert _account(engine, account_id) == before


def test_unknown_account(ledger):
    with pytest.raises(AccountNotFound):
        ledger.post(Posting(987654321, "usage", "-1", "nobody", category="sms"))


def test_backdated_entries_keep_their_timestamp(ledger, new_account):
    account_id = new_account()
    at = datetime(2026, 10, 1, 14, 30, tzinfo=UTC)
    entry = ledger.post(Posting(account_id, "purchase", "50", "old", created_at=at))
    assert entry.created_at == at


def test_history_and_usage_summary_queries(engine, ledger, new_account):
    """The read side on both databases: seq keyset pages, filters and the per-category summary."""
    from orcapulse_billing.history import HistoryQuery, history_page, iter_history, usage_summary

    account_id = new_account()
    ledger.post(Posting(account_id, "purchase", "100", "top-up"))
    for n in range(12):
        ledger.post(Posting(account_id, "usage", "-0.5", f"u{n}", category=("ai_call", "sms", None)[n % 3]))
    with engine.connect() as conn:
        page = history_page(conn, account_id, HistoryQuery(), page=2, page_size=10)
        assert (page.total, page.total_pages, [i.seq for i in page.items]) == (13, 2, [3, 2, 1])
        topups = history_page(conn, account_id, HistoryQuery("topup"), page=1, page_size=10)
        assert [i.description for i in topups.items] == ["top-up"] and topups.total == 1
        assert [i.seq for i in iter_history(conn, account_id, HistoryQuery("usage"), batch=5)] == list(range(13, 1, -1))
        summary = {(r.category, r.amount_units, r.count) for r in usage_summary(conn, account_id, None, None)}
    assert summary == {("ai_call", 20_000, 4), ("sms", 20_000, 4), ("other", 20_000, 4)}


def test_usage_summary_from_rollups_equals_a_scan_of_the_entries(engine, ledger, new_account):
    """Whole days come from the rollup, edges from the entries: any range must match a plain scan."""
    import random

    from orcapulse_billing.history import _entry_summary, usage_summary

    account_id = new_account()
    ledger.post(Posting(account_id, "purchase", "1000", "funds"))
    base = datetime(2026, 3, 1, tzinfo=UTC)
    rng = random.Random(7)
    for n in range(150):
        at = base + timedelta(minutes=rng.randint(0, 9 * 24 * 60))
        ledger.post(
            Posting(
                account_id,
                "usage",
                -Decimal(rng.randint(1, 5000)) / 10_000,
                f"u{n}",
                category=rng.choice(["ai_call", "sms", None]),
                created_at=at,
            )
        )
    far = datetime(2030, 1, 1, tzinfo=UTC)
    with engine.connect() as conn:
        for _ in range(25):
            start = base + timedelta(minutes=rng.randint(-600, 9 * 24 * 60))
            end = start + timedelta(minutes=rng.choice([30, 600, 1440, 2 * 1440 + 7, 5 * 1440]))
            for lo, hi in (
                (start, end),
                (None, end),
                (start, None),
                (base + timedelta(days=2), base + timedelta(days=5)),
            ):
                fast = {(r.category, r.amount_units, r.count) for r in usage_summary(conn, account_id, lo, hi)}
                slow = {
                    (c, int(a), int(n))
                    for c, a, n in _entry_summary(conn, account_id, lo or base - timedelta(days=1), hi or far)
                }
                assert fast == slow, (lo, hi)
        assert check_invariants(conn, account_id) == []
