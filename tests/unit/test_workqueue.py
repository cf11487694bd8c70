"""The keyed work queue: dedup, one worker per key, re-queue while busy, per-key backoff."""

from __future__ import annotations

import asyncio

import pytest

from slmpack.controller.workqueue import WorkQueue, backoff_delay_s


async def _get_now(queue: WorkQueue[str]) -> str:
    return await asyncio.wait_for(queue.get(), timeout=1)


async def _nothing_within(queue: WorkQueue[str], seconds: float) -> bool:
    try:
        await asyncio.wait_for(queue.get(), timeout=seconds)
    except TimeoutError:
        return True
    return False


async def test_a_key_is_queued_once_however_often_it_is_added() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for key in ("a", "b", "a", "a", "b"):
        queue.add(key)

    assert len(queue) == 2
    assert [await _get_now(queue), await _get_now(queue)] == ["a", "b"]  # first-added first
    assert len(queue) == 0
    assert await _nothing_within(queue, 0.02)


async def test_a_key_being_processed_is_not_handed_out_again_until_done() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    assert await _get_now(queue) == "a"

    queue.add("a")  # an event while the first pass runs
    queue.add("a")
    assert len(queue) == 0
    assert await _nothing_within(queue, 0.02)

    queue.done("a")  # the event is not lost: the key comes back once, after the pass
    assert await _get_now(queue) == "a"
    queue.done("a")
    assert await _nothing_within(queue, 0.02)


async def test_done_without_new_events_does_not_requeue() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    await _get_now(queue)
    queue.done("a")

    assert len(queue) == 0
    assert await _nothing_within(queue, 0.02)


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(0, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 128.0), (10, 256.0), (11, 300.0)],
)
def test_backoff_doubles_from_the_base_up_to_the_cap(failures: int, expected: float) -> None:
    # base 0.5 s: 0.5 * 2 ** (n - 1); 0.5 * 2 ** 10 = 512 is past the 300 s cap.
    assert backoff_delay_s(failures, 0.5, 300.0) == expected


async def test_retry_later_doubles_per_key_and_forget_resets() -> None:
    queue: WorkQueue[str] = WorkQueue(base_delay_s=0.01, max_delay_s=0.04)
    delays = [queue.retry_later("a") for _ in range(4)]
    queue.close()

    assert delays == [0.01, 0.02, 0.04, 0.04]
    assert queue.failures("a") == 4
    assert queue.failures("b") == 0  # per key: another key is not slowed down

    queue.forget("a")
    assert queue.failures("a") == 0
    assert queue.retry_later("a") == 0.01
    queue.close()


async def test_retry_later_requeues_after_the_delay() -> None:
    queue: WorkQueue[str] = WorkQueue(base_delay_s=0.05, max_delay_s=1.0)
    queue.add("a")
    await _get_now(queue)
    loop = asyncio.get_running_loop()
    failed_at = loop.time()
    queue.retry_later("a")
    queue.done("a")

    assert await _nothing_within(queue, 0.02)
    assert await _get_now(queue) == "a"
    assert loop.time() - failed_at >= 0.05 - 0.005  # the loop's timer resolution


async def test_add_after_does_not_duplicate_a_pending_or_queued_key() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("a", 0.02)
    queue.add_after("a", 0.02)
    queue.add("b")
    queue.add_after("b", 0.01)  # already queued: nothing more

    assert await _get_now(queue) == "b"
    assert await _get_now(queue) == "a"
    assert len(queue) == 0
    assert await _nothing_within(queue, 0.05)


async def test_an_event_during_backoff_queues_the_key_at_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("a", 10.0)
    queue.add("a")  # a new spec needs no waiting out an old failure

    assert await _get_now(queue) == "a"
    queue.done("a")
    assert await _nothing_within(queue, 0.02)  # and the old timer was cancelled
    queue.close()


async def test_close_cancels_pending_timers() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("a", 0.01)
    queue.close()

    assert await _nothing_within(queue, 0.05)


async def test_urgent_keys_are_served_before_routine_ones() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("status-refresh-1")
    queue.add("status-refresh-2")
    queue.add("new-object", urgent=True)
    queue.add("status-refresh-2", urgent=True)  # promoted, not queued twice
    order = [await queue.get() for _ in range(3)]
    assert order == ["new-object", "status-refresh-2", "status-refresh-1"]
    assert len(queue) == 0


async def test_an_urgent_add_while_processing_comes_back_urgent() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    busy = await queue.get()
    queue.add("b")
    queue.add("a", urgent=True)
    queue.done(busy)
    assert await queue.get() == "a"
    assert await queue.get() == "b"
