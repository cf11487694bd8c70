"""A closed-loop load whose size and targets change while it runs: `concurrency` clients, each
sending its next completion as soon as the last one returns, to a random endpoint of the
current set. For watching an autoscaler: when replicas are added, the endpoints grow and the
same clients spread over them; raising `concurrency` is a load step.

Requests are not streamed, so the host's cost is per request rather than per token. It runs
its own event loop on a background thread, so a synchronous caller (a test, the demo) can
poll the cluster meanwhile.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

#: A client waits this long before trying again when it has nowhere to send, or failed.
RETRY_SECONDS = 0.2


@dataclass
class ClosedLoop:
    """`endpoints` are base URLs (http://host:port) and may be replaced at any time."""

    model: str
    prompt: str
    max_tokens: int
    request_timeout_s: float = 60.0
    endpoints: Sequence[str] = ()
    concurrency: int = 0
    completed: int = 0
    failed: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    async def _client(self, index: int, session: aiohttp.ClientSession) -> None:
        rng = random.Random(index)
        body = {"model": self.model, "prompt": self.prompt, "max_tokens": self.max_tokens}
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        while not self._stop.is_set():
            targets = list(self.endpoints)
            if index >= self.concurrency or not targets:
                await asyncio.sleep(RETRY_SECONDS)
                continue
            url = f"{rng.choice(targets)}/v1/completions"
            try:
                async with session.post(url, json=body, timeout=timeout) as reply:
                    await reply.read()
                    ok = reply.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                self.completed += 1
            else:
                self.failed += 1
                await asyncio.sleep(RETRY_SECONDS)

    async def _main(self, clients: int) -> None:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(self._client(i, session) for i in range(clients)))

    def start(self, max_concurrency: int) -> None:
        """Start `max_concurrency` clients; only the first `concurrency` of them send."""
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(max_concurrency),), daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
