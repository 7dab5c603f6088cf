"""Group commit: what several threads ask to write at about the same time is written together.

The first caller to arrive while nobody is writing becomes the leader and writes the queue as one
group (up to `max_group` items), in one transaction; callers who arrive meanwhile wait, and the next
group is everything that queued while the previous one was being written. Nobody waits for company:
a lone caller writes at once, so group commit costs a lone caller nothing and, under load, turns
many commits into one. When the leader's own item is written and more are queued, it hands the lead
to the first waiter and returns.

`write_group` returns one outcome per item, in order: a value, or an exception for that item alone
(raised in its caller's thread). If `write_group` itself raises, every item of the group gets that
exception.

Plain Python (threads): nothing here knows about databases.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    __slots__ = ("item", "outcome", "done", "lead")

    def __init__(self, item: T):
        self.item = item
        self.outcome: R | BaseException | None = None
        self.done = threading.Event()
        self.lead = False  # woken to lead, not with an outcome


class GroupCommit(Generic[T, R]):
    def __init__(
        self,
        write_group: Callable[[list[T]], list[R | BaseException]],
        *,
        max_group: int = 256,
        on_idle: Callable[[], None] | None = None,
    ):
        self._write_group = write_group
        self._on_idle = on_idle  # called, under the lock, when the lead is put down with nobody waiting
        self._max_group = max_group
        self._lock = threading.Lock()
        self._queue: deque[_Slot[T, R]] = deque()
        self._leading = False
        # what was written: for tests and benchmarks (groups < items means commits were shared)
        self.groups = 0
        self.items = 0
        self.largest = 0

    def pending(self) -> int:
        """How many items wait for a group."""
        with self._lock:
            return len(self._queue)

    def submit(self, item: T) -> R:
        slot: _Slot[T, R] = _Slot(item)
        with self._lock:
            self._queue.append(slot)
            lead = not self._leading
            self._leading = True
        if not lead:
            slot.done.wait()
            if slot.lead:  # handed the lead: this slot is at the head of the queue
                slot.lead = False
                slot.done.clear()
                lead = True
        if lead:
            self._lead(slot)
        outcome = slot.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome  # type: ignore[return-value]

    def _lead(self, mine: _Slot[T, R]) -> None:
        """Writes one group, which holds `mine` (a new leader found the queue empty; a successor is at
        its head), then hands the lead on, or puts it down when nobody is waiting."""
        with self._lock:
            group = [self._queue.popleft() for _ in range(min(self._max_group, len(self._queue)))]
            self.groups += 1
            self.items += len(group)
            self.largest = max(self.largest, len(group))
        try:
            outcomes: list[R | BaseException] = self._write_group([s.item for s in group])
            if len(outcomes) != len(group):
                raise RuntimeError(f"write_group returned {len(outcomes)} outcomes for {len(group)} items")
        except BaseException as exc:  # every caller of the group learns of it
            outcomes = [exc] * len(group)
        finally:
            with self._lock:
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                    successor.done.set()
                else:
                    self._leading = False
                    if self._on_idle is not None:
                        self._on_idle()
        for slot, outcome in zip(group, outcomes, strict=True):
            slot.outcome = outcome
            if slot is not mine:
                slot.done.set()
