"""The four stat cards and the 30-day usage-by-category chart."""

from __future__ import annotations

import reflex as rx

from ....components.layout import PURPLE
from ....components.stat_card import stat_card
from .styles import BLACK, GRAY, RED

CATEGORY_AXIS_WIDTH = 112  # px: room for the longest category label ("Transcription", "Phone numbers")


def holds_line(*, available, reserved) -> rx.Component:
    """Under the balance: what new operations may use, and what calls in progress have reserved."""
    return rx.text(
        "Available ",
        rx.text.span(available, data_testid="available-value", weight="bold"),
        " · Reserved ",
        rx.text.span(reserved, data_testid="reserved-value", weight="bold"),
        as_="span",
    )


def stats(*, balance, available, reserved, negative, added, consumed, transactions) -> rx.Component:
    return rx.grid(
        stat_card(
            "Current Balance",
            balance,
            holds_line(available=available, reserved=reserved),
            "wallet",
            testid="balance-value",
            background=PURPLE,
            value_color=rx.cond(negative, "#fecaca", "white"),
        ),
        stat_card(
            "Credits Added",
            added,
            "Credits added",
            "trending-up",
            testid="credits-added-value",
            background=GRAY,
            value_color="#bbf7d0",
        ),
        stat_card(
            "Credits Consumed",
            consumed,
            "Credits consumed",
            "arrow-down-right",
            testid="credits-consumed-value",
            background="white",
            color="black",
            value_color=RED,
        ),
        stat_card(
            "Transactions",
            transactions,
            "All time",
            "credit-card",
            testid="transaction-count-value",
            background=BLACK,
        ),
        columns=rx.breakpoints(initial="1", sm="2", lg="4"),
        spacing="4",
        width="100%",
    )


def usage_chart(*, spend, spend_total) -> rx.Component:
    """`spend`: rows of category, amount and count (text) and value (the bar's height)."""
    return rx.card(
        rx.vstack(
            rx.hstack(
                rx.heading("Usage by category", size="4"),
                rx.spacer(),
                rx.text("Last 30 days: ", rx.text.strong(spend_total), size="2", color_scheme="gray"),
                width="100%",
                align="center",
            ),
            rx.cond(
                spend.length() > 0,
                rx.flex(
                    rx.box(
                        # Horizontal bars: each category gets a row of its own and its label on the
                        # axis, so every label shows in full at any width (column labels under the
                        # bars were dropped or cut as soon as they did not fit side by side).
                        rx.recharts.bar_chart(
                            rx.recharts.bar(
                                data_key="value",
                                fill="#8b5cf6",
                                radius=[0, 6, 6, 0],
                                name="Spend ($)",
                                bar_size=18,
                                # a live update redraws at once: no replayed animation
                                # in every open tab on every posting
                                is_animation_active=False,
                            ),
                            rx.recharts.x_axis(type_="number", tick_line=False, tick={"fontSize": 12}),
                            rx.recharts.y_axis(
                                data_key="category",
                                type_="category",
                                interval=0,  # never skip a label
                                width=CATEGORY_AXIS_WIDTH,
                                tick_line=False,
                                tick={"fontSize": 12},
                            ),
                            rx.recharts.cartesian_grid(stroke_dasharray="3 3", horizontal=False),
                            rx.recharts.graphing_tooltip(),
                            data=spend,
                            layout="vertical",
                            height=spend.length().to(int) * 30 + 40,
                            width="100%",
                        ),
                        flex="2",
                        min_width="260px",
                        width="100%",
                        data_testid="usage-bars",
                    ),
                    rx.vstack(
                        rx.foreach(
                            spend,
                            lambda r: rx.hstack(
                                rx.text(r["category"], size="2"),
                                rx.spacer(),
                                rx.text(r["amount"], size="2", font_family="var(--code-font-family)"),
                                rx.text(r["count"], size="1", color_scheme="gray"),
                                width="100%",
                                data_testid="usage-category",
                            ),
                        ),
                        flex="1",
                        min_width="220px",
                        spacing="1",
                    ),
                    gap="5",
                    width="100%",
                    wrap="wrap",
                ),
                rx.text("No usage in the last 30 days.", color_scheme="gray", size="2"),
            ),
            spacing="3",
            width="100%",
        ),
        width="100%",
        size="3",
        data_testid="usage-chart",
    )
