"""The Reflex app: created here and nothing else. Pages register themselves with @rx.page."""

import reflex as rx

from .api import create_api_app
from .config import require_safe_start
from .grants import credit_expiry_loop
from .heap import freeze_startup_heap
from .holds import hold_expiry_loop
from .jobs import (
    auto_recharge_sweep_loop,
    notice_sweep_loop,
    phone_billing_loop,
    reconcile_loop,
    webhook_delivery_loop,
    webhook_retention_loop,
)
from .pages import login  # noqa: F401  (register the pages)
from .pages.billing import page  # noqa: F401
from .pages.billing.fanout import LiveSync, fanout
from .trust import socket_origin_allowed

# production: real provider keys and webhook secrets, or no start (one line on stderr, status 2)
require_safe_start("OrcaPulse Billing")
app = rx.App(api_transformer=create_api_app())
# The socket (/_event) accepts a handshake only from the app's origins, read per handshake (trust.py):
# Reflex gives python-engineio a fixed copy of rxconfig's cors_allowed_origins, which cannot name the
# backend's own origin (known once Reflex has its ports).
app.sio.eio.cors_allowed_origins = socket_origin_allowed
# live updates go out once per organization per worker, on the sockets of this app (fanout.py); a
# billing tab's state takes the newest of them before it handles an event
fanout.bind(app)
app.add_middleware(LiveSync())
app.register_lifespan_task(phone_billing_loop)  # once per deployment: the jobs take a lock
app.register_lifespan_task(auto_recharge_sweep_loop)
app.register_lifespan_task(reconcile_loop)  # at start-up and every 5 minutes: paid charges credited once
app.register_lifespan_task(notice_sweep_loop)  # every 5 minutes: the notices no listener wrote (a worker died)
app.register_lifespan_task(webhook_delivery_loop)  # every 5 seconds, every worker: outbound webhooks due
app.register_lifespan_task(webhook_retention_loop)  # every hour: finished webhook messages past their retention
app.register_lifespan_task(hold_expiry_loop)  # every minute: holds past HOLD_TTL_SECONDS released
app.register_lifespan_task(credit_expiry_loop)  # every 5 minutes: expired grants posted, 7-day warnings
app.register_lifespan_task(freeze_startup_heap)  # last: the start-up heap out of the garbage collector's way
