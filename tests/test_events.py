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


async def _receive_many(listening: EventBus, publishing: EventBus, events: list[dict], organization_id: int):
    with listening.listen(organization_id) as mine:
        await asyncio.sleep(0.3)  # the subscriber thread connects
        await asyncio.to_thread(publishing.publish_many, events)
        wanted = sum(1 for e in events if e["organization_id"] == organization_id)
        return [await asyncio.wait_for(mine.get(), 5) for _ in range(wanted)]


@pytest.mark.parametrize("through_redis", [False, True], ids=["in-process", "redis"])
def test_the_events_of_one_commit_arrive_each_in_order(through_redis):
    """publish_many (a batch's entries): every event, in order, each to its organization's listeners."""
    url = _redis_url() if through_redis else None
    publishing = EventBus(url)
    listening = EventBus(url) if through_redis else publishing
    events = [{"organization_id": 71 if n % 10 else 72, "entry_id": n} for n in range(300)]
    received = _run(_receive_many(listening, publishing, events, 71))
    assert received == [e for e in events if e["organization_id"] == 71]
    assert publishing.flush(5) and publishing.dropped == 0


async def _receive_commits(listening: EventBus, publishing: EventBus, commits: list[list[dict]], organization_id: int):
    received = []
    with listening.listen(organization_id) as mine:
        await asyncio.sleep(0.3)  # the subscriber thread connects
        for events in commits:  # a tab's queue holds 1,000 events: each commit is read before the next
            await asyncio.to_thread(publishing.publish_many, events)
            received += [await asyncio.wait_for(mine.get(), 5) for _ in events]
    return received


def test_big_commits_go_to_redis_in_pipelines_whole_and_in_order():
    """Commits of 700 events (more than one pipeline of PUBLISH_BATCH): every event arrives, in order."""
    url = _redis_url()
    publishing, listening = EventBus(url), EventBus(url)
    commits = [[{"organization_id": 81, "entry_id": c * 1000 + n} for n in range(700)] for c in range(3)]
    received = _run(_receive_commits(listening, publishing, commits, 81))
    assert received == [e for events in commits for e in events]
    assert publishing.dropped == 0 and publishing.pending() == 0
