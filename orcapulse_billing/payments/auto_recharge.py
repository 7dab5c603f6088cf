"""Auto-recharge: when the balance drops below the owner's threshold, buy the configured amount
with the saved card, off-session.

Triggers: a posting that leaves the balance below the threshold (a ledger listener), GET
/balance, and a periodic sweep. Whatever fires, and however many at once on however many
workers, one conditional UPDATE claims the policy for a short while: only that trigger charges,
after checking the balance again. The purchase entry carries autoRecharge: true. Owners get an
email on success and on failure; after 3 failures in a row it turns itself off and says why.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col

from ..auth import Principal
from ..db import writer
from ..ledger import DbRow, PostedEntry, get_account
from ..models import AutoRechargePolicy, CheckoutSession, CreditAccount, PaymentMethod, User
from ..money import fmt_balance, from_units, to_units
from .flow import Choice, PurchaseError, table_of
from .stripe_gateway import PaymentError
from .stripe_purchases import StripePurchases

if TYPE_CHECKING:
    from ..notifications import Notifier

log = logging.getLogger(__name__)
MIN_THRESHOLD = Decimal(5)
MIN_AMOUNT = Decimal(20)
MAX_AMOUNT = Decimal(1000)
MAX_THRESHOLD = Decimal(10_000)
CLAIM_FOR = timedelta(minutes=2)
THRESHOLD_CACHE_SECONDS = 30  # a change made on another worker is seen this late (the sweep covers it)
MAX_FAILURES = 3


@dataclass(frozen=True)
class Policy:
    enabled: bool
    threshold: Decimal
    amount: Decimal
    monthly_cap: Decimal | None
    consecutive_failures: int
    disabled_reason: str | None


def _now() -> datetime:
    return datetime.now(UTC)


class AutoRecharger:
    def __init__(self, engine: Engine, purchases_factory: Callable[[], StripePurchases], notifier: Notifier):
        self.engine, self.purchases_factory, self.notifier = engine, purchases_factory, notifier
        # account -> (threshold units of an enabled policy, or None; when to look again): keeps the
        # posting path free of lookups for the many accounts without auto-recharge
        self._thresholds: dict[int, tuple[int | None, float]] = {}

    def wants(self, entries: Iterable[PostedEntry]) -> bool:
        """Cheap check on the posting's thread: might one of these debits need a recharge?"""
        return any(
            e.amount_units < 0
            and (threshold := self._threshold(e.account_id)) is not None  # one lookup: it can expire in between
            and e.balance_after_units < threshold
            for e in entries
        )

    def _threshold(self, account_id: int) -> int | None:
        cached = self._thresholds.get(account_id)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(col(AutoRechargePolicy.threshold))
                .join(CreditAccount, col(CreditAccount.organization_id) == col(AutoRechargePolicy.organization_id))
                .where(col(CreditAccount.id) == account_id, col(AutoRechargePolicy.enabled).is_(True))
            ).first()
        threshold = row[0] if row else None
        self._thresholds[account_id] = (threshold, time.monotonic() + THRESHOLD_CACHE_SECONDS)
        return threshold

    # -- settings -------------------------------------------------------------------------------

    def get(self, organization_id: int) -> Policy:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(AutoRechargePolicy).where(col(AutoRechargePolicy.organization_id) == organization_id)
            ).first()
        if row is None:
            return Policy(False, Decimal(10), Decimal(50), None, 0, None)
        return Policy(
            row.enabled,
            from_units(row.threshold),
            from_units(row.amount),
            from_units(row.monthly_cap) if row.monthly_cap is not None else None,
            row.consecutive_failures,
            row.disabled_reason,
        )

    def update(
        self,
        principal: Principal,
        *,
        enabled: bool,
        threshold: Decimal,
        amount: Decimal,
        monthly_cap: Decimal | None,
        ip: str | None,
    ) -> Policy:
        from ..auth import audit

        if not MIN_THRESHOLD <= threshold <= MAX_THRESHOLD:
            raise PurchaseError(
                "invalid_request", f"the threshold must be {MIN_THRESHOLD} to {MAX_THRESHOLD:,} credits"
            )
        if not MIN_AMOUNT <= amount <= MAX_AMOUNT or amount != amount.quantize(Decimal("0.01")):
            raise PurchaseError(
                "invalid_request", f"the amount must be ${MIN_AMOUNT} to ${MAX_AMOUNT:,}, in whole cents"
            )
        if monthly_cap is not None and monthly_cap < amount:
            raise PurchaseError("invalid_request", "the monthly cap must be at least one recharge amount")
        with writer(self.engine).begin() as conn:
            has_card = conn.execute(
                sa.select(col(PaymentMethod.id)).where(col(PaymentMethod.organization_id) == principal.organization_id)
            ).first()
            if enabled and not has_card:
                raise PurchaseError("no_saved_card", "auto-recharge needs a saved card: save one first")
            values = dict(
                enabled=enabled,
                threshold=to_units(threshold),
                amount=to_units(amount),
                monthly_cap=to_units(monthly_cap) if monthly_cap is not None else None,
                owner_user_id=principal.user_id,
                updated_at=_now(),
            )
            if enabled:
                values.update(consecutive_failures=0, disabled_reason=None)
            t = table_of(AutoRechargePolicy)
            if (
                conn.execute(
                    sa.update(t).where(t.c.organization_id == principal.organization_id).values(**values)
                ).rowcount
                == 0
            ):
                conn.execute(sa.insert(t).values(organization_id=principal.organization_id, **values))
            self._thresholds.clear()
            audit(
                conn,
                "auto_recharge_updated",
                organization_id=principal.organization_id,
                user_id=principal.user_id,
                ip=ip,
                enabled=enabled,
                threshold=str(threshold),
                amount=str(amount),
                monthly_cap=str(monthly_cap) if monthly_cap is not None else None,
            )
        return self.get(principal.organization_id)

    # -- triggers ------------------------------------------------------------------------------

    def on_postings(self, entries: Iterable[PostedEntry]) -> None:
        """Ledger listener: did a debit leave a balance below what any threshold can be?"""
        for account_id in {
            e.account_id for e in entries if e.amount_units < 0 and e.balance_after_units < to_units(MAX_THRESHOLD)
        }:
            with self.engine.connect() as conn:
                organization_id = get_account(conn, account_id=account_id).organization_id
            self.maybe_recharge(organization_id)

    def sweep(self) -> int:
        with self.engine.connect() as conn:
            orgs = [
                r[0]
                for r in conn.execute(
                    sa.select(col(AutoRechargePolicy.organization_id)).where(col(AutoRechargePolicy.enabled).is_(True))
                )
            ]
        return sum(1 for org in orgs if self.maybe_recharge(org) == "charged")

    def maybe_recharge(self, organization_id: int) -> str:
        t = table_of(AutoRechargePolicy)
        with self.engine.connect() as conn:
            policy = conn.execute(sa.select(t).where(t.c.organization_id == organization_id)).first()
            if policy is None or not policy.enabled:
                return "off"
            if get_account(conn, organization_id=organization_id).balance_units >= policy.threshold:
                return "not_needed"
        now = _now()
        with writer(self.engine).begin() as conn:  # the claim: one trigger wins, on any worker
            claimed = conn.execute(
                sa.update(t)
                .where(
                    t.c.organization_id == organization_id,
                    t.c.enabled.is_(True),
                    sa.or_(t.c.claimed_until.is_(None), t.c.claimed_until < now),
                )
                .values(claimed_until=now + CLAIM_FOR, attempts=t.c.attempts + 1)
            ).rowcount
        if not claimed:
            return "in_flight"
        try:
            return self._recharge(organization_id)
        finally:
            with writer(self.engine).begin() as conn:
                conn.execute(sa.update(t).where(t.c.organization_id == organization_id).values(claimed_until=None))

    def _recharge(self, organization_id: int) -> str:
        t = table_of(AutoRechargePolicy)
        with self.engine.connect() as conn:
            policy = conn.execute(sa.select(t).where(t.c.organization_id == organization_id)).one()
            balance = get_account(conn, organization_id=organization_id).balance_units
            owner = conn.execute(sa.select(col(User.email)).where(col(User.id) == policy.owner_user_id)).scalar()
            month_start = _now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            this_month = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(col(CheckoutSession.amount)), 0)).where(
                    col(CheckoutSession.organization_id) == organization_id,
                    col(CheckoutSession.mode) == "auto",
                    col(CheckoutSession.status).in_(("completed", "charging", "unknown")),
                    col(CheckoutSession.created_at) >= month_start,
                )
            ).scalar()
        if balance >= policy.threshold:
            return "not_needed"  # another trigger's recharge landed first
        request_key, retrying = self._request_key(organization_id, policy.attempts)
        # a retry of an unsettled charge adds nothing: it is already counted in this month's sum
        if not retrying and policy.monthly_cap is not None and this_month + policy.amount > policy.monthly_cap:
            return "capped"
        amount = from_units(policy.amount)
        principal = Principal(policy.owner_user_id, owner or "", organization_id, "owner", "auto_recharge")
        try:
            entries = self.purchases_factory().quick_purchase(
                principal,
                Choice(None, amount, amount, Decimal(0), Decimal(0)),
                payment_method_id=None,
                request_key=request_key,
                ip=None,
                auto_recharge=True,
            )
        except PurchaseError as exc:
            if exc.code == "payment_in_progress":
                return "in_flight"  # another charge of this organization awaits confirmation
            return self._failed(organization_id, policy, exc.message)
        except PaymentError as exc:
            if exc.code == "payment_pending":
                return "pending"  # charged or not, the webhook or the reconcile job settles it; not a failure
            return self._failed(organization_id, policy, exc.message)
        with writer(self.engine).begin() as conn:
            conn.execute(sa.update(t).where(t.c.organization_id == organization_id).values(consecutive_failures=0))
        self.notifier.notify_owners(
            organization_id,
            "auto_recharge_succeeded",
            f"auto-recharge:{organization_id}:{policy.attempts}:ok",
            f"Auto-recharge added {fmt_balance(policy.amount)} of credits",
            f"Your balance dropped below {fmt_balance(policy.threshold)}, so we charged your saved card "
            f"{fmt_balance(policy.amount)}. New balance: {fmt_balance(entries[-1].balance_after_units)}.\n",
        )
        return "charged"

    def _request_key(self, organization_id: int, attempts: int) -> tuple[str, bool]:
        """The key of this organization's unsettled auto-recharge if there is one (a retry of the same
        charge, never a second one: True), else a new one for this claim (False)."""
        prefix = f"auto-{organization_id}-"
        with self.engine.connect() as conn:
            unsettled = conn.execute(
                sa.select(col(CheckoutSession.idempotency_key)).where(
                    col(CheckoutSession.organization_id) == organization_id,
                    col(CheckoutSession.mode) == "auto",
                    col(CheckoutSession.status).in_(("charging", "unknown")),
                )
            ).scalar()
        if unsettled and unsettled.startswith(prefix):
            return unsettled.removeprefix(prefix), True
        return f"{attempts}-{uuid.uuid4().hex[:12]}", False

    def _failed(self, organization_id: int, policy: DbRow, reason: str) -> str:
        t = table_of(AutoRechargePolicy)
        failures = policy.consecutive_failures + 1
        disable = failures >= MAX_FAILURES
        with writer(self.engine).begin() as conn:
            conn.execute(
                sa.update(t)
                .where(t.c.organization_id == organization_id)
                .values(
                    consecutive_failures=failures,
                    **(
                        {"enabled": False, "disabled_reason": f"turned off after {failures} failed charges: {reason}"}
                        if disable
                        else {}
                    ),
                )
            )
        subject = "Auto-recharge is now off after 3 failed charges" if disable else f"Auto-recharge failed: {reason}"
        self.notifier.notify_owners(
            organization_id,
            "auto_recharge_failed",
            f"auto-recharge:{organization_id}:{policy.attempts}:failed",
            subject,
            f"We could not charge your saved card {fmt_balance(policy.amount)}: {reason}.\n"
            + (
                "Auto-recharge is turned off; update your card and turn it back on in Billing & Credits.\n"
                if disable
                else f"We will try again when the balance is below {fmt_balance(policy.threshold)} "
                f"({failures} of {MAX_FAILURES} attempts).\n"
            ),
        )
        log.warning(
            "auto-recharge for organization %s failed (%s of %s): %s", organization_id, failures, MAX_FAILURES, reason
        )
        return "disabled" if disable else "failed"
