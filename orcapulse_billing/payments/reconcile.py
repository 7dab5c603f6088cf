"""Reconciliation: every paid charge of ours credited exactly once, whatever was lost on the way.

Reads what Stripe holds (recent PaymentIntents and Checkout Sessions) and settles what our records
miss: a succeeded saved-card charge whose posting never happened (an answer lost to a timeout, a
process killed between charge and posting) is credited, keyed by its PaymentIntent, through the same
conditional claim as every other path, so running it twice, or alongside a webhook, credits once. A
failed one is marked failed; an attempt that never reached Stripe is closed; a paid checkout whose
webhook never came is credited. What matches nothing of ours goes to the needs-attention list.
Run by the job every 5 minutes (and at start-up) under the job lock, and by `orcapulse-billing reconcile`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..models import CheckoutSession
from .flow import feature_of, now, table_of
from .stripe_events import StripeEvents
from .stripe_gateway import IntentSummary
from .stripe_purchases import StripePurchases

log = logging.getLogger(__name__)
DEFAULT_WINDOW = timedelta(days=3)
NEVER_REACHED = timedelta(minutes=10)  # an attempt Stripe has no PaymentIntent for after this never charged
FAILED_INTENT = ("requires_payment_method", "canceled")


@dataclass
class ReconcileReport:
    credited: list[str] = field(default_factory=list)  # PaymentIntents and sessions credited now
    failed: list[str] = field(default_factory=list)  # attempts marked failed (declined, or never sent)
    attention: list[str] = field(default_factory=list)  # paid, but matching nothing we can credit
    in_order: int = 0  # payments that needed nothing
    dry_run: bool = False

    def lines(self) -> list[str]:
        verb = "would " if self.dry_run else ""
        return (
            [f"{verb}credit {ref}" for ref in self.credited]
            + [f"{verb}mark failed {ref}" for ref in self.failed]
            + [f"needs attention {ref}" for ref in self.attention]
            + [
                (
                    f"would credit {len(self.credited)}, would mark {len(self.failed)} failed"
                    if self.dry_run
                    else f"{len(self.credited)} credited, {len(self.failed)} marked failed"
                )
                + f", {len(self.attention)} need attention, {self.in_order} in order"
            ]
        )


class Reconciler:
    def __init__(self, purchases: StripePurchases, *, never_reached: timedelta = NEVER_REACHED):
        self.purchases, self.never_reached = purchases, never_reached
        self.engine, self.gateway = purchases.engine, purchases.gateway

    def run(self, since: datetime | None = None, *, dry_run: bool = False) -> ReconcileReport:
        since = since or now() - DEFAULT_WINDOW
        report = ReconcileReport(dry_run=dry_run)
        intents = self.gateway.recent_payment_intents(int(since.timestamp()))
        seen_keys = {pi.metadata.get("orcapulse_key") for pi in intents}
        for pi in intents:
            if pi.metadata.get("orcapulse_key"):
                self._saved_card_charge(pi, report, dry_run)
        self._attempts_never_sent(since, seen_keys, report, dry_run)
        for session in self.gateway.recent_checkout_sessions(int(since.timestamp())):
            self._checkout(session, report, dry_run)
        for line in report.lines()[-1:]:
            log.info("reconcile: %s", line)
        return report

    def _row_for_key(self, key: str) -> Any:
        t = table_of(CheckoutSession)
        with self.engine.connect() as conn:
            return conn.execute(sa.select(t).where(t.c.provider == "stripe", t.c.idempotency_key == key)).first()

    def _saved_card_charge(self, pi: IntentSummary, report: ReconcileReport, dry_run: bool) -> None:
        row = self._row_for_key(pi.metadata["orcapulse_key"])
        if row is None or pi.status not in ("succeeded", *FAILED_INTENT):
            if row is None and pi.status == "succeeded":
                report.attention.append(pi.id)
                if not dry_run:  # through the event path: recorded once, the operator emailed
                    self._as_event(f"reconcile:{pi.id}", "payment_intent.succeeded", _intent_object(pi))
            else:
                report.in_order += 1
            return
        if pi.status == "succeeded":
            if row.status == "completed":
                report.in_order += 1
                return
            report.credited.append(pi.id)
            if not dry_run:
                self.purchases.settle_charge(
                    row.id,
                    pi.id,
                    amount_cents=pi.amount_cents,
                    currency=pi.currency,
                    feature=feature_of(row),
                )
            return
        if row.status in ("charging", "unknown"):  # declined or cancelled at Stripe
            report.failed.append(pi.id)
            if not dry_run:
                self.purchases._mark(row.id, "failed", f"the payment did not succeed ({pi.status})")
        else:
            report.in_order += 1

    def _attempts_never_sent(
        self, since: datetime, seen: set[str | None], report: ReconcileReport, dry_run: bool
    ) -> None:
        """Attempts Stripe has no PaymentIntent for, long after they started: the request never
        reached it (the process died before the call, or the connection failed before sending)."""
        t = table_of(CheckoutSession)
        cutoff = now() - self.never_reached
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.c.id, t.c.idempotency_key, t.c.created_at).where(
                    t.c.provider == "stripe",
                    t.c.status.in_(("charging", "unknown")),
                    t.c.created_at >= since,
                    t.c.created_at < cutoff,
                )
            ).all()
        for row in rows:
            if row.idempotency_key in seen:
                continue
            report.failed.append(row.idempotency_key)
            if not dry_run:
                self.purchases._mark(
                    row.id, "failed", "the payment never reached the payment provider: nothing was charged"
                )

    def _checkout(self, session: dict[str, Any], report: ReconcileReport, dry_run: bool) -> None:
        t = table_of(CheckoutSession)
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.c.status).where(t.c.provider == "stripe", t.c.provider_id == session.get("id"))
            ).first()
        if row is not None and row.status == "open" and session.get("status") == "expired":
            report.failed.append(str(session["id"]))  # its checkout.session.expired never came
            if not dry_run:
                self._as_event(f"reconcile:{session['id']}:expired", "checkout.session.expired", session)
            return
        if row is None or row.status == "completed" or session.get("payment_status") != "paid":
            report.in_order += 1
            return
        report.credited.append(str(session["id"]))
        if not dry_run:
            self._as_event(f"reconcile:{session['id']}", "checkout.session.completed", session)

    def _as_event(self, event_id: str, kind: str, obj: dict[str, Any]) -> str:
        """What Stripe told us by listing, applied exactly as its webhook would be (and recorded as such)."""
        return StripeEvents(self.purchases).handle({"id": event_id, "type": kind, "data": {"object": obj}})


def _intent_object(pi: IntentSummary) -> dict[str, Any]:
    return {
        "id": pi.id,
        "object": "payment_intent",
        "status": pi.status,
        "amount": pi.amount_cents,
        "currency": pi.currency,
        "metadata": pi.metadata,
        "created": pi.created,
    }
