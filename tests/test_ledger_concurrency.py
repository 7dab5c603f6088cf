"""Parallel writers on one account, on SQLite and PostgreSQL.

Each thread has its own Ledger (so on SQLite they contend in the database, through BEGIN IMMEDIATE
and the busy timeout, not on one Python lock). Afterwards the ledger must be exactly what the
successful postings say: no lost update, no pass of the floor, each shared key posted once.
"""

from __future__ import annotations

import random
import threading
from decimal import Decimal

import sqlalchemy as sa

from orcapulse_billing.ledger import InsufficientCredits, Ledger, Posting, check_invariants, get_account
from orcapulse_billing.money import to_units

from .conftest import GRACE

WRITERS = 8
POSTINGS_PER_WRITER = 60
SHARED_KEYS = 20


def test_eight_concurrent_writers_on_one_account(engine, new_account):
    account_id = new_account()
    Ledger(engine, grace_limit=GRACE).post(Posting(account_id, "purchase", "3", "seed money"))
    barrier = threading.Barrier(WRITERS)
    results: list[list] = [[] for _ in range(WRITERS)]
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        ledger = Ledger(engine, grace_limit=GRACE)
        rng = random.Random(n)
        barrier.wait()
        try:
            for i in range(POSTINGS_PER_WRITER):
                if i % 3 == 0:
                    # every writer races to post the same keyed credits
                    k = (i // 3) % SHARED_KEYS
                    p = Posting(
                        account_id, "purchase", Decimal(k + 1) / 4, f"shared {k}", idempotency_key=f"shared-{k}"
                    )
                elif rng.random() < 0.1:
                    p = Posting(account_id, "bonus", Decimal(rng.randint(1, 300)) / 100, "bonus")
                else:
                    p = Posting(
                        account_id, "usage", -Decimal(rng.randint(1, 90_000)) / 10_000, "usage", category="ai_call"
                    )
                try:
                    results[n].append(ledger.post(p))
                except InsufficientCredits:
                    results[n].append(None)
        except BaseException as exc:  # surfaced below; a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    posted = [e for r in results for e in r if e is not None]
    refused = sum(1 for r in results for e in r if e is None)
    new = [e for e in posted if not e.replayed]
    assert refused > 0, "the test should push some debits into the floor"
    with engine.connect() as conn:
        assert check_invariants(conn, account_id) == []
        acct = get_account(conn, account_id=account_id)
        rows = conn.execute(
            sa.text("SELECT id, amount, balance_after, idempotency_key FROM ledger_entry WHERE account_id = :a"),
            {"a": account_id},
        ).all()
    assert acct.transaction_count == len(new) + 1 == len(rows)
    assert acct.balance_units == to_units(Decimal(3)) + sum(e.amount_units for e in new)
    assert min(r.balance_after for r in rows) >= to_units(-GRACE)
    keys = [r.idempotency_key for r in rows if r.idempotency_key]
    assert sorted(keys) == sorted(f"shared-{k}" for k in range(SHARED_KEYS))
    # every replay handed back the one entry that was written for its key
    by_key = {r.idempotency_key: r.id for r in rows if r.idempotency_key}
    assert all(e.id == by_key[e.idempotency_key] for e in posted if e.idempotency_key)
