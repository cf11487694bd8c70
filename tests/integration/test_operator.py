"""The operator against a real control plane with kwok GPU nodes: plans, placement, status,
API validation, drift, restarts, node loss, an apiserver outage and idleness."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slmpack.devcluster import binaries, crd_apply, gpu_nodes, launcher, node_apply
from slmpack.devcluster.operator_process import OperatorProcess

from .conftest import LiveCluster
from .kube_helpers import wait_for, wait_for_default_service_account

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "slmpack.dev", "v1alpha1", "slmdeployments"
REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "slmpack.dev_slmdeployments.yaml"
PEERING_CRD_PATH = REPO / "crds" / "kopf.dev_peerings.yaml"
INVALID_DIR = Path(__file__).parent / "manifests" / "invalid"
#: How long the idle test watches for writes, and how long the apiserver stays down.
IDLE_SECONDS = float(os.environ.get("SLMPACK_TEST_IDLE_SECONDS", "300"))
OUTAGE_SECONDS = float(os.environ.get("SLMPACK_TEST_OUTAGE_SECONDS", "30"))
H100 = "NVIDIA-H100-80GB-HBM3"


@pytest.fixture(scope="module")
def crd(api_client: client.ApiClient) -> None:
    crd_apply.apply_crd_file(api_client, CRD_PATH)


@pytest.fixture(scope="module")
def operator(
    live_cluster: LiveCluster, crd: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    proc = OperatorProcess(live_cluster.kubeconfig, log)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def _print_operator_log_on_failure(
    request: pytest.FixtureRequest, operator: OperatorProcess
) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"--- operator log ---\n{operator.log_tail()}")


def custom(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


def create_slmd(
    api_client: client.ApiClient, namespace: str, name: str, spec: dict[str, Any]
) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SLMDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }
    custom(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def get_slmd(api_client: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    got: dict[str, Any] = custom(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return got


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return None


def wait_condition(
    api_client: client.ApiClient,
    namespace: str,
    name: str,
    type_: str,
    status: str,
    timeout: float = 60,
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = get_slmd(api_client, namespace, name)
        cond = condition(obj, type_)
        gen = obj["metadata"]["generation"]
        if cond and cond["status"] == status and cond.get("observedGeneration") == gen:
            return obj
        return None

    return wait_for(probe, f"{namespace}/{name} {type_}={status}", timeout)


def pods_of(api_client: client.ApiClient, namespace: str, name: str) -> list[Any]:
    core = client.CoreV1Api(api_client)
    pods = core.list_namespaced_pod(namespace, label_selector=f"slmpack.dev/deployment={name}")
    return list(pods.items)


def events_for(api_client: client.ApiClient, namespace: str, name: str) -> list[Any]:
    events = client.EventsV1Api(api_client).list_namespaced_event(namespace)
    return [e for e in events.items if e.regarding and e.regarding.name == name]


def container_of(api_client: client.ApiClient, namespace: str, name: str) -> Any:
    dep = client.AppsV1Api(api_client).read_namespaced_deployment(name, namespace)
    return dep, dep.spec.template.spec.containers[0]


# --- placement per sharing mode ----------------------------------------------------------


def test_packed_runs_several_engines_per_h100_pod(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    spec = {
        "model": {"uri": "hf://facebook/opt-1.3b"},
        "gpu": {"products": [H100], "sharing": "Packed"},
        "replicas": 5,
    }
    create_slmd(api_client, namespace, "opt", spec)
    obj = wait_condition(api_client, namespace, "opt", "Ready", "True")
    plan = obj["status"]["plan"]
    per_gpu = plan["replicasPerGPU"]
    assert plan["mode"] == "Packed"
    assert per_gpu >= 2
    pods_needed = math.ceil(5 / per_gpu)
    assert plan["pods"] == pods_needed
    assert plan["gpus"] == pods_needed
    assert obj["status"]["replicas"] == pods_needed * per_gpu
    assert obj["status"]["readyText"] == f"{pods_needed * per_gpu}/{pods_needed * per_gpu}"
    dep, container = container_of(api_client, namespace, "opt")
    assert dep.spec.replicas == pods_needed
    assert container.name == "launcher"
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    config = next(e.value for e in container.env if e.name == "SLMPACK_LAUNCHER_CONFIG")
    assert config.count("--kv-cache-memory-bytes") == per_gpu
    pods = pods_of(api_client, namespace, "opt")
    assert len(pods) == pods_needed
    assert all(p.spec.node_name.startswith("h100-") for p in pods)
    service = client.CoreV1Api(api_client).read_namespaced_service("opt", namespace)
    assert service.spec.selector == {"slmpack.dev/deployment": "opt"}
    assert obj["status"]["endpoint"] == f"http://opt.{namespace}.svc:8000/v1"


def test_exclusive_asks_one_whole_gpu_per_replica(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    spec = {
        "model": {"uri": "hf://facebook/opt-2.7b"},
        "gpu": {"products": [H100], "sharing": "Exclusive"},
        "replicas": 2,
    }
    create_slmd(api_client, namespace, "excl", spec)
    obj = wait_condition(api_client, namespace, "excl", "Ready", "True")
    assert obj["status"]["plan"]["mode"] == "Exclusive"
    assert obj["status"]["plan"]["replicasPerGPU"] == 1
    _, container = container_of(api_client, namespace, "excl")
    assert container.name == "vllm"
    assert container.resources.limits == {"nvidia.com/gpu": "1"}
    assert "--kv-cache-memory-bytes" in container.args
    assert container.readiness_probe.http_get.path == "/health"
    assert all(p.spec.node_name.startswith("h100-") for p in pods_of(api_client, namespace, "excl"))


def test_mig_asks_for_a_mig_instance_on_the_mig_node(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    spec = {
        "model": {
            "uri": "hf://Qwen/Qwen2.5-0.5B-Instruct",
            "config": {"catalogName": "qwen2.5-0.5b"},
        },
        "gpu": {"sharing": "MIG"},
        "replicas": 2,
    }
    create_slmd(api_client, namespace, "qwen", spec)
    obj = wait_condition(api_client, namespace, "qwen", "Ready", "True")
    profile = obj["status"]["plan"]["migProfile"]
    assert obj["status"]["plan"]["mode"] == "MIG"
    assert profile
    _, container = container_of(api_client, namespace, "qwen")
    assert container.resources.limits == {f"nvidia.com/mig-{profile}": "1"}
    assert {p.spec.node_name for p in pods_of(api_client, namespace, "qwen")} == {"a100-mig-0"}


def test_time_slicing_sizes_replicas_to_the_nodes_slots(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    spec = {
        "model": {"uri": "hf://HuggingFaceTB/SmolLM2-360M"},
        "gpu": {"sharing": "TimeSlicing"},
        "replicas": 4,
    }
    create_slmd(api_client, namespace, "smol", spec)
    obj = wait_condition(api_client, namespace, "smol", "Ready", "True")
    plan = obj["status"]["plan"]
    # The L4 pools are configured with 4 time-slicing replicas per GPU.
    assert plan["mode"] == "TimeSlicing"
    assert plan["replicasPerGPU"] == 4
    assert plan["product"] == "NVIDIA-L4"
    _, container = container_of(api_client, namespace, "smol")
    assert container.resources.limits == {"nvidia.com/gpu": "1"}
    nodes = {p.spec.node_name for p in pods_of(api_client, namespace, "smol")}
    assert nodes
    assert all(n.startswith("l4-ts-") for n in nodes)


def test_kubectl_get_shows_the_printer_columns(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    kubeconfig_path: Path,
) -> None:
    spec = {"model": {"uri": "hf://facebook/opt-125m"}, "gpu": {"products": [H100]}}
    create_slmd(api_client, namespace, "tiny", spec)
    obj = wait_condition(api_client, namespace, "tiny", "Ready", "True")
    kubectl = binaries.resolve_tools(("kubectl",))["kubectl"].path
    out = subprocess.run(
        [str(kubectl), "--kubeconfig", str(kubeconfig_path), "get", "slmd", "-n", namespace],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "MODEL", "MODE", "PER-GPU", "GPUS", "READY", "AGE"]
    plan = obj["status"]["plan"]
    fields = row.split()
    assert fields[:6] == [
        "tiny",
        "opt-125m",
        plan["mode"],
        str(plan["replicasPerGPU"]),
        str(plan["gpus"]),
        obj["status"]["readyText"],
    ]


def test_scale_subresource_drives_the_replicas(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    # The apiserver serves /scale only when spec.replicas is set (see docs/operator.md).
    spec = {
        "model": {"uri": "hf://facebook/opt-125m"},
        "gpu": {"sharing": "Exclusive"},
        "replicas": 1,
    }
    create_slmd(api_client, namespace, "scaled", spec)
    wait_condition(api_client, namespace, "scaled", "Ready", "True")
    api = custom(api_client)
    scale = api.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, "scaled")
    assert scale["status"]["selector"] == "slmpack.dev/deployment=scaled"
    api.patch_namespaced_custom_object_scale(
        GROUP, VERSION, namespace, PLURAL, "scaled", {"spec": {"replicas": 3}}
    )

    def scaled_to_three() -> bool:
        obj = get_slmd(api_client, namespace, "scaled")
        ready = condition(obj, "Ready")
        return bool(
            obj["status"].get("readyReplicas") == 3
            and ready
            and ready["status"] == "True"
            and ready.get("observedGeneration") == obj["metadata"]["generation"]
        )

    wait_for(scaled_to_three, "3 ready replicas after scaling", 60)
    scale = api.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, "scaled")
    assert scale["status"]["replicas"] == 3


def test_an_operator_limited_to_namespaces_ignores_the_others(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    live_cluster: LiveCluster,
    tmp_path: Path,
) -> None:
    other = f"{namespace[:50]}-x"
    client.CoreV1Api(api_client).create_namespace({"metadata": {"name": other}})
    operator.stop()
    scoped = OperatorProcess(
        live_cluster.kubeconfig, tmp_path / "scoped.log", {"SLMPACK_NAMESPACES": namespace}
    )
    try:
        scoped.start()
        spec = {"model": {"uri": "hf://facebook/opt-125m"}}
        wait_for_default_service_account(client.CoreV1Api(api_client), other)
        create_slmd(api_client, other, "ignored", spec)
        create_slmd(api_client, namespace, "watched", spec)
        wait_condition(api_client, namespace, "watched", "Ready", "True")
        time.sleep(2)
        assert "status" not in get_slmd(api_client, other, "ignored")
    finally:
        scoped.stop()
        client.CoreV1Api(api_client).delete_namespace(other)
        operator.start()


# --- validation and runtime failures -----------------------------------------------------


def _invalid_manifests() -> list[Path]:
    return sorted(INVALID_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", _invalid_manifests(), ids=lambda p: p.stem)
def test_invalid_manifest_is_rejected_with_its_message(
    api_client: client.ApiClient, namespace: str, crd: None, path: Path
) -> None:
    text = path.read_text()
    expected = text.splitlines()[0].removeprefix("# expect:").strip()
    assert expected, f"{path.name} must start with '# expect: <message>'"
    body = yaml.safe_load(text)
    with pytest.raises(ApiException) as caught:
        custom(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    assert caught.value.status == 422
    message = json.loads(caught.value.body)["message"]
    assert expected in message


def test_model_too_big_reports_planned_false_and_a_warning_event(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    spec = {
        "model": {"uri": "hf://meta-llama/Llama-2-13b-hf", "maxModelLen": 4096},
        "gpu": {"products": ["NVIDIA-L4"]},
    }
    create_slmd(api_client, namespace, "big", spec)
    obj = wait_condition(api_client, namespace, "big", "Planned", "False")
    planned = condition(obj, "Planned")
    assert planned is not None
    assert planned["reason"] == "DoesNotFit"
    assert "GiB" in planned["message"]
    assert "quantization" in planned["message"]
    assert condition(obj, "Ready")["status"] == "False"  # type: ignore[index]
    wait_for(
        lambda: any(
            e.type == "Warning" and e.reason == "DoesNotFit"
            for e in events_for(api_client, namespace, "big")
        ),
        "a DoesNotFit Warning Event",
    )
    deployments = client.AppsV1Api(api_client).list_namespaced_deployment(namespace)
    assert deployments.items == []


def test_no_node_with_the_sharing_mode_reports_no_matching_gpu(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    spec = {"model": {"uri": "hf://facebook/opt-1.3b"}, "gpu": {"sharing": "MPS"}}
    create_slmd(api_client, namespace, "mps", spec)
    obj = wait_condition(api_client, namespace, "mps", "Planned", "False")
    planned = condition(obj, "Planned")
    assert planned is not None
    assert planned["reason"] == "NoMatchingGPU"
    assert "NVIDIA-H100-80GB-HBM3/none" in planned["message"]  # lists what the cluster offers


def test_unschedulable_pods_report_degraded_with_the_schedulers_reason(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    spec = {
        "model": {"uri": "pvc://no-such-claim/opt", "config": {"catalogName": "opt-125m"}},
        "gpu": {"products": [H100]},
    }
    create_slmd(api_client, namespace, "stuck", spec)
    obj = wait_condition(api_client, namespace, "stuck", "Degraded", "True")
    degraded = condition(obj, "Degraded")
    assert degraded is not None
    assert degraded["reason"] == "Unschedulable"
    assert 'persistentvolumeclaim "no-such-claim" not found' in degraded["message"]
    assert condition(obj, "Ready")["status"] == "False"  # type: ignore[index]


def test_fixing_the_spec_recovers_from_a_failed_plan(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_slmd(
        api_client,
        namespace,
        "fix",
        {"model": {"uri": "hf://facebook/opt-1.3b"}, "gpu": {"sharing": "MPS"}},
    )
    wait_condition(api_client, namespace, "fix", "Planned", "False")
    custom(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "fix", {"spec": {"gpu": {"sharing": "Packed"}}}
    )
    obj = wait_condition(api_client, namespace, "fix", "Ready", "True")
    assert obj["status"]["plan"]["mode"] == "Packed"


# --- ownership, drift and restarts ------------------------------------------------------


def test_operator_never_writes_the_spec(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_slmd(api_client, namespace, "own", {"model": {"uri": "hf://facebook/opt-125m"}})
    obj = wait_condition(api_client, namespace, "own", "Planned", "True", timeout=60)
    ours = [m for m in obj["metadata"]["managedFields"] if m["manager"] == "slmpack-operator"]
    assert ours, "the operator's status writes carry its field manager"
    assert all(m.get("subresource") == "status" for m in ours)
    assert obj["metadata"]["generation"] == 1


def test_deleted_or_edited_children_are_restored(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    spec = {"model": {"uri": "hf://facebook/opt-1.3b"}, "gpu": {"products": [H100]}, "replicas": 2}
    create_slmd(api_client, namespace, "drift", spec)
    wait_condition(api_client, namespace, "drift", "Ready", "True")
    core = client.CoreV1Api(api_client)
    apps = client.AppsV1Api(api_client)
    old_uid = core.read_namespaced_service("drift", namespace).metadata.uid
    core.delete_namespaced_service("drift", namespace)
    wait_for(
        lambda: _service_uid(core, namespace, "drift") not in (None, old_uid),
        "the deleted Service to be recreated",
    )
    want = apps.read_namespaced_deployment("drift", namespace).spec.replicas
    apps.patch_namespaced_deployment("drift", namespace, {"spec": {"replicas": want + 3}})
    wait_for(
        lambda: apps.read_namespaced_deployment("drift", namespace).spec.replicas == want,
        "the hand-edited replica count to be restored",
    )


def _service_uid(core: client.CoreV1Api, namespace: str, name: str) -> str | None:
    try:
        return str(core.read_namespaced_service(name, namespace).metadata.uid)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def test_restart_mid_rollout_converges_without_duplicates(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    names = [f"r{i}" for i in range(6)]
    for name in names:
        create_slmd(api_client, namespace, name, {"model": {"uri": "hf://facebook/opt-125m"}})
    time.sleep(0.3)
    operator.stop(kill=True)
    operator.start()
    for name in names:
        wait_condition(api_client, namespace, name, "Ready", "True")
    apps = client.AppsV1Api(api_client)
    deployments = apps.list_namespaced_deployment(namespace).items
    assert sorted(d.metadata.name for d in deployments) == names
    replica_sets = apps.list_namespaced_replica_set(namespace).items
    assert len(replica_sets) == len(names)  # one template each: no spurious rollouts
    services = client.CoreV1Api(api_client).list_namespaced_service(namespace).items
    assert sorted(s.metadata.name for s in services) == names


def test_pods_move_when_their_gpu_node_goes(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    pool = f"move-{uuid.uuid4().hex[:6]}"
    fleet = gpu_nodes.parse_fleet_yaml(
        yaml.safe_dump(
            {"pools": [{"name": pool, "count": 2, "profile": "h100-80gb-x8", "gpusPerNode": 1}]}
        ),
        "test fleet",
    )
    nodes = gpu_nodes.build_fleet_nodes(fleet)
    names = node_apply.apply_nodes(api_client, nodes)
    core = client.CoreV1Api(api_client)
    try:
        node_apply.wait_nodes_ready(api_client, names, timeout_seconds=30.0)
        spec = {
            "model": {"uri": "hf://facebook/opt-1.3b"},
            "gpu": {"sharing": "Exclusive", "nodeSelector": {gpu_nodes.POOL_LABEL: pool}},
            "replicas": 1,
        }
        create_slmd(api_client, namespace, "mover", spec)
        wait_condition(api_client, namespace, "mover", "Ready", "True")
        (first,) = pods_of(api_client, namespace, "mover")
        core.delete_node(first.spec.node_name)

        def moved() -> bool:
            pods = pods_of(api_client, namespace, "mover")
            return any(
                p.spec.node_name not in (None, first.spec.node_name) and p.status.phase == "Running"
                for p in pods
            )

        # Pod garbage collection removes pods of a vanished node after ~40 s.
        wait_for(moved, "the replica to run on the remaining node", timeout_seconds=150)
        wait_condition(api_client, namespace, "mover", "Ready", "True", timeout=60)
    finally:
        for name in names:
            try:
                core.delete_node(name)
            except ApiException as err:
                if err.status != 404:
                    raise


def test_operator_rides_out_an_apiserver_outage(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    live_cluster: LiveCluster,
) -> None:
    if live_cluster.local_name is None:
        pytest.fail(
            "This test stops kube-apiserver and needs the cluster the session starts; "
            "unset SLMPACK_TEST_KUBECONFIG to run it"
        )
    pid = operator.pid
    launcher.stop_component(live_cluster.local_name, "kube-apiserver")
    try:
        time.sleep(OUTAGE_SECONDS)
    finally:
        launcher.start_component(live_cluster.local_name, "kube-apiserver")
    create_slmd(api_client, namespace, "after", {"model": {"uri": "hf://facebook/opt-125m"}})
    wait_condition(api_client, namespace, "after", "Ready", "True", timeout=120)
    assert operator.pid == pid
    assert operator.process is not None
    assert operator.process.poll() is None, "the operator recovered without a restart"


def test_two_replicas_with_peering_one_works_and_the_standby_takes_over(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    live_cluster: LiveCluster,
    tmp_path: Path,
) -> None:
    crd_apply.apply_crd_file(api_client, PEERING_CRD_PATH)
    peering = f"pair-{uuid.uuid4().hex[:6]}"
    custom(api_client).create_cluster_custom_object(
        "kopf.dev",
        "v1",
        "clusterkopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": peering}},
    )
    operator.stop()  # the standalone operator would not take part in the election

    def replica(name: str, priority: int) -> OperatorProcess:
        env = {
            "SLMPACK_PEERING": peering,
            "SLMPACK_PRIORITY": str(priority),
            "SLMPACK_PEERING_LIFETIME_SECONDS": "10",
            "SLMPACK_INSTANCE": name,
        }
        return OperatorProcess(live_cluster.kubeconfig, tmp_path / f"{name}.log", env)

    active, standby = replica("active", 200), replica("standby", 100)
    try:
        active.start()
        standby.start()
        create_slmd(api_client, namespace, "first", {"model": {"uri": "hf://facebook/opt-125m"}})
        wait_condition(api_client, namespace, "first", "Ready", "True")
        assert active.writes() > 0
        assert standby.writes() == 0, standby.log_tail()
        active.stop(kill=True)
        create_slmd(api_client, namespace, "second", {"model": {"uri": "hf://facebook/opt-125m"}})
        # The standby resumes once the dead peer's record is older than its lifetime.
        wait_condition(api_client, namespace, "second", "Ready", "True", timeout=90)
        assert standby.writes() > 0
    finally:
        active.stop()
        standby.stop()
        custom(api_client).delete_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", peering
        )
        operator.start()


def test_no_writes_while_idle(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    for i in range(3):
        spec = {"model": {"uri": "hf://facebook/opt-125m"}, "replicas": i + 1}
        create_slmd(api_client, namespace, f"idle{i}", spec)
    for i in range(3):
        wait_condition(api_client, namespace, f"idle{i}", "Ready", "True")
    time.sleep(5)  # let the last status write's own watch event come back
    before = operator.writes()
    time.sleep(IDLE_SECONDS)
    after = operator.writes()
    assert after == before, f"{after - before:.0f} writes in {IDLE_SECONDS:.0f} s of idle"
