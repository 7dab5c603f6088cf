"""The event bus: in-process delivery by organization, and Redis pub/sub between two buses as two
workers would have them (a real Redis)."""

from __future__ import annotations

import asyncio
import os

import pytest

from orcapulse_billing.events import EventBus


def _redis_url() -> str:
    import redis

    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is needed at {url}: {exc}")
    return url


async def _receive(listening: EventBus, publishing: EventBus, organization_id: int, other_org: int):
    with listening.listen(organization_id) as mine, listening.listen(other_org) as theirs:
        await asyncio.sleep(0.3)  # the subscriber thread connects
        await asyncio.to_thread(publishing.publish, {"organization_id": organization_id, "balance": "9.2700"})
        event = await asyncio.wait_for(mine.get(), 5)
        await asyncio.sleep(0.2)
        return event, theirs.qsize(), listening.listener_count(organization_id)


def _run(coroutine):
    """asyncio.run in a thread of its own: the browser tests' Playwright keeps a loop on this one."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result(timeout=30)


def test_in_process_delivery_is_per_organization():
    bus = EventBus()
    event, others, listeners = _run(_receive(bus, bus, 41, 42))
    assert event == {"organization_id": 41, "balance": "9.2700"} and others == 0 and listeners == 1
    assert bus.listener_count(41) == 0  # listeners leave with their tab


def test_redis_carries_events_between_workers():
    url = _redis_url()
    worker_a, worker_b = EventBus(url), EventBus(url)  # e.g. the webhook lands on A, the tab is on B
    event, others, _ = _run(_receive(worker_b, worker_a, 51, 52))
    assert event["balance"] == "9.2700" and others == 0
