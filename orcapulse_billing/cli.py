"""`orcapulse-billing`: the operator's command line.

Bad input gets one line on stderr and exit status 2; nothing is written. No tracebacks.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy.exc import SQLAlchemyError

from . import (
    accounts,
    cli_auto_recharge,
    cli_budgets,
    cli_holds,
    cli_notifications,
    cli_receipts,
    cli_webhooks,
    webhooks,
)
from .budget_settings import BudgetInputError
from .config import ConfigError, get_settings, start_refusal
from .db import get_engine, upgrade
from .ledger import LedgerError, Posting, get_account
from .models import CreditSource, EntryType
from .money import MoneyError, fmt4, fmt_balance, parse_amount, to_units
from .seed import DEMO_MEMBER, DEMO_ORG, DEMO_OWNER, seed_demo
from .services import get_ledger

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise UsageError(message)


def _amount(text: str) -> Decimal:
    try:
        return parse_amount(text)
    except MoneyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_init_db(args) -> None:
    upgrade()
    print("database is at the latest schema")


def cmd_seed_demo(args) -> None:
    settings = get_settings()
    engine = get_engine()
    result = seed_demo(
        engine, get_ledger(engine), welcome_credit=settings.welcome_credit, markup_percent=settings.markup_percent
    )
    if result.created:
        print(f"seeded {DEMO_ORG!r} with {result.entries} entries")
        print(f"  owner : {DEMO_OWNER[0]} / {DEMO_OWNER[1]}")
        print(f"  member: {DEMO_MEMBER[0]} / {DEMO_MEMBER[1]}")
    else:
        print(f"{DEMO_ORG!r} already exists; nothing seeded (owner {DEMO_OWNER[0]}, member {DEMO_MEMBER[0]})")


def cmd_create_org(args) -> None:
    engine = get_engine()
    org = accounts.create_organization(
        engine, get_ledger(engine), args.name, welcome_credit=get_settings().welcome_credit
    )
    print(f"created organization {org.id}: {org.name}")


def cmd_add_user(args) -> None:
    engine = get_engine()
    org = accounts.find_organization(engine, args.org)
    user, generated = accounts.add_user(engine, org, args.email, args.role, args.password)
    print(f"{user.email} is now {args.role} of {org.name!r}")
    if generated:
        print(f"generated password (shown once): {generated}")


def cmd_create_api_key(args) -> None:
    engine = get_engine()
    org = accounts.find_organization(engine, args.org) if args.org else None
    new = accounts.create_api_key(
        engine, args.email, args.scope or (), organization_id=org.id if org else None, name=args.name
    )
    print(new.key)
    scopes = ", ".join(new.scopes) or "none (read only)"
    where = f"bound to {org.name!r}" if org else "acts in any of the user's organizations"
    print(f"(shown once; stored as a hash; prefix {new.prefix}; scopes: {scopes}; {where})", file=sys.stderr)


def cmd_grant(args) -> None:
    from .grants import day_label, end_of_day

    promotional = args.type == "promotional"
    entry_type = EntryType.adjustment if promotional else EntryType(args.type)
    if (entry_type is EntryType.bonus or promotional) and args.amount <= 0:
        raise UsageError(f"a {args.type} must be positive")
    if not args.description and not promotional:
        raise UsageError("--description is required (except for promotional credits)")
    expires_at = None
    if args.expires is not None:
        if args.amount <= 0:
            raise UsageError("only credits expire (--expires needs a positive amount)")
        try:
            expires_at = end_of_day(args.expires)
        except ValueError as exc:
            raise UsageError(f"--expires: {exc}") from None
    engine = get_engine()
    org = accounts.find_organization(engine, args.org)
    if promotional:
        source: CreditSource | None = CreditSource.promotional
    else:
        source = CreditSource.manual if args.amount > 0 else None
    entry = get_ledger(engine).post(
        Posting(
            account_id=accounts.account_id_for(engine, org.id),
            type=entry_type,
            amount=args.amount,
            description=args.description or ("Promotional credits" if promotional else ""),
            source=source,
            metadata={"via": "cli", "operator": getpass.getuser()},
            idempotency_key=args.idempotency_key,
            expires_at=expires_at,
        )
    )
    note = " (already posted with this idempotency key)" if entry.replayed else ""
    until = f", expiring {day_label(expires_at)} (end of day, UTC)" if expires_at else ""
    print(
        f"posted {entry.type} {fmt4(entry.amount_units)} to {org.name!r}{until}; "
        f"balance {fmt4(entry.balance_after_units)}{note}"
    )


def cmd_expire_credits(args) -> None:
    from .grants import expire_credits

    engine = get_engine()
    run = expire_credits(engine, get_ledger(engine), args.now)
    for line in run.expired:
        print(f"expired: {line}")
    print(f"{len(run.expired)} grant(s) expired, {run.warned} expiry warning(s) emailed")


def cmd_balance(args) -> None:
    engine = get_engine()
    org = accounts.find_organization(engine, args.org)
    with engine.connect() as conn:
        acct = get_account(conn, organization_id=org.id)
    print(
        f"{org.name}: balance {fmt_balance(acct.balance_units)} ({fmt4(acct.balance_units)} credits), "
        f"added {fmt4(acct.lifetime_added_units)}, consumed {fmt4(acct.lifetime_consumed_units)}, "
        f"{acct.transaction_count} transactions"
    )


def cmd_add_phone(args) -> None:
    from .jobs import add_phone_number

    engine = get_engine()
    org = accounts.find_organization(engine, args.org)
    try:
        add_phone_number(engine, org.id, args.number, args.monthly_cost, args.acquired)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"{args.number} rented by {org.name!r} at {fmt4(to_units(args.monthly_cost))} credits a month")


def _require_safe_start() -> None:
    """Jobs refuse to run where the app would refuse to start (production without real keys)."""
    reason = start_refusal(get_settings())  # a malformed setting raises ConfigError itself
    if reason:
        raise ConfigError(reason)


def cmd_check_config(args) -> None:
    _require_safe_start()
    settings = get_settings()
    mode = "production" if settings.production else "development"
    print(f"configuration is fine: {mode} mode ({settings.mode_reason})")


def cmd_bill_phones(args) -> None:
    _require_safe_start()
    from .jobs import bill_phone_numbers, run_once

    engine = get_engine()
    with run_once(engine, "phone-billing", get_settings().redis_url) as mine:
        if not mine:
            raise UsageError("phone billing is running elsewhere right now; try again shortly")
        run = bill_phone_numbers(engine, get_ledger(engine), args.date)
    for line in run.billed:
        print(f"billed: {line}")
    for line in run.refused:
        print(f"not enough credit: {line}")
    print(f"{len(run.billed)} billed, {run.already_billed} already billed, {len(run.refused)} refused")


def cmd_outbox(args) -> None:
    import sqlalchemy as sa

    from .models import EmailOutbox
    from .notifications import attachments_of

    with get_engine().connect() as conn:
        rows = conn.execute(sa.select(EmailOutbox).order_by(EmailOutbox.id.desc()).limit(args.limit)).all()
    if not rows:
        print("the outbox is empty")
    for mail in rows:
        state = "sent" if mail.sent_at else (f"failed: {mail.error}" if mail.error else "queued")
        print(f"#{mail.id} {mail.created_at:%Y-%m-%d %H:%M} UTC  {mail.kind}  to {mail.to_address}  [{state}]")
        print(f"    {mail.subject}")
        for filename, _, content in attachments_of(get_engine(), mail.id):
            print(f"    attached: {filename} ({len(content):,} bytes)")
        if args.full:
            print("    " + mail.body.replace("\n", "\n    "))


def cmd_reconcile(args) -> None:
    from .payments.reconcile import Reconciler
    from .payments.stripe_gateway import PaymentError
    from .services import get_stripe_purchases

    _require_safe_start()  # production: never reconcile against a sandbox or with test keys
    try:
        report = Reconciler(get_stripe_purchases()).run(args.since, dry_run=args.dry_run)
    except PaymentError as exc:
        what = "Stripe is not configured (STRIPE_SECRET_KEY)" if exc.code == "payments_unavailable" else exc.message
        raise UsageError(f"reconcile needs Stripe: {what}") from None
    print("\n".join(report.lines()))


def cmd_attention(args) -> None:
    from .payments.events import attention_items, resolve_attention

    engine = get_engine()
    if args.resolve is not None:
        if not resolve_attention(engine, args.resolve):
            raise UsageError(f"no open attention item #{args.resolve}")
        print(f"#{args.resolve} resolved")
        return
    items = attention_items(engine, include_resolved=args.all)
    if not items:
        print("nothing needs attention")
    for item in items:
        cents = item["amount_cents"]
        money = f"{Decimal(cents) / 100:,.2f} {item['currency'] or ''}" if cents is not None else "-"
        state = " (resolved)" if item["resolved_at"] else ""
        org = f"org {item['organization_id']}" if item["organization_id"] else "no organization"
        print(
            f"#{item['id']} {item['created_at']:%Y-%m-%d %H:%M}  {item['provider']} {item['reference']}  {money}  {org}{state}"
        )
        print(f"    {item['reason']}: {item['detail']}")


def _date(text: str):
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _when(text: str) -> datetime:
    return datetime.combine(_date(text), datetime.min.time(), tzinfo=UTC)


def _instant(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 instant: {text!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="orcapulse-billing", description="OrcaPulse Billing operator commands")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("init-db", help="apply all migrations").set_defaults(func=cmd_init_db)
    sub.add_parser("seed-demo", help="create the demo organisation once").set_defaults(func=cmd_seed_demo)
    sub.add_parser(
        "check-config", help="check the configuration (production: real keys and webhook secrets)"
    ).set_defaults(func=cmd_check_config)

    p = sub.add_parser("create-org", help="create an organization (with its welcome credit)")
    p.add_argument("name")
    p.set_defaults(func=cmd_create_org)

    p = sub.add_parser("add-user", help="add a user to an organization")
    p.add_argument("org", help="organization id or name")
    p.add_argument("email")
    p.add_argument("--role", required=True, choices=["owner", "admin", "member"])
    p.add_argument("--password", help="at least 8 characters; generated and printed when omitted")
    p.set_defaults(func=cmd_add_user)

    p = sub.add_parser("create-api-key", help="create an API key for a user (printed once)")
    p.add_argument("email")
    p.add_argument(
        "--scope",
        action="append",
        metavar="SCOPE",
        help=f"repeatable or a comma list; one of: {', '.join(accounts.SCOPES)} (owners' and admins' keys only). "
        "Without: read only",
    )
    p.add_argument("--org", help="bind the key to this organization (id or name); default: any of the user's")
    p.add_argument("--name", help="a label: what the key is for")
    p.set_defaults(func=cmd_create_api_key)

    p = sub.add_parser("grant", help="post a manual credit, a promotional credit or an adjustment")
    p.add_argument("org", help="organization id or name")
    p.add_argument("amount", type=_amount, help="credits, up to 4 decimals (adjustments may be negative)")
    p.add_argument(
        "--type",
        required=True,
        choices=["bonus", "adjustment", "promotional"],
        help="promotional credits are spent first (then bonus, then paid)",
    )
    p.add_argument("--description", help="required, except for promotional credits")
    p.add_argument(
        "--expires", metavar="YYYY-MM-DD", help="credits: expire at the end of this day (UTC), in the future"
    )
    p.add_argument("--idempotency-key")
    p.set_defaults(func=cmd_grant)

    p = sub.add_parser(
        "expire-credits", help="run the credit expiry job now: post expired remainders, email 7-day warnings"
    )
    p.add_argument("--now", type=_instant, help="as of this instant (ISO 8601, UTC when no offset; default: now)")
    p.set_defaults(func=cmd_expire_credits)

    p = sub.add_parser("add-phone", help="record a rented phone number (billed monthly)")
    p.add_argument("org", help="organization id or name")
    p.add_argument("number", help="E.164, like +14155550100")
    p.add_argument("--monthly-cost", type=_amount, required=True)
    p.add_argument("--acquired", type=_when, help="YYYY-MM-DD (default: now)")
    p.set_defaults(func=cmd_add_phone)

    p = sub.add_parser("bill-phones", help="run the phone-number billing job now (catches up missed periods)")
    p.add_argument("--date", type=_date, default=datetime.now(UTC).date(), help="as of YYYY-MM-DD (UTC)")
    p.set_defaults(func=cmd_bill_phones)

    p = sub.add_parser("outbox", help="show the notification emails (queued, sent or failed)")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--full", action="store_true", help="with the message bodies")
    p.set_defaults(func=cmd_outbox)

    p = sub.add_parser("reconcile", help="credit paid charges whose posting was lost; settle unconfirmed ones")
    p.add_argument("--since", type=_when, help="look back to this date (YYYY-MM-DD; default: 3 days)")
    p.add_argument("--dry-run", action="store_true", help="show what it would do, change nothing")
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser("attention", help="paid payments that matched nothing we could credit")
    p.add_argument("--all", action="store_true", help="include resolved items")
    p.add_argument("--resolve", type=int, metavar="ID", help="mark an item resolved")
    p.set_defaults(func=cmd_attention)

    p = sub.add_parser("balance", help="show an organization's balance")
    p.add_argument("org", help="organization id or name")
    p.set_defaults(func=cmd_balance)

    cli_holds.add_commands(sub)
    cli_receipts.add_commands(sub)
    cli_auto_recharge.add_commands(sub)
    cli_webhooks.add_commands(sub)
    cli_budgets.add_commands(sub)
    cli_notifications.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
        return 0
    except (
        UsageError,
        cli_receipts.ReceiptUsageError,
        cli_holds.HoldsUsageError,
        cli_auto_recharge.AutoRechargeUsageError,
        cli_notifications.NotificationsUsageError,
        webhooks.WebhookError,
        BudgetInputError,
    ) as exc:
        print(f"orcapulse-billing: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (accounts.AccountsError, LedgerError, MoneyError, ConfigError) as exc:
        print(f"orcapulse-billing: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SQLAlchemyError as exc:
        first_line = str(exc.orig if getattr(exc, "orig", None) else exc).splitlines()[0]
        print(f"orcapulse-billing: database error: {first_line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
