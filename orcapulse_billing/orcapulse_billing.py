"""The Reflex app: created here and nothing else. Pages register themselves with @rx.page."""

import reflex as rx

from .api import api_app
from .pages import overview  # noqa: F401  (registers the page)

app = rx.App(api_transformer=api_app)
