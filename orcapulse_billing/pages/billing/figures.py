"""What the billing page shows of an organization for one view of its history, as the values of
BillingState's vars: computed once from one read (data._load) and the same for every tab showing that
view. A tab's own reload applies them to its state; the live fan-out (fanout.py) sends them, computed
once per worker, to every tab of the organization showing that view. No Reflex state here.

Everything a posting can change is a plain var here, with what derives from it (the range text, the
page buttons) computed here too: a value derived in a Reflex computed var would be recomputed from
the tab's stored state, which the fan-out does not write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...components.pagination import page_window
from ...money import fmt_balance
from ...payments.auto_recharge_outcomes import when
from ...payments.auto_recharge_policy import DAILY_LIMIT, MAX_FAILURES, Policy

View = tuple[str, int, int, str, str, str]  # type filter, page, page size, from, to, order (data._load's)


@dataclass(frozen=True)
class Figures:
    """`shown`: the public vars' values; `kept`: the backend vars' (never sent to the browser);
    `result`: the read they come from (data._load_newer's base)."""

    shown: dict[str, Any]
    kept: dict[str, Any] = field(default_factory=dict)
    result: dict = field(default_factory=dict, repr=False)

    @property
    def read_at(self) -> float:
        """When the read began (wall clock, comparable across workers): an older read never replaces
        a newer one."""
        return self.result.get("read_at", 0.0)

    @property
    def entries(self) -> int:
        """The account's entry count at that read."""
        return self.result.get("transactions", 0)


def figures_of(result: dict, page_size: int) -> Figures:
    """The vars for data._load's `result`."""
    balance, reserved, threshold = result["balance_units"], result["reserved_units"], result["threshold_units"]
    policy = result["auto"]
    shown = {
        "load_failed": False,
        "org_name": result["org_name"],
        **balance_vars(balance, reserved, threshold),
        "threshold": fmt_balance(threshold),
        "grace_limit": fmt_balance(result["grace_units"]),
        "added": ("+" if result["added_units"] else "") + fmt_balance(result["added_units"]),
        "consumed": ("-" if result["consumed_units"] else "") + fmt_balance(result["consumed_units"]),
        "transactions": result["transactions"],
        "rows": result["rows"],
        "page": result["page"],
        "total": result["total"],
        "total_pages": result["total_pages"],
        "range_text": range_text(result["page"], page_size, len(result["rows"]), result["total"]),
        "page_labels": page_window(result["page"], result["total_pages"]),
        "spend": result["spend"],
        "spend_total": result["spend_total"],
        "pending_payment": result["pending"],
        "expiring": result["expiring"],
        "auto_enabled": policy.enabled,
        "auto_threshold": f"{policy.threshold:.2f}",
        "auto_amount": f"{policy.amount:.2f}",
        "auto_cap": f"{policy.monthly_cap:.2f}" if policy.monthly_cap is not None else "",
        "auto_saved": saved_key(policy),
        "auto_note": policy.disabled_reason or "",
        "auto_status": auto_status(policy),
        "auto_action_url": policy.action_url or "",
    }
    kept = {"_balance_units": balance, "_reserved_units": reserved, "_threshold_units": threshold}
    return Figures(shown, kept, result)


def saved_key(policy: Policy) -> str:
    """The saved auto-recharge settings as one string: a tab editing them compares it with the one it
    started from (pages/billing/auto_recharge.py)."""
    return f"{policy.enabled}|{policy.threshold}|{policy.amount}|{policy.monthly_cap}"


def auto_status(policy: Policy) -> str:
    """The line under the auto-recharge panel's title: why it waits, and until when."""
    if not policy.enabled:
        return ""
    declined = policy.consecutive_failures > 0 and policy.last_error
    reason = (policy.last_error or "").rstrip(". ")
    failures = f"{policy.consecutive_failures} of {MAX_FAILURES} failed in a row"
    if policy.next_attempt_at is not None:
        if declined:
            return f"Last charge failed: {reason}. Next attempt: {when(policy.next_attempt_at)} ({failures})."
        if policy.charges_last_24h >= DAILY_LIMIT:
            return (
                f"{policy.charges_last_24h} charges in the last 24 hours, the most in a day. "
                f"Next possible charge: {when(policy.next_attempt_at)}."
            )
        return f"Next attempt: {when(policy.next_attempt_at)}."
    if declined:
        return f"Last charge failed: {reason}. It tries again when the balance is below the threshold ({failures})."
    return ""


def balance_vars(balance: int, reserved: int, threshold: int) -> dict[str, Any]:
    """The vars that follow the balance: what a posting's event alone can update, before any read."""
    return {
        "balance": fmt_balance(balance),
        "available": fmt_balance(balance - reserved),
        "reserved": fmt_balance(reserved),
        "negative": balance < 0,
        "low_balance": balance < threshold,
    }


def range_text(page: int, page_size: int, rows: int, total: int) -> str:
    if total == 0:
        return "No transactions"
    first = (page - 1) * page_size + 1
    last = min(total, first + rows - 1)
    noun = "transaction" if total == 1 else "transactions"
    return f"Showing {first:,}–{last:,} of {total:,} {noun}"
