"""`/billing`: the Billing & Credits page of the signed-in organization.

Reads the account row's maintained aggregates (no ledger scan). Signed-out visitors go to /login.
"""

from __future__ import annotations

import reflex as rx
import sqlalchemy as sa

from ..components.layout import PURPLE, page_frame
from ..components.stat_card import stat_card
from ..db import get_engine
from ..ledger import get_account
from ..models import Organization
from ..money import fmt_balance
from ..state import SessionState

GRAY = "linear-gradient(135deg, #475569 0%, #64748b 100%)"
BLACK = "linear-gradient(135deg, #0f172a 0%, #334155 100%)"


class BillingState(SessionState):
    loaded: bool = False
    org_name: str = ""
    balance: str = ""
    negative: bool = False
    added: str = ""
    consumed: str = ""
    transactions: int = 0

    @rx.event
    def load(self):
        principal = self.current_principal()
        if principal is None:
            return rx.redirect("/login")
        engine = get_engine()
        with engine.connect() as conn:
            acct = get_account(conn, organization_id=principal.organization_id)
            self.org_name = conn.execute(
                sa.select(Organization.name).where(Organization.id == principal.organization_id)
            ).scalar() or ""
        self.balance = fmt_balance(acct.balance_units)
        self.negative = acct.balance_units < 0
        self.added = "+" + fmt_balance(acct.lifetime_added_units)
        self.consumed = "-" + fmt_balance(acct.lifetime_consumed_units)
        self.transactions = acct.transaction_count
        self.loaded = True


def _cards() -> rx.Component:
    return rx.grid(
        stat_card("Current Balance", BillingState.balance, "Available credits", "wallet",
                  testid="balance-value", background=PURPLE,
                  value_color=rx.cond(BillingState.negative, "#fecaca", "white")),
        stat_card("Credits Added", BillingState.added, "Credits added", "trending-up",
                  testid="credits-added-value", background=GRAY, value_color="#bbf7d0"),
        stat_card("Credits Consumed", BillingState.consumed, "Credits consumed", "arrow-down-right",
                  testid="credits-consumed-value", background="white", color="black", value_color="#dc2626"),
        stat_card("Transactions", BillingState.transactions, "All time", "credit-card",
                  testid="transaction-count-value", background=BLACK),
        columns=rx.breakpoints(initial="1", sm="2", lg="4"),
        spacing="4",
        width="100%",
    )


@rx.page(route="/billing", title="Billing & Credits · OrcaPulse", on_load=BillingState.load)
def billing() -> rx.Component:
    return page_frame(
        rx.vstack(
            rx.heading("Billing & Credits", size="8",
                       style={"background": PURPLE, "-webkit-background-clip": "text", "color": "transparent"}),
            rx.text("Manage your credits and view transaction history", color_scheme="gray", size="3"),
            rx.text(BillingState.org_name, size="2", color_scheme="gray", data_testid="org-name"),
            spacing="1",
        ),
        rx.cond(
            BillingState.loaded,
            _cards(),
            rx.grid(*[rx.skeleton(rx.box(height="110px"), loading=True) for _ in range(4)],
                    columns=rx.breakpoints(initial="1", sm="2", lg="4"), spacing="4", width="100%"),
        ),
    )


@rx.page(route="/", title="OrcaPulse Billing", on_load=rx.redirect("/billing"))
def index() -> rx.Component:
    return rx.center(rx.spinner(), min_height="50vh")
