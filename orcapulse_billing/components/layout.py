"""The signed-in app shell: a left sidebar with the navigation (document 003: Studio → Billing),
a top bar with who is signed in and sign-out (a form POST to the backend, which revokes the session
and clears the HttpOnly cookie), and the page's content.

Below the `md` breakpoint (62em, 992 px) the sidebar folds away into a menu button in the top bar,
which opens the same navigation in a drawer (a Radix dialog shown as a sheet from the left).
Only pages that exist are listed: no dead links."""

from __future__ import annotations

import reflex as rx

from ..state import SessionState
from .native_form import native_form

PURPLE = "linear-gradient(135deg, #7c3aed 0%, #a855f7 100%)"
SIDEBAR_WIDTH = "240px"
GUTTER = rx.breakpoints(initial="16px", sm="24px")  # the content's side margins
VISUALLY_HIDDEN = {
    "position": "absolute",
    "width": "1px",
    "height": "1px",
    "overflow": "hidden",
    "clip": "rect(0 0 0 0)",
    "white-space": "nowrap",
}

# (group, ((label, route, icon, key), ...)); each link's test id is "nav-<key>"
NAV: tuple[tuple[str, tuple[tuple[str, str, str, str], ...]], ...] = (
    ("Studio", (("Billing & Credits", "/billing", "wallet", "billing"),)),
)


def _brand() -> rx.Component:
    return rx.hstack(
        rx.icon("audio-waveform", color="#7c3aed"),
        rx.text("OrcaPulse", weight="bold"),
        align="center",
        spacing="2",
    )


def _nav_link(label: str, route: str, icon: str, key: str, *, active: bool) -> rx.Component:
    return rx.link(
        rx.hstack(
            rx.icon(icon, size=16),
            rx.text(label, size="2", weight=("medium" if active else "regular")),
            align="center",
            spacing="2",
        ),
        href=route,
        underline="none",
        color=("var(--accent-11)" if active else "var(--gray-12)"),
        background=("var(--accent-a3)" if active else "transparent"),
        border_left=("3px solid var(--accent-9)" if active else "3px solid transparent"),
        border_radius="6px",
        padding="var(--space-2) var(--space-3)",
        display="block",
        width="100%",
        _hover={"background": "var(--accent-a4)" if active else "var(--gray-a3)"},
        custom_attrs={"aria-current": "page"} if active else {},
        data_active="true" if active else "false",
        data_testid=f"nav-{key}",
    )


def nav(active: str, *, in_drawer: bool = False) -> rx.Component:
    """The navigation groups; `active`: the current page's route. In the drawer a link also closes it."""
    groups = []
    for group, items in NAV:
        links = []
        for label, route, icon, key in items:
            link = _nav_link(label, route, icon, key, active=route == active)
            links.append(rx.dialog.close(link) if in_drawer else link)
        groups.append(
            rx.vstack(
                rx.text(
                    group,
                    size="1",
                    weight="bold",
                    color_scheme="gray",
                    padding_x="var(--space-3)",
                    letter_spacing="0.06em",
                    text_transform="uppercase",
                ),
                *links,
                spacing="1",
                width="100%",
                data_testid="nav-group-" + group.lower(),
            )
        )
    return rx.el.nav(
        rx.vstack(*groups, spacing="4", width="100%"),
        aria_label="Main",
        width="100%",
    )


def sidebar(active: str) -> rx.Component:
    """The desktop navigation: a full-height column whose content stays in view while the page scrolls."""
    return rx.box(
        rx.vstack(
            rx.box(_brand(), padding="var(--space-2) var(--space-3)"),
            nav(active),
            spacing="4",
            padding="var(--space-4) var(--space-3)",
            width="100%",
            position="sticky",
            top="0",
            max_height="100vh",
            overflow_y="auto",
        ),
        display=rx.breakpoints(initial="none", md="block"),
        width=SIDEBAR_WIDTH,
        flex_shrink="0",
        background="var(--color-panel-solid)",
        border_right="1px solid var(--gray-a4)",
        data_testid="sidebar",
    )


def nav_drawer(active: str) -> rx.Component:
    """The phone and tablet navigation: a menu button opening the same links in a left-hand sheet."""
    return rx.dialog.root(
        rx.dialog.trigger(
            rx.icon_button(
                rx.icon("menu", size=18),
                variant="ghost",
                color_scheme="gray",
                size="2",
                aria_label="Open navigation",
                data_testid="nav-menu-button",
            ),
        ),
        rx.dialog.content(
            rx.vstack(
                rx.hstack(
                    rx.dialog.title(_brand(), margin="0"),
                    rx.spacer(),
                    rx.dialog.close(
                        rx.icon_button(
                            rx.icon("x", size=16),
                            variant="ghost",
                            color_scheme="gray",
                            aria_label="Close navigation",
                            data_testid="nav-close",
                        )
                    ),
                    width="100%",
                    align="center",
                ),
                rx.dialog.description("Navigation", style=VISUALLY_HIDDEN),
                nav(active, in_drawer=True),
                spacing="4",
                width="100%",
            ),
            # a sheet from the left instead of Radix's centred dialog
            position="fixed",
            top="0",
            left="0",
            bottom="0",
            width="min(300px, 85vw)",
            max_width="min(300px, 85vw)",
            height="100dvh",
            max_height="100dvh",
            margin="0",
            border_radius="0",
            padding="var(--space-4)",
            data_testid="nav-drawer",
        ),
    )


def top_bar(active: str) -> rx.Component:
    crumbs = [(group, label) for group, items in NAV for label, route, _, _ in items if route == active]
    return rx.hstack(
        rx.box(nav_drawer(active), display=rx.breakpoints(initial="block", md="none")),
        rx.box(_brand(), display=rx.breakpoints(initial="block", md="none")),
        *(
            [
                rx.hstack(
                    rx.text(crumbs[0][0], size="2", color_scheme="gray"),
                    rx.icon("chevron-right", size=14, color="var(--gray-9)"),
                    rx.text(crumbs[0][1], size="2", weight="medium"),
                    align="center",
                    spacing="1",
                    display=rx.breakpoints(initial="none", md="flex"),
                    data_testid="breadcrumb",
                )
            ]
            if crumbs
            else []
        ),
        rx.spacer(),
        rx.text(
            SessionState.email,
            size="2",
            color_scheme="gray",
            data_testid="signed-in-email",
            display=rx.breakpoints(initial="none", sm="block"),
            overflow="hidden",
            text_overflow="ellipsis",
            white_space="nowrap",
            min_width="0",
        ),
        rx.badge(SessionState.role, color_scheme="purple", data_testid="signed-in-role"),
        native_form(
            rx.button(
                rx.icon("log-out", size=14),
                "Sign out",
                type="submit",
                variant="ghost",
                size="1",
                data_testid="logout-button",
            ),
            path="/api/auth/logout-form",
        ),
        width="100%",
        align="center",
        spacing="3",
        padding_y="var(--space-3)",
        border_bottom="1px solid var(--gray-a4)",
    )


def page_frame(*children: rx.Component, active: str = "") -> rx.Component:
    """`active`: the route of the page shown, highlighted in the navigation."""
    return rx.flex(
        sidebar(active),
        rx.box(
            rx.container(top_bar(active), size="4", padding_x=GUTTER),
            rx.container(
                rx.vstack(*children, spacing="5", width="100%", padding_bottom="var(--space-6)"),
                size="4",
                padding_x=GUTTER,
            ),
            flex="1",
            min_width="0",
        ),
        min_height="100vh",
        width="100%",
        background="var(--gray-1)",
    )
