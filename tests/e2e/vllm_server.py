"""Start, reach and stop real vLLM CPU servers from tests.

One engine, the usual case:

    with running_vllm(["--max-model-len", "512"], log_dir=tmp_path) as server:
        status, body = server.get_json("/v1/models")

Two side by side (start both, then wait, so their ~25 s starts overlap), each on its own core:

    a = start_vllm(args, log_dir=tmp_path, name="a", omp_cpus="0")
    b = start_vllm(args, log_dir=tmp_path, name="b", omp_cpus="1")
    try:
        a.wait_ready(); b.wait_ready()
        ...
    finally:
        a.stop(); b.stop()
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmpack.dataplane.vllm_cpu import (
    DEFAULT_SERVED_MODEL_NAME,
    VllmCpuInstall,
    locate_install,
    server_argv,
    server_env,
)

#: A cold start takes about 25 s alone on 2 cores (50 s with torch.compile); two at once and a
#: busy CI machine stretch that, and a slow start is still a start.
STARTUP_TIMEOUT_SECONDS = 300.0
#: vLLM drains and exits within a few seconds of SIGTERM; past this it gets SIGKILL.
STOP_GRACE_SECONDS = 30.0
LOG_TAIL_LINES = 60
_EXCEPTION_LINE = re.compile(r"\b[A-Z]\w*(Error|Exception): ")


class VllmServerError(Exception):
    """A server did not come up; the message carries the end of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class VllmServer:
    """One running `vllm.entrypoints.openai.api_server` process and its process group."""

    name: str
    host: str
    port: int
    served_model_name: str
    log_path: Path
    process: subprocess.Popen[bytes]
    started_monotonic: float = field(default_factory=time.monotonic)
    startup_seconds: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])

    def error_lines(self, limit: int = 20) -> list[str]:
        """Lines naming an exception: vLLM's root cause often sits far above the log's end."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if _EXCEPTION_LINE.search(line)][:limit]

    def _failure(self, what: str) -> VllmServerError:
        errors = "\n".join(self.error_lines()) or "(none)"
        return VllmServerError(
            f"vLLM server {self.name!r} on port {self.port} {what}.\n"
            f"Exceptions in {self.log_path}:\n{errors}\n"
            f"Last {LOG_TAIL_LINES} lines:\n{self.log_tail()}"
        )

    def wait_ready(self, timeout_seconds: float = STARTUP_TIMEOUT_SECONDS) -> float:
        """Block until /health answers 200; returns the seconds since the process started."""
        deadline = self.started_monotonic + timeout_seconds
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise self._failure(f"exited with code {code} while starting")
            try:
                if self.get("/health", timeout_seconds=2)[0] == 200:
                    self.startup_seconds = time.monotonic() - self.started_monotonic
                    return self.startup_seconds
            except OSError:
                pass  # not listening yet
            time.sleep(0.5)
        raise self._failure(f"did not answer /health within {timeout_seconds:.0f} s")

    def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM to the whole group (API server, engine core, worker), SIGKILL after grace."""
        group = self.process.pid  # start_new_session made it the group leader
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and _group_alive(group):
            self.process.poll()  # reap the leader so it stops counting as alive
            time.sleep(0.2)
        if _group_alive(group):
            os.killpg(group, signal.SIGKILL)
        self.process.wait()

    def get(self, path: str, timeout_seconds: float = 30) -> tuple[int, str]:
        return _request(self.base_url + path, None, timeout_seconds)

    def get_json(self, path: str) -> tuple[int, Any]:
        status, text = self.get(path)
        return status, json.loads(text)

    def post_json(self, path: str, body: Mapping[str, Any]) -> tuple[int, Any]:
        status, text = _request(self.base_url + path, body, 60)
        return status, json.loads(text)

    def post_sse(self, path: str, body: Mapping[str, Any]) -> list[str]:
        """The `data:` payloads of a streamed response, in order (the last is "[DONE]")."""
        request = _build_request(self.base_url + path, {**body, "stream": True})
        events: list[str] = []
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.headers.get_content_type() == "text/event-stream"
            for raw in response:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("data:"):
                    events.append(line.removeprefix("data:").strip())
        return events


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _build_request(url: str, body: Mapping[str, Any] | None) -> urllib.request.Request:
    if body is None:
        return urllib.request.Request(url)
    return urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )


def _request(url: str, body: Mapping[str, Any] | None, timeout: float) -> tuple[int, str]:
    """Status and body; HTTP errors are answers here, not exceptions."""
    try:
        with urllib.request.urlopen(_build_request(url, body), timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def start_vllm(
    engine_args: Sequence[str],
    *,
    log_dir: Path,
    name: str = "vllm",
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    omp_cpus: str = "auto",
    served_model_name: str = DEFAULT_SERVED_MODEL_NAME,
    enforce_eager: bool = True,
    install: VllmCpuInstall | None = None,
) -> VllmServer:
    """Start one server on 127.0.0.1 without waiting for it; `env` adds to the environment."""
    install = install or locate_install()
    host = "127.0.0.1"
    port = port or free_port(host)
    argv = server_argv(
        install,
        host=host,
        port=port,
        engine_args=engine_args,
        served_model_name=served_model_name,
        enforce_eager=enforce_eager,
    )
    full_env = {**server_env(install, os.environ, omp_cpus=omp_cpus), **(env or {})}
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    with log_path.open("ab") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            argv,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own group, so stop() reaches the engine-core and worker processes too.
            start_new_session=True,
        )
    return VllmServer(name, host, port, served_model_name, log_path, process)


@contextmanager
def running_vllm(
    engine_args: Sequence[str],
    *,
    log_dir: Path,
    startup_timeout_seconds: float = STARTUP_TIMEOUT_SECONDS,
    **options: Any,
) -> Iterator[VllmServer]:
    """A started and healthy server, stopped on exit (also when it fails to start).

    `options` are those of `start_vllm` (name, port, env, omp_cpus, ...).
    """
    server = start_vllm(engine_args, log_dir=log_dir, **options)
    try:
        server.wait_ready(startup_timeout_seconds)
        yield server
    finally:
        server.stop()
