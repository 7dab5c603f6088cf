"""`orcapulse-billing hold`, `capture`, `release` and `holds`: reserving an operation's estimated cost
and settling it, as the API's hold calls do.

    hold ORG OPERATION QUANTITY --key KEY [--model MODEL]   reserve the estimated cost (a hold)
    capture HOLD_ID QUANTITY                                charge the actual quantity, release the rest
    release HOLD_ID                                         release a hold, charging nothing
    holds ORG                                               the active holds, reserved and available

Bad input (no such organization or hold, an unknown operation or model, a key already used for another
hold, not enough credit, a hold already settled) is one line on stderr and exit status 2, and writes
nothing.
"""

from __future__ import annotations

import argparse
from decimal import Decimal

from . import accounts
from .config import get_settings
from .db import get_engine
from .ledger import get_account
from .money import fmt4
from .services import get_ledger


class HoldsUsageError(Exception):
    """Raised as the CLI's UsageError (cli.py maps it)."""


def _announce_hold(organization_id: int, hold) -> None:
    """Open billing tabs reload Available and Reserved, as after the API's hold calls."""
    from .holds import hold_event
    from .services import get_event_bus

    bus = get_event_bus()
    bus.publish(hold_event(organization_id, hold))
    bus.flush(timeout=2)


def _available(engine, organization_id: int) -> int:
    from .holds import reserved_units

    with engine.connect() as conn:
        acct = get_account(conn, organization_id=organization_id)
        return acct.balance_units - reserved_units(conn, acct.id)


def _hold_org(engine, hold_id: int) -> int:
    from .holds import hold_organization

    with engine.connect() as conn:
        organization_id = hold_organization(conn, hold_id)
    if organization_id is None:
        raise HoldsUsageError(f"no hold {hold_id}")
    return organization_id


def cmd_hold(args) -> None:
    from .holds import place_hold
    from .metering import MeteringError

    engine = get_engine()
    org = accounts.find_organization(engine, args.org)
    settings = get_settings()
    try:
        placed = place_hold(
            get_ledger(engine),
            org.id,
            args.operation,
            args.quantity,
            args.key,
            settings.markup_percent,
            model=args.model,
            ttl_seconds=settings.hold_ttl_seconds,
        )
    except MeteringError as exc:
        raise HoldsUsageError(str(exc)) from None
    hold = placed.hold
    if not placed.replayed:
        _announce_hold(org.id, hold)
    note = " (already placed with this key)" if placed.replayed else ""
    print(
        f"hold {hold.id}: reserved {fmt4(hold.amount_units)} for {hold.operation} {hold.estimated_quantity} "
        f"in {org.name!r}, expires {hold.expires_at:%Y-%m-%d %H:%M:%S} UTC; "
        f"available {fmt4(placed.available_units)}{note}"
    )


def cmd_capture(args) -> None:
    from .holds import capture
    from .metering import MeteringError

    engine = get_engine()
    organization_id = _hold_org(engine, args.hold_id)
    try:
        result = capture(
            get_ledger(engine),
            organization_id,
            args.hold_id,
            args.quantity,
            markup_percent=get_settings().markup_percent,
        )
    except MeteringError as exc:
        raise HoldsUsageError(str(exc)) from None
    if result.replayed:
        print(f"hold {args.hold_id} was already captured with this quantity; nothing charged again")
        return
    _announce_hold(organization_id, result.hold)
    charged = -result.entry.amount_units if result.entry is not None else 0
    carried = "" if result.entry is not None else " (under one unit: carried to the next charge)"
    print(
        f"hold {args.hold_id} captured: charged {fmt4(charged)}{carried}, released {fmt4(result.released_units)}; "
        f"available {fmt4(_available(engine, organization_id))}"
    )


def cmd_release(args) -> None:
    from .holds import release

    engine = get_engine()
    organization_id = _hold_org(engine, args.hold_id)
    result = release(get_ledger(engine), organization_id, args.hold_id)
    if result.replayed:
        print(f"hold {args.hold_id} is already {result.hold.status}; nothing changed")
        return
    _announce_hold(organization_id, result.hold)
    print(
        f"hold {args.hold_id} released: {fmt4(result.released_units)} back; "
        f"available {fmt4(_available(engine, organization_id))}"
    )


def cmd_holds(args) -> None:
    from .holds import active_holds

    engine = get_engine()
    org = accounts.find_organization(engine, args.org)
    with engine.connect() as conn:
        acct = get_account(conn, organization_id=org.id)
        found = active_holds(conn, acct.id)
    for hold in found:
        model = f" ({hold.model})" if hold.model else ""
        print(
            f"#{hold.id} {hold.operation}{model} {hold.estimated_quantity}: {fmt4(hold.amount_units)} reserved, "
            f"expires {hold.expires_at:%Y-%m-%d %H:%M:%S} UTC, key {hold.idempotency_key}"
        )
    reserved = sum(h.amount_units for h in found)
    print(
        f"{org.name}: {len(found)} active hold(s), reserved {fmt4(reserved)}, "
        f"available {fmt4(acct.balance_units - reserved)}"
    )


def _quantity(text: str) -> Decimal:
    try:
        quantity = Decimal(text)
    except ArithmeticError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not quantity.is_finite() or quantity <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return quantity


def _hold_id(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a hold id: {text!r}")
    return int(text)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("hold", help="reserve the estimated cost of an operation (a hold)")
    p.add_argument("org", help="organization id or name")
    p.add_argument("operation", help="a usage operation, like voice_realtime or sms_outbound")
    p.add_argument("quantity", type=_quantity, help="the estimated quantity (minutes, messages, tokens...)")
    p.add_argument("--key", required=True, help="idempotency key: the same key again is the same hold")
    p.add_argument("--model", help="the OpenAI model (token operations)")
    p.set_defaults(func=cmd_hold)

    p = sub.add_parser("capture", help="charge a hold's actual quantity and release the hold")
    p.add_argument("hold_id", type=_hold_id, metavar="HOLD_ID")
    p.add_argument("quantity", type=_quantity, help="the actual quantity")
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("release", help="release a hold: the operation failed, nothing is charged")
    p.add_argument("hold_id", type=_hold_id, metavar="HOLD_ID")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("holds", help="an organization's active holds")
    p.add_argument("org", help="organization id or name")
    p.set_defaults(func=cmd_holds)
