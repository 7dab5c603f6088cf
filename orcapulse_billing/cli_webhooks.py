"""`orcapulse-billing webhooks ...`: an organization's outbound webhook endpoints and delivery log,
for operators (owners use the page or the REST API).

    webhooks list ORG                          endpoints (the secret's start only)
    webhooks add ORG URL --events a,b [--description TEXT]   prints the signing secret, once
    webhooks enable ORG ENDPOINT_ID            it receives the events from now on
    webhooks disable ORG ENDPOINT_ID           what it has not received yet is cancelled; nothing is
                                               queued for it until it is enabled again
    webhooks remove ORG ENDPOINT_ID            what it has not received yet is cancelled
    webhooks test ORG ENDPOINT_ID              queues a webhook.test message
    webhooks deliveries ORG [--endpoint ID] [--limit N]      the log, newest first, with response codes
    webhooks deliver                           one delivery round now (the app does it every 5 seconds)

Bad input (no such organization or endpoint, a refused URL, an unknown event type) is one line on
stderr and exit status 2, and writes nothing.
"""

from __future__ import annotations

import argparse

from . import accounts, webhooks
from .config import get_settings
from .db import get_engine, writer


def _org_id(ref: str) -> int:
    return int(accounts.find_organization(get_engine(), ref).id or 0)


def cmd_list(args: argparse.Namespace) -> None:
    with get_engine().connect() as conn:
        found = webhooks.list_endpoints(conn, _org_id(args.org))
    if not found:
        print("no webhook endpoints")
    for e in found:
        state = "" if e.enabled else "  (disabled)"
        print(
            f"{e.id:>5}  {e.url}{state}  [{', '.join(e.event_types)}]  secret {e.secret_hint}  {e.description}".rstrip()
        )


def cmd_add(args: argparse.Namespace) -> None:
    events = [t.strip() for t in args.events.split(",") if t.strip()]
    endpoint, secret = webhooks.add_endpoint(
        get_engine(),
        _org_id(args.org),
        args.url,
        events,
        production=get_settings().production,
        description=args.description,
    )
    print(f"endpoint {endpoint.id}: {endpoint.url} [{', '.join(endpoint.event_types)}]")
    print(f"signing secret (shown once): {secret}")


def cmd_set_enabled(args: argparse.Namespace) -> None:
    enabled = args.webhooks_command == "enable"
    with writer(get_engine()).begin() as conn:
        if webhooks.set_endpoint_enabled(conn, _org_id(args.org), args.endpoint_id, enabled) is None:
            raise webhooks.WebhookError("not_found", f"no webhook endpoint {args.endpoint_id} in {args.org!r}")
    print(f"{'enabled' if enabled else 'disabled'} endpoint {args.endpoint_id}")


def cmd_remove(args: argparse.Namespace) -> None:
    with writer(get_engine()).begin() as conn:
        if not webhooks.remove_endpoint(conn, _org_id(args.org), args.endpoint_id):
            raise webhooks.WebhookError("not_found", f"no webhook endpoint {args.endpoint_id} in {args.org!r}")
    print(f"removed endpoint {args.endpoint_id}")


def cmd_test(args: argparse.Namespace) -> None:
    msg_id = webhooks.send_test_event(get_engine(), _org_id(args.org), args.endpoint_id)
    print(f"queued test event {msg_id}")


def cmd_deliveries(args: argparse.Namespace) -> None:
    with get_engine().connect() as conn:
        found = webhooks.list_deliveries(conn, _org_id(args.org), endpoint_id=args.endpoint, limit=args.limit)
        logs = webhooks.attempts_for(conn, [d.id for d in found])
    if not found:
        print("no deliveries")
    for d in found:
        codes = " ".join(str(a["status_code"] or "-") for a in logs.get(d.id, [])) or "-"
        after = f"  next {d.next_attempt_at:%Y-%m-%d %H:%M:%S} UTC" if d.next_attempt_at else ""
        error = f"  ({d.last_error})" if d.last_error and d.status != "delivered" else ""
        print(
            f"{d.created_at:%Y-%m-%d %H:%M:%S} UTC  {d.event_type:<24} {d.status:<9} attempts {d.attempts} "
            f"codes {codes}  {d.msg_id}  -> {d.url}{after}{error}"
        )


def cmd_deliver(args: argparse.Namespace) -> None:
    run = webhooks.deliver_due(get_engine())
    print(f"{run.delivered} delivered, {run.retrying} to retry, {run.failed} failed")


def _endpoint_id(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 2_147_483_647:
        raise argparse.ArgumentTypeError(f"not an endpoint id: {text!r}")
    return int(text)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = sub.add_parser("webhooks", help="outbound webhook endpoints and their delivery log")
    commands = group.add_subparsers(dest="webhooks_command", required=True)
    p = commands.add_parser("list", help="an organization's endpoints")
    p.add_argument("org", help="organization id or name")
    p.set_defaults(func=cmd_list)
    p = commands.add_parser("add", help="register an endpoint (prints its signing secret once)")
    p.add_argument("org", help="organization id or name")
    p.add_argument("url", help="https URL on a public host (http and loopback only outside production)")
    p.add_argument("--events", required=True, help=f"comma-separated, of: {', '.join(webhooks.EVENT_TYPES)}")
    p.add_argument("--description", default="", help="a note for people")
    p.set_defaults(func=cmd_add)
    for name, what in (("enable", "send an endpoint events again"), ("disable", "stop sending an endpoint events")):
        p = commands.add_parser(name, help=what)
        p.add_argument("org", help="organization id or name")
        p.add_argument("endpoint_id", type=_endpoint_id)
        p.set_defaults(func=cmd_set_enabled)
    p = commands.add_parser("remove", help="remove an endpoint")
    p.add_argument("org", help="organization id or name")
    p.add_argument("endpoint_id", type=_endpoint_id)
    p.set_defaults(func=cmd_remove)
    p = commands.add_parser("test", help="send a test event to an endpoint")
    p.add_argument("org", help="organization id or name")
    p.add_argument("endpoint_id", type=_endpoint_id)
    p.set_defaults(func=cmd_test)
    p = commands.add_parser("deliveries", help="the delivery log, newest first")
    p.add_argument("org", help="organization id or name")
    p.add_argument("--endpoint", type=_endpoint_id, help="only this endpoint's")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.set_defaults(func=cmd_deliveries)
    p = commands.add_parser("deliver", help="send what is due now, once")
    p.set_defaults(func=cmd_deliver)
