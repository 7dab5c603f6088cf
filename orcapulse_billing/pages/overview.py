"""`/`: the demo organisation's balance at a glance (the full Billing & Credits page is /billing,
which comes with sign-in). Reads the account row's aggregates: no ledger scan."""

from __future__ import annotations

import reflex as rx

from ..accounts import AccountsError, find_organization
from ..components.stat_card import stat_card
from ..db import get_engine
from ..ledger import get_account
from ..money import fmt_balance
from ..seed import DEMO_ORG

PURPLE = "linear-gradient(135deg, #7c3aed 0%, #a855f7 100%)"
GRAY = "linear-gradient(135deg, #475569 0%, #64748b 100%)"
BLACK = "linear-gradient(135deg, #0f172a 0%, #334155 100%)"


class OverviewState(rx.State):
    loaded: bool = False
    found: bool = False
    org_name: str = ""
    balance: str = ""
    negative: bool = False
    added: str = ""
    consumed: str = ""
    transactions: int = 0

    @rx.event
    def load(self):
        try:
            engine = get_engine()
            org = find_organization(engine, DEMO_ORG)
            with engine.connect() as conn:
                acct = get_account(conn, organization_id=org.id)
        except AccountsError:
            self.found, self.loaded = False, True
            return
        self.found = True
        self.org_name = org.name
        self.balance = fmt_balance(acct.balance_units)
        self.negative = acct.balance_units < 0
        self.added = "+" + fmt_balance(acct.lifetime_added_units)
        self.consumed = "-" + fmt_balance(acct.lifetime_consumed_units)
        self.transactions = acct.transaction_count
        self.loaded = True


def _cards() -> rx.Component:
    return rx.grid(
        stat_card("Current Balance", OverviewState.balance, "Available credits", "wallet",
                  testid="balance-value", background=PURPLE,
                  value_color=rx.cond(OverviewState.negative, "#fecaca", "white")),
        stat_card("Credits Added", OverviewState.added, "Credits added", "trending-up",
                  testid="credits-added-value", background=GRAY, value_color="#bbf7d0"),
        stat_card("Credits Consumed", OverviewState.consumed, "Credits consumed", "arrow-down-right",
                  testid="credits-consumed-value", background="white", color="black", value_color="#dc2626"),
        stat_card("Transactions", OverviewState.transactions, "All time", "credit-card",
                  testid="transaction-count-value", background=BLACK),
        columns=rx.breakpoints(initial="1", sm="2", lg="4"),
        spacing="4",
        width="100%",
    )


@rx.page(route="/", title="OrcaPulse Billing", on_load=OverviewState.load)
def overview() -> rx.Component:
    return rx.container(
        rx.vstack(
            rx.heading(
                "OrcaPulse Billing",
                size="8",
                style={"background": PURPLE, "-webkit-background-clip": "text", "color": "transparent"},
            ),
            rx.cond(
                OverviewState.loaded,
                rx.cond(
                    OverviewState.found,
                    rx.vstack(
                        rx.text(OverviewState.org_name, " — credit balance", size="3", color_scheme="gray"),
                        _cards(),
                        width="100%",
                        spacing="4",
                    ),
                    rx.callout("No demo organisation yet: run `orcapulse-billing seed-demo`.", icon="info"),
                ),
                rx.skeleton(rx.box(height="120px"), width="100%"),
            ),
            spacing="5",
            padding_y="6",
            width="100%",
        ),
        size="4",
    )
