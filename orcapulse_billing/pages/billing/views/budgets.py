"""The spend budgets card (a progress bar per budget: this month's spend against it, 50/80/100 %) and
the owners' dialog that adds or changes one."""

from __future__ import annotations

import reflex as rx

from .styles import top_aligned


def _bar(row, *, can_edit, on_edit, on_remove) -> rx.Component:
    return rx.vstack(
        rx.hstack(
            rx.text(row["name"], weight="medium", size="2", data_testid="budget-name"),
            rx.cond(
                row["reached"] != "",
                rx.badge(row["reached"], color_scheme=row["color"].to(str), data_testid="budget-reached"),
            ),
            rx.spacer(),
            rx.text(
                row["spent"], " of ", row["budget"], " (", row["percent"], "%)", size="2", data_testid="budget-spent"
            ),
            rx.cond(
                can_edit,
                rx.hstack(
                    rx.icon_button(
                        rx.icon("pencil", size=14),
                        size="1",
                        variant="ghost",
                        on_click=on_edit(row["id"]),
                        aria_label="Edit budget",
                        data_testid="budget-edit",
                    ),
                    rx.icon_button(
                        rx.icon("trash-2", size=14),
                        size="1",
                        variant="ghost",
                        color_scheme="red",
                        on_click=on_remove(row["id"]),
                        aria_label="Remove budget",
                        data_testid="budget-remove",
                    ),
                    spacing="1",
                ),
            ),
            width="100%",
            align="center",
            wrap="wrap",
        ),
        rx.box(  # the month's spend against the budget, in the colour of the threshold reached
            rx.box(
                height="100%",
                width=row["bar"].to(str) + "%",
                background_color="var(--" + row["color"].to(str) + "-9)",
                border_radius="inherit",
                transition="width 0.3s",
            ),
            role="progressbar",
            aria_valuemin=0,
            aria_valuemax=100,
            aria_valuenow=row["bar"],
            height="8px",
            width="100%",
            background_color="var(--gray-a4)",
            border_radius="9999px",
            overflow="hidden",
            data_testid="budget-bar",
            data_percent=row["percent"],
            data_level=row["level"],
        ),
        rx.text(row["stop"], size="1", color_scheme="gray"),
        spacing="1",
        width="100%",
        data_testid="budget-row",
    )


def budgets_card(
    *,
    visible,
    can_edit,
    rows,
    on_mount,
    on_refresh,
    on_add,
    on_edit,
    on_remove,
) -> rx.Component:
    """Shown to owners and admins (`visible`); `can_edit`: owners."""
    card = rx.card(
        rx.vstack(
            rx.flex(
                rx.vstack(
                    rx.hstack(rx.icon("gauge", size=18), rx.heading("Spend budgets", size="4"), align="center"),
                    rx.text(
                        "Monthly (calendar month, UTC). Owners are emailed at 50%, 80% and 100%; a hard stop "
                        "refuses new usage past 100%.",
                        size="2",
                        color_scheme="gray",
                    ),
                    spacing="1",
                ),
                rx.spacer(),
                rx.cond(
                    can_edit,
                    rx.button(
                        rx.icon("plus", size=14),
                        "Add budget",
                        variant="soft",
                        on_click=on_add,
                        data_testid="budget-add",
                    ),
                ),
                gap="3",
                width="100%",
                direction=rx.breakpoints(initial="column", md="row"),
            ),
            rx.cond(
                rows.length() > 0,
                rx.vstack(
                    rx.foreach(rows, lambda row: _bar(row, can_edit=can_edit, on_edit=on_edit, on_remove=on_remove)),
                    spacing="4",
                    width="100%",
                ),
                rx.text("No spend budgets yet.", size="2", color_scheme="gray", data_testid="budgets-empty"),
            ),
            # clicked by the page's listener (BudgetsState's REFRESH_ON_POSTINGS) after postings
            rx.el.button(id="budgets-refresh", on_click=on_refresh, display="none", type="button"),
            spacing="4",
            width="100%",
        ),
        width="100%",
        data_testid="budgets-card",
    )
    return rx.box(rx.cond(visible, card), width="100%", on_mount=on_mount)


def budget_dialog(
    *,
    is_open,
    on_open_change,
    editing,
    scope,
    on_scope,
    target,
    on_target,
    key_options,
    member_options,
    amount,
    on_amount,
    hard_stop,
    on_hard_stop,
    error,
    saving,
    on_save,
) -> rx.Component:
    def options(items) -> rx.Component:
        return rx.select.root(
            rx.select.trigger(placeholder="Choose...", width="100%", data_testid="budget-target"),
            rx.select.content(rx.foreach(items, lambda o: rx.select.item(o["label"], value=o["value"]))),
            value=target,
            on_change=on_target,
            disabled=editing,
        )

    return rx.dialog.root(
        rx.dialog.content(
            rx.dialog.title(rx.cond(editing, "Change spend budget", "Add spend budget")),
            rx.dialog.description(
                "What the budget counts this calendar month (UTC) starts from the usage already charged.", size="2"
            ),
            rx.vstack(
                rx.text("For", size="1", color_scheme="gray"),
                rx.select.root(
                    rx.select.trigger(width="100%", data_testid="budget-scope"),
                    rx.select.content(
                        rx.select.item("The organization", value="organization"),
                        rx.select.item("One API key", value="api_key"),
                        rx.select.item("One member", value="member"),
                    ),
                    value=scope,
                    on_change=on_scope,
                    disabled=editing,
                ),
                rx.cond(scope == "api_key", options(key_options)),
                rx.cond(scope == "member", options(member_options)),
                rx.text("Monthly budget ($)", size="1", color_scheme="gray"),
                rx.input(
                    value=amount,
                    on_change=on_amount,
                    placeholder="500.00",
                    input_mode="decimal",
                    width="100%",
                    data_testid="budget-amount",
                ),
                rx.hstack(
                    rx.switch(checked=hard_stop, on_change=on_hard_stop, data_testid="budget-hard-stop"),
                    rx.text("Hard stop: refuse new usage and holds past 100%", size="2"),
                    align="center",
                ),
                spacing="2",
                width="100%",
                padding_y="3",
            ),
            rx.cond(error != "", rx.text(error, color_scheme="red", size="2", data_testid="budget-error")),
            rx.hstack(
                rx.dialog.close(rx.button("Cancel", variant="soft", color_scheme="gray")),
                rx.button("Save", on_click=on_save, loading=saving, data_testid="budget-save"),
                justify="end",
                spacing="2",
                margin_top="3",
            ),
            max_width="480px",
            data_testid="budget-dialog",
            custom_attrs=top_aligned(),
        ),
        open=is_open,
        on_open_change=on_open_change,
    )
