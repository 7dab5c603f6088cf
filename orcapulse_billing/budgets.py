"""Spend budgets inside a usage posting's transaction: count the month's spend, alert once per
threshold, refuse what would pass a hard-stopped budget.

A budget (`spend_budget`) caps a calendar month's usage (UTC) of the organization, of one API key or
of one member; `budget_spend` holds each budget's spend per month ('YYYY-MM'), so a new month starts
from zero without a job. Every usage posting (metering, the batch, hold captures, phone rentals) passes
through a `BudgetGate` in its own transaction:

* A single posting (a report, a capture, a rental) is counted right after it is made (`count_posted`),
  when `ledger_post` holds the account row's lock (PostgreSQL; SQLite's `BEGIN IMMEDIATE` serialises all
  writers): the `budgeted` flag is read, and an account without budgets stops there, one primary-key
  read per posting, its concurrency unchanged. A posting that would take a hard-stopped budget past its
  amount raises `BudgetExceeded` and its whole transaction rolls back: nothing is written.
* A batch reads the flag first; with budgets it takes the account row's lock before it plans
  (`open_gate`), so that each event is judged, in order, on the spend of the ones before it; without,
  it plans as before and reads the flag again after posting, under the lock: a budget set meanwhile
  makes it plan again. Holds are checked before they reserve, under the same lock.
* With budgets, the gate loads them and the month's spend once, then `admit` checks each posting in
  memory (a hard-stopped budget refuses a posting that would take the month past it) and `flush` writes
  the new spends, the threshold alerts' webhook messages (the
  outbox) and, after the commit, their emails. Everything is decided under the row lock, so concurrent
  postings queue and each threshold (50, 80, 100 %) is crossed by exactly one of them: `alerted`
  records the highest one written for the month, and the email's and the message's dedupe keys
  (`budget:<id>:<month>:<threshold>`) keep even a repeat from sending twice.

Attribution: an entry counts for the organization's budget, for the budget of the API key that posted
it (`api_key_id` in the entry's metadata) and for the member whose key posted it (`actor_user_id`).

Plain Python and SQLAlchemy Core: nothing here imports Reflex.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import webhooks
from .db import as_utc, dialect_insert, one_of
from .ledger import LedgerError
from .models import BudgetSpend, SpendBudget
from .money import fmt4, fmt_balance

log = logging.getLogger(__name__)
THRESHOLDS = (50, 80, 100)
ORGANIZATION = "organization"
_budgets = cast(sa.Table, sa.inspect(SpendBudget).local_table)
_spend = cast(sa.Table, sa.inspect(BudgetSpend).local_table)
_FLAG = "SELECT organization_id, budgeted FROM credit_account WHERE id = :a"
_FLAG_LOCKED = _FLAG + " FOR NO KEY UPDATE"
_ORG_NAME = sa.text("SELECT name FROM organization WHERE id = :o")


class BudgetExceeded(LedgerError):
    """A hard-stopped budget refuses a posting (or a hold) that would take the month's spend past it."""

    code = "budget_exceeded"

    def __init__(self, budget: Budget, month: str, spent: int, amount: int):
        self.budget, self.month, self.spent, self.amount = budget, month, spent, amount
        super().__init__(
            f"the monthly spend budget of {budget.label} ({fmt_balance(budget.amount_units)}) would be passed: "
            f"{fmt_balance(spent)} spent in {month}, this needs {fmt_balance(amount)} more; an owner can raise "
            "the budget or turn its hard stop off"
        )


@dataclass(frozen=True)
class Budget:
    id: int
    organization_id: int
    account_id: int
    target: str  # 'organization' | 'api_key:<id>' | 'member:<user id>'
    api_key_id: int | None
    user_id: int | None
    amount_units: int
    hard_stop: bool

    @property
    def scope(self) -> str:
        return "api_key" if self.api_key_id is not None else "member" if self.user_id is not None else ORGANIZATION

    def fields(self) -> dict[str, Any]:
        """What the budget is, as the REST API and the webhooks say it (money as a decimal string)."""
        return {
            "scope": self.scope,
            "api_key_id": self.api_key_id,
            "user_id": self.user_id,
            "amount": fmt4(self.amount_units),
            "hard_stop": self.hard_stop,
        }

    @property
    def label(self) -> str:
        if self.api_key_id is not None:
            return f"API key {self.api_key_id}"
        if self.user_id is not None:
            return f"member {self.user_id}"
        return "the organization"


def budget_from(row: Any) -> Budget:
    m = row._mapping
    return Budget(
        m["id"],
        m["organization_id"],
        m["account_id"],
        m["target"],
        m["api_key_id"],
        m["user_id"],
        m["amount"],
        bool(m["hard_stop"]),
    )


def target_of(api_key_id: int | None = None, user_id: int | None = None) -> str:
    if api_key_id is not None:
        return f"api_key:{api_key_id}"
    if user_id is not None:
        return f"member:{user_id}"
    return ORGANIZATION


def month_of(moment: datetime) -> str:
    """The calendar month (UTC) a moment's spend counts in: 'YYYY-MM'."""
    return f"{as_utc(moment):%Y-%m}"


def reached(spent: int, amount: int) -> int:
    """The highest threshold (percent) `spent` has reached of `amount` (0: none)."""
    return max((t for t in THRESHOLDS if spent * 100 >= t * amount), default=0)


@dataclass
class _Month:
    spent: int
    alerted: int
    stored: bool  # a budget_spend row exists
    changed: bool = False


@dataclass
class Alert:
    budget: Budget
    month: str
    threshold: int
    spent: int


@dataclass
class BudgetGate:
    """The account's budgets for one posting transaction (which holds the account row's lock)."""

    conn: Connection
    organization_id: int
    budgets: list[Budget]
    months: dict[tuple[int, str], _Month] = field(default_factory=dict)

    def _matching(self, api_key_id: int | None, user_id: int | None) -> list[Budget]:
        targets = {ORGANIZATION, target_of(api_key_id=api_key_id), target_of(user_id=user_id)}
        return [b for b in self.budgets if b.target in targets]

    def _month(self, budget: Budget, month: str) -> _Month:
        if (budget.id, month) not in self.months:
            rows = self.conn.execute(
                sa.select(_spend.c.budget_id, _spend.c.spent, _spend.c.alerted).where(
                    one_of(self.conn, _spend.c.budget_id, [b.id for b in self.budgets]), _spend.c.month == month
                )
            ).all()
            found = {r.budget_id: r for r in rows}
            for b in self.budgets:
                r = found.get(b.id)
                self.months[(b.id, month)] = _Month(r.spent, r.alerted, True) if r else _Month(0, 0, False)
        return self.months[(budget.id, month)]

    def check(self, units: int, *, at: datetime, api_key_id: int | None, user_id: int | None) -> None:
        """Raises BudgetExceeded when `units` more would take a hard-stopped budget's month past it."""
        month = month_of(at)
        for budget in self._matching(api_key_id, user_id):
            state = self._month(budget, month)
            if budget.hard_stop and state.spent + units > budget.amount_units:
                raise BudgetExceeded(budget, month, state.spent, units)

    def admit(
        self, units: int, *, at: datetime, api_key_id: int | None, user_id: int | None, enforce: bool = True
    ) -> None:
        """Counts a posting of `units` (after `check` when `enforce`); written by `flush`."""
        if enforce:
            self.check(units, at=at, api_key_id=api_key_id, user_id=user_id)
        month = month_of(at)
        for budget in self._matching(api_key_id, user_id):
            state = self._month(budget, month)
            state.spent += units
            state.changed = True

    def flush(self) -> list[Alert]:
        """Writes the spends `admit` counted and the alerts they crossed (webhook messages now, emails
        after the commit); returns the alerts."""
        alerts: list[Alert] = []
        by_id = {b.id: b for b in self.budgets}
        for (budget_id, month), state in self.months.items():
            if not state.changed:
                continue
            budget = by_id[budget_id]
            level = reached(state.spent, budget.amount_units)
            for threshold in THRESHOLDS:
                if state.alerted < threshold <= level:
                    alerts.append(Alert(budget, month, threshold, state.spent))
            state.alerted = max(state.alerted, level)
            _store(self.conn, budget_id, month, state)
            state.changed = False
        for alert in alerts:
            webhooks.emit(
                self.conn, self.organization_id, "budget.threshold_reached", alert_data(alert), key=alert_key(alert)
            )
        if alerts:
            engine = self.conn.engine
            self.conn.info.setdefault("after_commit", []).append(lambda: email_alerts(engine, alerts))
        return alerts


def _store(conn: Connection, budget_id: int, month: str, state: _Month) -> None:
    values = {"spent": state.spent, "alerted": state.alerted}
    if state.stored:
        conn.execute(sa.update(_spend).where(_spend.c.budget_id == budget_id, _spend.c.month == month).values(values))
    else:
        conn.execute(sa.insert(_spend).values(budget_id=budget_id, month=month, **values))
        state.stored = True


def is_budgeted(conn: Connection, account_id: int) -> bool:
    """The account's `budgeted` flag (no lock)."""
    row = conn.execute(sa.text(_FLAG), {"a": account_id}).first()
    return bool(row is not None and row.budgeted)


def open_gate(conn: Connection, account_id: int, *, lock: bool = True) -> BudgetGate | None:
    """The account's budget gate inside a write transaction, or None when it has no budgets. With `lock`
    (PostgreSQL) it takes the account row's lock first, so budgets are checked and counted by one writer
    at a time (lock order as everywhere: holds, remainders, then the account); without it the caller
    already holds that lock (a posting made in this transaction took it)."""
    sql = _FLAG_LOCKED if lock and conn.dialect.name != "sqlite" else _FLAG
    row = conn.execute(sa.text(sql), {"a": account_id}).first()
    if row is None or not row.budgeted:
        return None
    rows = conn.execute(sa.select(_budgets).where(_budgets.c.account_id == account_id).order_by(_budgets.c.id)).all()
    return BudgetGate(conn, row.organization_id, [budget_from(r) for r in rows])


def count_posted(
    conn: Connection,
    account_id: int,
    units: int,
    *,
    at: datetime,
    api_key_id: int | None = None,
    user_id: int | None = None,
    enforce: bool = True,
) -> None:
    """Counts a usage posting just made in this transaction (whose posting holds the account row's lock):
    one flag read for an account without budgets. With `enforce`, BudgetExceeded when it took a
    hard-stopped budget past its amount: the caller's transaction rolls back, the posting with it."""
    gate = open_gate(conn, account_id, lock=False)
    if gate is not None:
        gate.admit(units, at=at, api_key_id=api_key_id, user_id=user_id, enforce=enforce)
        gate.flush()


# -- alerts ------------------------------------------------------------------------------------------


def alert_key(alert: Alert) -> str:
    return f"budget:{alert.budget.id}:{alert.month}:{alert.threshold}"


def alert_data(alert: Alert) -> dict[str, Any]:
    """The `budget.threshold_reached` webhook's data (money as decimal strings)."""
    b = alert.budget
    return {
        "organization_id": b.organization_id,
        "budget_id": b.id,
        **b.fields(),
        "month": alert.month,
        "threshold_percent": alert.threshold,
        "spent": fmt4(alert.spent),
    }


def alert_email(alert: Alert, organization_name: str, billing_url: str) -> tuple[str, str]:
    b = alert.budget
    subject = (
        f"Spend budget: {alert.threshold}% of {fmt_balance(b.amount_units)} reached ({b.label}, {organization_name})"
    )
    if alert.threshold >= 100 and b.hard_stop:
        after = "Its hard stop is on: new usage and holds that would pass it are refused until next month."
    elif alert.threshold >= 100:
        after = "Its hard stop is off: usage goes on and is charged as usual."
    else:
        after = "Nothing is refused yet."
    body = (
        f"The monthly spend budget of {b.label} in {organization_name} is at {alert.threshold}%: "
        f"{fmt_balance(alert.spent)} of {fmt_balance(b.amount_units)} spent in {alert.month} (UTC).\n\n"
        f"{after} Budgets: {billing_url}\n"
    )
    return subject, body


def email_alerts(engine: Engine, alerts: Sequence[Alert]) -> None:
    """After the commit: one email per alert to the owners, once (the outbox's dedupe key)."""
    from .config import get_settings
    from .services import get_notifier  # services wires the ledger, which this module serves

    notifier = get_notifier(engine)
    url = get_settings().app_url.rstrip("/") + "/billing"
    names: dict[int, str] = {}
    for alert in alerts:
        org = alert.budget.organization_id
        if org not in names:
            with engine.connect() as conn:
                names[org] = conn.execute(_ORG_NAME, {"o": org}).scalar() or ""
        subject, body = alert_email(alert, names[org], url)
        notifier.notify_owners(org, "budget_alert", alert_key(alert), subject, body)


def upsert_spend(conn: Connection, budget_id: int, month: str, spent: int, alerted: int) -> None:
    """Sets a budget's month (a budget created or changed mid-month starts from the month's usage)."""
    stmt = dialect_insert(conn, _spend).values(budget_id=budget_id, month=month, spent=spent, alerted=alerted)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["budget_id", "month"], set_={"spent": stmt.excluded.spent, "alerted": stmt.excluded.alerted}
        )
    )
