"""Previous / page numbers with ellipses / Next."""

from __future__ import annotations

import reflex as rx


def page_window(page: int, total_pages: int, width: int = 1) -> list[str]:
    """Page labels around the current page, first and last always shown, gaps as '…'.
    e.g. page 6 of 20 -> ['1', '…', '5', '6', '7', '…', '20']."""
    if total_pages <= 7:
        return [str(n) for n in range(1, total_pages + 1)]
    shown = {1, total_pages, *range(max(1, page - width), min(total_pages, page + width) + 1)}
    if page <= 3:
        shown |= {2, 3, 4}
    if page >= total_pages - 2:
        shown |= {total_pages - 3, total_pages - 2, total_pages - 1}
    labels, previous = [], 0
    for n in sorted(shown):
        if n - previous > 1:
            labels.append("…")
        labels.append(str(n))
        previous = n
    return labels


def pagination(*, page, total_pages, labels, on_prev, on_next, on_page) -> rx.Component:
    def button(label) -> rx.Component:
        return rx.cond(
            label == "…",
            rx.text("…", color_scheme="gray", padding_x="1"),
            rx.button(
                label,
                size="1",
                variant=rx.cond(label == page.to_string(), "solid", "soft"),
                color_scheme="purple",
                on_click=on_page(label),
                data_testid="pagination-page",
            ),
        )

    return rx.hstack(
        rx.button(
            rx.icon("chevron-left", size=14),
            "Previous",
            size="1",
            variant="outline",
            disabled=page <= 1,
            on_click=on_prev,
            data_testid="pagination-prev",
        ),
        rx.foreach(labels, button),
        rx.button(
            "Next",
            rx.icon("chevron-right", size=14),
            size="1",
            variant="outline",
            disabled=page >= total_pages,
            on_click=on_next,
            data_testid="pagination-next",
        ),
        spacing="1",
        align="center",
        wrap="wrap",
    )
