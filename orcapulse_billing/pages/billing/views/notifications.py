"""The Notifications card (owners): the low-balance threshold (the deployment's, an amount, or a
percentage of the last top-up) and the signed-in owner's own email switches."""

from __future__ import annotations

import reflex as rx

MODES = (("default", "Default"), ("amount", "Amount"), ("percent", "% of last top-up"))


def _switch(item, on_switch) -> rx.Component:
    return rx.flex(
        rx.vstack(
            rx.text(item["label"], size="2", weight="medium"),
            rx.text(item["description"], size="1", color_scheme="gray"),
            spacing="0",
            min_width="0",
        ),
        rx.spacer(),
        rx.switch(
            checked=item["on"] == "true",
            on_change=lambda value: on_switch(item["key"], value),
            data_testid="notify-" + item["key"].to(str),
        ),
        align="center",
        gap="3",
        width="100%",
        padding_y="1",
    )


def _field(value, on_change, placeholder: str, name: str, unit: str) -> rx.Component:
    return rx.hstack(
        rx.input(
            value=value,
            on_change=on_change,
            placeholder=placeholder,
            input_mode="decimal",
            width="8em",
            data_testid=f"threshold-{name}",
        ),
        rx.text(unit, size="2"),
        align="center",
    )


def notifications_card(
    *,
    visible,
    mode,
    amount,
    percent,
    in_force,
    default_label,
    error,
    saving,
    switches,
    on_mount,
    on_mode,
    on_amount,
    on_percent,
    on_save,
    on_switch,
) -> rx.Component:
    """Shown to owners only (`visible`); `on_switch(key, on)` saves one switch at once."""
    threshold = rx.vstack(
        rx.text("Low-balance warning", weight="medium"),
        rx.text(
            "Owners get an email (and webhooks a balance.low event) when the balance falls below this, and "
            'a "balance recovered" one when it is back at or above it.',
            size="1",
            color_scheme="gray",
        ),
        rx.segmented_control.root(
            *[
                rx.segmented_control.item(label, value=value, data_testid=f"threshold-mode-{value}")
                for value, label in MODES
            ],
            value=mode,
            on_change=on_mode,
            size="1",
        ),
        rx.match(
            mode,
            ("amount", _field(amount, on_amount, "25.00", "amount", "credits")),
            ("percent", _field(percent, on_percent, "20", "percent", "% of the credits of the last top-up")),
            rx.text("The deployment's default: ", default_label, size="2"),
        ),
        rx.text(in_force, size="2", color_scheme="gray", data_testid="threshold-in-force"),
        rx.cond(error != "", rx.text(error, color_scheme="red", size="2", data_testid="threshold-error")),
        rx.button("Save threshold", size="2", on_click=on_save, loading=saving, data_testid="threshold-save"),
        spacing="2",
        flex="1",
        min_width="0",
    )
    emails = rx.vstack(
        rx.text("Your emails", weight="medium"),
        rx.text(
            "Only you: each owner chooses their own. Payment confirmations (3-D Secure) and disputes always go.",
            size="1",
            color_scheme="gray",
        ),
        rx.foreach(switches, lambda item: _switch(item, on_switch)),
        spacing="1",
        flex="1",
        min_width="0",
    )
    card = rx.card(
        rx.vstack(
            rx.hstack(rx.icon("bell", size=18), rx.heading("Notifications", size="4"), align="center"),
            rx.flex(threshold, emails, gap="6", width="100%", direction=rx.breakpoints(initial="column", md="row")),
            spacing="3",
            width="100%",
        ),
        width="100%",
        data_testid="notifications-card",
    )
    return rx.box(rx.cond(visible, card), width="100%", on_mount=on_mount)
