"""Rate limits for sign-in and purchases, with the `limits` library's moving window.

With REDIS_URL set the windows live in Redis, so every worker (and every process) shares one count
per key. Without it they live in this process's memory, which keeps only the keys hit within their
window: an address or an e-mail that stops trying is forgotten once its window has passed. If Redis
cannot be reached, this worker's own memory limits until it answers again (never a 500, never no
limit at all).
"""

from __future__ import annotations

import logging
import threading
import time

from limits import RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import MovingWindowRateLimiter

from .redis_client import redis_options

log = logging.getLogger("orcapulse_billing.ratelimit")


class RateLimiter:
    """At most `limit` hits per key in any `window_seconds` (a moving window)."""

    def __init__(self, limit: int, window_seconds: float, redis_url: str | None = None, name: str = "rl"):
        self.limit, self.window, self.name = limit, window_seconds, name
        self._item = RateLimitItemPerSecond(limit, max(1, int(window_seconds)))
        self._memory = MemoryStorage()
        self._memory_limiter = MovingWindowRateLimiter(self._memory)
        self._lock = threading.Lock()  # the memory storage's hits and its sweep, one at a time
        self._next_sweep = 0.0
        self._redis_limiter: MovingWindowRateLimiter | None = None
        self._redis_failing = False
        if redis_url:
            storage = RedisStorage(
                redis_url,  # given to redis-py's from_url with our timeouts: a stalled Redis costs seconds
                key_prefix="opb-limits",
                wrap_exceptions=True,
                **redis_options(),
            )
            self._redis_limiter = MovingWindowRateLimiter(storage)

    def allow(self, key: str) -> bool:
        if self._redis_limiter is not None:
            try:
                allowed = self._redis_limiter.hit(self._item, self.name, key)
            except StorageError as exc:
                if not self._redis_failing:
                    log.warning("rate limit %s: Redis unavailable (%s); limiting in this worker", self.name, exc)
                self._redis_failing = True
            else:
                self._redis_failing = False
                return allowed
        with self._lock:
            allowed = self._memory_limiter.hit(self._item, self.name, key)
            self._forget_idle_keys()
        return allowed

    def keys_in_memory(self) -> int:
        """How many keys this process's memory holds (bounded: only those hit within the window)."""
        with self._lock:
            self._forget_idle_keys(force=True)
            return len(self._memory.events)

    def _forget_idle_keys(self, force: bool = False) -> None:
        """limits' memory storage drops expired moving-window entries but keeps each key's emptied
        list; clear the keys with nothing left in their window, at most once a window."""
        now = time.time()
        if not force and now < self._next_sweep:
            return
        self._next_sweep = now + self.window
        storage = self._memory
        for key in list(storage.events):
            with storage.locks[key]:  # the storage's own expiry thread takes the same lock
                entries = storage.events.get(key)
                if not entries or entries[0].expiry <= now:  # newest first: all of them expired
                    storage.clear(key)
