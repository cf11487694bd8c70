"""The Packed launcher in front of two real vLLM CPU engines, as a Packed pod runs it.

The unit tier drives the launcher against fake engines; this checks the parts only real vLLM
can show: its start, its SSE stream through the proxy, its metrics merged per engine, and its
engine-core children going away with the launcher.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from slmpack.dataplane.vllm_cpu import (
    DEFAULT_SERVED_MODEL_NAME,
    VllmCpuError,
    locate_install,
    server_argv,
    server_env,
)
from slmpack.units import MIB

from .vllm_server import STARTUP_TIMEOUT_SECONDS, free_port

pytestmark = pytest.mark.e2e

ENGINES = 2
#: Small enough that two engines start side by side within ~3 GB each; a fixed KV size also
#: lets the launcher's Auto policy start them in parallel.
ENGINE_ARGS = (
    "--max-model-len", "256", "--max-num-seqs", "4", "--max-num-batched-tokens", "256",
    "--kv-cache-memory-bytes", str(64 * MIB),
)  # fmt: skip
SHUTDOWN_GRACE_S = 20.0
CONCURRENT_REQUESTS = 8
LOG_TAIL_LINES = 80


@dataclass
class RunningLauncher:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log_tail(self) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _engine_ports(avoid: int) -> int:
    """A first engine port with the next ones free too: the launcher counts up from it."""
    while True:
        first = free_port()
        ports = range(first, first + ENGINES)
        if ports[-1] <= 65535 and avoid not in ports and all(map(_is_free, ports[1:])):
            return first


def _http(url: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _completion(prompt: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": DEFAULT_SERVED_MODEL_NAME,
        "prompt": prompt,
        "max_tokens": 6,
        "temperature": 0.0,
        # Random weights emit end-of-text at random; the length must be exact.
        "ignore_eos": True,
        **extra,
    }


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process, from /proc."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # The command name may hold spaces and parentheses; the fields after it do not.
        state, ppid = stat.rpartition(")")[2].split()[:2]
        table[int(entry.name)] = (int(ppid), state)
    return table


def _descendants(root: int) -> set[int]:
    table = _process_table()
    found: set[int] = set()
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent]
        found.update(children)
        frontier += children
    return found


def _alive(pids: set[int]) -> set[int]:
    table = _process_table()
    return {pid for pid in pids if pid in table and table[pid][1] != "Z"}


def _kill_leftovers(launcher: subprocess.Popen[bytes], engines: set[int]) -> None:
    if launcher.poll() is None:
        launcher.kill()
        launcher.wait()
    for pid in _alive(engines):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLauncher]:
    try:
        install = locate_install()
    except VllmCpuError as err:
        pytest.fail(str(err), pytrace=False)
    argv = list(server_argv(install, host="127.0.0.1", port=0, engine_args=ENGINE_ARGS))
    argv[argv.index("--port") + 1] = "{port}"  # the launcher fills in each engine's port
    # Two engines on two cores: each binds its OpenMP threads to its own core.
    engines = [{"argv": argv, "env": {"VLLM_CPU_OMP_THREADS_BIND": str(i)}} for i in range(ENGINES)]
    front = free_port()
    first = _engine_ports(avoid=front)
    config = {
        "engines": engines,
        "host": "127.0.0.1",
        "front_port": front,
        "first_engine_port": first,
        "health_interval_seconds": 0.5,
        "shutdown_grace_seconds": SHUTDOWN_GRACE_S,
    }
    work = tmp_path_factory.mktemp("launcher-real-vllm")
    config_path = work / "launcher.json"
    config_path.write_text(json.dumps(config))
    log_path = work / "launcher.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "slmpack.launcher", "--config", str(config_path)],
            env=server_env(install, os.environ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = RunningLauncher(process, f"http://127.0.0.1:{front}", log_path)
    engine_pids: set[int] = set()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"launcher exited ({process.returncode}) while starting:\n{running.log_tail()}",
                    pytrace=False,
                )
            try:
                if _http(f"{running.url}/health")[0] == 200:
                    break
            except OSError:
                pass  # router not listening yet
            if time.monotonic() > deadline:
                pytest.fail(
                    f"launcher /health not 200 within {STARTUP_TIMEOUT_SECONDS:.0f} s:\n"
                    f"{running.log_tail()}",
                    pytrace=False,
                )
            time.sleep(1)
        engine_pids = _descendants(process.pid)
        yield running
    finally:
        _kill_leftovers(process, engine_pids or _descendants(process.pid))


def test_completion_through_the_front_port(launcher: RunningLauncher) -> None:
    status, text = _http(f"{launcher.url}/v1/completions", _completion("The launcher routes"))
    assert status == 200, f"{text}\n{launcher.log_tail()}"
    assert json.loads(text)["usage"]["completion_tokens"] == 6


def test_streamed_completion_through_the_front_port(launcher: RunningLauncher) -> None:
    request = urllib.request.Request(
        f"{launcher.url}/v1/completions",
        data=json.dumps(_completion("Streams pass through", stream=True)).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers.get_content_type() == "text/event-stream"
        events = [
            line.decode().removeprefix("data:").strip()
            for line in response
            if line.startswith(b"data:")
        ]
    assert events[-1] == "[DONE]", f"{events}\n{launcher.log_tail()}"
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    assert text, events


def test_concurrent_requests_reach_both_engines(launcher: RunningLauncher) -> None:
    prompts = [f"Request number {i}" for i in range(CONCURRENT_REQUESTS)]
    with ThreadPoolExecutor(CONCURRENT_REQUESTS) as pool:
        results = list(
            pool.map(lambda p: _http(f"{launcher.url}/v1/completions", _completion(p)), prompts)
        )
    assert all(status == 200 for status, _ in results), results

    status, text = _http(f"{launcher.url}/metrics")
    assert status == 200, text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    per_engine: dict[str, float] = {}
    for sample in families["vllm:request_success"].samples:
        if sample.name.endswith("_total"):
            engine = sample.labels["engine"]
            per_engine[engine] = per_engine.get(engine, 0.0) + sample.value
    generated = {
        s.labels["engine"]: s.value
        for s in families["vllm:generation_tokens"].samples
        if s.name.endswith("_total")
    }
    assert per_engine.keys() == {"0", "1"}, per_engine
    assert all(count > 0 for count in per_engine.values()), per_engine
    assert all(generated.get(e, 0) > 0 for e in ("0", "1")), generated


def test_sigterm_stops_the_launcher_and_every_engine(launcher: RunningLauncher) -> None:
    # Last in the module: it ends the shared launcher.
    engine_pids = _descendants(launcher.process.pid)
    assert len(engine_pids) >= ENGINES, engine_pids

    launcher.process.send_signal(signal.SIGTERM)
    try:
        code = launcher.process.wait(timeout=SHUTDOWN_GRACE_S + 30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"launcher still running after SIGTERM:\n{launcher.log_tail()}")

    assert code == 0, launcher.log_tail()
    deadline = time.monotonic() + 10
    while _alive(engine_pids) and time.monotonic() < deadline:
        time.sleep(0.2)  # orphans are reaped by init a moment after the launcher exits
    assert not _alive(engine_pids), f"left running: {_alive(engine_pids)}\n{launcher.log_tail()}"
