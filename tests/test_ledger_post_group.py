"""PostgreSQL: `ledger_post_group` (migration 0019) writes exactly what `ledger_post` (0013) writes.

The set-based path for groups of plain debits must be the walk, posting for posting. Twin accounts
start from the same grants (classes, expiries, a debt); every group is posted to one twin through the
walk and to the other through `ledger_post_group`, and the results and everything written must be the
same: entries (seq, kind_seq, balances, metadata, ...), grant consumption (which grant, in burn order,
how much), the grants' remainders, the account aggregates and the usage rollups. Groups are random:
several accounts, keys and none, usage and adjustments, debits into debt; and groups that must leave the
set-based path (a key used before or twice, a refusal at the floor, a credit, a missing account) to show
that the fall-back gives the walk's answers too.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from orcapulse_billing.accounts import account_id_for, create_organization
from orcapulse_billing.db import make_engine
from orcapulse_billing.ledger import Ledger, Posting, check_invariants
from orcapulse_billing.ledger_write import Write, apply_writes

from .conftest import GRACE

BASE = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)
FLOOR = -50_000  # GRACE in units


@pytest.fixture(scope="module")
def pg(pg_url):
    engine = make_engine(pg_url)
    yield engine, Ledger(engine, grace_limit=GRACE)
    engine.dispose()


def _twins(engine, ledger: Ledger, count: int) -> list[tuple[int, int]]:
    """`count` pairs of accounts, each pair funded alike: a promotional grant that expires, a bonus, a
    purchase, and for every third pair a debt first."""
    pairs = []
    for n in range(count):
        pair = []
        for _ in range(2):
            org = create_organization(engine, ledger, f"twin-{uuid.uuid4().hex[:10]}", welcome_credit=Decimal(0))
            account = account_id_for(engine, org.id)
            if n % 3 == 2:
                ledger.post(
                    Posting(account, "usage", "-3.5", "into debt", category="sms", floor=Decimal(-10), created_at=BASE)
                )
            ledger.post(
                Posting(
                    account,
                    "bonus",
                    "2.5",
                    "promo",
                    source="promotional",
                    expires_at=BASE + timedelta(40),
                    created_at=BASE,
                )
            )
            ledger.post(Posting(account, "bonus", "1.25", "bonus", source="bonus", created_at=BASE))
            ledger.post(Posting(account, "purchase", str(50 + n), "credits", source="purchase", created_at=BASE))
            pair.append(account)
        pairs.append((pair[0], pair[1]))
    return pairs


def _debit(account: int, rng: random.Random, at: datetime, key: str | None) -> Write:
    usage = rng.random() < 0.8
    return Write(
        account_id=account,
        type="usage" if usage else "adjustment",
        kind="usage" if usage else "adjustment",
        source=None,
        amount=-rng.choice([1, 37, 1234, 5000, 12_345]),
        floor=FLOOR if rng.random() < 0.3 else -(10**12),
        description=rng.choice(["SMS", "Voice call", "Manual correction"]),
        category=rng.choice(["sms", "ai_call", None]) if usage else None,
        metadata={"operation": "sms_twilio", "n": str(rng.randint(1, 9))} if usage else {},
        actor_user_id=None,
        actor_ip=rng.choice([None, "10.1.2.3"]),
        idempotency_key=key,
        created_at=at,
        priority=2,
        expires_at=None,
        checkout_session_id=None,
        from_grant=None,
    )


def _group(pairs: list[tuple[int, int]], rng: random.Random, number: int, used: list[str]) -> list[Write]:
    """A group for the first twins; `_for(group, 1)` is the same group for the second."""
    at = BASE + timedelta(minutes=number)
    size = rng.choice([1, 2, 5, 17, 60])
    writes = []
    for n in range(size):
        key = f"g{number}-{n}" if rng.random() < 0.85 else None
        writes.append(_debit(rng.choice(pairs)[0], rng, at + timedelta(seconds=n % 3), key))
    shape = number % 6
    if shape == 1 and used:  # a key posted by an earlier group: a replay (or a conflict)
        old = rng.choice(used)
        writes.insert(rng.randrange(len(writes) + 1), _debit(pairs[0][0], rng, at, old))
    elif shape == 2:  # a key twice in the group
        writes.append(_debit(writes[0].account_id, rng, at, f"twice-{number}"))
        writes.append(_debit(writes[0].account_id, rng, at, f"twice-{number}"))
    elif shape == 3:  # a debit its floor refuses
        w = _debit(pairs[-1][0], rng, at, f"big-{number}")
        writes.insert(0, replace(w, amount=-(10**9), floor=FLOOR))
    elif shape == 4:  # a credit among the debits
        w = _debit(writes[-1].account_id, rng, at, f"credit-{number}")
        writes.append(replace(w, type="bonus", kind="topup", source="bonus", amount=20_000, priority=1))
    elif shape == 5 and number % 4 == 1:  # no such account
        writes.append(_debit(2_000_000_000, rng, at, f"orphan-{number}"))
    used.extend(w.idempotency_key for w in writes if w.idempotency_key)
    return writes


def _for(writes: list[Write], twin: dict[int, int]) -> list[Write]:
    return [replace(w, account_id=twin.get(w.account_id, w.account_id)) for w in writes]


def _results(applied) -> list[tuple]:
    return [
        (a.status, a.balance, a.written[1:] if a.written is not None else None)  # ids differ between twins
        + (tuple(v for k, v in a.entry.items() if k not in ("id", "account_id")) if a.entry is not None else ())
        for a in applied
    ]


def _written(conn, account: int) -> dict:
    """Everything the ledger wrote for `account`, without ids that differ between twins."""
    grants = conn.execute(
        sa.text(
            "SELECT id, source, priority, amount, remaining, expires_at FROM credit_grant WHERE account_id = :a ORDER BY id"
        ),
        {"a": account},
    ).all()
    place = {g.id: n for n, g in enumerate(grants)}
    consumption = conn.execute(
        sa.text(
            "SELECT e.seq, c.grant_id, c.amount FROM grant_consumption c JOIN ledger_entry e ON e.id = c.entry_id "
            "WHERE e.account_id = :a ORDER BY e.seq, c.grant_id"
        ),
        {"a": account},
    ).all()
    return {
        "entries": conn.execute(
            sa.text(
                "SELECT seq, kind, kind_seq, type, source, amount, balance_before, balance_after, description, "
                "category, metadata, actor_user_id, actor_ip, idempotency_key, created_at FROM ledger_entry "
                "WHERE account_id = :a ORDER BY seq"
            ),
            {"a": account},
        ).all(),
        "grants": [tuple(g)[1:] for g in grants],
        "consumption": [(seq, place[grant], amount) for seq, grant, amount in consumption],
        "account": conn.execute(
            sa.text(
                "SELECT balance, transaction_count, lifetime_added, lifetime_consumed, topup_count, usage_count, "
                "refund_count, adjustment_count, version, updated_at FROM credit_account WHERE id = :a"
            ),
            {"a": account},
        ).one(),
        "rollup": conn.execute(
            sa.text(
                "SELECT day, category, amount, count FROM usage_rollup WHERE account_id = :a ORDER BY day, category"
            ),
            {"a": account},
        ).all(),
    }


def test_the_set_based_path_writes_what_the_walk_writes(pg):
    engine, ledger = pg
    pairs = _twins(engine, ledger, 6)
    twin = dict(pairs)
    rng = random.Random(20270301)
    used: list[str] = []
    fast = 0
    for number in range(60):
        group = _group(pairs, rng, number, used)
        with engine.begin() as conn:
            walked = apply_writes(conn, group, pg_function="ledger_post")
        with engine.begin() as conn:
            grouped = apply_writes(conn, _for(group, twin), pg_function="ledger_post_group")
        assert _results(grouped) == _results(walked), f"group {number}"
        fast += all(a.status == "posted" for a in grouped)
    assert fast >= 20  # most groups took the set-based path (every posting posted)
    with engine.connect() as conn:
        for walk_account, group_account in pairs:
            assert _written(conn, group_account) == _written(conn, walk_account)
            assert check_invariants(conn, walk_account) == []
            assert check_invariants(conn, group_account) == []


def test_a_group_over_many_accounts_locks_them_in_order_and_ends_exact(pg):
    """Two threads post interleaved groups over the same accounts, in opposite orders of arrival:
    the rows are locked in id order by both, so neither deadlocks, and the books end exact."""
    engine, ledger = pg
    accounts = [a for a, _ in _twins(engine, ledger, 4)]
    errors: list[BaseException] = []
    posted: Counter[int] = Counter()

    def post(order: list[int], tag: str) -> None:
        rng = random.Random(tag)
        try:
            for n in range(25):
                group = [_debit(a, rng, BASE, f"{tag}-{n}-{a}") for a in order]
                with engine.begin() as conn:
                    applied = apply_writes(conn, group, pg_function="ledger_post_group")
                assert {a.status for a in applied} <= {"posted", "refused"}
                posted.update(w.account_id for w, a in zip(group, applied, strict=True) if a.status == "posted")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=post, args=(accounts, "up")),
        threading.Thread(target=post, args=(accounts[::-1], "down")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with engine.connect() as conn:
        for account in accounts:
            assert check_invariants(conn, account) == []
            count = conn.execute(
                sa.text("SELECT count(*) FROM ledger_entry WHERE account_id = :a AND idempotency_key LIKE '%-%-%'"),
                {"a": account},
            ).scalar()
            assert count == posted[account] > 0
