"""Emails to owners: low balance and balance recovered (once per crossing of the organization's
threshold, low_balance.py), receipts, auto-recharge news and what later features announce. Each
notification is written to the outbox once (a dedupe key) for each owner whose preferences let that
kind through (notification_preferences.py), then sent through SMTP (STARTTLS when configured) off
the posting's thread; without SMTP it stays in the outbox, which operators read with
`orcapulse-billing outbox`.
"""

from __future__ import annotations

import logging
import smtplib
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from .config import Settings
from .db import writer
from .ledger import PostedEntry
from .low_balance import Crossing
from .models import EmailAttachment, EmailOutbox, Membership, Organization, User
from .money import fmt_balance, to_units
from .notification_preferences import category_of, muted_by
from .receipts import DOCUMENTED_TYPES, Document, documents_for_entries, fmt_credits, get_document

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, engine: Engine, settings: Settings):
        self.engine, self.settings = engine, settings
        self._sending = threading.Lock()

    # -- ledger listener ----------------------------------------------------------------------

    def on_crossings(self, crossed: Sequence[Crossing]) -> None:
        for crossing in crossed:
            self.crossed(crossing)

    def on_documents(self, entries: list[PostedEntry]) -> None:
        documented = [e.id for e in entries if e.type in DOCUMENTED_TYPES]  # purchases, refunds
        if documented:
            self.document_emails(documented)

    def document_emails(self, entry_ids: list[int]) -> None:
        """The purchase email (a refund's too) with its receipt (credit note) attached: once per document."""
        from .receipt_pdf import render

        with self.engine.connect() as conn:
            found = documents_for_entries(conn, entry_ids)
            documents = [get_document(conn, document_id) for document_id, _ in found.values()]
        for document in documents:
            if document is not None:
                subject, body = document_email(document, self.settings.app_url.rstrip("/") + "/billing")
                self.notify_owners(
                    document.organization_id,
                    document.kind,
                    f"{document.kind}:{document.id}",
                    subject,
                    body,
                    attachments=[(document.filename, "application/pdf", render(document))],
                )

    def crossed(self, crossing: Crossing) -> None:
        """The low-balance email for a crossing down, the balance-recovered one for a crossing up;
        keyed by the entry, so each is written once."""
        entry, organization_id = crossing.entry, crossing.organization_id
        with self.engine.connect() as conn:
            name = conn.execute(sa.select(Organization.name).where(Organization.id == organization_id)).scalar()
        balance, threshold = fmt_balance(entry.balance_after_units), fmt_balance(crossing.threshold)
        url = self.settings.app_url.rstrip("/") + "/billing"
        if crossing.direction == "low":
            kind, subject = "low_balance", f"Low balance: {balance} left for {name}"
            body = (
                f"The credit balance of {name} is {balance}, below your {threshold} warning threshold.\n\n"
                f"New calls stop when it reaches $0.00 (calls already running finish, down to "
                f"-{fmt_balance(to_units(self.settings.grace_limit))}). Add credits: {url}\n"
            )
        else:
            kind, subject = "balance_recovered", f"Balance recovered: {balance} for {name}"
            body = (
                f"The credit balance of {name} is {balance} again, at or above your {threshold} warning "
                f"threshold. You will hear from us again if it falls below it.\n\nBilling: {url}\n"
            )
        self.notify_owners(
            organization_id, kind, f"{kind.replace('_', '-')}:{entry.account_id}:{entry.id}", subject, body
        )

    # -- outbox and delivery -------------------------------------------------------------------

    def notify_owners(
        self,
        organization_id: int,
        kind: str,
        dedupe_key: str,
        subject: str,
        body: str,
        attachments: Sequence[tuple[str, str, bytes]] = (),
    ) -> list[int]:
        """One email per owner who has not turned this kind's category off (notification_preferences),
        written to the outbox once (per dedupe key and address) with its attachments (filename,
        content type, bytes) in the same transaction."""
        query = (
            sa.select(User.email)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.organization_id == organization_id, Membership.role == "owner")
            .order_by(User.email)
        )
        category = category_of(kind)
        if category is not None:
            query = query.where(User.id.not_in(muted_by(organization_id, category)))
        with self.engine.connect() as conn:
            owners = [r[0] for r in conn.execute(query)]
        queued = []
        for address in owners:
            try:
                with writer(self.engine).begin() as conn:
                    email_id = conn.execute(
                        sa.insert(EmailOutbox)
                        .values(
                            dedupe_key=f"{dedupe_key}:{address}",
                            organization_id=organization_id,
                            kind=kind,
                            to_address=address,
                            subject=subject,
                            body=body,
                            created_at=datetime.now(UTC),
                        )
                        .returning(EmailOutbox.id)
                    ).scalar()
                    for filename, content_type, content in attachments:
                        conn.execute(
                            sa.insert(EmailAttachment).values(
                                email_id=email_id, filename=filename, content_type=content_type, content=content
                            )
                        )
                    queued.append(email_id)
            except IntegrityError:
                continue  # this notification was already written
        if queued and self.settings.smtp_host:
            threading.Thread(target=self.send_pending, name="mailer", daemon=True).start()
        return queued

    def notify_operator(self, dedupe_key: str, subject: str, body: str) -> int | None:
        """An email to whoever runs the deployment (OPERATOR_EMAIL), once per dedupe key: money that
        needs a person. Kept in the outbox either way (`orcapulse-billing outbox`, `attention`)."""
        address = self.settings.operator_email
        try:
            with writer(self.engine).begin() as conn:
                queued: int | None = conn.execute(
                    sa.insert(EmailOutbox)
                    .values(
                        dedupe_key=f"{dedupe_key}:{address}"[:200],
                        organization_id=None,
                        kind="needs_attention",
                        to_address=address,
                        subject=subject[:300],
                        body=body,
                        created_at=datetime.now(UTC),
                    )
                    .returning(EmailOutbox.id)
                ).scalar()
        except IntegrityError:
            return None
        if self.settings.smtp_host:
            threading.Thread(target=self.send_pending, name="mailer", daemon=True).start()
        return queued

    def send_pending(self) -> int:
        """Sends what the outbox holds unsent, one sender at a time; returns how many went out."""
        if not self.settings.smtp_host:
            return 0
        sent = 0
        tried: set[int] = set()  # a mail that failed is tried again by a later round, not by this one
        with self._sending:
            while True:  # the whole backlog, a hundred at a time (a long SMTP outage leaves more)
                with self.engine.connect() as conn:
                    query = sa.select(EmailOutbox).where(EmailOutbox.sent_at.is_(None))
                    if tried:
                        query = query.where(EmailOutbox.id.not_in(tried))
                    pending = conn.execute(query.order_by(EmailOutbox.id).limit(100)).all()
                if not pending:
                    break
                for mail in pending:
                    tried.add(mail.id)
                    error = None
                    try:
                        self._send(mail.to_address, mail.subject, mail.body, attachments_of(self.engine, mail.id))
                        sent += 1
                    except (OSError, smtplib.SMTPException) as exc:
                        error = str(exc)[:500]
                        log.warning("email %s to %s failed: %s", mail.id, mail.to_address, error)
                    with writer(self.engine).begin() as conn:
                        conn.execute(
                            sa.update(EmailOutbox)
                            .where(EmailOutbox.id == mail.id)
                            .values(sent_at=None if error else datetime.now(UTC), error=error)
                        )
        return sent

    def _send(self, to: str, subject: str, body: str, attachments: Sequence[tuple[str, str, bytes]] = ()) -> None:
        s = self.settings
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = s.smtp_from, to, subject
        message.set_content(body)
        for filename, content_type, content in attachments:
            maintype, _, subtype = content_type.partition("/")
            message.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=15) as smtp:
            if s.smtp_starttls:
                smtp.starttls()
            if s.smtp_user:
                smtp.login(s.smtp_user, s.smtp_password or "")
            smtp.send_message(message)


def attachments_of(engine: Engine, email_id: int) -> list[tuple[str, str, bytes]]:
    """An outbox email's attachments: (filename, content type, the exact bytes), in the order written."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(EmailAttachment.filename, EmailAttachment.content_type, EmailAttachment.content)
            .where(EmailAttachment.email_id == email_id)
            .order_by(EmailAttachment.id)
        ).all()
    return [(r.filename, r.content_type, bytes(r.content)) for r in rows]


def document_email(document: Document, billing_url: str) -> tuple[str, str]:
    """Subject and body of a receipt's (a credit note's) email."""
    number, amount = document.display_number, fmt_balance(abs(document.amount))
    added = fmt_credits(document.amount + document.bonus)
    if document.kind == "receipt":
        bonus = f" (including a {fmt_credits(document.bonus)} volume bonus)" if document.bonus else ""
        subject = f"Receipt {number}: {amount} of OrcaPulse credits for {document.billing.name}"
        lines = [
            f"Thank you for your purchase. {added} were added to the balance of {document.billing.name}{bonus}.",
            "",
            f"Receipt: {number}",
            f"Amount paid: {amount} {document.currency.upper()}",
            f"Payment method: {document.payment_method}",
        ]
    elif document.amount >= 0:
        subject = f"Credit note {number}: {amount} refunded to {document.billing.name}"
        lines = [
            f"A refund of {amount} {document.currency.upper()} was made"
            + (f" for receipt {document.refers_to_number}" if document.refers_to_number else "")
            + f"; {added} were taken back from the balance.",
            "",
            f"Credit note: {number}",
            f"Refunded to: {document.payment_method}",
        ]
    else:
        subject = f"Credit note {number}: a refund of {amount} did not go through"
        lines = [
            f"The refund of {amount} {document.currency.upper()}"
            + (f" for receipt {document.refers_to_number}" if document.refers_to_number else "")
            + f" did not go through; {fmt_credits(-(document.amount + document.bonus))} were returned to the balance.",
            "",
            f"Credit note: {number}",
        ]
    lines += [
        f"Date: {document.issued_at:%Y-%m-%d %H:%M} UTC",
        "",
        f"The {document.title.lower()} is attached as a PDF; owners and admins can download it again from the "
        f"transaction history: {billing_url}",
    ]
    return subject, "\n".join(lines) + "\n"
