"""The autotuner in the local world: vllm-sim engines run by the runner on simulated L4 nodes,
a real Prometheus scraping them and the nodes' dcgm-sims, the operator reading it.

One SLMDeployment in Auto mode goes through a light load (it converges and holds steady), a
load step (it scales out and the new pods serve), the load falling back (it scales in, a GPU
at a time), and a Prometheus outage under a heavy load (it holds and says why). The policy's
windows are shortened through the operator's settings so that this takes minutes.

Nothing is skipped: a failure prints the runner's, Prometheus' and the operator's logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slmpack.demo import autotune_act as act
from slmpack.devcluster import prometheus
from slmpack.devcluster.operator_process import OperatorProcess
from slmpack.loadgen.closed_loop import ClosedLoop

from .conftest import LiveCluster
from .kube_helpers import wait_for
from .runner_world import (
    GROUP,
    PLURAL,
    VERSION,
    apply_crd,
    failed,
    print_logs,
    runner_nodes,
    start_prometheus,
)

pytestmark = pytest.mark.cluster

NAME = act.NAME
#: Real time: the rates Prometheus sees are the simulated GPU's, so the planner's prior holds.
#: An 8B model on L4s makes about a thousand tokens/s per GPU, which two cores can serve.
SPEEDUP = 1
SCRAPE_INTERVAL_SECONDS = 1.0
ADDRESS_POOL = f"127.{8 + os.getpid() % 100}.0.0/16"
TEST_LABEL = "slmpack.io/autotune-test"
#: The policy's clock, shortened: 10 s windows, a pass every 4 s, 25 s before scaling in.
OPERATOR_ENV = {
    "SLMPACK_AUTOTUNE_INTERVAL_SECONDS": "4",
    "SLMPACK_AUTOTUNE_WINDOW_SECONDS": "10",
    "SLMPACK_AUTOTUNE_SETTLE_SECONDS": "3",
    "SLMPACK_AUTOTUNE_SCALE_DOWN_STABILISATION_SECONDS": "25",
    "SLMPACK_AUTOTUNE_REPACK_COOLDOWN_SECONDS": "600",
    "SLMPACK_PROMETHEUS_TIMEOUT_SECONDS": "3",
}


@dataclass(frozen=True)
class World:
    api_client: client.ApiClient
    namespace: str
    pool: str
    runner_dir: Path
    operator: OperatorProcess
    prometheus_root: Path
    prometheus_url: str


@pytest.fixture
def world(
    live_cluster: LiveCluster,
    namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[World]:
    apply_crd(live_cluster.api_client)
    tag = f"at{os.getpid()}"
    pool = f"{tag}-l4"
    runner_dir = tmp_path_factory.mktemp("autotune-runner")
    prometheus_root = tmp_path_factory.mktemp("autotune-prometheus")
    operator: OperatorProcess | None = None
    try:
        with runner_nodes(
            live_cluster,
            runner_dir,
            label=TEST_LABEL,
            tag=tag,
            pools=[act.node_pool(pool)],
            address_pool=ADDRESS_POOL,
            sim_speedup=SPEEDUP,
            runner_args=["--probe-period", "1"],
        ):
            server = start_prometheus(prometheus_root, runner_dir, SCRAPE_INTERVAL_SECONDS)
            operator = OperatorProcess(
                live_cluster.kubeconfig,
                tmp_path_factory.mktemp("autotune-operator") / "operator.log",
                env={
                    "SLMPACK_NAMESPACES": namespace,
                    "SLMPACK_PROMETHEUS_URL": server.url,
                    **OPERATOR_ENV,
                },
            )
            operator.start()
            yield World(
                live_cluster.api_client,
                namespace,
                pool,
                runner_dir,
                operator,
                prometheus_root,
                server.url,
            )
    finally:
        if failed(request):
            print_logs(runner_dir, prometheus_root, operator, 150)
        if operator is not None:
            operator.stop()
        prometheus.down(prometheus_root)


def _slmd(world: World) -> dict[str, Any]:
    custom = client.CustomObjectsApi(world.api_client)
    return cast(
        dict[str, Any],
        custom.get_namespaced_custom_object(GROUP, VERSION, world.namespace, PLURAL, NAME),
    )


def _autotune(world: World) -> dict[str, Any]:
    return cast(dict[str, Any], (_slmd(world).get("status") or {}).get("autotune") or {})


def _autotuned(world: World) -> dict[str, Any]:
    conditions = (_slmd(world).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Autotuned"), {})


def _ready_pods(world: World) -> list[str]:
    pods = client.CoreV1Api(world.api_client).list_namespaced_pod(world.namespace).items
    ready = []
    for pod in pods:
        conditions = (pod.status.conditions if pod.status else None) or []
        if (
            pod.status
            and pod.status.pod_ip
            and any(c.type == "Ready" and c.status == "True" for c in conditions)
        ):
            ready.append(str(pod.status.pod_ip))
    return sorted(ready)


def _deployment_replicas(world: World) -> int:
    got = client.AppsV1Api(world.api_client).read_namespaced_deployment(NAME, world.namespace)
    return int(got.spec.replicas)


def _follow_endpoints(world: World, load: ClosedLoop, stop: threading.Event) -> None:
    def loop() -> None:
        while not stop.is_set():
            with contextlib.suppress(ApiException):
                load.endpoints = [f"http://{ip}:8000" for ip in _ready_pods(world)]
            stop.wait(1.0)

    threading.Thread(target=loop, daemon=True).start()


def _history(world: World) -> str:
    return json.dumps(_autotune(world).get("history"), indent=1)[:6000]


def test_auto_mode_converges_follows_a_load_step_and_holds_without_prometheus(
    world: World,
) -> None:
    body = act.slm_deployment(world.namespace, world.pool)
    client.CustomObjectsApi(world.api_client).create_namespaced_custom_object(
        GROUP, VERSION, world.namespace, PLURAL, body
    )
    wait_for(lambda: len(_ready_pods(world)) == 1, "the first replica to be Ready", 90)
    assert _deployment_replicas(world) == 1

    load = ClosedLoop(model=act.SERVED_NAME, prompt=act.PROMPT, max_tokens=act.MAX_TOKENS)
    stop = threading.Event()
    _follow_endpoints(world, load, stop)
    load.start(max_concurrency=256)
    try:
        # 1. Light load: measured, steady, nothing moves.
        load.concurrency = 6

        def steady() -> bool:
            decision = _autotune(world).get("lastDecision") or {}
            return decision.get("reason") == "Steady"

        wait_for(steady, "the autotuner to hold steady under a light load", 90)
        assert _deployment_replicas(world) == 1, _history(world)
        condition = _autotuned(world)
        assert condition["status"] == "True", condition
        inputs = (_autotune(world).get("lastDecision") or {}).get("inputs") or {}
        assert inputs.get("throughputTokensPerSecondPerGPU", 0) > 0, inputs
        assert _autotune(world)["state"]["measured"], "what it measured is kept in status"

        # 2. A load step well past one GPU: scale out, and the new replicas serve.
        load.concurrency = 256
        wait_for(lambda: _deployment_replicas(world) >= 2, "a scale-out under the load step", 90)
        scaled = _autotune(world)["history"]
        assert any(e["action"] == "Scale" and e["reason"] == "LoadRose" for e in scaled), scaled
        peak = wait_for(
            lambda: len(_ready_pods(world)) >= 2 and len(_ready_pods(world)),
            "new replicas Ready",
            90,
        )
        served_before = load.completed
        wait_for(lambda: load.completed > served_before + 50, "the scaled-out pods to serve", 60)

        # 3. The load falls back: scale in, one GPU at a time, after the stabilisation window.
        load.concurrency = 4
        wait_for(lambda: _deployment_replicas(world) == 1, "a scale-in back to one GPU", 240)
        history = _autotune(world)["history"]
        scale_ins = [e for e in history if e["action"] == "Scale" and e["reason"] == "LoadFell"]
        assert scale_ins, history
        for entry in scale_ins:
            assert entry["from"]["replicas"] - entry["to"]["replicas"] == 1, entry
        print(f"peak ready replicas {peak}; decisions:\n{_history(world)}")

        # 4. Prometheus stops while the load is heavy: hold, say why, change nothing.
        prometheus.down(world.prometheus_root)
        load.concurrency = 256
        wait_for(
            lambda: _autotuned(world).get("reason") == "PrometheusUnavailable",
            "the Autotuned condition to report the outage",
            30,
        )
        condition = _autotuned(world)
        assert condition["status"] == "False"
        time.sleep(20)  # five passes under a load that would scale out
        assert _deployment_replicas(world) == 1, _history(world)
        assert _autotuned(world)["reason"] == "PrometheusUnavailable"
        # Raw: the client's model rejects the controller-manager's Events (no eventTime).
        events = json.loads(
            client.EventsV1Api(world.api_client)
            .list_namespaced_event(world.namespace, _preload_content=False)
            .data
        )["items"]
        reasons = {(e["reason"], e["type"]) for e in events if e.get("action") == "Autotune"}
        assert ("PrometheusUnavailable", "Warning") in reasons, reasons
        assert ("LoadRose", "Normal") in reasons, reasons
    finally:
        stop.set()
        load.stop()
    assert load.completed > 0
