"""Pods that really run: the runner plays the kubelet of simulated H100 nodes, the operator
packs 64 replicas onto them, the pods serve completions on their loopback addresses, and a
real Prometheus scrapes every engine, each node's dcgm-sim and the operator.

Nothing is skipped: without the Prometheus binary (hack/fetch-prometheus.sh fetches it) the
test fails and says why. A failure prints the runner's, Prometheus' and the operator's logs.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slmpack import metricnames
from slmpack.devcluster import gpu_nodes, loopback, processes, prometheus
from slmpack.devcluster import runner as runner_mod
from slmpack.devcluster.operator_process import OperatorProcess
from slmpack.devcluster.podexec import RUNNER_POD_ENV

from .conftest import LiveCluster
from .kube_helpers import wait_for
from .runner_world import GROUP, PLURAL, VERSION, apply_crd, query, runner_nodes

pytestmark = pytest.mark.cluster

H100 = "NVIDIA-H100-80GB-HBM3"
#: 64 engines: 8 Packed pods of 8, one pod per GPU, on two 4-GPU runner nodes.
REPLICAS = 64
PER_GPU = 8
NODES = 2
GPUS_PER_NODE = 4
#: Simulated seconds per wall second; energy then rises 10x faster between two queries.
SPEEDUP = 10
SCRAPE_INTERVAL_SECONDS = 1.0
#: Loopback block of this session's runner: outside the default one a developer's runner
#: uses, and apart from other test sessions on the same machine.
ADDRESS_POOL = f"127.{128 + os.getpid() % 120}.0.0/16"
#: Label that ties this module's nodes to its own runner (an existing cluster may have others).
TEST_LABEL = "slmpack.io/runner-test"
#: Generous for a loaded 2-core machine; 64 simulators start in about 20 s there.
READY_TIMEOUT_SECONDS = 150.0


@dataclass(frozen=True)
class RunnerWorld:
    """Runner nodes of this session and the runner playing their kubelet."""

    h100_pool: str
    l4_pool: str
    node_names: tuple[str, ...]
    runner_dir: Path


@dataclass(frozen=True)
class Observers:
    operator: OperatorProcess
    prometheus_root: Path


@pytest.fixture(scope="module")
def runner_world(
    live_cluster: LiveCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunnerWorld]:
    """Two 4x H100 nodes and one time-sliced L4 node, played by a runner of their own."""
    tag = f"rt{os.getpid()}"
    h100, l4 = f"{tag}-h100", f"{tag}-l4"
    runner_dir = tmp_path_factory.mktemp("runner")
    with runner_nodes(
        live_cluster,
        runner_dir,
        label=TEST_LABEL,
        tag=tag,
        pools=[
            {"name": h100, "count": NODES, "profile": "h100-80gb-x8", "gpusPerNode": GPUS_PER_NODE},
            {"name": l4, "count": 1, "profile": "l4-time-slicing"},
        ],
        address_pool=ADDRESS_POOL,
        sim_speedup=SPEEDUP,
        # 64 engines each rewriting its state 10 times a second cost a third of a core.
        runner_args=["--sim-publish-interval", "0.5", "--probe-period", "1"],
    ) as names:
        yield RunnerWorld(h100, l4, tuple(names), runner_dir)


@pytest.fixture(autouse=True)
def _runner_log_on_failure(
    runner_world: RunnerWorld, request: pytest.FixtureRequest
) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is None or report.failed:
        print(runner_mod.log_tail(runner_world.runner_dir, 80))
        print(json.dumps(runner_mod.read_status(runner_world.runner_dir), indent=1)[:4000])


@pytest.fixture
def observers(
    live_cluster: LiveCluster,
    namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Observers]:
    """The operator (watching the test's namespace) and a place for Prometheus' data."""
    apply_crd(live_cluster.api_client)
    operator = OperatorProcess(
        live_cluster.kubeconfig,
        tmp_path_factory.mktemp("operator") / "operator.log",
        env={"SLMPACK_NAMESPACES": namespace},
    )
    prometheus_root = tmp_path_factory.mktemp("prometheus")
    try:
        operator.start()
        yield Observers(operator, prometheus_root)
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            print(prometheus.log_tail(prometheus_root))
            print(f"--- operator log ---\n{operator.log_tail()}")
        prometheus.down(prometheus_root)
        operator.stop()


def _pods(api_client: client.ApiClient, namespace: str) -> list[client.V1Pod]:
    pods: list[client.V1Pod] = client.CoreV1Api(api_client).list_namespaced_pod(namespace).items
    return pods


def _post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        document: dict[str, Any] = json.loads(response.read())
    return document


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        document: dict[str, Any] = json.loads(response.read())
    return document


def _pod_processes(runner_dir: Path) -> dict[int, str]:
    """pid -> what runs, for every process of a pod (not the nodes' dcgm-sims)."""
    out: dict[int, str] = {}
    for pid in runner_mod.marked_pids(runner_dir):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        owner = next((v for v in environ if v.startswith(f"{RUNNER_POD_ENV}=".encode())), b"")
        if not owner.endswith(b"=") and b"=node:" not in owner and len(cmdline) > 2:
            out[pid] = cmdline[2].decode()
    return out


def test_sixty_four_packed_replicas_serve_on_loopback_and_prometheus_sees_them(
    runner_world: RunnerWorld, observers: Observers, live_cluster: LiveCluster, namespace: str
) -> None:
    world = runner_world
    api_client = live_cluster.api_client
    apps = client.AppsV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    spec = {
        "model": {"uri": "hf://facebook/opt-125m"},
        "gpu": {
            "products": [H100],
            "sharing": "Packed",
            "replicasPerGPU": PER_GPU,
            "nodeSelector": {gpu_nodes.POOL_LABEL: world.h100_pool},
        },
        "replicas": REPLICAS,
    }
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SLMDeployment",
        "metadata": {"name": "packed"},
    }
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, {**body, "spec": spec}
    )
    started = time.monotonic()

    def deployment_ready() -> bool:
        try:
            got = apps.read_namespaced_deployment_status("packed", namespace)
        except ApiException:
            return False
        return bool(got.status and got.status.ready_replicas == REPLICAS // PER_GPU)

    wait_for(deployment_ready, "8 Packed pods Ready on the runner nodes", READY_TIMEOUT_SECONDS)
    ready_seconds = time.monotonic() - started

    # Every pod runs on its own loopback address, inside its node's subnet.
    pods = _pods(api_client, namespace)
    assert len(pods) == REPLICAS // PER_GPU
    pool = loopback.parse_pool(ADDRESS_POOL)
    h100_nodes = {n for n in world.node_names if n.startswith(world.h100_pool)}
    addresses: dict[str, str] = {}
    for pod in pods:
        assert pod.metadata is not None
        assert pod.spec is not None
        assert pod.status is not None
        assert pod.spec.node_name in h100_nodes
        assert pod.status.phase == "Running"
        ip, host_ip = str(pod.status.pod_ip), str(pod.status.host_ip)
        assert loopback.subnet_index(pool, ip) is not None
        assert loopback.subnet_index(pool, ip) == loopback.subnet_index(pool, host_ip)
        addresses[ip] = str(pod.metadata.name)
    assert len(addresses) == len(pods)

    def engines_counted() -> bool:
        obj = cast(
            dict[str, Any],
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "packed"),
        )
        return bool((obj.get("status") or {}).get("readyReplicas") == REPLICAS)

    wait_for(engines_counted, "the SLMDeployment to count 64 ready replicas", 30)

    # 64 simulated engines behind 8 launchers, each process small enough for a laptop.
    running = _pod_processes(world.runner_dir)
    kinds = sorted(running.values())
    assert kinds.count("slmpack.sim.vllm") == REPLICAS
    assert kinds.count("slmpack.launcher") == REPLICAS // PER_GPU
    rss = {pid: processes.rss_bytes(pid)[0] for pid in running}
    total_mib = sum(rss.values()) / 2**20
    print(
        f"64 replicas Ready {ready_seconds:.1f} s after the SLMDeployment was created; "
        f"{len(running)} processes, RSS {total_mib:.0f} MiB in all, largest "
        f"{max(rss.values()) / 2**20:.0f} MiB"
    )
    assert total_mib < 8 * 1024

    # Completions through three pods' routers.
    served = sorted(addresses)[:3]
    model = _get_json(f"http://{served[0]}:8000/v1/models")["data"][0]["id"]
    for ip in served:
        for _ in range(2):
            reply = _post_json(
                f"http://{ip}:8000/v1/completions",
                {"model": model, "prompt": "Pack the GPUs", "max_tokens": 16},
            )
            assert reply["usage"]["completion_tokens"] == 16
    served_pods = {addresses[ip] for ip in served}

    # A real Prometheus scrapes the engines, the nodes' dcgm-sims and the operator.
    try:
        server = prometheus.up(
            observers.prometheus_root,
            world.runner_dir / "targets",
            operator_targets=[f"127.0.0.1:{observers.operator.metrics_port}"],
            scrape_interval_seconds=SCRAPE_INTERVAL_SECONDS,
        )
    except prometheus.PrometheusError as exc:
        pytest.fail(f"Prometheus could not start: {exc}", pytrace=False)
    tokens = metricnames.GENERATION_TOKENS.series
    energy = metricnames.DCGM_TOTAL_ENERGY_CONSUMPTION.series
    # Over the last minute: a router leaves out an engine whose probe was late, and on a busy
    # machine that can make any single scrape miss one.
    engines = f'last_over_time({tokens}{{namespace="{namespace}"}}[1m])'

    def all_engines_scraped() -> dict[str, float] | None:
        found = query(server.url, f"count({engines})")
        return found if list(found.values()) == [float(REPLICAS)] else None

    try:
        wait_for(all_engines_scraped, "Prometheus to scrape all 64 engines", 30)
    except AssertionError as exc:
        count = query(server.url, f"count({engines})")
        unhealthy = [
            (t["scrapeUrl"], t["health"], t["lastError"], t.get("lastScrapeDuration"))
            for t in prometheus.active_targets(server.url)
            if t["health"] != "up"
        ]
        raise AssertionError(f"{exc}: count {count}, targets not up: {unhealthy}") from exc
    per_pod = {
        json.loads(labels)["pod"]: value
        for labels, value in query(server.url, f"sum by (pod) ({engines})").items()
    }
    assert len(per_pod) == len(pods)
    assert {pod for pod, value in per_pod.items() if value >= 32} == served_pods

    gpus = f'{{node=~"{world.h100_pool}-.*"}}'

    def energy_by_gpu() -> dict[str, float] | None:
        # Keyed by node and GPU: the pod labels dcgm-sim attributes a GPU to may change.
        samples = prometheus.query(server.url, f"{energy}{gpus}")
        found = {
            f"{x['metric']['node']}/{x['metric']['gpu']}": float(x["value"][1]) for x in samples
        }
        return found if len(found) == NODES * GPUS_PER_NODE else None

    first = wait_for(energy_by_gpu, "every simulated GPU's energy counter", 15)

    def energy_rose() -> bool:
        later = energy_by_gpu()
        return later is not None and all(later[k] > first[k] for k in first)

    wait_for(energy_rose, "every simulated GPU's energy counter to rise", 15)

    def operator_scraped() -> dict[str, float] | None:
        found = query(server.url, 'up{job="slmpack-operator"}')
        return found if list(found.values()) == [1.0] else None

    wait_for(operator_scraped, "Prometheus to scrape the operator", 15)

    # Deleting the SLMDeployment stops every process of its pods.
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "packed")
    wait_for(lambda: not _pods(api_client, namespace), "the pods to be removed", 60)
    wait_for(lambda: not _pod_processes(world.runner_dir), "the pods' processes to end", 15)


def _time_sliced_deployment(name: str, pool: str, replicas: int) -> dict[str, Any]:
    """A plain Deployment of vLLM servers, one time-sliced GPU share each."""
    container = {
        "name": "vllm",
        "image": "vllm/vllm-openai:v0.11.0",
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": [
            "--model",
            "facebook/opt-125m",
            "--port",
            "8000",
            "--max-model-len",
            "2048",
            # Four engines share one L4: each may take a fifth of its memory.
            "--gpu-memory-utilization",
            "0.2",
        ],
        "ports": [{"name": "http", "containerPort": 8000}],
        "resources": {"limits": {"nvidia.com/gpu": "1"}},
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {gpu_nodes.POOL_LABEL: pool},
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "terminationGracePeriodSeconds": 5,
                    "containers": [container],
                },
            },
        },
    }


def _container_status(api_client: client.ApiClient, namespace: str, name: str) -> Any:
    pod = client.CoreV1Api(api_client).read_namespaced_pod(name, namespace)
    statuses = (pod.status.container_statuses if pod.status else None) or []
    return statuses[0] if statuses else None


def test_time_sliced_pods_share_one_gpu_and_restart_after_a_crash(
    runner_world: RunnerWorld, live_cluster: LiveCluster, namespace: str
) -> None:
    api_client = live_cluster.api_client
    apps = client.AppsV1Api(api_client)
    core = client.CoreV1Api(api_client)
    (l4_node,) = [n for n in runner_world.node_names if n.startswith(runner_world.l4_pool)]
    body = _time_sliced_deployment("shared", runner_world.l4_pool, 4)
    apps.create_namespaced_deployment(namespace, client.V1Deployment.model_validate(body))

    def ready() -> bool:
        got = apps.read_namespaced_deployment_status("shared", namespace)
        return bool(got.status and got.status.ready_replicas == 4)

    wait_for(ready, "4 time-sliced pods Ready", 60)

    # The device plugin's four shares of GPU 0, one per pod, all simulated on that GPU.
    records = [
        json.loads(path.read_text())
        for path in (runner_world.runner_dir / "nodes" / l4_node / "sim" / "gpu-0").glob(
            "engine-*.json"
        )
    ]
    assert sorted(r["mode"] for r in records) == ["TimeSlicing"] * 4
    assert len({r["pod"] for r in records}) == 4

    # A killed container comes back, as the kubelet restarts it.
    name = sorted(str(p.metadata.name) for p in _pods(api_client, namespace) if p.metadata)[0]
    pid = runner_mod.read_status(runner_world.runner_dir)["pods"][f"{namespace}/{name}"]["pid"]
    os.kill(int(pid), signal.SIGKILL)

    def restarted() -> Any:
        status = _container_status(api_client, namespace, name)
        return status if status and status.restart_count == 1 and status.ready else None

    status = wait_for(restarted, f"pod {name} to restart and be Ready again", 30)
    assert status.last_state.terminated.exit_code == 128 + signal.SIGKILL

    # What the runner cannot run is reported on the pod, not silently dropped.
    pause = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "pause"},
        "spec": {
            "nodeName": l4_node,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}],
        },
    }
    core.create_namespaced_pod(namespace, client.V1Pod.model_validate(pause))

    def refused() -> Any:
        status = _container_status(api_client, namespace, "pause")
        waiting = status.state.waiting if status and status.state else None
        return waiting if waiting and waiting.reason == "RunnerCannotStart" else None

    waiting = wait_for(refused, "the pause pod to be refused", 20)
    assert "kwok node" in waiting.message

    apps.delete_namespaced_deployment("shared", namespace)
    core.delete_namespaced_pod("pause", namespace)
    wait_for(lambda: not _pods(api_client, namespace), "the pods to be removed", 30)
    wait_for(lambda: not _pod_processes(runner_world.runner_dir), "the processes to end", 15)
