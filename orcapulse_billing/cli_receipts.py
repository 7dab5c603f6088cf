"""`orcapulse-billing receipts ORG` and `orcapulse-billing receipt NUMBER [--out FILE]`: an
organization's receipts and credit notes, and one of them as the PDF its owners download.

Bad input (no such organization or document, an unwritable --out) is one line on stderr and exit
status 2, and writes nothing: the PDF goes to a temporary file next to --out, renamed into place.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from . import accounts, receipts
from .db import get_engine


class ReceiptUsageError(Exception):
    """Raised as the CLI's UsageError (cli.py maps it)."""


def _number(text: str) -> tuple[str, int]:
    parsed = receipts.parse_number(text)
    if parsed is None:
        raise argparse.ArgumentTypeError(f"not a receipt or credit note number (R-000012, CN-000003): {text!r}")
    return parsed


def cmd_receipts(args: argparse.Namespace) -> None:
    engine = get_engine()
    org = accounts.find_organization(engine, args.org)
    with engine.connect() as conn:
        found = receipts.list_documents(conn, int(org.id or 0), limit=args.limit)
    if not found:
        print(f"no receipts for {org.name!r} yet")
    for d in found:
        refers = f"  (refers to {d.refers_to_number})" if d.refers_to_number else ""
        print(
            f"{d.display_number:<10} {d.issued_at:%Y-%m-%d %H:%M} UTC  {receipts.fmt_price(d.amount, d.currency):>16}"
            f"  {d.description}  [{d.payment_method}; {d.provider_reference or '-'}]{refers}"
        )


def cmd_receipt(args: argparse.Namespace) -> None:
    kind, number = args.number
    with get_engine().connect() as conn:
        document = receipts.find_by_number(conn, kind, number)
    if document is None:
        raise ReceiptUsageError(f"no {receipts.TITLES[kind].lower()} {receipts.display_number(kind, number)}")
    if args.out is None:
        b = document.billing
        print(f"{document.title} {document.display_number}, issued {document.issued_at:%Y-%m-%d %H:%M} UTC")
        if document.refers_to_number:
            print(f"  refers to receipt {document.refers_to_number}")
        print(f"  {document.description}: {receipts.fmt_price(document.amount, document.currency)}")
        print(f"  bonus: {receipts.fmt_credits(document.bonus)}")
        print(f"  billed to: {', '.join([b.name, *b.address_lines()])}" + (f" (tax ID {b.tax_id})" if b.tax_id else ""))
        print(f"  payment: {document.payment_method}, {document.provider} {document.provider_reference or '-'}")
        return
    from .receipt_pdf import render

    target = Path(args.out)
    if target.is_dir():
        raise ReceiptUsageError(f"--out {args.out!r} is a directory; name the PDF file")
    if not target.parent.is_dir():
        raise ReceiptUsageError(f"--out {args.out!r}: no directory {str(target.parent)!r}")
    pdf = render(document)
    try:
        fd, temporary = tempfile.mkstemp(prefix=".receipt-", suffix=".pdf", dir=target.parent)
    except OSError as exc:
        raise ReceiptUsageError(f"--out {args.out!r}: cannot write there ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pdf)
        os.replace(temporary, target)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise ReceiptUsageError(f"--out {args.out!r}: cannot write there ({exc.strerror})") from None
    print(f"wrote {document.title.lower()} {document.display_number} to {target} ({len(pdf):,} bytes)")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("receipts", help="an organization's receipts and credit notes, newest first")
    p.add_argument("org", help="organization id or name")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.set_defaults(func=cmd_receipts)
    p = sub.add_parser("receipt", help="show a receipt or credit note, or write its PDF with --out")
    p.add_argument("number", type=_number, help="its number: R-000012, or CN-000003 for a credit note")
    p.add_argument("--out", help="write the PDF (the same bytes owners download) to this file")
    p.set_defaults(func=cmd_receipt)
