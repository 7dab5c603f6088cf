"""`/login`: email and password, posted as a plain form to the backend, which sets the HttpOnly
session cookie and sends the browser to /billing (or back here with an error code)."""

from __future__ import annotations

import reflex as rx

from ..components.layout import PURPLE
from ..components.native_form import native_form

ERRORS = {
    "invalid_credentials": "Wrong email or password.",
    "rate_limited": "Too many attempts. Try again in a minute.",
    "invalid_request": "Enter your email and password.",
    "forbidden": "Sign-in is only accepted from this site.",
}


class LoginState(rx.State):
    error: str = ""

    @rx.event
    def load(self):
        code = self.router.url.query_parameters.get("error", "")
        self.error = ERRORS.get(code, "Sign-in failed." if code else "")


@rx.page(route="/login", title="Sign in · OrcaPulse Billing", on_load=LoginState.load)
def login() -> rx.Component:
    return rx.center(
        rx.card(
            rx.vstack(
                rx.heading(
                    "OrcaPulse Billing",
                    size="7",
                    style={"background": PURPLE, "-webkit-background-clip": "text", "color": "transparent"},
                ),
                rx.text("Sign in to manage your credits", color_scheme="gray", size="2"),
                rx.cond(
                    LoginState.error != "",
                    rx.callout(
                        LoginState.error,
                        icon="triangle-alert",
                        color_scheme="red",
                        width="100%",
                        data_testid="login-error",
                    ),
                ),
                native_form(
                    rx.vstack(
                        rx.text("Email", size="2", weight="medium"),
                        rx.input(
                            name="email",
                            type="email",
                            placeholder="you@company.com",
                            required=True,
                            auto_complete="username",
                            width="100%",
                            size="3",
                            data_testid="login-email",
                        ),
                        rx.text("Password", size="2", weight="medium"),
                        rx.input(
                            name="password",
                            type="password",
                            required=True,
                            auto_complete="current-password",
                            width="100%",
                            size="3",
                            data_testid="login-password",
                        ),
                        rx.button(
                            "Sign in",
                            type="submit",
                            width="100%",
                            size="3",
                            color_scheme="purple",
                            data_testid="login-submit",
                        ),
                        spacing="2",
                        width="100%",
                    ),
                    path="/api/auth/login-form",
                    width="100%",
                ),
                spacing="4",
                width="100%",
            ),
            size="4",
            width="100%",
            max_width="400px",
        ),
        min_height="100vh",
        padding="4",
        background="linear-gradient(180deg, #faf5ff 0%, #ffffff 60%)",
    )
