"""Run the engines as child processes: start, probe, restart after a crash, stop.

Each engine gets its own process group (vLLM forks an engine-core process per engine), so a
signal to the group reaches the whole engine and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp

from slmpack.launcher.config import LauncherConfig, StartupPolicy
from slmpack.launcher.state import EngineState
from slmpack.launcher.telemetry import LauncherMetrics

log = logging.getLogger(__name__)

#: Receives each line an engine writes (stdout and stderr merged), with the engine's index.
LogSink = Callable[[int, bytes], None]

#: Longest engine log line kept whole; longer ones are passed on in pieces of this size.
LOG_LINE_LIMIT_BYTES = 1 << 20
#: After SIGKILL, how long to wait for the kernel to reap a process before giving up on it.
KILL_SETTLE_SECONDS = 5.0


def restart_delay_seconds(
    consecutive_failures: int, initial_seconds: float, cap_seconds: float
) -> float:
    """Exponential backoff: initial, 2×, 4×, ... up to the cap; failures count from 1."""
    return min(cap_seconds, initial_seconds * 2.0 ** max(0, consecutive_failures - 1))


def stdout_sink(index: int, line: bytes) -> None:
    """Default sink: the engine's line on the launcher's stdout, prefixed `[engine i] `."""
    sys.stdout.buffer.write(b"[engine %d] " % index + line)
    sys.stdout.buffer.flush()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class Supervisor:
    """Keeps one process per configured engine running until `stop()`."""

    def __init__(
        self,
        config: LauncherConfig,
        metrics: LauncherMetrics,
        *,
        environ: Mapping[str, str],
        log_sink: LogSink = stdout_sink,
    ) -> None:
        self.config = config
        self.engines = [EngineState(i, config.engine_port(i)) for i in range(len(config.engines))]
        self._metrics = metrics
        self._environ = dict(environ)
        self._log_sink = log_sink
        self._policy = config.resolved_startup()
        # Held from an engine's spawn until it is healthy; FIFO, and the engine tasks are
        # created in index order, so the first starts go 0, 1, 2, ...
        self._startup_gate = asyncio.Lock() if self._policy is StartupPolicy.STAGGER else None
        self._stopping = asyncio.Event()
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None

    @property
    def policy(self) -> StartupPolicy:
        return self._policy

    def all_healthy(self) -> bool:
        return all(e.healthy for e in self.engines)

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.config.health_timeout_seconds)
        self._http = aiohttp.ClientSession(timeout=timeout)
        log.info("Starting %d engines (startup %s)", len(self.engines), self._policy.value)
        self._tasks = [
            asyncio.create_task(self._keep_running(i), name=f"engine-{i}")
            for i in range(len(self.engines))
        ]

    async def stop(self) -> None:
        """SIGTERM every engine's group, wait the grace period, then SIGKILL what is left."""
        self._stopping.set()
        for engine in self.engines:
            engine.healthy = False
        for proc in list(self._processes.values()):
            _signal_group(proc.pid, signal.SIGTERM)
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=self.config.shutdown_grace_seconds)
            if pending:
                for index, proc in list(self._processes.items()):
                    log.warning("Engine %d did not exit within the grace period; killed it", index)
                    _signal_group(proc.pid, signal.SIGKILL)
                _, pending = await asyncio.wait(pending, timeout=KILL_SETTLE_SECONDS)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        log.info("Stopped all engines")

    async def _keep_running(self, index: int) -> None:
        consecutive_failures = 0
        while not self._stopping.is_set():
            try:
                exit_code, became_healthy = await self._run_once(index)
            except Exception:
                # A bug here must not leave the engine unsupervised for the pod's lifetime.
                log.exception("Supervising engine %d failed", index)
                exit_code, became_healthy = None, False
            if self._stopping.is_set():
                return
            # A run that reached healthy resets the backoff: it was a crash, not a crash loop.
            consecutive_failures = 1 if became_healthy else consecutive_failures + 1
            delay = restart_delay_seconds(
                consecutive_failures,
                self.config.restart_backoff_initial_seconds,
                self.config.restart_backoff_max_seconds,
            )
            log.warning(
                "Engine %d exited with code %s; restarting in %.1f s", index, exit_code, delay
            )
            if await self._stopped_within(delay):
                return
            self.engines[index].restarts += 1
            self._metrics.engine_restarts.labels(str(index)).inc()

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    @contextlib.asynccontextmanager
    async def _startup_slot(self) -> AsyncIterator[None]:
        if self._startup_gate is None:
            yield
            return
        async with self._startup_gate:
            yield

    async def _run_once(self, index: int) -> tuple[int | None, bool]:
        """One process lifetime: (exit code, whether it ever became healthy)."""
        ready = asyncio.Event()
        async with self._startup_slot():
            if self._stopping.is_set():
                return None, False
            proc = await self._spawn(index)
            if proc is None:
                return None, False
            watcher = asyncio.create_task(self._watch(index, proc, ready))
            if self._startup_gate is not None:
                ready_wait = asyncio.create_task(ready.wait())
                await asyncio.wait(
                    [ready_wait, watcher],
                    timeout=self.config.startup_timeout_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                ready_wait.cancel()
                if not ready.is_set() and not watcher.done():
                    log.warning(
                        "Engine %d not healthy after %.0f s; starting the next engine anyway",
                        index,
                        self.config.startup_timeout_seconds,
                    )
        await watcher
        return proc.returncode, ready.is_set()

    async def _spawn(self, index: int) -> asyncio.subprocess.Process | None:
        argv = self.config.engine_argv(index)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=self.config.engine_env(index, self._environ),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                limit=LOG_LINE_LIMIT_BYTES,
            )
        except OSError as exc:
            # Fix: the engine argv in the launcher config (rendered by the operator).
            log.error("Could not start engine %d (%s): %s", index, argv[0], exc)
            return None
        self._processes[index] = proc
        self.engines[index].pid = proc.pid
        log.info("Started engine %d (pid %d, port %d)", index, proc.pid, self.engines[index].port)
        if self._stopping.is_set():  # stop() ran while this process was being created
            _signal_group(proc.pid, signal.SIGTERM)
        return proc

    async def _watch(
        self, index: int, proc: asyncio.subprocess.Process, ready: asyncio.Event
    ) -> None:
        """Probe /health until the process exits; set `ready` at the first 200."""
        state = self.engines[index]
        assert proc.stdout is not None
        pump = asyncio.create_task(self._pump_logs(index, proc.stdout))
        exited = asyncio.create_task(proc.wait())
        try:
            while not exited.done():
                # A stopping engine takes no new requests, even if it still answers.
                healthy = await self._probe(state.port) and not self._stopping.is_set()
                if exited.done():
                    break
                if healthy != state.healthy:
                    log.info("Engine %d is %s", index, "healthy" if healthy else "unhealthy")
                state.healthy = healthy
                if healthy:
                    ready.set()
                await asyncio.wait([exited], timeout=self.config.health_interval_seconds)
        finally:
            state.healthy = False
            code = await exited
            state.last_exit_code = code
            state.pid = None
            self._processes.pop(index, None)
            # Children the engine left behind (an orphaned engine core) still hold GPU memory.
            _signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pump, timeout=1.0)

    async def _probe(self, port: int) -> bool:
        assert self._http is not None
        url = f"http://{self.config.engine_host}:{port}/health"
        try:
            async with self._http.get(url) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _pump_logs(self, index: int, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readuntil(b"\n")
            except asyncio.IncompleteReadError as eof:
                if eof.partial:
                    self._log_sink(index, eof.partial + b"\n")
                return
            except asyncio.LimitOverrunError as long_line:
                line = await stream.readexactly(long_line.consumed)
                line += b"\n"
            self._log_sink(index, line)
