"""The closed-loop load against in-process simulators: it follows its endpoints and its size."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from slmpack.loadgen.closed_loop import ClosedLoop

from .test_loadgen_sim import MODEL, running, sim_config


async def _until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_it_sends_only_with_clients_and_endpoints_and_counts_failures() -> None:
    async with running(sim_config(), sim_config()) as servers:
        urls = [s.url for s in servers]
        load = ClosedLoop(model=MODEL, prompt="Pack the GPUs", max_tokens=8, request_timeout_s=5)
        load.start(max_concurrency=8)
        try:
            await asyncio.sleep(0.5)
            assert load.completed == load.failed == 0, "no clients yet"

            load.concurrency = 4
            await asyncio.sleep(0.5)
            assert load.completed == load.failed == 0, "no endpoints yet"

            load.endpoints = urls
            await _until(lambda: load.completed >= 20)
            assert load.failed == 0

            load.endpoints = ["http://127.0.0.1:9"]  # nothing listens there
            await _until(lambda: load.failed >= 4)
        finally:
            load.stop()
