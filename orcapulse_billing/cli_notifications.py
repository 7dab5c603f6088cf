"""`orcapulse-billing notifications ORG`: an organization's low-balance threshold (the setting and the
threshold in force now) and each owner's email preferences.

- `--threshold 25.00` (an amount), `--threshold 20%` (of the last top-up), `--threshold default` (the
  deployment's LOW_BALANCE_THRESHOLD) sets the threshold;
- `--owner EMAIL --off CATEGORY --on CATEGORY` (repeatable) sets that owner's switches.

Bad input (no such organization or owner, a threshold or category that is not acceptable) is one line
on stderr and exit status 2, and writes nothing.
"""

from __future__ import annotations

import argparse

import sqlalchemy as sa

from . import accounts, low_balance, notification_preferences
from .config import get_settings
from .db import get_engine, writer
from .models import Membership, User
from .money import fmt_balance, to_units


class NotificationsUsageError(Exception):
    """Raised as the CLI's UsageError (cli.py maps it)."""


def _threshold_setting(text: str) -> low_balance.ThresholdSetting:
    text = text.strip()
    if text == "default":
        data: dict = {"mode": "default"}
    elif text.endswith("%"):
        number = text[:-1].strip()
        data = {"mode": "percent", "percent": int(number) if number.isdigit() else number}
    else:
        data = {"mode": "amount", "amount": text}
    try:
        return low_balance.validate_setting(data)
    except low_balance.ThresholdError as exc:
        raise NotificationsUsageError(f"--threshold {text!r}: {exc.message}") from None


def _owners(conn, organization_id: int) -> list[tuple[int, str]]:
    return [
        (r.id, r.email)
        for r in conn.execute(
            sa.select(User.id, User.email)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.organization_id == organization_id, Membership.role == "owner")
            .order_by(User.email)
        )
    ]


def cmd_notifications(args: argparse.Namespace) -> None:
    engine = get_engine()
    org = accounts.find_organization(engine, args.org)
    organization_id = int(org.id or 0)
    setting = _threshold_setting(args.threshold) if args.threshold is not None else None
    changes = {**dict.fromkeys(args.on or (), True), **dict.fromkeys(args.off or (), False)}
    if set(args.on or ()) & set(args.off or ()):
        raise NotificationsUsageError("a category cannot be both --on and --off")
    if changes and not args.owner:
        raise NotificationsUsageError("--on and --off need --owner EMAIL (each owner chooses their own)")
    if args.owner and not changes:
        raise NotificationsUsageError("--owner needs --on or --off CATEGORY")
    with engine.connect() as conn:
        owners = _owners(conn, organization_id)
    owner_id = None
    if args.owner:
        owner_id = next((user_id for user_id, email in owners if email.lower() == args.owner.lower()), None)
        if owner_id is None:
            raise NotificationsUsageError(f"{args.owner!r} is not an owner of {org.name!r}")
    if setting is not None or owner_id is not None:
        with writer(engine).begin() as conn:
            if setting is not None:
                low_balance.save_setting(conn, organization_id, setting, None)
            if owner_id is not None:
                notification_preferences.save_preferences(conn, organization_id, owner_id, changes)
    default = to_units(get_settings().low_balance_threshold)
    with engine.connect() as conn:
        saved = low_balance.get_setting(conn, organization_id)
        now = low_balance.current_threshold(conn, organization_id, default)
        preferences = {email: notification_preferences.get_preferences(conn, organization_id, u) for u, email in owners}
    how = {
        "default": f"the deployment's default ({fmt_balance(default)})",
        "amount": f"{fmt_balance(saved.amount_units or 0)}",
        "percent": f"{saved.percent}% of the last top-up",
    }[saved.mode]
    basis = {"percent": f" ({saved.percent}% of {fmt_balance(now.last_topup_units or 0)})"}.get(now.basis, "")
    if now.basis == "default_before_topup":
        basis = " (no top-up yet: the deployment's default)"
    print(f"{org.name}: low-balance threshold {how}; in force now: {fmt_balance(now.units)}{basis}")
    for email, switches in preferences.items():
        off = [key for key, on in switches.items() if not on]
        print(f"  {email}: all emails" if not off else f"  {email}: all emails except {', '.join(off)}")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    categories = list(notification_preferences.CATEGORIES)
    p = sub.add_parser(
        "notifications", help="an organization's low-balance threshold and its owners' email preferences"
    )
    p.add_argument("org", help="organization id or name")
    p.add_argument(
        "--threshold", help="set it: an amount (25.00), a percentage of the last top-up (20%%), or 'default'"
    )
    p.add_argument("--owner", help="the owner whose email preferences --on and --off change")
    p.add_argument("--on", action="append", choices=categories, help="turn a category of emails on (repeatable)")
    p.add_argument("--off", action="append", choices=categories, help="turn a category of emails off (repeatable)")
    p.set_defaults(func=cmd_notifications)
