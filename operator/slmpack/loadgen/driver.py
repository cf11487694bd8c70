"""The imperative shell: sends a planned run over HTTP and records what each request did.

One aiohttp session and one task per request in flight, all on the running event loop: no
threads, so a thousand concurrent streams cost a thousand small coroutines and sockets. A
dispatcher sleeps until each planned send time and starts the request's task then (open
loop: it never waits for responses), so a long run holds tasks only for requests in flight.
An optional concurrency cap makes tasks queue for a slot after their arrival, as
`vllm bench serve --max-concurrency` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import aiohttp

from slmpack.loadgen.sse import SseDecoder, classify
from slmpack.loadgen.stats import RequestRecord
from slmpack.loadgen.workload import (
    DEFAULT_TOKEN_IDS,
    PATHS,
    Api,
    PlannedRequest,
    PromptFormat,
    request_body,
)

#: Default cap on the silence between two reads of one response (seconds).
DEFAULT_REQUEST_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class DriverConfig:
    model: str
    api: Api = "completions"
    prompt_format: PromptFormat = "text"
    max_concurrency: int | None = None  # None: every arrival is sent at once
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    seed: int = 0
    token_ids: tuple[int, int] = DEFAULT_TOKEN_IDS
    time_scale: float = 1.0  # planned times are divided by it (server seconds per wall second)

    def __post_init__(self) -> None:
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")


@dataclass(frozen=True)
class RunResult:
    records: tuple[RequestRecord, ...]  # in plan order
    duration_wall_s: float  # the schedule's time 0 to the end of the last response
    peak_in_flight: int  # most requests sent and not yet finished at one time
    started_unix: float


@contextlib.asynccontextmanager
async def client_session(connections: int = 0) -> AsyncIterator[aiohttp.ClientSession]:
    """The session a run uses; `connections` 0 means no connection limit."""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        yield session


async def run_load(
    plan: Sequence[PlannedRequest],
    config: DriverConfig,
    session: aiohttp.ClientSession | None = None,
) -> RunResult:
    """Send `plan` and wait for every response."""
    if session is None:
        async with client_session(config.max_concurrency or 0) as own:
            return await _Run(plan, config, own).execute()
    return await _Run(plan, config, session).execute()


class _Run:
    def __init__(
        self, plan: Sequence[PlannedRequest], config: DriverConfig, session: aiohttp.ClientSession
    ) -> None:
        self.plan = sorted(plan, key=lambda r: (r.send_at_s, r.index))
        self.config = config
        self.session = session
        self.slots = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.request_timeout_s, sock_read=config.request_timeout_s
        )
        self.in_flight = 0
        self.peak_in_flight = 0
        self.start = 0.0

    async def execute(self) -> RunResult:
        started_unix = time.time()
        self.start = time.perf_counter()
        records: list[RequestRecord] = []
        pending: set[asyncio.Task[RequestRecord]] = set()

        def collect(task: asyncio.Task[RequestRecord]) -> None:
            pending.discard(task)
            if not task.cancelled():
                records.append(task.result())

        scale = self.config.time_scale
        try:
            for request in self.plan:
                delay = self.start + request.send_at_s / scale - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(self._request(request))
                pending.add(task)
                task.add_done_callback(collect)
            while pending:
                await asyncio.wait(set(pending))
        except asyncio.CancelledError:
            # A cancelled run stops its requests too (the servers see the clients go away).
            for task in list(pending):
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise
        duration = time.perf_counter() - self.start
        ordered = tuple(sorted(records, key=lambda r: r.index))
        return RunResult(ordered, duration, self.peak_in_flight, started_unix)

    async def _request(self, request: PlannedRequest) -> RequestRecord:
        if self.slots is None:
            return await self._send(request)
        async with self.slots:
            return await self._send(request)

    async def _send(self, request: PlannedRequest) -> RequestRecord:
        config = self.config
        body = request_body(
            request, config.api, config.model, config.prompt_format, config.seed, config.token_ids
        )
        url = request.base_url + PATHS[config.api]
        error: str | None = None
        token_times: list[float] = []
        prompt_tokens: int | None = None
        completion_tokens: int | None = None
        done = False
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        sent = time.perf_counter()
        try:
            async with self.session.post(url, json=body, timeout=self.timeout) as response:
                if response.status != 200:
                    await response.read()
                    error = f"http_{response.status}"
                else:
                    decoder = SseDecoder()
                    async for chunk in response.content.iter_any():
                        now = time.perf_counter()
                        for payload in decoder.feed(chunk):
                            event = classify(payload, config.api)
                            if event.tokens:
                                token_times.append(now)
                            if event.completion_tokens is not None:
                                completion_tokens = event.completion_tokens
                                prompt_tokens = event.prompt_tokens
                            if event.error is not None and error is None:
                                error = event.error
                            done = done or event.done
        except TimeoutError:
            error = "timeout"
        except (aiohttp.ClientError, OSError) as err:
            error = type(err).__name__
        except Exception as err:
            # Whatever else goes wrong in one request is that request's error, not the run's.
            error = f"{type(err).__name__}: {err}"
        finally:
            self.in_flight -= 1
        end = time.perf_counter()
        if error is None and not done:
            error = "incomplete_stream"
        if error is None and not token_times:
            error = "no_tokens"
        gaps = tuple(b - a for a, b in itertools.pairwise(token_times))
        return RequestRecord(
            index=request.index,
            base_url=request.base_url,
            scheduled_s=request.send_at_s / config.time_scale,
            sent_s=sent - self.start,
            prompt_tokens=request.prompt_tokens if prompt_tokens is None else prompt_tokens,
            requested_output_tokens=request.output_tokens,
            output_tokens=len(token_times) if completion_tokens is None else completion_tokens,
            ttft_s=token_times[0] - sent if token_times else None,
            itl_s=gaps,
            e2e_s=end - sent,
            error=error,
        )
