"""Billing events after commit: "this organization's balance changed".

Every committed posting is published once. On the embedded default the bus is in-process; with
REDIS_URL set it goes through Redis pub/sub, so a posting made by any worker (or the CLI, or a
job) reaches the listeners of every worker. Listeners are asyncio queues of the tabs a worker
serves; the Reflex page drains them (framework-free here).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)
CHANNEL = "orcapulse:billing-events"


class EventBus:
    def __init__(self, redis_url: str | None = None):
        self._listeners: dict[int, set[tuple[asyncio.AbstractEventLoop, asyncio.Queue]]] = defaultdict(set)
        self._lock = threading.Lock()
        self._redis = None
        self._subscriber: threading.Thread | None = None
        if redis_url:
            import redis

            self._redis = redis.Redis.from_url(redis_url)

    # -- publishing (any thread) -------------------------------------------------------------

    def publish(self, event: dict) -> None:
        """`event` carries at least organization_id; called after the posting committed."""
        if self._redis is not None:
            try:
                self._redis.publish(CHANNEL, json.dumps(event))
                return
            except Exception:  # Redis down: still tell this worker's tabs; the others catch up by refresh
                log.exception("publishing a billing event to Redis failed")
        self._deliver(event)

    def _deliver(self, event: dict) -> None:
        with self._lock:
            targets = list(self._listeners.get(int(event.get("organization_id", 0)), ()))
        for loop, queue in targets:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # that tab's loop has closed
                pass

    # -- listening (asyncio) -----------------------------------------------------------------

    @contextmanager
    def listen(self, organization_id: int) -> Iterator[asyncio.Queue]:
        """A queue of this organization's events for as long as the caller listens."""
        self._ensure_subscriber()
        entry = (asyncio.get_running_loop(), asyncio.Queue(maxsize=1000))
        with self._lock:
            self._listeners[organization_id].add(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                self._listeners[organization_id].discard(entry)
                if not self._listeners[organization_id]:
                    del self._listeners[organization_id]

    def listener_count(self, organization_id: int) -> int:
        with self._lock:
            return len(self._listeners.get(organization_id, ()))

    def _ensure_subscriber(self) -> None:
        if self._redis is None or self._subscriber is not None:
            return
        with self._lock:
            if self._subscriber is not None:
                return
            self._subscriber = threading.Thread(target=self._subscribe_forever, name="billing-events", daemon=True)
            self._subscriber.start()

    def _subscribe_forever(self) -> None:
        import time

        while True:
            try:
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CHANNEL)
                for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._deliver(json.loads(message["data"]))
            except Exception:
                log.exception("the billing events subscription failed; reconnecting")
                time.sleep(1)
