"""`check_invariants`: every way an account's row, entries, rollups and grants must agree.

Run by the tests after every step, by the benchmarks after every run, and by the CLI on demand.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .ledger import get_account
from .models import EntryType


def check_invariants(conn: Connection, account_id: int) -> list[str]:
    """Every way the account row and its entries must agree; returns the violations (empty = sound)."""
    acct = get_account(conn, account_id=account_id)
    total, count, max_seq, added, consumed = conn.execute(
        sa.text(
            "SELECT COALESCE(SUM(amount), 0), COUNT(*), COALESCE(MAX(seq), 0), "
            "COALESCE(SUM(CASE WHEN amount > 0 THEN amount ELSE 0 END), 0), "
            "COALESCE(SUM(CASE WHEN amount < 0 THEN -amount ELSE 0 END), 0) "
            "FROM ledger_entry WHERE account_id = :a"
        ),
        {"a": account_id},
    ).one()
    last_after = conn.execute(
        sa.text("SELECT balance_after FROM ledger_entry WHERE account_id = :a ORDER BY seq DESC LIMIT 1"),
        {"a": account_id},
    ).scalar()
    broken_chain = conn.execute(
        sa.text(
            "SELECT COUNT(*) FROM ledger_entry e JOIN ledger_entry p "
            "ON p.account_id = e.account_id AND p.seq = e.seq - 1 "
            "WHERE e.account_id = :a AND e.balance_before <> p.balance_after"
        ),
        {"a": account_id},
    ).scalar()
    kinds = conn.execute(
        sa.text("SELECT kind, COUNT(*), MAX(kind_seq) FROM ledger_entry WHERE account_id = :a GROUP BY kind"),
        {"a": account_id},
    ).all()
    counters: dict[str, int] = dict(
        conn.execute(
            sa.text(
                "SELECT 'topup', topup_count FROM credit_account WHERE id = :a UNION ALL "
                "SELECT 'usage', usage_count FROM credit_account WHERE id = :a UNION ALL "
                "SELECT 'refund', refund_count FROM credit_account WHERE id = :a UNION ALL "
                "SELECT 'adjustment', adjustment_count FROM credit_account WHERE id = :a"
            ),
            {"a": account_id},
        ).all()
    )
    usage_by_category = {
        r[0]: (int(r[1]), int(r[2]))
        for r in conn.execute(
            sa.text(
                "SELECT COALESCE(category, 'other'), SUM(-amount), COUNT(*) FROM ledger_entry "
                "WHERE account_id = :a AND kind = 'usage' GROUP BY COALESCE(category, 'other')"
            ),
            {"a": account_id},
        )
    }
    rollup_by_category = {
        r[0]: (int(r[1]), int(r[2]))
        for r in conn.execute(
            sa.text(
                "SELECT category, SUM(amount), SUM(count) FROM usage_rollup WHERE account_id = :a GROUP BY category"
            ),
            {"a": account_id},
        )
    }
    problems = []
    for kind, n, max_kind_seq in kinds:
        if counters.get(kind) != n or max_kind_seq != n:
            problems.append(f"{kind}: counter {counters.get(kind)}, entries {n}, max kind_seq {max_kind_seq}")
    if {k: v for k, v in counters.items() if v} != {k: n for k, n, _ in kinds}:
        problems.append(f"kind counters {counters} disagree with the entries")
    if usage_by_category != rollup_by_category:
        problems.append("the usage rollup disagrees with the usage entries")
    if acct.balance_units != total:
        problems.append(f"balance {acct.balance_units} != sum(amounts) {total}")
    if count and acct.balance_units != last_after:
        problems.append(f"balance {acct.balance_units} != last balance_after {last_after}")
    if acct.transaction_count != count or max_seq != count:
        problems.append(f"transaction_count {acct.transaction_count}, entries {count}, max seq {max_seq}")
    if acct.lifetime_added_units != added or acct.lifetime_consumed_units != consumed:
        problems.append("lifetime aggregates disagree with the entries")
    if broken_chain:
        problems.append(f"{broken_chain} entries whose balance_before is not the previous balance_after")
    return problems + _grant_problems(conn, account_id, acct.balance_units)


def _grant_problems(conn: Connection, account_id: int, balance: int) -> list[str]:
    """The grants agree with the balance and the entries, exactly:

    * balance == sum(remainders) - debt, where debt is what no grant covers: max(0, -balance);
      so the remainders add up to max(balance, 0);
    * each debit consumed exactly its covered part, min(-amount, max(balance_before, 0)), and an
      expiry only its own grant;
    * each credit made one grant of its amount, whose remainder started at the amount less the debt
      it paid (min(amount, max(0, -balance_before))) and went down only by what debits consumed;
    * a grant marked expired has nothing left.

    Entries posted before grants existed (an account migrated by 0010) are not held to the
    per-entry rules: those start at the account's first entry with a grant or a consumption."""
    entries = {
        r[0]: r
        for r in conn.execute(
            sa.text(
                "SELECT id, seq, type, amount, balance_before FROM ledger_entry WHERE account_id = :a ORDER BY seq"
            ),
            {"a": account_id},
        )
    }
    grants = conn.execute(
        sa.text(
            "SELECT id, entry_id, amount, remaining, expired_at FROM credit_grant WHERE account_id = :a ORDER BY id"
        ),
        {"a": account_id},
    ).all()
    consumptions = conn.execute(
        sa.text(
            "SELECT c.entry_id, c.grant_id, c.amount FROM grant_consumption c "
            "JOIN credit_grant g ON g.id = c.grant_id WHERE g.account_id = :a"
        ),
        {"a": account_id},
    ).all()
    problems = []
    remaining_total = sum(g[3] for g in grants)
    if remaining_total != max(balance, 0):
        problems.append(f"grant remainders {remaining_total} != balance {balance} plus debt {max(0, -balance)}")
    used_by_entry: dict[int, int] = {}
    used_of_grant: dict[int, int] = {}
    grants_of_entry: dict[int, list[int]] = {}
    for entry_id, grant_id, amount in consumptions:
        if amount <= 0 or entry_id not in entries or entries[entry_id][3] >= 0:
            problems.append(f"consumption of {amount} by entry {entry_id} from grant {grant_id} is not a debit's")
        used_by_entry[entry_id] = used_by_entry.get(entry_id, 0) + amount
        used_of_grant[grant_id] = used_of_grant.get(grant_id, 0) + amount
        grants_of_entry.setdefault(entry_id, []).append(grant_id)
    grant_of_entry: dict[int, Any] = {}
    for g in grants:
        grant_id, entry_id, amount, remaining, expired_at = g
        if entry_id is not None:
            if entry_id in grant_of_entry or entry_id not in entries:
                problems.append(f"grant {grant_id}: entry {entry_id} has another grant or is not this account's")
            grant_of_entry[entry_id] = g
        paid_debt = 0
        if entry_id in entries:
            credit, before = entries[entry_id][3], entries[entry_id][4]
            if credit != amount:
                problems.append(f"grant {grant_id} of {amount} for a credit of {credit}")
            paid_debt = min(amount, max(0, -before))
        if amount - remaining != paid_debt + used_of_grant.get(grant_id, 0):
            problems.append(
                f"grant {grant_id}: {amount} - remaining {remaining} != debt paid {paid_debt} "
                f"+ consumed {used_of_grant.get(grant_id, 0)}"
            )
        if expired_at is not None and remaining:
            problems.append(f"grant {grant_id} expired with {remaining} left")
    tracked = [seq for entry_id, seq, *_ in entries.values() if entry_id in grant_of_entry or entry_id in used_by_entry]
    start = min(tracked, default=None)
    for entry_id, seq, entry_type, amount, before in entries.values():
        if start is None or seq < start:
            continue
        if amount > 0 and entry_id not in grant_of_entry:
            problems.append(f"credit entry {entry_id} made no grant")
        if amount < 0:
            covered = min(-amount, max(before, 0))
            if used_by_entry.get(entry_id, 0) != covered:
                problems.append(f"debit {entry_id} consumed {used_by_entry.get(entry_id, 0)}, covered {covered}")
            if entry_type == EntryType.expiry.value and len(grants_of_entry.get(entry_id, [])) != 1:
                problems.append(f"expiry {entry_id} consumed {grants_of_entry.get(entry_id)}, not one grant")
    return problems
