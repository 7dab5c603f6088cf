"""The Webhooks card: the organization's endpoints and the delivery log; the owners' dialog that adds
an endpoint (its signing secret shown once), the switch that turns one on or off, and the
confirmation that removes one."""

from __future__ import annotations

import reflex as rx

from .styles import top_aligned


def _endpoint(row, *, can_manage, on_enabled, on_test, on_remove) -> rx.Component:
    enabled = row["enabled"] == "yes"
    return rx.flex(
        rx.vstack(
            rx.hstack(
                rx.code(row["url"], size="2", overflow_wrap="anywhere", data_testid="webhook-url"),
                rx.cond(~enabled, rx.badge("Disabled", color_scheme="gray", data_testid="webhook-disabled")),
                align="center",
            ),
            rx.cond(row["description"] != "", rx.text(row["description"], size="2")),
            rx.text(row["events"], size="1", color_scheme="gray"),
            rx.text("Secret ", row["secret_hint"], " · added ", row["created"], size="1", color_scheme="gray"),
            spacing="1",
            min_width="0",
        ),
        rx.spacer(),
        rx.cond(
            can_manage,
            rx.hstack(
                rx.text("On", size="1", color_scheme="gray"),
                rx.switch(
                    checked=enabled,
                    on_change=lambda value: on_enabled(row["id"], value),
                    size="1",
                    data_testid="webhook-enabled",
                ),
                rx.button(
                    rx.icon("send", size=14),
                    "Send test event",
                    size="1",
                    variant="soft",
                    disabled=~enabled,  # nothing is sent to a disabled endpoint
                    on_click=on_test(row["id"]),
                    data_testid="webhook-test",
                ),
                rx.button(
                    rx.icon("trash-2", size=14),
                    "Remove",
                    size="1",
                    variant="soft",
                    color_scheme="red",
                    on_click=on_remove(row["id"]),
                    data_testid="webhook-remove",
                ),
                spacing="2",
            ),
        ),
        gap="3",
        width="100%",
        padding_y="2",
        border_bottom="1px solid var(--gray-4)",
        direction=rx.breakpoints(initial="column", md="row"),
        data_testid="webhook-endpoint",
    )


def _delivery(row) -> rx.Component:
    return rx.table.row(
        rx.table.cell(rx.text(row["created"], size="1", white_space="nowrap")),
        rx.table.cell(rx.text(row["event"], size="2", weight="medium")),
        rx.table.cell(rx.text(row["url"], size="1", overflow_wrap="anywhere")),
        rx.table.cell(
            rx.vstack(
                rx.badge(row["status"], color_scheme=row["colour"], data_testid="delivery-status"),
                rx.cond(row["detail"] != "", rx.text(row["detail"], size="1", data_testid="delivery-detail")),
                spacing="1",
            )
        ),
        rx.table.cell(rx.text(row["attempts"], size="1", white_space="pre-line", data_testid="delivery-attempts")),
        data_testid="delivery-row",
    )


def _log(*, deliveries, has_more, refreshing, on_refresh, on_more) -> rx.Component:
    return rx.vstack(
        rx.hstack(
            rx.heading("Delivery log", size="3"),
            rx.spacer(),
            rx.button(
                rx.icon("refresh-cw", size=14, class_name=rx.cond(refreshing, "animate-spin", "")),
                "Refresh",
                size="1",
                variant="soft",
                on_click=on_refresh,
                data_testid="webhook-log-refresh",
            ),
            width="100%",
            align="center",
        ),
        rx.cond(
            deliveries.length() > 0,
            rx.box(
                rx.table.root(
                    rx.table.header(
                        rx.table.row(
                            *[rx.table.column_header_cell(h) for h in ("Sent", "Event", "Endpoint", "Status")],
                            rx.table.column_header_cell("Attempts (time · response)"),
                        )
                    ),
                    rx.table.body(rx.foreach(deliveries, _delivery)),
                    size="1",
                    width="100%",
                ),
                overflow_x="auto",
                width="100%",
                data_testid="webhook-log",
            ),
            rx.text("No deliveries yet.", size="2", color_scheme="gray"),
        ),
        rx.cond(
            has_more,
            rx.button("Show more", size="1", variant="ghost", on_click=on_more, data_testid="webhook-log-more"),
        ),
        width="100%",
        spacing="2",
    )


def _input(value, on_change, placeholder: str, test_id: str) -> rx.Component:
    return rx.input(
        value=value, on_change=on_change, placeholder=placeholder, width="100%", max_length=2000, data_testid=test_id
    )


def _add_dialog(
    *,
    is_open,
    on_open_change,
    url,
    on_url,
    description,
    on_description,
    event_types,
    chosen,
    on_toggle,
    error,
    adding,
    on_save,
    secret,
) -> rx.Component:
    form = rx.vstack(
        rx.text("URL", size="1", color_scheme="gray"),
        _input(url, on_url, "https://example.com/hooks/orcapulse", "webhook-form-url"),
        rx.text("Description", size="1", color_scheme="gray"),
        _input(description, on_description, "Optional, for people", "webhook-form-description"),
        rx.text("Events", size="1", color_scheme="gray"),
        *[
            rx.checkbox(
                event_type,
                checked=chosen.contains(event_type),
                on_change=lambda checked, t=event_type: on_toggle(t, checked),
                data_testid=f"webhook-event-{event_type}",
            )
            for event_type in event_types
        ],
        rx.cond(
            error != "",
            rx.callout(error, icon="circle-alert", color_scheme="red", size="1", data_testid="webhook-form-error"),
        ),
        rx.hstack(
            rx.dialog.close(rx.button("Cancel", variant="soft", color_scheme="gray")),
            rx.button("Add endpoint", on_click=on_save, loading=adding, data_testid="webhook-form-save"),
            justify="end",
            spacing="2",
            width="100%",
            margin_top="2",
        ),
        spacing="2",
        width="100%",
    )
    created = rx.vstack(
        rx.callout(
            "Copy the signing secret now: it is not shown again. Verify each request's webhook-signature with it.",
            icon="key-round",
            color_scheme="amber",
            size="1",
        ),
        rx.hstack(
            rx.code(secret, size="2", overflow_wrap="anywhere", data_testid="webhook-secret"),
            rx.button(
                rx.icon("copy", size=14),
                "Copy",
                size="1",
                variant="soft",
                on_click=[rx.set_clipboard(secret), rx.toast.success("Secret copied.")],
                data_testid="webhook-secret-copy",
            ),
            align="center",
            width="100%",
        ),
        rx.hstack(
            rx.dialog.close(rx.button("Done", data_testid="webhook-secret-done")),
            justify="end",
            width="100%",
        ),
        spacing="3",
        width="100%",
    )
    return rx.dialog.root(
        rx.dialog.content(
            rx.dialog.title(rx.cond(secret != "", "Endpoint added", "Add webhook endpoint")),
            rx.dialog.description(
                "Events are POSTed as JSON, signed as Standard Webhooks specifies, and retried for 3 days.",
                size="2",
                margin_bottom="3",
            ),
            rx.cond(secret != "", created, form),
            max_width="520px",
            data_testid="webhook-dialog",
            custom_attrs=top_aligned(),
        ),
        open=is_open,
        on_open_change=on_open_change,
    )


def _remove_dialog(*, remove_id, remove_url, on_open_change, on_confirm) -> rx.Component:
    return rx.alert_dialog.root(
        rx.alert_dialog.content(
            rx.alert_dialog.title("Remove this endpoint?"),
            rx.alert_dialog.description(
                rx.code(remove_url, overflow_wrap="anywhere"),
                " stops receiving events; what it has not received yet is cancelled. Its delivery log stays.",
                size="2",
            ),
            rx.hstack(
                rx.alert_dialog.cancel(rx.button("Cancel", variant="soft", color_scheme="gray")),
                rx.alert_dialog.action(
                    rx.button(
                        "Remove",
                        color_scheme="red",
                        on_click=on_confirm(remove_id),
                        data_testid="webhook-remove-confirm",
                    )
                ),
                justify="end",
                spacing="2",
                margin_top="3",
            ),
            data_testid="webhook-remove-dialog",
        ),
        open=remove_id != "",
        on_open_change=on_open_change,
    )


def webhooks_card(
    *,
    visible,
    can_manage,
    endpoints,
    deliveries,
    has_more,
    refreshing,
    on_mount,
    on_refresh,
    on_more,
    on_add,
    on_enabled,
    on_test,
    on_remove,
    add_dialog: dict,
    remove_dialog: dict,
) -> rx.Component:
    """Shown to owners and admins (`visible`); `can_manage`: owners. `on_enabled(id, bool)`,
    `on_test(id)`, `on_remove(id)`: an endpoint's switch and buttons. `add_dialog`, `remove_dialog`: the dialogs' vars and handlers."""
    card = rx.card(
        rx.vstack(
            rx.flex(
                rx.vstack(
                    rx.hstack(rx.icon("webhook", size=18), rx.heading("Webhooks", size="4"), align="center"),
                    rx.text(
                        "Your servers get the organization's billing events (credits added or refunded, low "
                        "balance, auto-recharge failures) as signed HTTPS requests.",
                        size="2",
                        color_scheme="gray",
                    ),
                    spacing="1",
                ),
                rx.spacer(),
                rx.cond(
                    can_manage,
                    rx.button(rx.icon("plus", size=14), "Add endpoint", on_click=on_add, data_testid="webhook-add"),
                ),
                gap="3",
                width="100%",
                direction=rx.breakpoints(initial="column", md="row"),
            ),
            rx.cond(
                endpoints.length() > 0,
                rx.vstack(
                    rx.foreach(
                        endpoints,
                        lambda row: _endpoint(
                            row, can_manage=can_manage, on_enabled=on_enabled, on_test=on_test, on_remove=on_remove
                        ),
                    ),
                    width="100%",
                    spacing="0",
                ),
                rx.text("No endpoints yet.", size="2", color_scheme="gray", data_testid="webhook-empty"),
            ),
            _log(
                deliveries=deliveries, has_more=has_more, refreshing=refreshing, on_refresh=on_refresh, on_more=on_more
            ),
            spacing="4",
            width="100%",
        ),
        width="100%",
        data_testid="webhooks-card",
    )
    return rx.fragment(
        rx.box(rx.cond(visible, card), width="100%", on_mount=on_mount),
        _add_dialog(**add_dialog),
        _remove_dialog(**remove_dialog),
    )
