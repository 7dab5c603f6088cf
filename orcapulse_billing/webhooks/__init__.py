"""Outbound webhooks: owners register endpoints; the organization's events reach them signed as the
Standard Webhooks specification says (https://www.standardwebhooks.com), so receivers verify them with
its libraries.

- **Outbox.** `emit(conn, ...)` writes one `webhook_message` per subscribed endpoint in the caller's
  transaction (the change it reports and its message commit or roll back together). Its `key` makes an
  event idempotent: the message id is derived from it, so emitting the same event twice writes it once.
- **Signing.** Each attempt sends the same body and the same `webhook-id` (receivers dedupe on it),
  a fresh `webhook-timestamp` (unix seconds: receivers refuse stale ones) and `webhook-signature:
  v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`, the secret being the base64 after
  `whsec_`.
- **Delivery** (`deliver_due`, the lifespan loop every few seconds and `orcapulse-billing webhooks
  deliver`): a 2xx answer within the timeout delivers; anything else is retried with exponential
  backoff (`RETRY_BASE` doubling, at most `RETRY_CAP` apart) until `RETRY_WINDOW` (3 days) after the
  event, with one last attempt at the end of the window, then the message is failed. Every attempt is
  logged with its response code or error (`webhook_attempt`).
- **Several senders at once** (workers, the CLI): a sender claims due messages by moving their
  `next_attempt_at` a lease ahead and counting the attempt, in one write transaction (PostgreSQL:
  `FOR UPDATE SKIP LOCKED`, so concurrent senders take different rows; SQLite: `BEGIN IMMEDIATE`),
  and records the result only if the claim is still its own (same attempt count). A sender that dies
  mid-way leaves its messages due again when the lease ends: at least once, as the spec expects.
- **Retention** (`prune_finished`, a lifespan job every hour): messages that are done are deleted
  with their attempts `WEBHOOK_RETENTION_DAYS` (30) after they finished; pending ones never.
- **Where endpoints may point.** https only in production mode (config.Settings.production); never a
  private, link-local, unique-local, loopback or otherwise non-public address, checked for every
  address the host name resolves to, at registration and again before each attempt (so a name later
  pointed at an internal address is refused then). Outside production, http and loopback are allowed
  so a developer (and the tests) can receive on 127.0.0.1.

The package, by concern: `common` (event types, the refusal error, tables), `urls` (where endpoints
may point), `endpoints`, `outbox` (emit, the balance crossings' listener, the test event), `delivery`
(signing, claiming, sending, backoff), `log` (the delivery log), `retention` and `audited` (an owner's
add, enable or disable, and remove with their audit lines). Everything callers use is
importable from here.
"""

from .audited import add_audited, remove_audited, set_enabled_audited
from .common import EVENT_TYPES, TEST_EVENT, WebhookError
from .delivery import (
    BATCH,
    LEASE,
    RETRY_BASE,
    RETRY_CAP,
    RETRY_WINDOW,
    TIMEOUT_SECONDS,
    DeliveryRun,
    backoff,
    deliver_due,
    headers_for,
    sign,
)
from .endpoints import (
    MAX_ENDPOINTS,
    Endpoint,
    add_endpoint,
    check_event_types,
    get_endpoint,
    list_endpoints,
    new_secret,
    remove_endpoint,
    set_endpoint_enabled,
)
from .log import Delivery, attempts_for, list_deliveries
from .outbox import emit, emit_now, message_id, on_crossings, send_test_event
from .retention import prune_finished
from .urls import Resolver, system_resolver, validate_url

__all__ = [
    "BATCH",
    "EVENT_TYPES",
    "LEASE",
    "MAX_ENDPOINTS",
    "RETRY_BASE",
    "RETRY_CAP",
    "RETRY_WINDOW",
    "TEST_EVENT",
    "TIMEOUT_SECONDS",
    "Delivery",
    "DeliveryRun",
    "Endpoint",
    "Resolver",
    "WebhookError",
    "add_audited",
    "add_endpoint",
    "attempts_for",
    "backoff",
    "check_event_types",
    "deliver_due",
    "emit",
    "emit_now",
    "get_endpoint",
    "headers_for",
    "list_deliveries",
    "list_endpoints",
    "message_id",
    "new_secret",
    "on_crossings",
    "prune_finished",
    "remove_audited",
    "remove_endpoint",
    "send_test_event",
    "set_enabled_audited",
    "set_endpoint_enabled",
    "sign",
    "system_resolver",
    "validate_url",
]
