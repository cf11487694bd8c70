"""Runs `slmpack operator` as a real process against a local cluster (tests, benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from slmpack.devcluster.errors import DevClusterError
from slmpack.devcluster.launcher import free_port

START_TIMEOUT_SECONDS = 30.0


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.extra_env = dict(env or {})
        self.metrics_port = 0
        self.health_port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.metrics_port = free_port()
        self.health_port = free_port()
        env = {
            **os.environ,
            "SLMPACK_METRICS_PORT": str(self.metrics_port),
            "SLMPACK_HEALTH_PORT": str(self.health_port),
            # Short backoff so the outage test recovers within its wait.
            "SLMPACK_BACKOFF_MAX_SECONDS": "10",
            **self.extra_env,
        }
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "slmpack", "operator", "--kubeconfig", str(self.kubeconfig)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._healthy():
            if time.monotonic() > deadline:
                raise DevClusterError(
                    f"The operator's /healthz did not answer within {START_TIMEOUT_SECONDS:g} s:"
                    f"\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise DevClusterError(f"The operator exited early:\n{self.log_tail()}")
        try:
            url = f"http://127.0.0.1:{self.health_port}/healthz"
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def metric_values(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        out: dict[tuple[tuple[str, str], ...], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    out[tuple(sorted(sample.labels.items()))] = sample.value
        return out

    def peak_rss_bytes(self) -> int:
        """VmHWM of the running operator process."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    def writes(self) -> float:
        return sum(self.metric_values("slmpack_operator_api_writes_total").values())

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
