"""A small sliding-window rate limiter for the login and purchase endpoints.

Per process on the embedded default; with REDIS_URL set, the window lives in Redis so every
worker shares it.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque


class RateLimiter:
    def __init__(self, limit: int, window_seconds: float, redis_url: str | None = None, name: str = "rl"):
        self.limit, self.window, self.name = limit, window_seconds, name
        self._hits: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._redis = None
        if redis_url:
            import redis

            self._redis = redis.Redis.from_url(redis_url)

    def allow(self, key: str) -> bool:
        if self._redis is not None:
            bucket = f"opb:{self.name}:{key}:{int(time.time() // self.window)}"
            pipe = self._redis.pipeline()
            pipe.incr(bucket)
            pipe.expire(bucket, int(self.window) + 1)
            count, _ = pipe.execute()
            return count <= self.limit
        now = time.monotonic()
        with self._lock:
            hits = self._hits[key]
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                return False
            hits.append(now)
            return True
