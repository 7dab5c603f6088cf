"""Spend budgets as owners see and set them: the month's spend against each budget, set (create or
change) and remove. The faces (REST, CLI, the page) check the role; this module checks the input.

A budget set mid-month starts from the month's usage so far (summed from the ledger for its target),
under the account row's lock, so no posting is counted twice or missed. Setting or changing a budget
sends no alert for thresholds already reached (the owner sees them); `alerted` keeps each threshold's
alert once per budget per month, whatever the budget's changes.

Plain Python and SQLAlchemy Core: nothing here imports Reflex.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .auth import audit
from .budgets import Budget, budget_from, month_of, reached, target_of, upsert_spend
from .db import at_or_now
from .ledger import Ledger, get_account
from .models import ApiKey, BudgetSpend, Membership, SpendBudget, User
from .money import MoneyError, fmt4, parse_amount, to_units

MIN_BUDGET = Decimal("1")
MAX_BUDGET = Decimal("9999999999.99")
_budgets = cast(sa.Table, sa.inspect(SpendBudget).local_table)
_spend = cast(sa.Table, sa.inspect(BudgetSpend).local_table)


class BudgetInputError(ValueError):
    """Refused input: `code` (invalid_amount, not_found) for the API, `message` for people."""

    def __init__(self, code: str, message: str):
        self.code, self.message = code, message
        super().__init__(message)


@dataclass(frozen=True)
class BudgetStatus:
    budget: Budget
    month: str
    spent_units: int
    alerted: int  # the highest threshold alerted this month (0: none)
    api_key_name: str | None = None
    member_email: str | None = None

    @property
    def percent(self) -> Decimal:
        """The month's spend as a percentage of the budget, one decimal, rounded down (so 100.0 means reached)."""
        exact = Decimal(self.spent_units * 100) / Decimal(self.budget.amount_units)
        return exact.quantize(Decimal("0.1"), rounding=ROUND_DOWN)

    @property
    def level(self) -> int:
        """The highest threshold (50, 80, 100) the month's spend has reached; 0: below 50 %."""
        return reached(self.spent_units, self.budget.amount_units)

    @property
    def name(self) -> str:
        if self.budget.api_key_id is not None:
            return f"API key {self.api_key_name or self.budget.api_key_id}"
        if self.budget.user_id is not None:
            return f"Member {self.member_email or self.budget.user_id}"
        return "Organization"

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.budget.id,
            **self.budget.fields(),
            "name": self.name,
            "month": self.month,
            "spent": fmt4(self.spent_units),
            "percent": f"{self.percent}",
            "level": self.level,
        }


def parse_budget_amount(value: str | Decimal) -> int:
    """A budget in credits, $1 to $9,999,999,999.99 in whole cents, as ledger units."""
    try:
        amount = parse_amount(value, max_places=2)
    except MoneyError as exc:
        raise BudgetInputError(
            "invalid_amount", f"a budget is $1 to $9,999,999,999.99 in whole cents ({exc})"
        ) from None
    if not MIN_BUDGET <= amount <= MAX_BUDGET:
        raise BudgetInputError("invalid_amount", "a budget is $1 to $9,999,999,999.99 in whole cents")
    return to_units(amount)


def list_budgets(conn: Connection, organization_id: int, *, now: datetime | None = None) -> list[BudgetStatus]:
    """The organization's budgets with this month's spend: the organization's first, then keys, members."""
    month = month_of(at_or_now(now))
    rows = conn.execute(
        sa.select(_budgets, _spend.c.spent, _spend.c.alerted, ApiKey.name.label("key_name"), User.email)
        .outerjoin(_spend, sa.and_(_spend.c.budget_id == _budgets.c.id, _spend.c.month == month))
        .outerjoin(ApiKey, ApiKey.id == _budgets.c.api_key_id)
        .outerjoin(User, User.id == _budgets.c.user_id)
        .where(_budgets.c.organization_id == organization_id)
        .order_by(_budgets.c.user_id.is_not(None), _budgets.c.api_key_id.is_not(None), _budgets.c.id)
    ).all()
    return [BudgetStatus(budget_from(r), month, r.spent or 0, r.alerted or 0, r.key_name, r.email) for r in rows]


def budget_targets(conn: Connection, organization_id: int) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """What a budget can name: the organization's API keys that act in it (id, label) and its members
    (user id, email)."""
    members = conn.execute(
        sa.select(User.id, User.email)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.organization_id == organization_id)
        .order_by(User.email)
    ).all()
    keys = conn.execute(_keys_query(organization_id).order_by(ApiKey.id)).all()
    return (
        [(k.id, f"{k.name or 'unnamed'} ({k.prefix}...)") for k in keys],
        [(m.id, m.email) for m in members],
    )


def _keys_query(organization_id: int) -> sa.Select:
    """The live API keys that act in the organization: bound to it, or unbound keys of its members."""
    members = sa.select(Membership.user_id).where(Membership.organization_id == organization_id)
    return sa.select(ApiKey.id, ApiKey.name, ApiKey.prefix).where(
        ApiKey.revoked_at.is_(None),
        sa.or_(
            ApiKey.organization_id == organization_id,
            sa.and_(ApiKey.organization_id.is_(None), ApiKey.user_id.in_(members)),
        ),
    )


def _check_target(conn: Connection, organization_id: int, api_key_id: int | None, user_id: int | None) -> None:
    if (
        api_key_id is not None
        and conn.execute(_keys_query(organization_id).where(ApiKey.id == api_key_id)).first() is None
    ):
        raise BudgetInputError("not_found", f"no API key {api_key_id} acts in this organization")
    if user_id is not None:
        found = conn.execute(
            sa.select(Membership.id).where(Membership.organization_id == organization_id, Membership.user_id == user_id)
        ).first()
        if found is None:
            raise BudgetInputError("not_found", f"user {user_id} is not a member of this organization")


def _lock_account(conn: Connection, organization_id: int) -> int:
    """The account's id, its row locked (PostgreSQL) so that no posting is in flight while budgets change."""
    account_id = get_account(conn, organization_id=organization_id).id
    if conn.dialect.name != "sqlite":
        conn.execute(sa.text("SELECT id FROM credit_account WHERE id = :a FOR NO KEY UPDATE"), {"a": account_id})
    return account_id


def month_usage(
    conn: Connection, account_id: int, month: str, *, api_key_id: int | None = None, user_id: int | None = None
) -> int:
    """What the target's usage entries of `month` charged (units), from the ledger."""
    start = datetime.strptime(month + "-01", "%Y-%m-%d").replace(tzinfo=UTC)
    end = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    where = "account_id = :a AND type = 'usage' AND created_at >= :start AND created_at < :end"
    params: dict[str, object] = {"a": account_id, "start": start, "end": end}
    if user_id is not None:
        where += " AND actor_user_id = :u"
        params["u"] = user_id
    if api_key_id is not None:
        field = "json_extract(metadata, '$.api_key_id')" if conn.dialect.name == "sqlite" else "metadata->>'api_key_id'"
        where += f" AND {field} = :k"
        params["k"] = str(api_key_id)
    stmt = sa.text(f"SELECT COALESCE(SUM(amount), 0) FROM ledger_entry WHERE {where}").bindparams(
        sa.bindparam("start", type_=sa.DateTime(timezone=True)), sa.bindparam("end", type_=sa.DateTime(timezone=True))
    )
    return -int(conn.execute(stmt, params).scalar_one())


def set_budget(
    ledger: Ledger,
    organization_id: int,
    amount: str | Decimal,
    *,
    hard_stop: bool = False,
    api_key_id: int | None = None,
    user_id: int | None = None,
    actor_user_id: int | None = None,
    ip: str | None = None,
    now: datetime | None = None,
) -> BudgetStatus:
    """Creates or changes the budget of the organization (neither id), an API key or a member.
    BudgetInputError (nothing written) for a bad amount or a target outside the organization."""
    if api_key_id is not None and user_id is not None:
        raise BudgetInputError("invalid_request", "a budget is for the organization, one API key or one member")
    units = parse_budget_amount(amount)
    when = at_or_now(now)
    month = month_of(when)
    target = target_of(api_key_id, user_id)
    with ledger.transaction() as conn:
        _check_target(conn, organization_id, api_key_id, user_id)
        account_id = _lock_account(conn, organization_id)
        existing = conn.execute(
            sa.select(_budgets.c.id).where(_budgets.c.account_id == account_id, _budgets.c.target == target)
        ).scalar()
        values = {"amount": units, "hard_stop": hard_stop, "updated_at": when}
        if existing is None:
            budget_id = conn.execute(
                sa.insert(_budgets)
                .values(
                    organization_id=organization_id,
                    account_id=account_id,
                    target=target,
                    api_key_id=api_key_id,
                    user_id=user_id,
                    created_by_user_id=actor_user_id,
                    created_at=when,
                    **values,
                )
                .returning(_budgets.c.id)
            ).scalar_one()
        else:
            budget_id = existing
            conn.execute(sa.update(_budgets).where(_budgets.c.id == budget_id).values(values))
        conn.execute(sa.text("UPDATE credit_account SET budgeted = :t WHERE id = :a"), {"t": True, "a": account_id})
        stored = conn.execute(
            sa.select(_spend.c.spent, _spend.c.alerted).where(_spend.c.budget_id == budget_id, _spend.c.month == month)
        ).first()
        spent = stored.spent if stored else month_usage(conn, account_id, month, api_key_id=api_key_id, user_id=user_id)
        alerted = max(stored.alerted if stored else 0, reached(spent, units))
        upsert_spend(conn, budget_id, month, spent, alerted)
        audit(
            conn,
            "budget_set",
            organization_id=organization_id,
            user_id=actor_user_id,
            ip=ip,
            budget_id=budget_id,
            target=target,
            amount=fmt4(units),
            hard_stop=hard_stop,
        )
        found = [s for s in list_budgets(conn, organization_id, now=when) if s.budget.id == budget_id]
    return found[0]


def remove_budget(
    ledger: Ledger,
    organization_id: int,
    *,
    api_key_id: int | None = None,
    user_id: int | None = None,
    actor_user_id: int | None = None,
    ip: str | None = None,
) -> bool:
    """Removes the budget of that target (False: there was none). The account's postings go back to
    the path without budgets when it was the last one."""
    target = target_of(api_key_id, user_id)
    with ledger.transaction() as conn:
        account_id = _lock_account(conn, organization_id)
        budget_id = conn.execute(
            sa.select(_budgets.c.id).where(_budgets.c.account_id == account_id, _budgets.c.target == target)
        ).scalar()
        if budget_id is None:
            return False
        conn.execute(sa.delete(_spend).where(_spend.c.budget_id == budget_id))
        conn.execute(sa.delete(_budgets).where(_budgets.c.id == budget_id))
        left = conn.execute(sa.select(sa.func.count()).where(_budgets.c.account_id == account_id)).scalar_one()
        conn.execute(sa.text("UPDATE credit_account SET budgeted = :t WHERE id = :a"), {"t": left > 0, "a": account_id})
        audit(conn, "budget_removed", organization_id=organization_id, user_id=actor_user_id, ip=ip, target=target)
    return True
