"""Billing events after commit: "this organization's balance changed".

Every committed posting is published once. On the embedded default the bus is in-process; with
REDIS_URL set it goes through Redis pub/sub, so a posting made by any worker (or the CLI, or a
job) reaches the listeners of every worker. Listeners are asyncio queues of the tabs a worker
serves; the Reflex page drains them (framework-free here).

A posting never waits on Redis: `publish` puts the event on a bounded outbox that one publisher
thread per process drains (full: the oldest event is dropped, counted and logged). When Redis
fails or does not answer within its timeouts (redis_client.py), events go to this worker's own
tabs for a few seconds before Redis is tried again; other workers' tabs catch up with their 30 s
heartbeat. The subscriber reconnects with backoff and treats a Redis that stops answering its
PINGs as gone. At exit, the outbox gets a moment to drain (a CLI grant still reaches the tabs).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import random
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)
CHANNEL = "orcapulse:billing-events"
OUTBOX_SIZE = 1000  # events waiting for Redis; beyond this the oldest is dropped
# Events sent to Redis in one pipeline (one round trip) when more are waiting: a 1,000-entry usage batch
# publishes 1,000 events at once, and one PUBLISH round trip each would let the outbox overflow.
PUBLISH_BATCH = 500
REDIS_DOWN_PAUSE = 5.0  # seconds after a failed publish during which events stay in this worker
PING_EVERY = 5.0  # seconds of silence on the subscription before the subscriber PINGs Redis
RECONNECT_MIN, RECONNECT_MAX = 0.5, 10.0  # the subscriber's backoff between attempts, seconds


class EventBus:
    def __init__(self, redis_url: str | None = None, *, outbox_size: int = OUTBOX_SIZE, settings=None):
        self._listeners: dict[int, set[tuple[asyncio.AbstractEventLoop, asyncio.Queue]]] = defaultdict(set)
        self._lock = threading.Lock()
        self._redis = None
        self._subscriber: threading.Thread | None = None
        self._subscriber_pid = 0
        self._outbox: deque[dict] = deque()
        self._outbox_size = outbox_size
        self._outbox_changed = threading.Condition()
        self._publishing = 0  # events the publisher thread took from the outbox and is sending
        self._publisher: threading.Thread | None = None
        self._publisher_pid = 0
        self._redis_down_until = 0.0
        self.dropped = 0  # events dropped from a full outbox
        self.connected = threading.Event()  # the subscription is confirmed by Redis
        self.subscriptions = 0  # confirmed subscriptions so far (more than one: it reconnected)
        if redis_url:
            from .redis_client import redis_client

            self._redis = redis_client(redis_url, settings)
            self._answer_within = 2 * (self._redis.get_connection_kwargs().get("socket_timeout") or 1.0) + 1
            atexit.register(self.flush)

    # -- publishing (any thread) -------------------------------------------------------------

    def publish(self, event: dict) -> None:
        """`event` carries at least organization_id; called after the posting committed. Never waits
        on Redis: the event goes to the outbox and the publisher thread sends it."""
        self.publish_many((event,))

    def publish_many(self, events: Iterable[dict]) -> None:
        """`publish` for the events of one commit, in order, handed to the publisher thread at once (one
        lock and one wake-up for a batch's thousand entries, not one each)."""
        if self._redis is None:
            for event in events:
                self._deliver(event)
            return
        with self._outbox_changed:
            for event in events:
                if len(self._outbox) >= self._outbox_size:
                    self._outbox.popleft()
                    self.dropped += 1
                    if self.dropped == 1 or self.dropped % 100 == 0:
                        log.warning(
                            "billing events: outbox full, %d event(s) dropped so far (Redis slow?)", self.dropped
                        )
                self._outbox.append(event)
            self._outbox_changed.notify_all()
        self._ensure_publisher()

    def pending(self) -> int:
        """Events not yet handed to Redis (or to this worker's tabs)."""
        with self._outbox_changed:
            return len(self._outbox) + self._publishing

    def flush(self, timeout: float | None = None) -> bool:
        """Waits until the outbox is empty (at most `timeout` seconds, by default about one
        publish's timeouts); True when it is."""
        if self._redis is None:
            return True
        deadline = time.monotonic() + (self._answer_within + 1 if timeout is None else timeout)
        with self._outbox_changed:
            while self._outbox or self._publishing:
                left = deadline - time.monotonic()
                if left <= 0 or self._publisher is None or not self._publisher.is_alive():
                    return False
                self._outbox_changed.wait(left)
        return True

    def _ensure_publisher(self) -> None:
        if self._publisher is not None and self._publisher_pid == os.getpid() and self._publisher.is_alive():
            return
        with self._lock:
            if self._publisher is not None and self._publisher_pid == os.getpid() and self._publisher.is_alive():
                return
            self._publisher = threading.Thread(target=self._publish_forever, name="billing-events-out", daemon=True)
            self._publisher_pid = os.getpid()
            self._publisher.start()

    def _publish_forever(self) -> None:
        while True:
            with self._outbox_changed:
                self._publishing = 0
                self._outbox_changed.notify_all()
                while not self._outbox:
                    self._outbox_changed.wait()
                events = [self._outbox.popleft() for _ in range(min(PUBLISH_BATCH, len(self._outbox)))]
                self._publishing = len(events)
            try:
                self._send(events)
            except Exception:  # never let one event stop the thread
                log.exception("billing events: publishing failed")

    def _send(self, events: list[dict]) -> None:
        """`events` to Redis in order, in one round trip; when Redis fails, to this worker's tabs."""
        assert self._redis is not None
        if time.monotonic() >= self._redis_down_until:
            try:
                if len(events) == 1:
                    self._redis.publish(CHANNEL, json.dumps(events[0]))
                else:
                    pipe = self._redis.pipeline(transaction=False)
                    for event in events:
                        pipe.publish(CHANNEL, json.dumps(event))
                    pipe.execute()
                return
            except Exception as exc:  # down or not answering: this worker's tabs still hear it
                log.warning(
                    "billing events: Redis publish failed (%s); this worker's tabs only for %.0f s, "
                    "the other workers' tabs catch up on their heartbeat",
                    exc,
                    REDIS_DOWN_PAUSE,
                )
                self._redis_down_until = time.monotonic() + REDIS_DOWN_PAUSE
        for event in events:
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
        if self._redis is None or (self._subscriber is not None and self._subscriber_pid == os.getpid()):
            return
        with self._lock:
            if self._subscriber is not None and self._subscriber_pid == os.getpid():
                return
            self._subscriber = threading.Thread(target=self._subscribe_forever, name="billing-events", daemon=True)
            self._subscriber_pid = os.getpid()
            self._subscriber.start()

    def _subscribe_forever(self) -> None:
        """Subscribes, and again after every failure, waiting longer each time (with jitter) up
        to RECONNECT_MAX. Postings published while no subscription stands are not replayed: the
        tabs' heartbeat catches up."""
        delay, quiet = RECONNECT_MIN, False
        while True:
            try:
                self._subscription()
            except Exception as exc:
                if self.connected.is_set():  # it stood: a new outage, logged and retried quickly
                    delay, quiet = RECONNECT_MIN, False
                if not quiet:
                    log.warning("billing events: the Redis subscription failed (%s); reconnecting", exc)
                    quiet = True
            self.connected.clear()
            time.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, RECONNECT_MAX)

    def _subscription(self) -> None:
        """One subscription, until Redis fails or stops answering: the subscription must be
        confirmed, and a PING after PING_EVERY seconds of silence answered, within about two
        socket timeouts."""
        assert self._redis is not None
        pubsub = self._redis.pubsub()
        try:
            pubsub.subscribe(CHANNEL)
            asked = time.monotonic()  # waiting for an answer since (None: not waiting)
            heard = asked
            while True:
                message = pubsub.get_message(timeout=1.0)
                now = time.monotonic()
                if message is not None:
                    heard, asked = now, None
                    if message["type"] == "subscribe" and not self.connected.is_set():
                        self.connected.set()
                        self.subscriptions += 1
                        log.info("billing events: subscribed on Redis (%d)", self.subscriptions)
                    elif message["type"] == "message":
                        self._deliver(json.loads(message["data"]))
                elif asked is not None and now - asked > self._answer_within:
                    raise TimeoutError(f"Redis did not answer within {self._answer_within:.0f} s")
                elif asked is None and now - heard >= PING_EVERY:
                    pubsub.ping()
                    asked = now
        finally:
            try:
                pubsub.close()
            except Exception:
                pass
