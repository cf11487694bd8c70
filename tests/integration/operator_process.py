"""Runs `slmpack operator` as a real process against the test cluster, as in production."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from slmpack.devcluster.launcher import free_port

from .kube_helpers import wait_for


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log_path: Path) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
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
        wait_for(self._healthy, f"the operator's /healthz (log: {self.log_path})", 30)

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"The operator exited early:\n{self.log_tail()}")
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

    def writes(self) -> float:
        return sum(self.metric_values("slmpack_operator_api_writes_total").values())

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
