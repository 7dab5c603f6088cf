"""The Reflex app: created here and nothing else. Pages register themselves with @rx.page."""

import reflex as rx

from .api import create_api_app
from .jobs import phone_billing_loop
from .pages import billing, login  # noqa: F401  (register the pages)

app = rx.App(api_transformer=create_api_app())
app.register_lifespan_task(phone_billing_loop)  # once per deployment: the job takes a lock
