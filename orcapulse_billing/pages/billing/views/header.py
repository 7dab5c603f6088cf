"""The page's header and the states around its content: loading skeleton, load error, the
low-balance banner and the waiting-for-payment banner."""

from __future__ import annotations

import reflex as rx

from ....components.layout import PURPLE

OWNERS_ONLY = "Only owners can add credits"


def header(*, org_name, refreshing, is_owner, on_refresh, on_add_credits) -> rx.Component:
    add = rx.button(
        rx.icon("plus", size=16),
        "Add Credits",
        color_scheme="green",
        size="3",
        on_click=on_add_credits,
        disabled=~is_owner,
        custom_attrs={"aria-describedby": rx.cond(is_owner, "", "add-credits-reason")},
        data_testid="add-credits-button",
    )
    return rx.flex(
        rx.vstack(
            rx.heading(
                "Billing & Credits",
                size="8",
                style={"background": PURPLE, "-webkit-background-clip": "text", "color": "transparent"},
            ),
            rx.text("Manage your credits and view transaction history", color_scheme="gray", size="3"),
            rx.text(org_name, size="2", color_scheme="gray", data_testid="org-name"),
            spacing="1",
        ),
        rx.spacer(),
        rx.vstack(
            rx.flex(
                rx.button(
                    rx.icon("refresh-cw", size=16, class_name=rx.cond(refreshing, "animate-spin", "")),
                    "Refresh",
                    variant="outline",
                    size="3",
                    on_click=on_refresh,
                    disabled=refreshing,
                    loading=refreshing,
                    data_testid="refresh-button",
                ),
                rx.cond(is_owner, add, rx.tooltip(rx.box(add), content=OWNERS_ONLY)),
                gap="3",
                wrap="wrap",
            ),
            # members see the button disabled, and why (the tooltip alone is invisible on touch screens)
            rx.cond(
                ~is_owner,
                rx.hstack(
                    rx.icon("lock", size=12),
                    rx.text(OWNERS_ONLY, size="1"),
                    id="add-credits-reason",
                    align="center",
                    spacing="1",
                    color="var(--gray-11)",
                    data_testid="add-credits-reason",
                ),
            ),
            spacing="2",
            align=rx.breakpoints(initial="start", sm="end"),
        ),
        direction=rx.breakpoints(initial="column", sm="row"),
        gap="4",
        width="100%",
        align=rx.breakpoints(initial="start", sm="end"),
    )


def expiry_notice(*, expiring) -> rx.Component:
    """One small line under the header when credits expire: "3.00 credits expire on Jan 31, 2027"
    (the active grant that expires first; expiring credits are spent first)."""
    return rx.cond(
        expiring != "",
        rx.hstack(
            rx.icon("clock", size=14),
            rx.text(expiring, size="2"),
            align="center",
            spacing="1",
            color="var(--amber-11)",
            data_testid="credits-expiring",
        ),
    )


def low_balance_banner(*, low_balance, negative, threshold, grace_limit, is_owner, on_add_credits) -> rx.Component:
    return rx.cond(
        low_balance,
        rx.callout.root(
            rx.callout.icon(rx.icon("triangle-alert")),
            rx.flex(
                rx.vstack(
                    rx.text(
                        rx.cond(
                            negative,
                            "Your balance is negative",
                            "Low balance: below " + threshold,
                        ),
                        weight="bold",
                    ),
                    rx.text(
                        rx.cond(
                            negative,
                            "You are in the grace period (down to -"
                            + grace_limit
                            + "). Calls already running finish normally; new calls are blocked until credits are added.",
                            "New calls stop when the balance reaches $0.00. Add credits to keep your agents running.",
                        ),
                        size="2",
                    ),
                    spacing="1",
                ),
                rx.spacer(),
                rx.cond(
                    is_owner,
                    rx.button(
                        rx.icon("plus", size=14),
                        "Add Credits",
                        color_scheme="green",
                        on_click=on_add_credits,
                        class_name="pulse-ring",
                    ),
                ),
                gap="3",
                width="100%",
                align="center",
                direction=rx.breakpoints(initial="column", sm="row"),
            ),
            color_scheme=rx.cond(negative, "red", "amber"),
            width="100%",
            data_testid="low-balance-banner",
        ),
    )


def waiting_banner(*, waiting, popup_blocked, checkout_url, on_stop) -> rx.Component:
    return rx.cond(
        waiting,
        rx.callout.root(
            rx.callout.icon(rx.spinner(size="2")),
            rx.flex(
                rx.vstack(
                    rx.text("Waiting for payment confirmation…", weight="bold"),
                    rx.cond(
                        popup_blocked,
                        rx.text(
                            "Your browser blocked the checkout window. ",
                            rx.link(
                                "Open the checkout",
                                href=checkout_url,
                                is_external=True,
                                data_testid="checkout-link",
                            ),
                            size="2",
                        ),
                        rx.text(
                            "Complete the payment in the checkout window; credits appear as soon as the "
                            "payment provider confirms it.",
                            size="2",
                        ),
                    ),
                    spacing="1",
                ),
                rx.spacer(),
                rx.button("Stop waiting", variant="ghost", size="1", on_click=on_stop),
                width="100%",
                align="center",
                gap="3",
            ),
            color_scheme="purple",
            width="100%",
            data_testid="waiting-banner",
        ),
    )


def pending_payment_banner(*, pending_payment) -> rx.Component:
    """A charge whose confirmation was lost on the way: the credits follow when the provider confirms."""
    return rx.cond(
        pending_payment != "",
        rx.callout.root(
            rx.callout.icon(rx.spinner(size="2")),
            rx.vstack(
                rx.text("Payment of ", pending_payment, " being confirmed", weight="bold"),
                rx.text(
                    "The card network has not confirmed it yet. The credits appear as soon as it does; "
                    "you will not be charged twice.",
                    size="2",
                ),
                spacing="1",
            ),
            color_scheme="amber",
            width="100%",
            data_testid="pending-payment-banner",
        ),
    )


def skeleton() -> rx.Component:
    return rx.vstack(
        rx.grid(
            *[
                rx.box(height="118px", border_radius="14px", background="var(--gray-4)", class_name="animate-pulse")
                for _ in range(4)
            ],
            columns=rx.breakpoints(initial="1", sm="2", lg="4"),
            spacing="4",
            width="100%",
            data_testid="skeleton-cards",
        ),
        rx.vstack(
            *[
                rx.box(
                    height="44px",
                    width="100%",
                    border_radius="8px",
                    background="var(--gray-3)",
                    class_name="animate-pulse",
                    data_testid="skeleton-row",
                )
                for _ in range(5)
            ],
            width="100%",
            spacing="2",
        ),
        width="100%",
        spacing="5",
    )


def error_state(*, on_refresh) -> rx.Component:
    return rx.callout.root(
        rx.callout.icon(rx.icon("circle-alert")),
        rx.flex(
            rx.vstack(
                rx.text("Failed to load transaction history", weight="bold"),
                rx.text("Please try again later", size="2"),
                spacing="1",
            ),
            rx.spacer(),
            rx.button(
                rx.icon("refresh-cw", size=14),
                "Refresh",
                variant="outline",
                color_scheme="red",
                on_click=on_refresh,
            ),
            width="100%",
            align="center",
            gap="3",
        ),
        color_scheme="red",
        width="100%",
        data_testid="error-alert",
    )
