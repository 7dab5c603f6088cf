"""The Add Credits dialog: provider choice, the packages, a custom amount, checkout or pay now
with the saved card, and the saved cards."""

from __future__ import annotations

import reflex as rx

from ....pricing import CUSTOM_MAX, CUSTOM_MIN
from .styles import top_aligned


def package_card(p, *, can_quick_pay, quick_pay_label, buying, on_checkout, on_quick_purchase) -> rx.Component:
    return rx.card(
        rx.vstack(
            rx.text(p["price"], size="6", weight="bold"),
            rx.text(p["credits"], size="2", color_scheme="gray"),
            rx.cond(
                p["bonus"] != "", rx.badge(p["bonus"], color_scheme="green", variant="soft"), rx.box(height="20px")
            ),
            rx.button(
                "Checkout",
                width="100%",
                color_scheme="purple",
                on_click=on_checkout(p["id"]),
                loading=buying,
                disabled=buying,
                data_testid="checkout-" + p["id"].to(str),
            ),
            rx.cond(
                can_quick_pay,
                rx.button(
                    "Pay now with ",
                    quick_pay_label,
                    width="100%",
                    variant="soft",
                    color_scheme="green",
                    on_click=on_quick_purchase(p["id"]),
                    loading=buying,
                    disabled=buying,
                    data_testid="quick-" + p["id"].to(str),
                ),
            ),
            spacing="2",
            width="100%",
        ),
    )


def saved_card(c, *, on_remove) -> rx.Component:
    return rx.hstack(
        rx.icon("credit-card", size=16),
        rx.text(c["label"], size="2"),
        rx.text(c["expiry"], size="1", color_scheme="gray"),
        rx.cond(c["default"] == "1", rx.badge("default", size="1")),
        rx.spacer(),
        rx.icon_button(
            rx.icon("trash-2", size=14),
            size="1",
            variant="ghost",
            color_scheme="red",
            on_click=on_remove(c["id"]),
            data_testid="remove-card",
        ),
        width="100%",
        align="center",
        padding_top="2",
        data_testid="saved-card",
    )


def add_credits_dialog(
    *,
    is_open,
    on_open_change,
    providers,
    provider,
    on_provider,
    packages,
    cards,
    custom_amount,
    on_custom_amount,
    purchase_error,
    buying,
    on_checkout_package,
    on_checkout_custom,
    on_quick_purchase,
    on_save_card,
    on_remove_card,
) -> rx.Component:
    """`on_quick_purchase(package_id)`: "" for the custom amount."""
    # the saved card is Stripe's: pay now only with Stripe chosen
    can_quick_pay = (cards.length() > 0) & (provider == "stripe")
    return rx.dialog.root(
        rx.dialog.content(
            rx.dialog.title("Add Credits"),
            rx.dialog.description("1 credit = $1.00. Larger packages come with bonus credits.", size="2"),
            rx.cond(
                providers.length() > 1,
                rx.hstack(
                    rx.text("Pay with", size="2", color_scheme="gray"),
                    rx.segmented_control.root(
                        rx.segmented_control.item("Card (Stripe)", value="stripe"),
                        rx.segmented_control.item("Lemon Squeezy", value="lemonsqueezy"),
                        value=provider,
                        on_change=on_provider,
                        data_testid="provider-choice",
                    ),
                    align="center",
                    padding_top="var(--space-3)",
                    wrap="wrap",
                ),
            ),
            rx.grid(
                rx.foreach(
                    packages,
                    lambda p: package_card(
                        p,
                        can_quick_pay=can_quick_pay,
                        quick_pay_label=cards[0]["label"],
                        buying=buying,
                        on_checkout=on_checkout_package,
                        on_quick_purchase=on_quick_purchase,
                    ),
                ),
                columns=rx.breakpoints(initial="1", sm="2"),
                spacing="3",
                padding_y="var(--space-3)",
            ),
            rx.text(f"Custom amount (${CUSTOM_MIN:,.0f} to ${CUSTOM_MAX:,.0f})", size="2", weight="medium"),
            rx.hstack(
                rx.input(
                    placeholder="25.00",
                    value=custom_amount,
                    on_change=on_custom_amount,
                    type="text",
                    input_mode="decimal",
                    width="100%",
                    flex="1 1 140px",
                    data_testid="custom-amount",
                ),
                rx.button(
                    "Checkout",
                    on_click=on_checkout_custom,
                    loading=buying,
                    disabled=buying,
                    data_testid="custom-checkout",
                ),
                rx.cond(
                    can_quick_pay,
                    rx.button(
                        "Pay now",
                        variant="soft",
                        color_scheme="green",
                        loading=buying,
                        disabled=buying,
                        on_click=on_quick_purchase(""),
                        data_testid="custom-quick",
                    ),
                ),
                width="100%",
                wrap="wrap",
            ),
            rx.cond(
                purchase_error != "",
                rx.callout(
                    purchase_error,
                    icon="circle-alert",
                    color_scheme="red",
                    size="1",
                    margin_top="2",
                    data_testid="purchase-error",
                ),
            ),
            rx.divider(margin_y="3"),
            rx.hstack(
                rx.text("Saved cards", size="2", weight="medium"),
                rx.spacer(),
                rx.button(
                    rx.icon("credit-card", size=14),
                    "Save a card",
                    size="1",
                    variant="soft",
                    on_click=on_save_card,
                    data_testid="save-card-button",
                ),
                width="100%",
            ),
            rx.foreach(cards, lambda c: saved_card(c, on_remove=on_remove_card)),
            rx.text(
                "Payments are processed by Stripe or Lemon Squeezy; card numbers never reach OrcaPulse.",
                size="1",
                color_scheme="gray",
                margin_top="3",
            ),
            rx.flex(
                rx.dialog.close(rx.button("Close", variant="soft", color_scheme="gray")), justify="end", margin_top="3"
            ),
            max_width="620px",
            data_testid="add-credits-dialog",
            custom_attrs=top_aligned(),
        ),
        open=is_open,
        on_open_change=on_open_change,
    )
