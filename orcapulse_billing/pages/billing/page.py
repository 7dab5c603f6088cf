"""The /billing route (and / redirecting to it): wires BillingState's vars and event handlers into
the views. Layout only; what the page shows and does is in the state's mixins."""

from __future__ import annotations

import reflex as rx

from ...components.layout import page_frame
from ...config import get_settings
from ...webhooks import EVENT_TYPES
from . import BillingState as S
from .budgets import BudgetsState as B
from .notifications import NotificationsState as N
from .profile import BillingProfileState as P
from .views.add_credits import add_credits_dialog
from .views.auto_recharge import auto_recharge_panel
from .views.billing_profile import billing_profile_card
from .views.budgets import budget_dialog, budgets_card
from .views.header import (
    error_state,
    expiry_notice,
    header,
    low_balance_banner,
    pending_payment_banner,
    skeleton,
    waiting_banner,
)
from .views.history import empty_state, history_controls, history_footer, history_table
from .views.history_filters import history_range_controls
from .views.notifications import notifications_card
from .views.session_panel import session_panel
from .views.stats import stats, usage_chart
from .views.styles import PAGE_CSS
from .views.webhooks import webhooks_card
from .webhooks import WebhooksState as W

CAN_DOWNLOAD = (S.role == "owner") | (S.role == "admin")  # receipts: owners and admins (the server checks)


def content() -> rx.Component:
    """The loaded page, top to bottom."""
    return rx.vstack(
        waiting_banner(
            waiting=S.waiting, popup_blocked=S.popup_blocked, checkout_url=S.checkout_url, on_stop=S.cancel_waiting
        ),
        pending_payment_banner(pending_payment=S.pending_payment),
        low_balance_banner(
            low_balance=S.low_balance,
            negative=S.negative,
            threshold=S.threshold,
            grace_limit=S.grace_limit,
            is_owner=S.is_owner,
            on_add_credits=S.open_add_credits,
        ),
        stats(
            balance=S.balance,
            available=S.available,
            reserved=S.reserved,
            negative=S.negative,
            added=S.added,
            consumed=S.consumed,
            transactions=S.transactions,
        ),
        usage_chart(spend=S.spend, spend_total=S.spend_total),
        history_table(
            controls=rx.vstack(
                history_controls(
                    type_filter=S.type_filter,
                    on_type_filter=S.set_type_filter,
                    page_size=S.page_size,
                    on_page_size=S.set_page_size,
                    export_query=S.export_query,
                ),
                history_range_controls(
                    from_value=S.from_input,
                    to_value=S.to_input,
                    on_from=S.set_date_from,
                    on_to=S.set_date_to,
                    on_clear=S.clear_dates,
                    order=S.order,
                    on_toggle_order=S.toggle_order,
                    error=S.range_error,
                ),
                spacing="3",
                width="100%",
            ),
            empty=empty_state(
                type_filter=S.type_filter,
                filter_label=S.filter_label,
                on_refresh=S.refresh,
                message=S.empty_message,
            ),
            footer=history_footer(
                range_text=S.range_text,
                page=S.page,
                total_pages=S.total_pages,
                page_labels=S.page_labels,
                on_prev=S.previous_page,
                on_next=S.next_page,
                on_page=S.go_to_page,
            ),
            is_empty=S.total == 0,
            rows=S.rows,
            on_open_row=S.open_row,
            can_download=CAN_DOWNLOAD,
        ),
        billing_profile_card(
            visible=P.visible,
            can_edit=S.is_owner,
            name=P.name,
            address=P.address,
            tax_id=P.tax_id,
            on_mount=P.load_profile,
            on_edit=P.open_profile,
            dialog_open=P.dialog_open,
            on_open_change=P.set_profile_open,
            form=P.form,
            on_field=P.set_profile_field,
            on_save=P.save_billing_profile,
            saving=P.saving,
            error=P.error,
        ),
        budgets_card(
            visible=B.budgets_visible,
            can_edit=S.is_owner,
            rows=B.budget_rows,
            on_mount=B.load_budgets,
            on_refresh=B.refresh_budgets,
            on_add=B.open_new_budget,
            on_edit=B.open_edit_budget,
            on_remove=B.remove_budget,
        ),
        budget_dialog(
            is_open=B.budget_dialog_open,
            on_open_change=B.set_budget_dialog_open,
            editing=B.budget_editing,
            scope=B.budget_scope,
            on_scope=B.set_budget_scope,
            target=B.budget_target,
            on_target=B.set_budget_target,
            key_options=B.key_options,
            member_options=B.member_options,
            amount=B.budget_amount,
            on_amount=B.set_budget_amount,
            hard_stop=B.budget_hard_stop,
            on_hard_stop=B.set_budget_hard_stop,
            error=B.budget_error,
            saving=B.budget_saving,
            on_save=B.save_budget,
        ),
        auto_recharge_panel(
            # the tab's edits from the first one until Save or Discard, else the saved settings (live)
            enabled=rx.cond(S.auto_editing, S.auto_edit_enabled, S.auto_enabled),
            threshold=rx.cond(S.auto_editing, S.auto_edit_threshold, S.auto_threshold),
            amount=rx.cond(S.auto_editing, S.auto_edit_amount, S.auto_amount),
            cap=rx.cond(S.auto_editing, S.auto_edit_cap, S.auto_cap),
            editing=S.auto_editing,
            # compared in the browser: the live update changes auto_saved without writing the tab's state
            changed_elsewhere=S.auto_editing & (S.auto_saved != S.auto_base),
            note=S.auto_note,
            status=S.auto_status,
            action_url=S.auto_action_url,
            error=S.auto_error,
            can_edit=S.is_owner,
            on_enabled=S.set_auto_enabled,
            on_field=S.set_auto_field,
            on_save=S.save_auto_recharge,
            on_discard=S.discard_auto_edits,
        ),
        notifications_card(
            visible=N.visible,
            mode=N.mode,
            amount=N.amount,
            percent=N.percent,
            in_force=N.in_force,
            default_label=N.default_label,
            error=N.error,
            saving=N.saving,
            switches=N.switches,
            on_mount=N.load_notifications,
            on_mode=N.set_threshold_mode,
            on_amount=N.set_threshold_amount,
            on_percent=N.set_threshold_percent,
            on_save=N.save_threshold,
            on_switch=N.set_switch,
        ),
        webhooks_card(
            visible=W.visible,
            can_manage=W.can_manage,
            endpoints=W.endpoints,
            deliveries=W.deliveries,
            has_more=W.has_more,
            refreshing=W.refreshing,
            on_mount=W.load_webhooks,
            on_refresh=W.refresh_log,
            on_more=W.show_more,
            on_add=W.open_add,
            on_enabled=W.set_endpoint_enabled,
            on_test=W.send_test,
            on_remove=W.ask_remove,
            add_dialog={
                "is_open": W.add_open,
                "on_open_change": W.set_add_open,
                "url": W.url,
                "on_url": W.set_url,
                "description": W.description,
                "on_description": W.set_description,
                "event_types": EVENT_TYPES,
                "chosen": W.chosen,
                "on_toggle": W.toggle_event_type,
                "error": W.add_error,
                "adding": W.adding,
                "on_save": W.add_endpoint,
                "secret": W.secret,
            },
            remove_dialog={
                "remove_id": W.remove_id,
                "remove_url": W.remove_url,
                "on_open_change": W.set_remove_open,
                "on_confirm": W.confirm_remove,
            },
        ),
        width="100%",
        spacing="5",
    )


@rx.page(route="/billing", title="Billing & Credits · OrcaPulse", on_load=S.load)
def billing() -> rx.Component:
    return page_frame(
        rx.el.style(PAGE_CSS),
        *(
            [rx.script(src=get_settings().lemonsqueezy_js_url)]
            if "lemonsqueezy" in get_settings().payment_providers
            else []
        ),
        header(
            org_name=S.org_name,
            refreshing=S.refreshing,
            is_owner=S.is_owner,
            on_refresh=S.refresh,
            on_add_credits=S.open_add_credits,
        ),
        expiry_notice(expiring=S.expiring),
        rx.cond(S.loaded, rx.cond(S.load_failed, error_state(on_refresh=S.refresh), content()), skeleton()),
        session_panel(
            is_open=S.panel_open,
            on_open_change=S.set_panel_open,
            row=S.panel_row,
            session=S.panel_session,
            entry=S.panel_entry,
            refs=S.panel_refs,
            can_download=CAN_DOWNLOAD,
        ),
        add_credits_dialog(
            is_open=S.add_credits_open,
            on_open_change=S.set_add_credits_open,
            providers=S.providers,
            provider=S.provider,
            on_provider=S.set_provider,
            packages=S.packages,
            cards=S.cards,
            custom_amount=S.custom_amount,
            on_custom_amount=S.set_custom_amount,
            purchase_error=S.purchase_error,
            buying=S.buying,
            on_checkout_package=S.checkout_package,
            on_checkout_custom=S.checkout_custom,
            on_quick_purchase=S.quick_purchase,
            on_save_card=S.save_card,
            on_remove_card=S.remove_card,
        ),
        rx.moment(interval=30_000, on_change=S.heartbeat, display="none"),  # subscribes a lost tab again, catches up
        active="/billing",
    )


@rx.page(route="/", title="OrcaPulse Billing", on_load=rx.redirect("/billing"))
def index() -> rx.Component:
    return rx.center(rx.spinner(), min_height="50vh")
