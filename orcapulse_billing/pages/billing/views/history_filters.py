"""The history's date range and order: From and To date inputs (whole UTC days, both included), a
newest/oldest toggle, and the range's inline error."""

from __future__ import annotations

import reflex as rx


def _date_input(label: str, value, on_change, testid: str) -> rx.Component:
    return rx.hstack(
        rx.text(label, size="2", color_scheme="gray", as_="label", html_for=testid, width="2.6em"),
        rx.input(
            type="date",
            value=value,
            on_change=on_change,
            id=testid,
            width="160px",
            data_testid=testid,
        ),
        align="center",
        spacing="2",
    )


def history_range_controls(
    *, from_value, to_value, on_from, on_to, on_clear, order, on_toggle_order, error
) -> rx.Component:
    """`from_value`/`to_value`: what the inputs show (YYYY-MM-DD or ""); `order`: "newest" or
    "oldest"; `error`: the range's error, "" when none."""
    return rx.vstack(
        rx.flex(
            _date_input("From", from_value, on_from, "history-date-from"),
            _date_input("To", to_value, on_to, "history-date-to"),
            rx.cond(
                (from_value != "") | (to_value != ""),
                rx.button(
                    rx.icon("x", size=14),
                    "Clear dates",
                    variant="ghost",
                    color_scheme="gray",
                    size="2",
                    on_click=on_clear,
                    data_testid="history-date-clear",
                ),
            ),
            rx.spacer(display=rx.breakpoints(initial="none", sm="block")),
            rx.button(
                rx.cond(
                    order == "newest",
                    rx.icon("arrow-down-wide-narrow", size=14),
                    rx.icon("arrow-up-narrow-wide", size=14),
                ),
                rx.cond(order == "newest", "Newest first", "Oldest first"),
                variant="outline",
                color_scheme="gray",
                on_click=on_toggle_order,
                title="Change the order",
                data_testid="history-order",
            ),
            gap="4",
            row_gap="2",
            wrap="wrap",
            align="center",
            width="100%",
        ),
        rx.cond(
            error != "",
            rx.callout(error, icon="circle-alert", color_scheme="red", size="1", data_testid="history-range-error"),
        ),
        spacing="2",
        width="100%",
    )
