"""Deployment, Service and PDB manifests rendered from a decision (pure, no cluster)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from slmpack.api.v1alpha1 import SLMDeploymentSpec
from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog
from slmpack.controller.decide import Decision, decide
from slmpack.controller.inventory import cluster_offers
from slmpack.planner.types import SharingMode
from slmpack.render.workload import (
    Owner,
    RenderDefaults,
    children,
    deployment,
    disruption_budget,
    service,
)

from .controller_fixtures import fleet_nodes, mps_node, renamed_shared_node, spec

GPUS = default_gpu_catalog()
MODELS = default_model_catalog()
FLEET = fleet_nodes()
OWNER = Owner("chat", "team-a", "0b9e-uid")
DEFAULTS = RenderDefaults("vllm/vllm-openai:test", "slmpack/launcher:test")
NODES = {
    "h100": [FLEET["h100-0"], FLEET["h100-1"]],
    "a100-mig": [FLEET["a100-mig-0"]],
    "l4": [FLEET["l4-ts-0"]],
    "l4-renamed": [renamed_shared_node()],
    "mps": [mps_node()],
}


def _decision(parsed: SLMDeploymentSpec, nodes: str = "h100") -> Decision:
    return decide(parsed, MODELS.get("opt-1.3b"), cluster_offers(NODES[nodes]), GPUS)


def _render(nodes: str = "h100", **fields: Any) -> tuple[dict[str, Any], Decision]:
    parsed = spec(**fields)
    decision = _decision(parsed, nodes)
    return deployment(OWNER, parsed, decision, DEFAULTS), decision


def _container(manifest: dict[str, Any]) -> dict[str, Any]:
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _engine_argvs(container: dict[str, Any]) -> list[list[str]]:
    config = json.loads(_env(container)["SLMPACK_LAUNCHER_CONFIG"])
    return [engine["argv"] for engine in config["engines"]]


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


CASES = [
    pytest.param("h100", {"sharing": "Packed"}, "nvidia.com/gpu", id="packed"),
    pytest.param("h100", {"sharing": "Exclusive"}, "nvidia.com/gpu", id="exclusive"),
    pytest.param("l4", {"sharing": "TimeSlicing"}, "nvidia.com/gpu", id="time-slicing"),
    pytest.param("l4-renamed", {}, "nvidia.com/gpu.shared", id="renamed-shared"),
    pytest.param("mps", {"sharing": "MPS"}, "nvidia.com/gpu", id="mps"),
    pytest.param(
        "a100-mig", {"sharing": "MIG", "migProfile": "2g.10gb"}, "nvidia.com/mig-2g.10gb", id="mig"
    ),
]


@pytest.mark.parametrize(("nodes", "gpu", "resource"), CASES)
def test_pod_claims_one_unit_of_the_offers_resource(
    nodes: str, gpu: dict[str, Any], resource: str
) -> None:
    manifest, decision = _render(nodes, gpu=gpu)

    limits = _container(manifest)["resources"]["limits"]
    assert limits == {resource: "1"}
    assert decision.offer.resource == resource


@pytest.mark.parametrize(("nodes", "gpu", "resource"), CASES)
def test_affinity_selects_exactly_the_offers_nodes(
    nodes: str, gpu: dict[str, Any], resource: str
) -> None:
    manifest, decision = _render(nodes, gpu=gpu)

    terms = manifest["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert len(terms) == 1
    required = {e["key"]: e["values"] for e in terms[0]["matchExpressions"]}
    assert {e["operator"] for e in terms[0]["matchExpressions"]} == {"In"}
    assert required == {k: [v] for k, v in decision.offer.node_selector}
    # The rendered pods must fit the very nodes the offer came from.
    for node in NODES[nodes]:
        labels = node["metadata"]["labels"]
        assert all(labels.get(k) in v for k, v in required.items())


def test_pod_tolerates_the_gpu_taint_plus_the_users() -> None:
    extra = {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}
    manifest, _ = _render(gpu={"tolerations": [extra]})

    tolerations = manifest["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    assert extra in tolerations


def test_user_node_selector_is_added_beside_the_affinity() -> None:
    manifest, _ = _render(gpu={"nodeSelector": {"zone": "b", "pool": "gpu"}})

    assert manifest["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "gpu", "zone": "b"}


@pytest.mark.parametrize(("nodes", "gpu", "resource"), CASES)
def test_probes_hit_health_on_the_http_port(nodes: str, gpu: dict[str, Any], resource: str) -> None:
    manifest, decision = _render(nodes, gpu=gpu)
    container = _container(manifest)

    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    # The Packed router restarts a crashed engine itself, so liveness asks the router only.
    live = "/live" if decision.mode is SharingMode.PACKED else "/health"
    assert container["livenessProbe"]["httpGet"] == {"path": live, "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]


def test_pods_are_annotated_for_prometheus_scraping() -> None:
    annotations = _render()[0]["spec"]["template"]["metadata"]["annotations"]

    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8000",
        "prometheus.io/path": "/metrics",
    }


def test_every_child_has_a_controller_owner_reference_and_selects_the_pods() -> None:
    parsed = spec()
    objects = children(OWNER, parsed, _decision(parsed), DEFAULTS)

    assert [o["kind"] for o in objects] == ["Deployment", "Service", "PodDisruptionBudget"]
    for obj in objects:
        assert obj["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "slmpack.dev/v1alpha1",
                "kind": "SLMDeployment",
                "name": "chat",
                "uid": "0b9e-uid",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert (obj["metadata"]["name"], obj["metadata"]["namespace"]) == ("chat", "team-a")
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "slmpack"
    pod_labels = objects[0]["spec"]["template"]["metadata"]["labels"]
    for selector in (
        objects[0]["spec"]["selector"]["matchLabels"],
        objects[1]["spec"]["selector"],
        objects[2]["spec"]["selector"]["matchLabels"],
    ):
        assert selector == {"slmpack.dev/deployment": "chat"}
        assert selector.items() <= pod_labels.items()


def test_service_and_pdb_shape() -> None:
    svc = service(OWNER)
    pdb = disruption_budget(OWNER)

    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    ]
    assert pdb["spec"]["maxUnavailable"] == 1


# --- Packed -------------------------------------------------------------------------------


def test_packed_pod_runs_the_launcher_with_one_argv_per_engine() -> None:
    manifest, decision = _render(gpu={"sharing": "Packed", "replicasPerGPU": 3}, replicas=6)

    container = _container(manifest)
    assert container["name"] == "launcher"
    assert container["image"] == DEFAULTS.launcher_image
    assert container["command"] == ["python3", "-m", "slmpack.launcher"]
    assert "args" not in container
    assert manifest["spec"]["replicas"] == 2  # 6 engines, 3 per pod
    argvs = _engine_argvs(container)
    assert len(argvs) == decision.engines_per_pod == 3
    kv_bytes = str(decision.candidate.memory.kv_cache_bytes)
    for argv in argvs:
        assert argv[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
        assert _flag(argv, "--port") == "{port}"
        assert _flag(argv, "--kv-cache-memory-bytes") == kv_bytes
        assert _flag(argv, "--host") == "127.0.0.1"  # only the router listens outside
    config = json.loads(_env(container)["SLMPACK_LAUNCHER_CONFIG"])
    assert (config["front_port"], config["first_engine_port"]) == (8000, 8001)


@pytest.mark.parametrize(
    ("per_gpu", "requests", "expected"),
    [
        (2, {"cpu": "4", "memory": "16Gi"}, {"cpu": 8, "memory": "32Gi"}),
        (3, {"cpu": "500m", "memory": "1.5Gi"}, {"cpu": "1500m", "memory": "4.5Gi"}),
        (2, {"cpu": 3, "memory": "100M"}, {"cpu": 6, "memory": "200M"}),
        (4, {"cpu": "0.5"}, {"cpu": 2}),
        (2, {"cpu": "1e3"}, {"cpu": 2000}),  # exponent form, as the CRD pattern allows
    ],
)
def test_packed_resources_are_per_engine_times_engines(
    per_gpu: int, requests: dict[str, Any], expected: dict[str, Any]
) -> None:
    manifest, _ = _render(
        gpu={"sharing": "Packed", "replicasPerGPU": per_gpu},
        engine={"resources": {"requests": requests, "limits": requests}},
    )

    resources = _container(manifest)["resources"]
    assert resources["requests"] == expected
    assert resources["limits"] == {**expected, "nvidia.com/gpu": "1"}


def test_unpacked_resources_are_copied_unchanged() -> None:
    requests = {"cpu": "500m", "memory": "16Gi"}
    manifest, _ = _render(
        gpu={"sharing": "Exclusive"}, engine={"resources": {"requests": requests}}
    )

    resources = _container(manifest)["resources"]
    assert resources["requests"] == requests
    assert resources["limits"] == {"nvidia.com/gpu": "1"}


# --- single-engine pods -------------------------------------------------------------------


def test_exclusive_pod_runs_vllm_with_the_plans_flags() -> None:
    manifest, decision = _render(gpu={"sharing": "Exclusive"})

    container = _container(manifest)
    assert container["name"] == "vllm"
    assert container["image"] == DEFAULTS.vllm_image
    assert container["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    args = container["args"]
    assert args[:6] == [
        "--model",
        "facebook/opt-1.3b",
        "--served-model-name",
        "opt-1.3b",
        "--port",
        "8000",
    ]
    assert args[6:] == list(decision.launch.args)


def test_images_from_the_spec_override_the_defaults() -> None:
    manifest, _ = _render(gpu={"sharing": "Exclusive"}, engine={"image": "my/vllm:1"})
    assert _container(manifest)["image"] == "my/vllm:1"

    manifest, _ = _render(gpu={"sharing": "Packed"}, engine={"launcherImage": "my/launch:1"})
    assert _container(manifest)["image"] == "my/launch:1"


def test_mps_pods_carry_the_mps_limits() -> None:
    manifest, decision = _render("mps", gpu={"sharing": "MPS"})

    env = _env(_container(manifest))
    assert decision.mode is SharingMode.MPS
    assert (
        env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"]
        == dict(decision.launch.env)["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"]
    )
    # 4 slots per GPU at 2x oversubscription: ceil(100 * 2 / 4) = 50 percent each.
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"].startswith("0=")
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"].endswith("M")


def test_non_mps_pods_carry_no_mps_env() -> None:
    env = _env(_container(_render("l4", gpu={"sharing": "TimeSlicing"})[0]))
    assert not any(name.startswith("CUDA_MPS_") for name in env)


# --- model sources, env and args ----------------------------------------------------------


def test_pvc_uri_mounts_the_claim_read_only() -> None:
    manifest, _ = _render(
        gpu={"sharing": "Exclusive"},
        model={"uri": "pvc://weights/opt/1.3b", "config": {"catalogName": "opt-1.3b"}},
    )

    pod = manifest["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {"name": "model", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}}
    ]
    container = _container(manifest)
    assert container["volumeMounts"] == [
        {"name": "model", "mountPath": "/models", "readOnly": True}
    ]
    assert _flag(container["args"], "--model") == "/models/opt/1.3b"
    assert _flag(container["args"], "--served-model-name") == "1.3b"


def test_pvc_uri_under_packed_mounts_into_the_launcher_and_every_engine_reads_it() -> None:
    manifest, _ = _render(
        gpu={"sharing": "Packed"},
        model={"uri": "pvc://weights/opt-1.3b", "config": {"catalogName": "opt-1.3b"}},
    )

    container = _container(manifest)
    assert container["volumeMounts"][0]["mountPath"] == "/models"
    for argv in _engine_argvs(container):
        assert _flag(argv, "--model") == "/models/opt-1.3b"


def test_s3_uri_streams_with_runai() -> None:
    manifest, _ = _render(
        gpu={"sharing": "Exclusive"},
        model={"uri": "s3://bucket/opt-1.3b", "config": {"catalogName": "opt-1.3b"}},
    )

    args = _container(manifest)["args"]
    assert _flag(args, "--model") == "s3://bucket/opt-1.3b"
    assert _flag(args, "--load-format") == "runai_streamer"
    assert "volumes" not in manifest["spec"]["template"]["spec"]


def test_hf_token_secret_and_user_env_reach_the_container() -> None:
    manifest, _ = _render(
        gpu={"sharing": "Exclusive"},
        engine={
            "hfTokenSecretRef": {"name": "hf"},
            "env": [
                {"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            ],
        },
    )

    env = _container(manifest)["env"]
    assert {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}},
    } in env
    assert {"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"} in env
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in env


def test_user_args_come_last() -> None:
    extra = ["--enable-prefix-caching", "--seed=7"]
    manifest, _ = _render(gpu={"sharing": "Exclusive"}, engine={"args": extra})
    assert _container(manifest)["args"][-2:] == extra

    packed, _ = _render(gpu={"sharing": "Packed"}, engine={"args": extra})
    for argv in _engine_argvs(_container(packed)):
        assert argv[-2:] == extra


def test_served_name_from_the_spec() -> None:
    manifest, _ = _render(
        gpu={"sharing": "Exclusive"},
        model={"uri": "hf://facebook/opt-1.3b", "servedName": "chat-small"},
    )
    assert _flag(_container(manifest)["args"], "--served-model-name") == "chat-small"


@pytest.mark.parametrize(("nodes", "gpu", "resource"), CASES)
def test_rendering_is_deterministic(nodes: str, gpu: dict[str, Any], resource: str) -> None:
    parsed = spec(
        gpu=gpu,
        engine={"env": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}]},
    )
    first = children(OWNER, parsed, _decision(parsed, nodes), DEFAULTS)
    second = children(
        OWNER, spec(**parsed.model_dump(by_alias=True)), _decision(parsed, nodes), DEFAULTS
    )

    assert json.dumps(first) == json.dumps(second)
