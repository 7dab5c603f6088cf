"""The signed-in page frame: brand, who is signed in, and sign-out (a form POST to the backend,
which revokes the session and clears the HttpOnly cookie)."""

import reflex as rx

from ..state import SessionState
from .native_form import native_form

PURPLE = "linear-gradient(135deg, #7c3aed 0%, #a855f7 100%)"


def top_bar() -> rx.Component:
    return rx.hstack(
        rx.hstack(rx.icon("audio-waveform", color="#7c3aed"), rx.text("OrcaPulse", weight="bold"), align="center"),
        rx.spacer(),
        rx.text(
            SessionState.email,
            size="2",
            color_scheme="gray",
            data_testid="signed-in-email",
            display=rx.breakpoints(initial="none", sm="block"),
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
        padding_y="3",
        border_bottom="1px solid var(--gray-a4)",
    )


def page_frame(*children: rx.Component) -> rx.Component:
    return rx.box(
        rx.container(top_bar(), size="4"),
        rx.container(
            rx.vstack(*children, spacing="5", width="100%", padding_y="5"),
            size="4",
            padding_x=rx.breakpoints(initial="3", sm="5"),
        ),
        min_height="100vh",
        background="var(--gray-1)",
    )
