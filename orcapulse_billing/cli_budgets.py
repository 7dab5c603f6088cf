"""`orcapulse-billing budgets ...`: an organization's monthly spend budgets, for operators (owners use
the page or the REST API).

    budgets ORG                                          the budgets with this month's spend
    budgets ORG set --amount 500 [--key ID | --member EMAIL] [--hard-stop | --no-hard-stop]
    budgets ORG remove [--key ID | --member EMAIL]

Without --key or --member a command is about the organization's own budget. Bad input (no such
organization, key or member, a bad amount) is one line on stderr and exit status 2, and writes nothing.
"""

from __future__ import annotations

import argparse

import sqlalchemy as sa

from . import accounts
from .budget_settings import BudgetInputError, BudgetStatus, list_budgets, remove_budget, set_budget
from .db import get_engine
from .models import User
from .money import fmt_balance
from .services import get_ledger

LEVELS = {0: "", 50: "  50% reached", 80: "  80% reached", 100: "  100% reached"}


def _org_id(ref: str) -> int:
    return int(accounts.find_organization(get_engine(), ref).id or 0)


def _member_id(email: str | None) -> int | None:
    if email is None:
        return None
    with get_engine().connect() as conn:
        user_id = conn.execute(sa.select(User.id).where(User.email == email.strip().lower())).scalar()
    if user_id is None:
        raise BudgetInputError("not_found", f"no user {email!r}")
    return int(user_id)


def line(status: BudgetStatus) -> str:
    stop = "hard stop" if status.budget.hard_stop else "alerts only"
    return (
        f"{status.budget.id:>5}  {status.name:<40} {fmt_balance(status.spent_units)} of "
        f"{fmt_balance(status.budget.amount_units)} ({status.percent}%) in {status.month}, {stop}"
        f"{LEVELS[status.level]}"
    )


def cmd_budgets(args: argparse.Namespace) -> None:
    organization_id = _org_id(args.org)
    engine = get_engine()
    if args.budgets_command == "set":
        status = set_budget(
            get_ledger(engine),
            organization_id,
            args.amount,
            hard_stop=args.hard_stop,
            api_key_id=args.key,
            user_id=_member_id(args.member),
        )
        print(f"set: {line(status).strip()}")
        return
    if args.budgets_command == "remove":
        user_id = _member_id(args.member)
        if not remove_budget(get_ledger(engine), organization_id, api_key_id=args.key, user_id=user_id):
            raise BudgetInputError("not_found", "no such budget in this organization")
        print("budget removed")
        return
    with engine.connect() as conn:
        found = list_budgets(conn, organization_id)
    if not found:
        print("no spend budgets")
    for status in found:
        print(line(status))


def _key_id(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 2_147_483_647:
        raise argparse.ArgumentTypeError(f"not an API key id: {text!r}")
    return int(text)


def _target(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--key", type=_key_id, help="the budget of this API key (its id)")
    which.add_argument("--member", help="the budget of this member (email)")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = sub.add_parser("budgets", help="monthly spend budgets: list, set or remove")
    group.add_argument("org", help="organization id or name")
    group.set_defaults(func=cmd_budgets, budgets_command=None, key=None, member=None)
    commands = group.add_subparsers(dest="budgets_command", required=False)
    p = commands.add_parser("set", help="create or change a budget")
    p.add_argument("--amount", required=True, help="credits per calendar month (UTC), $1 or more, whole cents")
    _target(p)
    p.add_argument(
        "--hard-stop",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="refuse usage and holds past 100%% (default: alerts only)",
    )
    p = commands.add_parser("remove", help="remove a budget")
    _target(p)
