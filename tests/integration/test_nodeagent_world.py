"""The node agent in the local world: the runner starts one agent per node over a SIMULATED
NVML of the node's GPUs, the agent annotates its node and serves per-GPU and per-replica
energy, a real Prometheus scrapes it, and the operator plans with the memory it measured.

The node's pool declares GPUs whose NVML total (GFD's `nvidia.com/gpu.memory`, the figure the
simulated NVML reports) is below the catalogue's, as on boards or drivers that reserve more;
the plan must then be sized for what the agent measured.

Nothing is skipped: a failure prints the runner's, the agent's, Prometheus' and the
operator's logs.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client

from slmpack import metricnames as mn
from slmpack.autotune.signals import DeploymentRef, Signal, raw_queries
from slmpack.devcluster import gpu_nodes, prometheus
from slmpack.devcluster.operator_process import OperatorProcess
from slmpack.nodeagent.inventory import parse_inventory_annotation
from slmpack.sim.registry import gpu_states

from .conftest import LiveCluster
from .kube_helpers import wait_for
from .runner_world import (
    GROUP,
    PLURAL,
    VERSION,
    apply_crd,
    failed,
    print_logs,
    query,
    runner_nodes,
    start_prometheus,
)

pytestmark = pytest.mark.cluster

H100 = "NVIDIA-H100-80GB-HBM3"
GPUS = 2
PER_GPU = 2
REPLICAS = GPUS * PER_GPU
NAME = "packed"
#: What these boards' NVML reports, below the catalogue's 81559 MiB.
MEASURED_MIB = 80_000
SPEEDUP = 10
SCRAPE_INTERVAL_SECONDS = 1.0
#: The signal's window: ten 1 s scrapes and five agent passes.
WINDOW_SECONDS = 10
ADDRESS_POOL = f"127.{20 + os.getpid() % 100}.0.0/16"
TEST_LABEL = "slmpack.io/nodeagent-test"
READY_TIMEOUT_SECONDS = 90.0


@dataclass(frozen=True)
class AgentWorld:
    api_client: client.ApiClient
    namespace: str
    pool: str
    node: str
    runner_dir: Path
    prometheus_url: str


@pytest.fixture
def agent_world(
    live_cluster: LiveCluster,
    namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[AgentWorld]:
    apply_crd(live_cluster.api_client)
    tag = f"na{os.getpid()}"
    pool = f"{tag}-h100"
    runner_dir = tmp_path_factory.mktemp("nodeagent-runner")
    prometheus_root = tmp_path_factory.mktemp("nodeagent-prometheus")
    operator = OperatorProcess(
        live_cluster.kubeconfig,
        tmp_path_factory.mktemp("nodeagent-operator") / "operator.log",
        env={"SLMPACK_NAMESPACES": namespace},
    )
    try:
        with runner_nodes(
            live_cluster,
            runner_dir,
            label=TEST_LABEL,
            tag=tag,
            pools=[
                {
                    "name": pool,
                    "count": 1,
                    "profile": "h100-80gb-x8",
                    "gpusPerNode": GPUS,
                    "labels": {"nvidia.com/gpu.memory": str(MEASURED_MIB)},
                }
            ],
            address_pool=ADDRESS_POOL,
            sim_speedup=SPEEDUP,
            runner_args=["--sim-publish-interval", "0.5", "--probe-period", "1", "--node-agent"],
        ) as names:
            server = start_prometheus(prometheus_root, runner_dir, SCRAPE_INTERVAL_SECONDS)
            operator.start()
            (node,) = names
            yield AgentWorld(live_cluster.api_client, namespace, pool, node, runner_dir, server.url)
    finally:
        if failed(request):
            print_logs(runner_dir, prometheus_root, operator, 80)
        operator.stop()
        prometheus.down(prometheus_root)


def _node(world: AgentWorld) -> dict[str, Any]:
    node = client.CoreV1Api(world.api_client).read_node(world.node)
    return cast(dict[str, Any], world.api_client.sanitize_for_serialization(node))


def _slmd(world: AgentWorld) -> dict[str, Any]:
    custom = client.CustomObjectsApi(world.api_client)
    return cast(
        dict[str, Any],
        custom.get_namespaced_custom_object(GROUP, VERSION, world.namespace, PLURAL, NAME),
    )


def _load(addresses: list[str], model: str, stop: threading.Event) -> threading.Thread:
    """A few closed-loop clients, so the engines are busy and NVML has SM samples."""

    def client_loop(index: int) -> None:
        body = json.dumps({"model": model, "prompt": "Pack the GPUs", "max_tokens": 64}).encode()
        while not stop.is_set():
            address = addresses[index % len(addresses)]
            request = urllib.request.Request(
                f"http://{address}:8000/v1/completions",
                body,
                {"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=20) as reply:
                    reply.read()
            except OSError:
                time.sleep(0.2)

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(8)]
    for thread in threads:
        thread.start()
    return threads[0]


def test_the_agents_figures_reach_prometheus_the_autotuner_and_the_plan(
    agent_world: AgentWorld,
) -> None:
    world = agent_world
    started = time.monotonic()

    # The agent annotates its node with what the simulated NVML reports.
    def inventory() -> Any:
        return parse_inventory_annotation(_node(world))

    found = wait_for(inventory, "the node agent's slmpack.dev/gpu-inventory annotation", 30)
    assert [g.product for g in found.gpus] == [H100] * GPUS
    assert {g.memory_bytes for g in found.gpus} == {MEASURED_MIB * 2**20}
    annotated_s = time.monotonic() - started

    spec = {
        "model": {"uri": "hf://facebook/opt-125m"},
        "gpu": {
            "products": [H100],
            "sharing": "Packed",
            "replicasPerGPU": PER_GPU,
            "nodeSelector": {gpu_nodes.POOL_LABEL: world.pool},
        },
        "replicas": REPLICAS,
    }
    client.CustomObjectsApi(world.api_client).create_namespaced_custom_object(
        GROUP,
        VERSION,
        world.namespace,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SLMDeployment",
            "metadata": {"name": NAME},
            "spec": spec,
        },
    )

    def ready() -> bool:
        return bool((_slmd(world).get("status") or {}).get("readyReplicas") == REPLICAS)

    wait_for(
        ready,
        f"{REPLICAS} engines Ready in {REPLICAS // PER_GPU} Packed pods",
        READY_TIMEOUT_SECONDS,
    )
    ready_s = time.monotonic() - started

    # The plan was sized for the memory the agent measured, and says so.
    plan = _slmd(world)["status"]["plan"]
    assert plan["gpuMemorySource"] == "Measured", plan
    assert plan["gpuMemoryBytes"] == MEASURED_MIB * 2**20

    pods = client.CoreV1Api(world.api_client).list_namespaced_pod(world.namespace).items
    addresses = sorted(str(p.status.pod_ip) for p in pods if p.status and p.status.pod_ip)
    names = sorted(str(p.metadata.name) for p in pods if p.metadata)
    assert len(names) == REPLICAS // PER_GPU
    with urllib.request.urlopen(f"http://{addresses[0]}:8000/v1/models", timeout=10) as reply:
        models = json.loads(reply.read())
    stop = threading.Event()
    _load(addresses, models["data"][0]["id"], stop)
    try:
        url = world.prometheus_url
        ns = world.namespace

        def agent_up() -> bool:
            return any(
                t["labels"].get("job") == prometheus.NODE_AGENT_JOB and t["health"] == "up"
                for t in prometheus.active_targets(url)
            )

        wait_for(agent_up, "Prometheus to scrape the node agent", 30)

        # Per-GPU energy, rising on every GPU.
        gpu_energy = mn.NODE_AGENT_GPU_ENERGY.series

        def per_gpu() -> dict[str, float] | None:
            got = {
                json.loads(k)["gpu"]: v
                for k, v in query(url, f'{gpu_energy}{{node="{world.node}"}}').items()
            }
            return got if len(got) == GPUS else None

        first = wait_for(per_gpu, "slmpack_gpu_energy_joules_total of both GPUs", 30)

        def risen() -> bool:
            now = per_gpu() or {}
            return len(now) == GPUS and all(now[g] > first[g] for g in first)

        wait_for(risen, "every GPU's energy counter to rise", 20)

        # Per-replica energy for each Packed pod (two engines each, one container), split by
        # NVML's SM samples once the engines are busy.
        replica_energy = mn.NODE_AGENT_REPLICA_ENERGY.series

        def by_sm_share() -> dict[str, float] | None:
            samples = query(url, f'{replica_energy}{{namespace="{ns}"}}')
            pods = {json.loads(k)["pod"] for k in samples}
            methods = {json.loads(k)["method"] for k in samples}
            if pods == set(names) and "sm_utilization" in methods:
                return samples
            return None

        wait_for(by_sm_share, "replica energy split by SM share for every pod", 40)
        memory = query(url, f'slmpack_replica_gpu_memory_bytes{{namespace="{ns}"}}')
        held: dict[str, float] = defaultdict(float)
        for key, value in memory.items():
            held[json.loads(key)["pod"]] += value
        records = [
            record
            for state in gpu_states(world.runner_dir / "nodes" / world.node / "sim").values()
            for record in state.records()
        ]
        reserved: dict[str, float] = defaultdict(float)
        for record in records:
            reserved[record.pod] += record.reserved_bytes
        assert len(records) == REPLICAS
        # What the agent reports per pod is its engines' memory added up.
        assert dict(held) == {pod: reserved[pod] for pod in names}

        # The autotuner's signal: the deployment's watts from the agent, positive, and in
        # line with DCGM's token-share attribution (each pod has a GPU to itself here).
        queries = {
            q.signal: q.promql
            for q in raw_queries(DeploymentRef(ns, NAME), window_s=WINDOW_SECONDS)
        }

        def agent_watts() -> float | None:
            result = prometheus.query(url, queries[Signal.AGENT_ENERGY_WATTS])
            value = float(result[0]["value"][1]) if result else 0.0
            # A window holding only samples of one agent pass reads 0: wait for growth.
            return value if value > 0 else None

        wait_for(agent_watts, "a positive agent-energy signal", 30)
        seen: list[tuple[float, float]] = []

        def agrees() -> tuple[float, float] | None:
            # Young replica series read low until the window is full of them, and the
            # simulated counter holds each pass's power until the next (2 s): it lags a ramp.
            dcgm = prometheus.query(url, queries[Signal.ATTRIBUTED_ENERGY_WATTS])
            agent = agent_watts()
            if not dcgm or agent is None:
                return None
            seen.append((agent, float(dcgm[0]["value"][1])))
            time.sleep(1.0)
            return seen[-1] if 0.7 < seen[-1][0] / seen[-1][1] < 1.4 else None

        try:
            agent, dcgm = wait_for(agrees, "the agent's and DCGM's watts to agree", 40)
        finally:
            print(f"(agent W, DCGM W) over time: {[(round(a), round(d)) for a, d in seen]}")
        print(
            f"Annotation after {annotated_s:.1f} s, {REPLICAS} engines Ready after "
            f"{ready_s:.1f} s, the signals agreed after {time.monotonic() - started:.1f} s: "
            f"agent {agent:.0f} W, DCGM attribution {dcgm:.0f} W (simulated at {SPEEDUP}x)"
        )
    finally:
        stop.set()
