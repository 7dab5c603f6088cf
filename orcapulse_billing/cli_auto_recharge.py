"""`orcapulse-billing auto-recharge ORG [--run]`: an organization's auto-recharge as its page shows it
(on or off and why, the charges of the last 24 hours against the daily limit, the last failure and the
next attempt's time, the provider's page for a charge awaiting confirmation); `--run` tries a recharge
now, as any trigger does: through the same claim, so a backoff, the daily limit and the monthly cap
still hold.

Bad input (no such organization, --run without Stripe) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse

from . import accounts
from .config import ConfigError, get_settings, start_refusal
from .db import get_engine


class AutoRechargeUsageError(Exception):
    """Raised as the CLI's UsageError (cli.py maps it)."""


def status_lines(name: str, policy) -> list[str]:
    from .payments.auto_recharge_outcomes import when
    from .payments.auto_recharge_policy import DAILY_LIMIT, MAX_FAILURES

    cap = f"monthly cap ${policy.monthly_cap:,.2f}" if policy.monthly_cap is not None else "no monthly cap"
    lines = [
        f"{name}: auto-recharge {'on' if policy.enabled else 'off'}: below {policy.threshold:,.2f} credits, "
        f"add at least ${policy.amount:,.2f}, {cap}",
        f"  charges in the last 24 hours: {policy.charges_last_24h} of {DAILY_LIMIT}",
    ]
    if policy.disabled_reason:
        lines.append(f"  {policy.disabled_reason}")
    if policy.action_url:
        lines.append(f"  confirm the payment at: {policy.action_url}")
    if policy.enabled and policy.consecutive_failures and policy.last_error:
        lines.append(
            f"  last charge failed: {policy.last_error} ({policy.consecutive_failures} of {MAX_FAILURES} in a row)"
        )
    if policy.next_attempt_at is not None:
        lines.append(f"  next attempt: {when(policy.next_attempt_at)}")
    return lines


def cmd_auto_recharge(args: argparse.Namespace) -> None:
    from .services import get_auto_recharger

    engine = get_engine()
    org = accounts.find_organization(engine, args.org)
    recharger = get_auto_recharger(engine)
    if args.run:
        settings = get_settings()
        reason = start_refusal(settings)  # production: never charge through a sandbox or with test keys
        if reason:
            raise ConfigError(reason)
        if not settings.stripe_secret_key:
            raise AutoRechargeUsageError("--run needs Stripe: it is not configured (STRIPE_SECRET_KEY)")
        print(f"recharge: {recharger.maybe_recharge(int(org.id or 0))}")
    for line in status_lines(org.name, recharger.get(int(org.id or 0))):
        print(line)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "auto-recharge", help="an organization's auto-recharge: state, next attempt, charges in the last 24 hours"
    )
    p.add_argument("org", help="organization id or name")
    p.add_argument(
        "--run", action="store_true", help="try a recharge now, as a trigger does (backoff and limits still hold)"
    )
    p.set_defaults(func=cmd_auto_recharge)
