"""The transaction history: controls (type filter, page size, CSV export), the table, its empty
state and the pagination footer."""

from __future__ import annotations

import reflex as rx
from reflex_base.vars.base import Var

from ....components.native_form import backend_url, resolve_on_use
from ....components.pagination import pagination
from ....history import PAGE_SIZES, TYPE_LABELS
from .styles import GREEN, RED


def type_badge(row) -> rx.Component:
    return rx.match(
        row["badge"],
        ("Top-up", rx.badge(rx.icon("arrow-up-right", size=12), "Top-up", color_scheme="green", variant="soft")),
        ("Usage", rx.badge(rx.icon("arrow-down-right", size=12), "Usage", color_scheme="red", variant="soft")),
        rx.badge(rx.icon("dollar-sign", size=12), row["badge"], color_scheme="gray", variant="soft"),
    )


def receipt_link(row, can_download) -> rx.Component:
    """A purchase's receipt (a refund's credit note) as a PDF download, for owners and admins; the
    click downloads and does not open the row's detail."""
    allowed = can_download if isinstance(can_download, Var) else Var.create(bool(can_download))
    url = backend_url("/api/credits/receipts/") + row["receipt"] + ".pdf"
    on_click = Var(
        _js_expr=f"((event) => {{ event.stopPropagation(); event.currentTarget.href = {url}; }})",
        _var_data=url._get_all_var_data(),
    )
    link = rx.el.a(
        rx.icon("file-down", size=13),
        rx.cond(row["type"] == "refund", "Credit note ", "Receipt "),
        row["receipt_number"],
        href=url,
        custom_attrs={"onClick": on_click, "reloadDocument": True},
        download=rx.cond(row["type"] == "refund", "orcapulse-credit-note-", "orcapulse-receipt-")
        + row["receipt_number"]
        + ".pdf",
        title="Download the PDF",
        display="inline-flex",
        align_items="center",
        gap="4px",
        font_size="var(--font-size-1)",
        color="var(--accent-11)",
        data_testid="receipt-link",
    )
    return rx.cond(allowed, rx.cond(row["receipt"], link))  # JS truthiness: a row without one has "" or none


def history_row(row, on_open_row, can_download=False) -> rx.Component:
    return rx.table.row(
        rx.table.cell(row["when"], white_space="nowrap"),
        rx.table.cell(type_badge(row)),
        rx.table.cell(
            rx.vstack(rx.text(row["description"]), receipt_link(row, can_download), spacing="1"),
            min_width="220px",
        ),
        rx.table.cell(
            rx.text(
                row["amount"],
                color=rx.cond(row["credit"] == "1", GREEN, RED),
                weight="medium",
                font_family="var(--code-font-family)",
            ),
            text_align="right",
            white_space="nowrap",
        ),
        rx.table.cell(
            rx.text(row["balance_after"], font_family="var(--code-font-family)"),
            text_align="right",
            white_space="nowrap",
        ),
        on_click=on_open_row(row),
        cursor="pointer",
        _hover={"background": "var(--gray-a2)"},
        data_testid="history-row",
    )


def history_card(row, on_open_row, can_download=False) -> rx.Component:
    """A history entry as a compact card, for phones (the table needs about 760 px): date, type,
    description, amount and balance after; a tap opens the same detail as the table row."""
    return rx.box(
        rx.vstack(
            rx.hstack(
                rx.text(row["when"], size="1", color_scheme="gray", white_space="nowrap", data_testid="card-when"),
                rx.spacer(),
                type_badge(row),
                width="100%",
                align="center",
            ),
            rx.text(row["description"], size="2", weight="medium", data_testid="card-description"),
            receipt_link(row, can_download),
            rx.hstack(
                rx.text(
                    row["amount"],
                    color=rx.cond(row["credit"] == "1", GREEN, RED),
                    weight="bold",
                    font_family="var(--code-font-family)",
                    data_testid="card-amount",
                ),
                rx.spacer(),
                rx.text(
                    "Balance ",
                    rx.el.span(row["balance_after"], data_testid="card-balance"),
                    size="1",
                    color_scheme="gray",
                    font_family="var(--code-font-family)",
                ),
                width="100%",
                align="baseline",
            ),
            spacing="1",
            width="100%",
        ),
        on_click=on_open_row(row),
        cursor="pointer",
        padding="var(--space-3)",
        border="1px solid var(--gray-a5)",
        border_radius="10px",
        background="var(--color-panel-solid)",
        _hover={"background": "var(--gray-a2)"},
        width="100%",
        min_width="0",
        overflow_wrap="anywhere",
        data_testid="history-card",
    )


def history_controls(*, type_filter, on_type_filter, page_size, on_page_size, export_query) -> rx.Component:
    export_url = backend_url("/api/credits/history.csv") + export_query
    return rx.flex(
        rx.heading("Transaction History", size="5"),
        rx.spacer(),
        rx.hstack(
            rx.select.root(
                rx.select.trigger(data_testid="type-filter", min_width="170px"),
                rx.select.content(*[rx.select.item(label, value=value) for value, label in TYPE_LABELS.items()]),
                value=type_filter,
                on_change=on_type_filter,
            ),
            rx.select.root(
                rx.select.trigger(data_testid="page-size-select"),
                rx.select.content(*[rx.select.item(f"{n} per page", value=str(n)) for n in PAGE_SIZES]),
                value=page_size,
                on_change=on_page_size,
            ),
            rx.el.a(
                rx.button(rx.icon("download", size=14), "Export CSV", variant="soft", color_scheme="gray"),
                href=export_url,
                # Reflex renders anchors as React Router links; with the page and the backend on
                # one origin (production) the router would take the click as a page change.
                custom_attrs={"onClick": resolve_on_use("href", export_url), "reloadDocument": True},
                download="orcapulse-credits.csv",
                data_testid="export-csv",
            ),
            spacing="2",
            wrap="wrap",
        ),
        direction=rx.breakpoints(initial="column", sm="row"),
        gap="3",
        width="100%",
        align=rx.breakpoints(initial="start", sm="center"),
    )


def empty_state(*, type_filter, filter_label, on_refresh, message=None) -> rx.Component:
    """`message`, when given, replaces the sentence built from the type filter (e.g. for a date range)."""
    return rx.center(
        rx.vstack(
            rx.center(
                rx.icon("credit-card", size=40, color="var(--gray-9)"),
                width="80px",
                height="80px",
                border_radius="50%",
                background="var(--gray-3)",
            ),
            rx.heading("No transactions found", size="4"),
            rx.text(
                message
                if message is not None
                else rx.cond(
                    type_filter == "all",
                    "Your transaction history is empty",
                    "No " + filter_label + " transactions in your history",
                ),
                color_scheme="gray",
            ),
            rx.button(rx.icon("refresh-cw", size=14), "Refresh", variant="outline", on_click=on_refresh),
            align="center",
            spacing="3",
        ),
        padding_y="9",
        width="100%",
        data_testid="empty-state",
    )


def history_footer(*, range_text, page, total_pages, page_labels, on_prev, on_next, on_page) -> rx.Component:
    return rx.flex(
        rx.text(range_text, size="2", color_scheme="gray", data_testid="pagination-total"),
        rx.spacer(),
        pagination(
            page=page,
            total_pages=total_pages,
            labels=page_labels,
            on_prev=on_prev,
            on_next=on_next,
            on_page=on_page,
        ),
        direction=rx.breakpoints(initial="column", sm="row"),
        gap="3",
        width="100%",
        align=rx.breakpoints(initial="start", sm="center"),
    )


def history_table(*, controls, empty, footer, is_empty, rows, on_open_row, can_download=False) -> rx.Component:
    """`controls`, `empty` and `footer`: the components above, built by the caller; `rows`: the
    page's rows; `on_open_row(row)`: a row's click; `can_download`: the receipt links are shown."""
    return rx.card(
        rx.vstack(
            controls,
            rx.cond(
                is_empty,
                empty,
                rx.vstack(
                    # phones: one card per entry; the table from the `sm` breakpoint (48em) up
                    rx.vstack(
                        rx.foreach(rows, lambda row: history_card(row, on_open_row, can_download)),
                        display=rx.breakpoints(initial="flex", sm="none"),
                        spacing="2",
                        width="100%",
                        data_testid="history-cards",
                    ),
                    rx.box(
                        rx.table.root(
                            rx.table.header(
                                rx.table.row(
                                    rx.table.column_header_cell("Date & Time (UTC)"),
                                    rx.table.column_header_cell("Type"),
                                    rx.table.column_header_cell("Description"),
                                    rx.table.column_header_cell("Amount", text_align="right"),
                                    rx.table.column_header_cell("Balance", text_align="right"),
                                )
                            ),
                            rx.table.body(rx.foreach(rows, lambda row: history_row(row, on_open_row, can_download))),
                            variant="ghost",
                            size="2",
                            width="100%",
                            min_width="760px",
                            data_testid="history-table",
                        ),
                        overflow_x="auto",
                        width="100%",
                        max_width="100%",
                        display=rx.breakpoints(initial="none", sm="block"),
                    ),
                    footer,
                    width="100%",
                    spacing="3",
                ),
            ),
            spacing="4",
            width="100%",
        ),
        width="100%",
        max_width="100%",
        overflow="hidden",
        size=rx.breakpoints(initial="2", sm="3"),
    )
