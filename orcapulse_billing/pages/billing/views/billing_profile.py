"""The billing details card (who receipts are made out to) and the owners' dialog that edits them."""

from __future__ import annotations

import reflex as rx

from .styles import top_aligned

FIELDS = (
    ("name", "Billing name", "Company or full name"),
    ("address_line1", "Address", "Street and number"),
    ("address_line2", "Address line 2", "Apartment, suite, building (optional)"),
    ("postal_code", "Postal code", ""),
    ("city", "City", ""),
    ("region", "State / region", "Optional"),
    ("country", "Country", ""),
    ("tax_id", "Tax ID / VAT number", "Optional, printed on receipts"),
)


def _changer(on_field, key: str):
    return lambda value: on_field(key, value)


def billing_profile_card(
    *,
    visible,
    can_edit,
    name,
    address,
    tax_id,
    on_mount,
    on_edit,
    dialog_open,
    on_open_change,
    form,
    on_field,
    on_save,
    saving,
    error,
) -> rx.Component:
    """Shown to owners and admins (`visible`); `can_edit`: owners. `on_field(name, value)` edits the form."""
    card = rx.card(
        rx.flex(
            rx.vstack(
                rx.hstack(rx.icon("receipt", size=18), rx.heading("Billing details", size="4"), align="center"),
                rx.text(
                    "Receipts and credit notes are made out to these details. Download them from the "
                    "transaction history.",
                    size="2",
                    color_scheme="gray",
                ),
                spacing="1",
            ),
            rx.spacer(),
            rx.vstack(
                rx.text(name, weight="medium", data_testid="billing-name"),
                rx.cond(address != "", rx.text(address, size="2", data_testid="billing-address")),
                rx.cond(tax_id != "", rx.text("Tax ID: ", tax_id, size="2", color_scheme="gray")),
                spacing="0",
                align=rx.breakpoints(initial="start", md="end"),
                text_align=rx.breakpoints(initial="left", md="right"),
                overflow_wrap="anywhere",
                min_width="0",
                max_width=rx.breakpoints(initial="100%", md="50%"),
            ),
            rx.cond(
                can_edit,
                rx.button(
                    rx.icon("pencil", size=14), "Edit", variant="soft", on_click=on_edit, data_testid="billing-edit"
                ),
            ),
            gap="4",
            width="100%",
            align=rx.breakpoints(initial="start", md="center"),
            direction=rx.breakpoints(initial="column", md="row"),
        ),
        width="100%",
        data_testid="billing-profile-card",
    )
    dialog = rx.dialog.root(
        rx.dialog.content(
            rx.dialog.title("Billing details"),
            rx.dialog.description(
                "Receipts issued from now on are made out to these details; earlier ones keep theirs.", size="2"
            ),
            rx.grid(
                *[
                    rx.vstack(
                        rx.text(label, size="1", color_scheme="gray"),
                        rx.input(
                            value=form[key].to(str),
                            on_change=_changer(on_field, key),
                            placeholder=placeholder,
                            width="100%",
                            data_testid=f"billing-{key.replace('_', '-')}",
                        ),
                        spacing="1",
                        grid_column="span 2" if key.startswith(("name", "address")) else "span 1",
                    )
                    for key, label, placeholder in FIELDS
                ],
                columns="2",
                gap="3",
                width="100%",
                padding_y="3",
            ),
            rx.cond(error != "", rx.text(error, color_scheme="red", size="2", data_testid="billing-error")),
            rx.hstack(
                rx.dialog.close(rx.button("Cancel", variant="soft", color_scheme="gray")),
                rx.button("Save", on_click=on_save, loading=saving, data_testid="billing-save"),
                justify="end",
                spacing="2",
                margin_top="3",
            ),
            max_width="560px",
            data_testid="billing-profile-dialog",
            custom_attrs=top_aligned(),
        ),
        open=dialog_open,
        on_open_change=on_open_change,
    )
    return rx.fragment(rx.box(rx.cond(visible, card), width="100%", on_mount=on_mount), dialog)
