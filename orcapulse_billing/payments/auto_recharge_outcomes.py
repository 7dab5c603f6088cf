"""What follows an auto-recharge charge, under the claim that made it: the policy's state (the backoff,
the pause after 3 declines in a row, the pause for a 3-D Secure confirmation, the daily limit) and
the owners' emails: on success; on the first decline of a run, with the reason and the next
attempt's time (not on every decline); when it pauses, saying why; once when the daily limit stops
it; and, for a charge the bank wants confirmed, a link to the provider's page to confirm it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .. import webhooks
from ..config import get_settings
from ..db import writer
from ..models import AutoRechargePolicy
from ..money import fmt4, fmt_balance
from .auto_recharge_policy import DAILY_LIMIT, DAY, MAX_FAILURES, backoff_after, now
from .flow import table_of
from .stripe_gateway import PaymentError

if TYPE_CHECKING:
    from ..notifications import Notifier
    from .stripe_purchases import StripePurchases

log = logging.getLogger("orcapulse_billing.payments.auto_recharge")


def when(moment: datetime) -> str:
    """'Dec 2, 2026 21:03 UTC', as emails and the CLI show times."""
    return f"{moment:%b} {moment.day}, {moment:%Y %H:%M} UTC"


class Outcomes:
    """AutoRecharger's half that records what a charge did (it is mixed into AutoRecharger)."""

    engine: Engine
    notifier: Notifier
    purchases_factory: Callable[[], StripePurchases]
    announce: Callable[[dict[str, Any]], None] | None
    clock: Callable[[], datetime]

    def _set(self, organization_id: int, *, also: Callable[[Connection], None] | None = None, **values: Any) -> None:
        """Updates the policy; `also` writes more in the same transaction (a webhook's outbox message)."""
        t = table_of(AutoRechargePolicy)
        with writer(self.engine).begin() as conn:
            conn.execute(sa.update(t).where(t.c.organization_id == organization_id).values(**values))
            if also is not None:
                also(conn)
        self._announce_change(organization_id)

    def _announce_change(self, organization_id: int) -> None:
        """After the policy's commit: the open pages show the new state (next attempt, pause, settings)."""
        if self.announce is not None:
            try:
                # each announcement its own (the pages' shared reads are keyed by what they follow)
                self.announce({"organization_id": organization_id, "type": "auto_recharge", "id": uuid.uuid4().hex})
            except Exception:  # the page's heartbeat catches up
                log.exception("announcing the auto-recharge of organization %s failed", organization_id)

    def _charged(self, organization_id: int, policy: Any, units: int, balance_after: int) -> str:
        self._set(organization_id, consecutive_failures=0, next_attempt_at=None, last_error=None)
        self.notifier.notify_owners(
            organization_id,
            "auto_recharge_succeeded",
            f"auto-recharge:{organization_id}:{policy.attempts}:ok",
            f"Auto-recharge added {fmt_balance(units)} of credits",
            f"Your balance dropped below {fmt_balance(policy.threshold)}, so we charged your saved card "
            f"{fmt_balance(units)}"
            + (" (your auto-recharge amount was not enough to bring it back up)" if units > policy.amount else "")
            + f". New balance: {fmt_balance(balance_after)}.\n",
        )
        return "charged"

    def _failed(self, organization_id: int, policy: Any, units: int, reason: str) -> str:
        """A decline (or any failure): wait before the next attempt, and pause after MAX_FAILURES in a row."""
        failures = policy.consecutive_failures + 1
        pause = failures >= MAX_FAILURES
        next_at = None if pause else self.clock() + backoff_after(failures)
        event = {
            "organization_id": organization_id,
            "amount": fmt4(units),
            "reason": reason,
            "consecutive_failures": failures,
            "paused": pause,
            "next_attempt_at": next_at.isoformat() if next_at else None,
        }

        def outbox(conn: Connection) -> None:  # the auto_recharge.failed webhook, with the policy's update
            webhooks.emit(
                conn,
                organization_id,
                "auto_recharge.failed",
                event,
                key=f"{organization_id}:{policy.attempts}:{failures}",
            )

        self._set(
            organization_id,
            also=outbox,
            consecutive_failures=failures,
            last_error=reason[:300],
            next_attempt_at=next_at,
            **(
                {
                    "enabled": False,
                    "disabled_reason": f"paused after {failures} failed charges in a row: {reason}"[:300],
                }
                if pause
                else {}
            ),
        )
        log.warning(
            "auto-recharge for organization %s failed (%s of %s): %s", organization_id, failures, MAX_FAILURES, reason
        )
        why = reason.rstrip(". ")
        if pause:
            self.notifier.notify_owners(
                organization_id,
                "auto_recharge_failed",
                f"auto-recharge:{organization_id}:{policy.attempts}:failed",
                f"Auto-recharge is now off after {failures} failed charges",
                f"We could not charge your saved card {fmt_balance(units)}: {why}.\n"
                f"After {failures} failed charges in a row, auto-recharge is paused. Update your card and turn it "
                "back on in Billing & Credits; buying credits by hand does not turn it back on.\n",
            )
            return "disabled"
        if failures == 1 and next_at is not None:  # the first decline of a run; the next ones are only logged
            self.notifier.notify_owners(
                organization_id,
                "auto_recharge_failed",
                f"auto-recharge:{organization_id}:{policy.attempts}:failed",
                f"Auto-recharge failed: {reason}",
                f"We could not charge your saved card {fmt_balance(units)}: {why}.\n"
                f"We will try again at {when(next_at)} if the balance is still below "
                f"{fmt_balance(policy.threshold)}; after {MAX_FAILURES} failed charges in a row auto-recharge "
                "pauses. Check your card in Billing & Credits, or add credits by hand.\n",
            )
        return "failed"

    def _needs_authentication(
        self, organization_id: int, policy: Any, units: int, exc: PaymentError, request_key: str
    ) -> str:
        """The bank wants the card holder to confirm this charge (3-D Secure): auto-recharge pauses,
        and the owners get a link to confirm it on the provider's page. Confirming it credits it and
        turns auto-recharge back on (auto_recharge_policy.resume_confirmed)."""
        url = None
        if exc.payment_intent_id:
            try:
                status, url = self.purchases_factory().gateway.authentication_page(
                    exc.payment_intent_id,
                    payment_method_id=exc.payment_method_id,
                    return_url=get_settings().app_url.rstrip("/") + "/billing",  # back to the page, signed in
                    idempotency_key=f"auto-{organization_id}-{request_key}-authenticate",
                )
            except PaymentError as error:
                log.warning("could not ready %s for confirmation: %s", exc.payment_intent_id, error.message)
            else:
                if status in ("succeeded", "processing"):  # it went through after all: credited like any charge
                    return "pending"  # (its webhook, or the reconcile job), and auto-recharge stays on
        amount = fmt_balance(units)
        self._set(
            organization_id,
            enabled=False,
            disabled_reason=f"paused: your bank asks you to confirm the auto-recharge payment of {amount} "
            "(3-D Secure); confirming it turns auto-recharge back on",
            action_payment_intent_id=exc.payment_intent_id,
            action_url=url,
            next_attempt_at=None,
            last_error=exc.message[:300],
        )
        link = (
            f"Confirm it on the payment provider's page:\n\n  {url}\n\n"
            if url
            else "Open Billing & Credits to add credits by hand or turn auto-recharge back on.\n\n"
        )
        self.notifier.notify_owners(
            organization_id,
            "auto_recharge_action_required",
            f"auto-recharge:{organization_id}:authenticate:{exc.payment_intent_id or policy.attempts}",
            f"Confirm your auto-recharge payment of {amount}",
            f"Your bank asks you to confirm the auto-recharge payment of {amount} (3-D Secure). "
            f"Auto-recharge is paused until then.\n\n{link}"
            "Once you confirm it, the credits are added and auto-recharge turns back on.\n",
        )
        return "requires_action"

    def _daily_limit(self, organization_id: int, first_charge: datetime, charges: int) -> str:
        """DAILY_LIMIT charges in the last 24 hours: none before the first of them is a day old."""
        until = max(first_charge + DAY, now())
        self._set(organization_id, next_attempt_at=until)
        self.notifier.notify_owners(
            organization_id,
            "auto_recharge_daily_limit",
            f"auto-recharge:{organization_id}:daily-limit:{first_charge.isoformat()}",
            "Auto-recharge reached its daily limit",
            f"Auto-recharge made {charges} charges in the last 24 hours, the most it makes in a day. The next "
            f"can be made at {when(until)}. If you need credits sooner, add them by hand in Billing & Credits.\n",
        )
        log.warning(
            "auto-recharge for organization %s: daily limit of %s charges reached", organization_id, DAILY_LIMIT
        )
        return "daily_limit"
