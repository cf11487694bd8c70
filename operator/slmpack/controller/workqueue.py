"""A keyed work queue with per-key exponential backoff, as controllers built on client-go use.

A key is in the queue at most once however many events arrive for it; a key being processed
is not handed to a second worker, and an event that arrives meanwhile queues it again once the
first pass ends. Failures delay the next attempt exponentially, per key, up to a cap, so a
broken object never hot-loops and never starves the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


def backoff_delay_s(failures: int, base_s: float, cap_s: float) -> float:
    """Delay before attempt `failures + 1`: base, 2x base, 4x base ... capped."""
    if failures <= 0:
        return 0.0
    return float(min(cap_s, base_s * 2.0 ** (failures - 1)))


class WorkQueue(Generic[K]):
    def __init__(self, base_delay_s: float = 0.5, max_delay_s: float = 300.0) -> None:
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, key: K) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._processing:
            self._dirty.add(key)
            return
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: K, delay_s: float) -> None:
        if key in self._queued or key in self._timers:
            return
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay_s, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> K:
        key = await self._queue.get()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def forget(self, key: K) -> None:
        """The key succeeded: its next failure starts the backoff from the base again."""
        self._failures.pop(key, None)

    def retry_later(self, key: K) -> float:
        """Requeue a failed key after its backoff; returns the delay chosen."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = backoff_delay_s(failures, self.base_delay_s, self.max_delay_s)
        self.add_after(key, delay)
        return delay

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
