"""The auto-recharge panel: on/off, threshold, amount and monthly cap (owners edit, others see)."""

from __future__ import annotations

import reflex as rx


def auto_recharge_panel(
    *,
    enabled,
    threshold,
    amount,
    cap,
    editing,
    changed_elsewhere,
    note,
    status,
    action_url,
    error,
    can_edit,
    on_enabled,
    on_field,
    on_save,
    on_discard,
) -> rx.Component:
    """`on_field(name, value)`: name is auto_threshold, auto_amount or auto_cap. `note`: why it is off or
    paused; `status`: why it waits and until when; `action_url`: the provider's page where the charge
    that paused it is confirmed (3-D Secure). `editing`: the form holds unsaved edits (Discard shows);
    `changed_elsewhere`: the saved settings changed since they began."""

    def field(label: str, name: str, value, placeholder: str) -> rx.Component:
        return rx.vstack(
            rx.text(label, size="1", color_scheme="gray"),
            rx.input(
                value=value,
                on_change=lambda v: on_field(name, v),
                placeholder=placeholder,
                input_mode="decimal",
                disabled=~can_edit,
                width="120px",
                data_testid=f"auto-{name.split('_')[1]}",
            ),
            spacing="1",
        )

    return rx.card(
        rx.flex(
            rx.vstack(
                rx.hstack(rx.icon("refresh-ccw-dot", size=18), rx.heading("Auto-recharge", size="4"), align="center"),
                rx.text(
                    "Buy credits with your saved card when the balance drops below a threshold.",
                    size="2",
                    color_scheme="gray",
                ),
                rx.cond(
                    note != "",
                    rx.callout(
                        note,
                        icon="circle-alert",
                        color_scheme="red",
                        size="1",
                        data_testid="auto-disabled-note",
                    ),
                ),
                rx.cond(
                    can_edit & (action_url != ""),  # the owners confirm it (they are emailed the link too)
                    rx.link(
                        rx.button(rx.icon("shield-check", size=16), "Confirm the payment", size="2"),
                        href=action_url,
                        is_external=True,
                        data_testid="auto-confirm",
                    ),
                ),
                rx.cond(
                    status != "",
                    rx.callout(status, icon="clock", color_scheme="amber", size="1", data_testid="auto-status"),
                ),
                spacing="1",
            ),
            rx.spacer(),
            rx.hstack(
                rx.vstack(
                    rx.text("On", size="1", color_scheme="gray"),
                    rx.switch(
                        checked=enabled,
                        on_change=on_enabled,
                        disabled=~can_edit,
                        data_testid="auto-enabled",
                    ),
                    spacing="2",
                ),
                field("Below (credits)", "auto_threshold", threshold, "10.00"),
                field("Add ($)", "auto_amount", amount, "50.00"),
                field("Monthly cap ($)", "auto_cap", cap, "none"),
                rx.cond(
                    can_edit,
                    rx.hstack(
                        rx.cond(
                            editing,
                            rx.button(
                                "Discard",
                                variant="soft",
                                color_scheme="gray",
                                on_click=on_discard,
                                data_testid="auto-discard",
                            ),
                        ),
                        rx.button("Save", on_click=on_save, data_testid="auto-save"),
                        spacing="2",
                    ),
                ),
                align="end",
                spacing="3",
                wrap="wrap",
            ),
            gap="4",
            width="100%",
            direction=rx.breakpoints(initial="column", md="row"),
        ),
        rx.cond(
            changed_elsewhere,
            rx.callout.root(
                rx.callout.icon(rx.icon("triangle-alert", size=16)),
                rx.callout.text(
                    "Changed elsewhere since you started editing. Save replaces those settings with yours."
                ),
                rx.button(
                    "Discard my edits and load the saved settings",
                    size="1",
                    variant="soft",
                    on_click=on_discard,
                    data_testid="auto-load-saved",
                ),
                color_scheme="amber",
                size="1",
                margin_top="8px",
                data_testid="auto-changed-elsewhere",
            ),
        ),
        rx.cond(
            error != "",
            rx.text(error, color_scheme="red", size="2", data_testid="auto-error", padding_top="2"),
        ),
        width="100%",
        data_testid="auto-recharge-panel",
    )
