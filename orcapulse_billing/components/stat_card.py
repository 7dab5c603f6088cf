"""A stat card: title and icon, large value, label. Used by the overview and the billing page."""

import reflex as rx


def stat_card(
    title: str,
    value,
    label: str | rx.Component,
    icon: str,
    *,
    testid: str,
    background: str,
    color: str = "white",
    value_color=None,
) -> rx.Component:
    # A plain box, not rx.card: Radix cards lay a translucent panel over the gradient.
    return rx.box(
        rx.vstack(
            rx.hstack(
                rx.text(title, size="2", weight="medium", opacity="0.85"),
                rx.spacer(),
                rx.icon(icon, size=20, opacity="0.9"),
                width="100%",
                align="center",
            ),
            rx.text(
                value, size="7", weight="bold", data_testid=testid, color=color if value_color is None else value_color
            ),
            rx.text(label, size="1", opacity="0.8"),
            spacing="2",
        ),
        background=background,
        color=color,
        padding="1.25rem",
        border_radius="14px",
        border="1px solid rgba(15, 23, 42, 0.08)",
        box_shadow="0 1px 3px rgba(15, 23, 42, 0.08)",
        width="100%",
    )
