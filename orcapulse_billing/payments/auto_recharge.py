"""Auto-recharge: when the balance drops below the owner's threshold, charge the saved card
off-session for what closes the gap (at least the configured amount).

Triggers: a posting that leaves the balance below the threshold (a ledger listener), GET /balance,
a periodic sweep, and an owner turning it on or changing it while the balance is already low (one
recharge at once). Whatever fires, and however many at once on however many workers, one conditional
UPDATE claims the policy for a short while, and claims nothing while a backoff or the daily limit
runs (`next_attempt_at`): only the trigger that claims it may charge, after reading everything again.
The rules (how much, when not) are in `auto_recharge_policy`; what follows a charge (emails, backoff,
the pause after 3 declines, the pause for a 3-D Secure confirmation) in `auto_recharge_outcomes`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col

from ..auth import Principal
from ..db import writer
from ..ledger import PostedEntry, get_account
from ..models import AutoRechargePolicy, CheckoutSession, CreditAccount, PaymentMethod, User
from ..money import from_units, to_units
from .auto_recharge_outcomes import Outcomes
from .auto_recharge_policy import (
    CLAIM_FOR,
    DAILY_LIMIT,
    DAY,
    MAX_AMOUNT,
    MAX_THRESHOLD,
    MIN_AMOUNT,
    MIN_THRESHOLD,
    UNITS_PER_CENT,
    Policy,
    aware,
    charges_since,
    in_flight_units,
    now,
    policy_row,
    read_policy,
    recharge_amount,
)
from .flow import Choice, PurchaseError, table_of
from .stripe_gateway import PaymentError
from .stripe_purchases import StripePurchases

if TYPE_CHECKING:
    from ..notifications import Notifier

THRESHOLD_CACHE_SECONDS = 30  # a change made on another worker is seen this late (the sweep covers it)


class AutoRecharger(Outcomes):
    def __init__(
        self,
        engine: Engine,
        purchases_factory: Callable[[], StripePurchases],
        notifier: Notifier,
        *,
        announce: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], datetime] = now,
    ):
        """`announce`: tells the organization's open pages that its auto-recharge changed (the event
        bus); `clock`: the time the backoff and the daily limit are judged by."""
        self.engine, self.purchases_factory, self.notifier = engine, purchases_factory, notifier
        self.announce, self.clock = announce, clock
        # account -> (threshold units of an enabled policy, or None; when to look again): keeps the
        # posting path free of lookups for the many accounts without auto-recharge
        self._thresholds: dict[int, tuple[int | None, float]] = {}

    def wants(self, entries: Iterable[PostedEntry]) -> bool:
        """Cheap check on the posting's thread: might one of these debits need a recharge? That is, does
        an account's lowest balance after one of its debits fall below its threshold (one look-up per
        account, not per entry: a batch brings a thousand debits of one account)."""
        lowest: dict[int, int] = {}
        for e in entries:
            if e.amount_units < 0 and e.balance_after_units < lowest.get(e.account_id, e.balance_after_units + 1):
                lowest[e.account_id] = e.balance_after_units
        return any(
            (threshold := self._threshold(account_id)) is not None and balance < threshold
            for account_id, balance in lowest.items()
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
            return read_policy(conn, organization_id, self.clock())

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
        """An owner's settings. Turning it on, or saving it on, while the balance is below the
        threshold recharges once at once (`Policy.recharge` says how that went): an owner's save
        also ends a backoff and a pause, never the daily limit, and any save (on or off) means a charge
        still awaiting 3-D Secure no longer turns it back on when confirmed (it is still credited)."""
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
            values: dict[str, Any] = dict(
                enabled=enabled,
                threshold=to_units(threshold),
                amount=to_units(amount),
                monthly_cap=to_units(monthly_cap) if monthly_cap is not None else None,
                owner_user_id=principal.user_id,
                updated_at=now(),
                # the owner decides now: a payment still awaiting confirmation no longer turns it back on
                action_payment_intent_id=None,
                action_url=None,
            )
            if enabled:
                values.update(consecutive_failures=0, disabled_reason=None, last_error=None)
            t = table_of(AutoRechargePolicy)
            # an owner's save ends a decline's backoff, not the daily limit (set with no failures)
            ends_backoff = {"next_attempt_at": sa.case((t.c.consecutive_failures > 0, None), else_=t.c.next_attempt_at)}
            if (
                conn.execute(
                    sa.update(t)
                    .where(t.c.organization_id == principal.organization_id)
                    .values(**values, **(ends_backoff if enabled else {}))
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
        # pages open on it (another owner editing them among them) see the new settings live
        self._announce_change(principal.organization_id)
        outcome = None
        if enabled:
            with self.engine.connect() as conn:
                low = get_account(conn, organization_id=principal.organization_id).balance_units < to_units(threshold)
            outcome = self.maybe_recharge(principal.organization_id) if low else None
        return replace(self.get(principal.organization_id), recharge=outcome)

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
        """What this trigger did: `off`, `not_needed`, `waiting` (a backoff or the daily limit runs),
        `in_flight` (another trigger or payment is at it), or what its charge did: `charged`,
        `pending`, `failed`, `disabled` (paused after 3 declines), `requires_action` (paused until
        the owner confirms it with the bank), `daily_limit`, `capped` (the monthly cap)."""
        t = table_of(AutoRechargePolicy)
        at = self.clock()
        with self.engine.connect() as conn:
            policy = policy_row(conn, organization_id)
            if policy is None or not policy.enabled:
                return "off"
            if get_account(conn, organization_id=organization_id).balance_units >= policy.threshold:
                return "not_needed"
        not_before = aware(policy.next_attempt_at)
        if not_before is not None and not_before > at:
            return "waiting"
        with writer(self.engine).begin() as conn:  # the claim: one trigger wins, on any worker
            claimed = conn.execute(
                sa.update(t)
                .where(
                    t.c.organization_id == organization_id,
                    t.c.enabled.is_(True),
                    sa.or_(t.c.claimed_until.is_(None), t.c.claimed_until < at),
                    sa.or_(t.c.next_attempt_at.is_(None), t.c.next_attempt_at <= at),
                )
                .values(claimed_until=at + CLAIM_FOR, attempts=t.c.attempts + 1)
            ).rowcount
        if not claimed:
            return "in_flight"
        try:
            return self._recharge(organization_id, at)
        finally:
            with writer(self.engine).begin() as conn:
                conn.execute(sa.update(t).where(t.c.organization_id == organization_id).values(claimed_until=None))

    def _recharge(self, organization_id: int, at: datetime) -> str:
        """Under the claim: everything read again, then at most one charge."""
        with self.engine.connect() as conn:
            policy = policy_row(conn, organization_id)
            balance = get_account(conn, organization_id=organization_id).balance_units
            owner = conn.execute(sa.select(col(User.email)).where(col(User.id) == policy.owner_user_id)).scalar()
            month_start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            this_month = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(col(CheckoutSession.amount)), 0)).where(
                    col(CheckoutSession.organization_id) == organization_id,
                    col(CheckoutSession.mode) == "auto",
                    col(CheckoutSession.status).in_(("completed", "charging", "unknown")),
                    col(CheckoutSession.created_at) >= month_start,
                )
            ).scalar()
            in_flight = in_flight_units(conn, organization_id)
            charges, first_charge = charges_since(conn, organization_id, at - DAY)
            unsettled = self._unsettled(conn, organization_id)
        if not policy.enabled:
            return "off"  # an owner turned it off since the claim
        if balance >= policy.threshold:
            return "not_needed"  # another trigger's recharge landed first
        if unsettled is not None:  # a retry of the same charge (same key and amount), never a second one
            request_key, units = unsettled
        else:
            units = recharge_amount(
                balance=balance, in_flight=in_flight, threshold=policy.threshold, amount=policy.amount
            )
            if units == 0:
                return "in_flight"  # a payment being confirmed brings it back up
            if charges >= DAILY_LIMIT:
                return self._daily_limit(organization_id, first_charge or at, charges)
            if policy.monthly_cap is not None:
                left = policy.monthly_cap - this_month
                if left < policy.amount:
                    return "capped"
                units = min(units, left - left % UNITS_PER_CENT)
            request_key = f"{policy.attempts}-{uuid.uuid4().hex[:12]}"
        amount = from_units(units)
        principal = Principal(policy.owner_user_id, owner or "", organization_id, "owner", "auto_recharge")
        try:
            purchases = self.purchases_factory()
            entries = purchases.quick_purchase(
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
            return self._failed(organization_id, policy, units, exc.message)
        except PaymentError as exc:
            if exc.code == "payment_pending":
                return "pending"  # charged or not, the webhook or the reconcile job settles it; not a failure
            if exc.code == "authentication_required":
                return self._needs_authentication(organization_id, policy, units, exc, request_key)
            return self._failed(organization_id, policy, units, exc.message)
        return self._charged(organization_id, policy, units, entries[-1].balance_after_units)

    @staticmethod
    def _unsettled(conn: Any, organization_id: int) -> tuple[str, int] | None:
        """This organization's auto-recharge charge awaiting confirmation: its request key and amount."""
        prefix = f"auto-{organization_id}-"
        row = conn.execute(
            sa.select(col(CheckoutSession.idempotency_key), col(CheckoutSession.amount)).where(
                col(CheckoutSession.organization_id) == organization_id,
                col(CheckoutSession.mode) == "auto",
                col(CheckoutSession.status).in_(("charging", "unknown")),
            )
        ).first()
        if row is None or not (row.idempotency_key or "").startswith(prefix):
            return None
        return row.idempotency_key.removeprefix(prefix), int(row.amount)
