"""The demo's last act: the autotuner at work on an SLMDeployment in Auto mode.

A world of its own inside the demo's control plane, so its clock and its load do not disturb
the packing comparison: one node of four simulated L4 GPUs played by a second runner in real
time (an 8B model on an L4 makes about a thousand tokens per second per GPU, which two cores
serve), its own Prometheus, and an operator watching only this act's namespace with the
autotuner's windows shortened to seconds. A closed-loop load goes light, then steps up past
one GPU, then falls back; the act records the replicas over time and every decision the
autotuner wrote to `status.autotune.history`, with its reason.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slmpack.demo.world import ensure_namespace, ready_pod_ips, stopper
from slmpack.devcluster import gpu_nodes, node_apply, prometheus, runner
from slmpack.devcluster.operator_process import OperatorProcess
from slmpack.loadgen.closed_loop import ClosedLoop

GROUP, VERSION, PLURAL = "slmpack.dev", "v1alpha1", "slmdeployments"
NAMESPACE = "slmpack-demo-autotune"
NAME = "autotuned"
POOL = "demo-l4"
L4 = "NVIDIA-L4"
GPUS = 4
SERVED_NAME = "llama"
MAX_TOKENS = 48
PROMPT = "Pack the GPUs until the tokens per joule stop rising. " * 6
SCRAPE_INTERVAL_SECONDS = 1.0
#: The policy's clock in seconds rather than minutes (docs/autotune.md has the defaults).
OPERATOR_ENV = {
    "SLMPACK_NAMESPACES": NAMESPACE,
    "SLMPACK_AUTOTUNE_INTERVAL_SECONDS": "4",
    "SLMPACK_AUTOTUNE_WINDOW_SECONDS": "10",
    "SLMPACK_AUTOTUNE_SETTLE_SECONDS": "3",
    "SLMPACK_AUTOTUNE_SCALE_DOWN_STABILISATION_SECONDS": "25",
    "SLMPACK_PROMETHEUS_TIMEOUT_SECONDS": "3",
    # The whole act's decisions, not only the last ten.
    "SLMPACK_AUTOTUNE_HISTORY": "60",
}
Reporter = Callable[[str], None]


@dataclass(frozen=True)
class Stage:
    name: str
    clients: int  # closed-loop concurrency
    seconds: float


#: Light (one GPU is plenty), a step well past one GPU's batch, and back.
STAGES = (
    Stage("light load", 6, 45.0),
    Stage("load step", 256, 70.0),
    Stage("load falls", 4, 115.0),
)


@dataclass(frozen=True)
class Sample:
    at_s: float  # since the act's load started
    stage: str
    clients: int
    replicas: int  # the Deployment's, as the operator set it
    ready: int
    completed: int


@dataclass(frozen=True)
class DecisionRow:
    at_s: float | None  # since the act's load started
    action: str
    reason: str
    replicas_from: int | None
    replicas_to: int | None
    message: str


@dataclass(frozen=True)
class ActResult:
    samples: tuple[Sample, ...]
    decisions: tuple[DecisionRow, ...]
    completed: int
    failed: int
    packing: str  # what ran, e.g. "Exclusive x1 seqs=192"

    @property
    def peak_replicas(self) -> int:
        return max((s.replicas for s in self.samples), default=0)

    @property
    def final_replicas(self) -> int:
        return self.samples[-1].replicas if self.samples else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": "meta-llama/Llama-3.1-8B",
            "gpu": L4,
            "packing": self.packing,
            "stages": [vars(s) for s in STAGES],
            "decisions": [vars(d) for d in self.decisions],
            "samples": [vars(s) for s in self.samples],
            "completed": self.completed,
            "failed": self.failed,
            "peak_replicas": self.peak_replicas,
            "final_replicas": self.final_replicas,
        }


def _unix(stamp: str) -> float | None:
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def decision_rows(
    history: Sequence[Mapping[str, Any]], started_unix: float
) -> tuple[DecisionRow, ...]:
    """status.autotune.history as table rows, times relative to the start of the load."""
    rows = []
    for entry in history:
        at = _unix(str(entry.get("time", "")))
        rows.append(
            DecisionRow(
                at_s=round(at - started_unix, 1) if at is not None else None,
                action=str(entry.get("action", "")),
                reason=str(entry.get("reason", "")),
                replicas_from=(entry.get("from") or {}).get("replicas"),
                replicas_to=(entry.get("to") or {}).get("replicas"),
                message=str(entry.get("message", "")),
            )
        )
    return tuple(rows)


def slm_deployment(namespace: str = NAMESPACE, pool: str = POOL) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SLMDeployment",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "model": {"uri": "hf://meta-llama/Llama-3.1-8B", "servedName": SERVED_NAME},
            "gpu": {
                "products": [L4],
                "sharing": "Exclusive",
                "nodeSelector": {gpu_nodes.POOL_LABEL: pool},
            },
            "autotune": {
                "mode": "Auto",
                "minReplicas": 1,
                "maxReplicas": GPUS,
                "objective": "Balanced",
            },
            "workload": {"meanInputTokens": 64, "meanOutputTokens": MAX_TOKENS},
        },
    }


def node_pool(name: str = POOL) -> dict[str, Any]:
    """One node of four L4s whose kubelet is a runner (a fleet file's pool entry)."""
    return {
        "name": name,
        "count": 1,
        "gpuProduct": L4,
        "gpusPerNode": GPUS,
        "cpuCores": 48,
        "memoryGib": 192,
        "kubelet": "runner",
    }


def fleet() -> gpu_nodes.Fleet:
    return gpu_nodes.parse_fleet({"pools": [node_pool()]}, "demo-autotune")


@dataclass
class AutotuneAct:
    """Start with `start`, run with `run`, always `stop` (also on failure)."""

    kubeconfig: Path
    api_client: client.ApiClient
    state_dir: Path  # under the demo cluster's folder: its `down` stops what is left
    logs_dir: Path
    address_pool: str
    operator: OperatorProcess | None = None
    nodes: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)

    @property
    def runner_dir(self) -> Path:
        return self.state_dir / "runner"

    @property
    def prometheus_root(self) -> Path:
        return self.state_dir / "prometheus"

    def start(self, report: Reporter) -> None:
        ensure_namespace(self.api_client, NAMESPACE)
        self.started.append("runner")
        runner.up(
            [
                "--kubeconfig",
                str(self.kubeconfig),
                "--state-dir",
                str(self.runner_dir),
                "--nodes-selector",
                f"{gpu_nodes.KUBELET_LABEL}=runner,{gpu_nodes.POOL_LABEL}={POOL}",
                "--address-pool",
                self.address_pool,
                "--sim-speedup",
                "1",
                "--probe-period",
                "1",
            ],
            self.runner_dir,
            report=report,
        )
        self.nodes = node_apply.apply_nodes(self.api_client, gpu_nodes.build_fleet_nodes(fleet()))
        node_apply.wait_nodes_ready(self.api_client, self.nodes, timeout_seconds=60)
        self.started.append("prometheus")
        server = prometheus.up(
            self.prometheus_root,
            self.runner_dir / "targets",
            scrape_interval_seconds=SCRAPE_INTERVAL_SECONDS,
            report=report,
        )
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log = self.logs_dir / "operator-autotune.log"
        log.unlink(missing_ok=True)
        self.operator = OperatorProcess(
            self.kubeconfig, log, env={**OPERATOR_ENV, "SLMPACK_PROMETHEUS_URL": server.url}
        )
        self.started.append("operator")
        self.operator.start()

    def _slmd(self) -> dict[str, Any]:
        return cast(
            dict[str, Any],
            client.CustomObjectsApi(self.api_client).get_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, NAME
            ),
        )

    def _deployment(self) -> tuple[int, int]:
        got = client.AppsV1Api(self.api_client).read_namespaced_deployment(NAME, NAMESPACE)
        replicas = int(got.spec.replicas or 0) if got.spec else 0
        ready = int(got.status.ready_replicas or 0) if got.status else 0
        return replicas, ready

    def _ready_urls(self) -> list[str]:
        return [f"http://{ip}:8000" for ip in ready_pod_ips(self.api_client, NAMESPACE)]

    def run(self, on_stage: Callable[[Stage, float], None] | None = None) -> ActResult:
        """Apply the SLMDeployment, wait for its first replica, drive the stages, and collect
        what the autotuner did. `on_stage(stage, elapsed_s)` is called about once a second."""
        custom = client.CustomObjectsApi(self.api_client)
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, slm_deployment())
        deadline = time.monotonic() + 120
        while not self._ready_urls():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    "the autotuned SLMDeployment's first replica was not Ready in 120 s"
                )
            time.sleep(0.5)
        load = ClosedLoop(model=SERVED_NAME, prompt=PROMPT, max_tokens=MAX_TOKENS)
        stop = threading.Event()

        def follow() -> None:
            while not stop.is_set():
                with contextlib.suppress(ApiException):
                    load.endpoints = self._ready_urls()
                stop.wait(1.0)

        threading.Thread(target=follow, daemon=True).start()
        load.endpoints = self._ready_urls()
        load.start(max_concurrency=max(s.clients for s in STAGES))
        samples: list[Sample] = []
        started = time.time()
        try:
            for stage in STAGES:
                load.concurrency = stage.clients
                stage_end = time.monotonic() + stage.seconds
                while time.monotonic() < stage_end:
                    with contextlib.suppress(ApiException):
                        replicas, ready = self._deployment()
                        samples.append(
                            Sample(
                                round(time.time() - started, 1),
                                stage.name,
                                stage.clients,
                                replicas,
                                ready,
                                load.completed,
                            )
                        )
                    if on_stage is not None:
                        on_stage(stage, stage.seconds - (stage_end - time.monotonic()))
                    time.sleep(1.0)
        finally:
            stop.set()
            load.stop()
        status = self._slmd().get("status") or {}
        autotune = status.get("autotune") or {}
        plan = status.get("plan") or {}
        packing = f"{plan.get('mode')} x{plan.get('replicasPerGPU')} seqs={plan.get('maxNumSeqs')}"
        return ActResult(
            samples=tuple(samples),
            decisions=decision_rows(autotune.get("history") or [], started),
            completed=load.completed,
            failed=load.failed,
            packing=packing,
        )

    def stop(self, report: Reporter) -> list[str]:
        """Stop what was started, newest first; returns the errors met (never raises)."""
        errors: list[str] = []
        attempt = stopper(report, errors)
        if "operator" in self.started and self.operator is not None:
            attempt("the autotune act's operator", self.operator.stop)
        if "prometheus" in self.started:
            attempt("the autotune act's Prometheus", lambda: prometheus.down(self.prometheus_root))
        if "runner" in self.started:
            attempt("the autotune act's runner", lambda: runner.down(self.runner_dir))
        core = client.CoreV1Api(self.api_client)
        for name in self.nodes:
            with contextlib.suppress(ApiException):
                core.delete_node(name)
        self.started.clear()
        return errors
