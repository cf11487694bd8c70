"""The real launcher, in this event loop, in front of fake engines run as real subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from slmpack.launcher.app import Launcher
from slmpack.launcher.config import CONFIG_ENV, LauncherConfig, StartupPolicy
from slmpack.launcher.router import Router
from slmpack.launcher.state import EngineState
from slmpack.launcher.supervisor import stdout_sink
from slmpack.launcher.telemetry import LauncherMetrics

from .fake_engine import build_app, parse_args

FAKE_ENGINE = Path(__file__).with_name("fake_engine.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPT = {"model": "Qwen/Qwen2.5-0.5B-Instruct", "prompt": "hi", "max_tokens": 3}
#: Fast probes and backoff so each scenario takes about a second.
FAST = {
    "health_interval_seconds": 0.05,
    "health_timeout_seconds": 0.5,
    "restart_backoff_initial_seconds": 0.1,
    "restart_backoff_max_seconds": 0.5,
    "shutdown_grace_seconds": 2.0,
    "connect_timeout_seconds": 0.5,
    "metrics_timeout_seconds": 1.0,
}


def free_port_block(count: int) -> int:
    """First of `count` consecutive ports that are free right now on 127.0.0.1."""
    for _ in range(100):
        base = random.randint(20000, 60000 - count)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise RuntimeError(f"no block of {count} free ports found")


def engine(name: str, *knobs: str) -> dict[str, Any]:
    return {"argv": [sys.executable, str(FAKE_ENGINE), "--port", "{port}", "--name", name, *knobs]}


def make_config(engines: Sequence[dict[str, Any]], **overrides: Any) -> LauncherConfig:
    base = free_port_block(len(engines) + 1)
    raw = {
        "engines": list(engines),
        "host": "127.0.0.1",
        "front_port": base,
        "first_engine_port": base + 1,
        **FAST,
        **overrides,
    }
    return LauncherConfig.model_validate(raw)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def eventually(predicate: Callable[[], bool], timeout_seconds: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@dataclass
class Running:
    launcher: Launcher
    http: aiohttp.ClientSession
    url: str
    logs: list[tuple[int, bytes]] = field(default_factory=list)
    pids_seen: set[int] = field(default_factory=set)

    def pids(self) -> list[int | None]:
        return [e.pid for e in self.launcher.supervisor.engines]

    async def all_healthy(self, timeout_seconds: float = 5.0) -> None:
        await eventually(self.launcher.supervisor.all_healthy, timeout_seconds)
        self.pids_seen.update(p for p in self.pids() if p is not None)

    async def complete(self, **extra: Any) -> tuple[int, dict[str, Any]]:
        async with self.http.post(f"{self.url}/v1/completions", json={**PROMPT, **extra}) as r:
            return r.status, await r.json()


@contextlib.asynccontextmanager
async def launched(config: LauncherConfig) -> AsyncIterator[Running]:
    logs: list[tuple[int, bytes]] = []
    launcher = Launcher(config, environ=os.environ, log_sink=lambda i, line: logs.append((i, line)))
    running: Running | None = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        try:
            await launcher.start()
            running = Running(launcher, http, f"http://127.0.0.1:{config.front_port}", logs)
            yield running
        finally:
            seen = running.pids_seen if running else set()
            pids = seen | {e.pid for e in launcher.supervisor.engines if e.pid is not None}
            await launcher.stop()
            # Safety net: whatever the test did, no engine may outlive it.
            leftovers = [p for p in pids if alive(p)]
            for pid in leftovers:
                os.killpg(pid, signal.SIGKILL)
            assert not leftovers, f"engine processes left running: {leftovers}"


async def test_health_is_ready_only_when_every_engine_is_up() -> None:
    config = make_config([engine("e0"), engine("e1", "--startup-seconds", "0.5")])
    async with launched(config) as run:
        async with run.http.get(f"{run.url}/live") as r:
            assert r.status == 200
        engines = run.launcher.supervisor.engines
        await eventually(lambda: engines[0].healthy)
        async with run.http.get(f"{run.url}/health") as r:
            assert r.status == 503
            body = await r.json()
        assert body["unhealthy_engines"] == [1]
        await run.all_healthy()
        async with run.http.get(f"{run.url}/health") as r:
            assert r.status == 200
            assert [e["healthy"] for e in (await r.json())["engines"]] == [True, True]
        async with run.http.get(f"{run.url}/v1/models") as r:
            assert r.status == 200
            assert (await r.json())["data"][0]["id"] == PROMPT["model"]
        await eventually(lambda: any(b"listening" in line for i, line in run.logs if i == 1))


async def test_concurrent_requests_spread_over_the_least_loaded_engines() -> None:
    config = make_config(
        [engine(f"e{i}", "--delay-seconds", "0.3") for i in range(3)], startup="Parallel"
    )
    async with launched(config) as run:
        await run.all_healthy()
        results = await asyncio.gather(*(run.complete() for _ in range(6)))

        assert all(status == 200 for status, _ in results)
        served = Counter(body["system_fingerprint"] for _, body in results)
        assert served == {"e0": 2, "e1": 2, "e2": 2}


async def test_a_busy_engine_gets_no_new_requests_while_another_is_idle() -> None:
    config = make_config(
        [engine("slow", "--delay-seconds", "0.6"), engine("fast")], startup="Parallel"
    )
    async with launched(config) as run:
        await run.all_healthy()
        slow = asyncio.create_task(run.complete())  # first choice: engine 0
        await eventually(lambda: run.launcher.supervisor.engines[0].in_flight_requests == 1)
        # Round robin would send every second one of these to the busy engine.
        served = [(await run.complete())[1]["system_fingerprint"] for _ in range(4)]
        assert served == ["fast"] * 4
        assert (await slow)[1]["system_fingerprint"] == "slow"


async def test_streaming_is_passed_through_chunk_by_chunk() -> None:
    config = make_config([engine("e0", "--chunks", "3", "--delay-seconds", "0.3")])
    async with launched(config) as run:
        await run.all_healthy()
        arrivals: list[tuple[float, bytes]] = []
        start = time.monotonic()
        url = f"{run.url}/v1/chat/completions"
        async with run.http.post(url, json={**PROMPT, "stream": True}) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/event-stream")
            async for line in r.content:
                if line.strip():
                    arrivals.append((time.monotonic() - start, line.strip()))
        events = [line for _, line in arrivals]
        assert events[-1] == b"data: [DONE]"
        assert [json.loads(e[6:])["choices"][0]["text"] for e in events[:-1]] == [
            "tok0",
            "tok1",
            "tok2",
        ]
        # Buffering the whole response would deliver everything at about 0.9 s.
        assert arrivals[0][0] < 0.5
        assert arrivals[-1][0] - arrivals[0][0] > 0.6


async def test_an_engine_dying_mid_stream_cuts_the_response_off_visibly() -> None:
    config = make_config([engine("e0", "--die-mid-stream", "--delay-seconds", "0.1")])
    async with launched(config) as run:
        await run.all_healthy()
        received: list[bytes] = []

        async def read_stream() -> None:
            url = f"{run.url}/v1/completions"
            async with run.http.post(url, json={**PROMPT, "stream": True}) as r:
                assert r.status == 200
                async for line in r.content:
                    received.append(line)

        with pytest.raises(aiohttp.ClientPayloadError):
            await read_stream()
        assert received[0].startswith(b"data: {")
        assert b"data: [DONE]\n" not in received
        sample = run.launcher.metrics.registry.get_sample_value
        assert sample("slmpack_launcher_upstream_aborts_total", {"engine": "0"}) == 1


async def test_a_request_is_retried_on_another_engine_when_the_first_dies() -> None:
    config = make_config([engine("dies", "--die-on-request"), engine("ok")], startup="Parallel")
    async with launched(config) as run:
        await run.all_healthy()
        status, body = await run.complete()  # engine 0 comes first in the rotation

        assert status == 200
        assert body["system_fingerprint"] == "ok"
        sample = run.launcher.metrics.registry.get_sample_value
        assert sample("slmpack_launcher_retries_total", {"engine": "0"}) == 1
        assert sample("slmpack_launcher_requests_routed_total", {"engine": "1"}) == 1


async def test_connection_refused_is_retried_then_503_when_no_engine_is_left() -> None:
    """The window between an engine's death and the next probe: it still counts as healthy."""
    config = make_config([engine("e0"), engine("e1")])  # only its ports are used
    engines = [EngineState(i, config.engine_port(i), healthy=True) for i in range(2)]
    metrics = LauncherMetrics(2)
    router = Router(config, engines, metrics, is_running=lambda: True)
    live = web.AppRunner(build_app(parse_args(["--port", "0", "--name", "live"])))
    await live.setup()
    await router.start()
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{config.front_port}/v1/completions"
            async with http.post(url, json=PROMPT) as r:
                assert r.status == 503
                error = (await r.json())["error"]
            assert error["code"] == 503
            assert error["type"] == "ServiceUnavailableError"
            assert "engine 0 failed: ClientConnectorError" in error["message"]
            assert "engine 1 failed: ClientConnectorError" in error["message"]
            assert [e.healthy for e in engines] == [False, False]

            # Engine 1 comes back; engine 0 is still refused and is tried first.
            await web.TCPSite(live, "127.0.0.1", config.engine_port(1)).start()
            engines[0].healthy = engines[1].healthy = True
            async with http.post(url, json=PROMPT) as r:
                assert r.status == 200
                assert (await r.json())["system_fingerprint"] == "live"
    finally:
        await router.stop()
        await live.cleanup()
    sample = metrics.registry.get_sample_value
    assert sample("slmpack_launcher_retries_total", {"engine": "0"}) == 2
    assert sample("slmpack_launcher_retries_total", {"engine": "1"}) == 1
    assert sample("slmpack_launcher_unavailable_responses_total") == 1


async def test_503_says_why_when_no_engine_is_healthy() -> None:
    config = make_config(
        [engine("e0", "--unhealthy"), engine("e1", "--unhealthy")], startup="Parallel"
    )
    async with launched(config) as run:
        await eventually(lambda: all(e.pid for e in run.launcher.supervisor.engines))
        await asyncio.sleep(0.2)  # a few probes, all answered 503
        status, body = await run.complete()

        assert status == 503
        assert body["error"]["message"] == (
            "No engine in this pod can take the request: engine 0 is not healthy yet; "
            "engine 1 is not healthy yet"
        )
        async with run.http.get(f"{run.url}/health") as r:
            assert r.status == 503
            assert (await r.json())["unhealthy_engines"] == [0, 1]


async def test_a_crashed_engine_is_restarted_and_others_keep_serving() -> None:
    config = make_config([engine("e0"), engine("e1")], startup="Parallel")
    async with launched(config) as run:
        await run.all_healthy()
        engines = run.launcher.supervisor.engines
        old_pid = engines[0].pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        await eventually(lambda: not engines[0].healthy)

        status, body = await run.complete()
        assert (status, body["system_fingerprint"]) == (200, "e1")

        await run.all_healthy()
        assert engines[0].pid not in (None, old_pid)
        assert engines[0].restarts == 1
        assert engines[0].last_exit_code == -signal.SIGKILL
        async with run.http.get(f"{run.url}/metrics") as r:
            text = await r.text()
        assert 'slmpack_launcher_engine_restarts_total{engine="0"} 1.0' in text
        assert 'slmpack_launcher_engine_restarts_total{engine="1"} 0.0' in text


def _events(path: Path) -> dict[tuple[str, str], float]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return {(e["name"], e["event"]): e["time"] for e in lines}


async def test_stagger_starts_each_engine_after_the_previous_is_healthy(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    knobs = ("--startup-seconds", "0.3", "--events-file", str(events))
    config = make_config([engine(f"e{i}", *knobs) for i in range(3)])
    assert config.resolved_startup() is StartupPolicy.STAGGER  # no --kv-cache-memory-bytes
    async with launched(config) as run:
        await run.all_healthy(timeout_seconds=10)
    times = _events(events)
    for i in range(2):
        assert times[(f"e{i + 1}", "start")] >= times[(f"e{i}", "listening")]


async def test_engines_with_a_fixed_kv_cache_start_together(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    knobs = ("--startup-seconds", "0.3", "--events-file", str(events))
    kv = ("--kv-cache-memory-bytes", "1073741824")
    config = make_config([engine(f"e{i}", *knobs, *kv) for i in range(3)])
    assert config.resolved_startup() is StartupPolicy.PARALLEL
    async with launched(config) as run:
        await run.all_healthy()
    times = _events(events)
    first_listening = min(times[(f"e{i}", "listening")] for i in range(3))
    assert all(times[(f"e{i}", "start")] < first_listening for i in range(3))


async def test_metrics_are_merged_with_distinct_engine_labels() -> None:
    config = make_config([engine("e0"), engine("e1")], startup="Parallel")
    async with launched(config) as run:
        await run.all_healthy()
        await run.complete()  # engine 0
        async with run.http.get(f"{run.url}/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()

    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("vllm:num_requests_running", "vllm:time_to_first_token_seconds"):
        assert {s.labels["engine"] for s in families[name].samples} == {"0", "1"}, name
    served = {s.labels["engine"]: s.value for s in families["fake:requests_served"].samples}
    assert served == {"0": 1.0, "1": 0.0}
    assert text.count("# HELP vllm:inter_token_latency_seconds ") == 1
    assert families["slmpack_launcher_engines_healthy"].samples[0].value == 2.0


async def test_stop_kills_an_engine_that_ignores_sigterm_after_the_grace_period() -> None:
    config = make_config(
        [engine("stubborn", "--ignore-sigterm"), engine("polite")],
        startup="Parallel",
        shutdown_grace_seconds=0.5,
    )
    async with launched(config) as run:
        await run.all_healthy()
        pids = [p for p in run.pids() if p is not None]
        start = time.monotonic()
        await run.launcher.stop()
        took_seconds = time.monotonic() - start

    assert 0.5 <= took_seconds < 3.0
    assert not any(alive(p) for p in pids)


def test_engine_log_lines_carry_the_engine_index(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    stdout_sink(2, b"INFO Loading weights\n")

    assert capsysbinary.readouterr().out == b"[engine 2] INFO Loading weights\n"


async def test_module_entrypoint_serves_and_forwards_sigterm(tmp_path: Path) -> None:
    config = make_config([engine("e0")])
    env = {**os.environ, CONFIG_ENV: config.model_dump_json()}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "slmpack.launcher",
        env=env,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    engine_pid = None
    try:
        url = f"http://127.0.0.1:{config.front_port}/health"
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 10
            while engine_pid is None and time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url) as r:
                        if r.status == 200:
                            engine_pid = (await r.json())["engines"][0]["pid"]
                await asyncio.sleep(0.05)
        assert engine_pid is not None, "the launcher never became ready"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if engine_pid is not None and alive(engine_pid):
            os.killpg(engine_pid, signal.SIGKILL)

    assert proc.returncode == 0, stderr.decode()
    assert not alive(engine_pid)
    assert b"[engine 0] INFO fake engine e0 listening" in stdout
