"""A keyed work queue with per-key exponential backoff, as controllers built on client-go use.

A key is in the queue at most once however many events arrive for it; a key being processed
is not handed to a second worker, and an event that arrives meanwhile queues it again once the
first pass ends. Failures delay the next attempt exponentially, per key, up to a cap, so a
broken object never hot-loops and never starves the others.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


def backoff_delay_s(failures: int, base_s: float, cap_s: float) -> float:
    """Delay before attempt `failures + 1`: base, 2x base, 4x base ... capped."""
    if failures <= 0:
        return 0.0
    return float(min(cap_s, base_s * 2.0 ** (failures - 1)))


class WorkQueue(Generic[K]):
    """Two lanes: urgent keys (new objects, spec changes) are served before routine ones
    (status refreshes), so a burst of rollout progress never delays planning a new object."""

    def __init__(self, base_delay_s: float = 0.5, max_delay_s: float = 300.0) -> None:
        self._urgent: deque[K] = deque()
        self._routine: deque[K] = deque()
        self._wakeup = asyncio.Event()
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._dirty_urgent: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, key: K, urgent: bool = False) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._processing:
            self._dirty.add(key)
            if urgent:
                self._dirty_urgent.add(key)
            return
        if key in self._queued:
            if urgent and key in self._routine:
                self._routine.remove(key)
                self._urgent.append(key)
            return
        self._queued.add(key)
        (self._urgent if urgent else self._routine).append(key)
        self._wakeup.set()

    def add_after(self, key: K, delay_s: float) -> None:
        if key in self._queued or key in self._timers:
            return
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay_s, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> K:
        while not (self._urgent or self._routine):
            self._wakeup.clear()
            await self._wakeup.wait()
        key = self._urgent.popleft() if self._urgent else self._routine.popleft()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            urgent = key in self._dirty_urgent
            self._dirty_urgent.discard(key)
            self.add(key, urgent)

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
