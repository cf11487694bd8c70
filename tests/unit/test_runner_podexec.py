"""Pods the operator renders, turned into local commands by the runner (pure, no cluster).

The translated command lines are parsed with the simulator's and the launcher's own parsers,
so a flag either of them would refuse fails here rather than in a pod.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog
from slmpack.controller.decide import decide
from slmpack.controller.inventory import cluster_offers
from slmpack.devcluster import gpu_devices, podexec
from slmpack.devcluster.podexec import (
    EngineKind,
    EngineSettings,
    Placement,
    UnsupportedPodError,
    local_command,
    parse_pod,
    resolve_env,
)
from slmpack.launcher.config import CONFIG_ENV, parse_config
from slmpack.planner.types import SharingMode
from slmpack.render.workload import Owner, RenderDefaults, deployment
from slmpack.sim.vllm import VllmSimConfig
from slmpack.sim.vllm import parse_args as parse_sim_args

from .controller_fixtures import fleet_nodes, spec

FLEET = fleet_nodes()
OWNER = Owner("chat", "team-a", "owner-uid")
DEFAULTS = RenderDefaults("vllm/vllm-openai:test", "slmpack/launcher:test")
ENGINE = EngineSettings(EngineKind.SIM, python="/venv/bin/python", sim_speedup=10.0)
STATE = Path("/state/runner")
SIM_DIR = STATE / "nodes" / "h100-0" / "sim"


def _pod(node: str = "h100-0", **fields: Any) -> dict[str, Any]:
    """A pod of the Deployment the operator renders for `fields`, bound to `node`."""
    parsed = spec(**fields)
    nodes = [FLEET[node]]
    decision = decide(
        parsed,
        default_model_catalog().get("opt-1.3b"),
        cluster_offers(nodes),
        default_gpu_catalog(),
    )
    template = copy.deepcopy(deployment(OWNER, parsed, decision, DEFAULTS)["spec"]["template"])
    template["metadata"].update(name="chat-abc", namespace="team-a", uid="pod-uid")
    template["spec"]["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", **template}


def _placement(node: str, pod: podexec.PodView) -> Placement:
    labels = FLEET[node]["metadata"]["labels"]
    gpus = gpu_devices.node_gpus(labels, FLEET[node]["status"]["allocatable"])
    slots = gpu_devices.assign_devices(gpus, gpu_devices.gpu_requests(pod.container.limits), ())
    return Placement(node, "127.64.0.7", "127.64.0.1", gpus, slots, SIM_DIR)


def _command(node: str = "h100-0", **fields: Any) -> tuple[podexec.LocalCommand, Placement]:
    view = parse_pod(_pod(node, **fields))
    placement = _placement(node, view)
    env = resolve_env(view, placement.pod_ip, placement.host_ip, {})
    return local_command(view, placement, ENGINE, env, {"PATH": "/usr/bin"}, STATE), placement


def _sim_config(argv: list[str] | tuple[str, ...]) -> VllmSimConfig:
    assert list(argv[:3]) == ["/venv/bin/python", "-m", "slmpack.sim.vllm"]
    return parse_sim_args(list(argv[3:]))


def test_an_exclusive_pod_runs_the_simulator_on_its_address_and_gpu() -> None:
    command, placement = _command(gpu={"sharing": "Exclusive"})

    config = _sim_config(command.argv)
    assert command.what == "vllm-sim"
    assert (config.host, config.port) == ("127.64.0.7", 8000)
    assert config.model == "facebook/opt-1.3b"
    assert config.sim_gpu == "NVIDIA-H100-80GB-HBM3"
    assert config.sim_mode is SharingMode.EXCLUSIVE
    assert config.sim_device_id == str(placement.slots[0].gpu)
    assert config.sim_state_dir == SIM_DIR
    assert config.sim_speedup == 10.0
    assert (config.sim_pod_name, config.sim_pod_namespace) == ("chat-abc", "team-a")
    assert config.kv_cache_memory_bytes is not None  # the plan's flags pass through
    assert command.env["NVIDIA_VISIBLE_DEVICES"] == "0"
    assert command.env[podexec.RUNNER_POD_ENV] == "pod-uid"
    assert command.env[podexec.RUNNER_DIR_ENV] == str(STATE)
    assert command.env["PATH"] == "/usr/bin"


def test_a_packed_pod_runs_the_launcher_with_simulated_engines_on_its_address() -> None:
    command, placement = _command(gpu={"sharing": "Packed", "replicasPerGPU": 3})

    assert command.what == "launcher"
    assert command.argv == ("/venv/bin/python", "-m", "slmpack.launcher")
    config = parse_config(command.env[CONFIG_ENV], "test")
    assert (config.host, config.engine_host) == ("127.64.0.7", "127.64.0.7")
    assert len(config.engines) == 3
    for index in range(3):
        sim = _sim_config(config.engine_argv(index))
        assert (sim.host, sim.port) == ("127.64.0.7", config.engine_port(index))
        assert sim.sim_mode is SharingMode.PACKED
        assert sim.sim_device_id == str(placement.slots[0].gpu)
        assert sim.kv_cache_memory_bytes is not None
    assert config.resolved_startup().value == "Parallel"


def test_a_time_sliced_pod_runs_in_time_slicing_mode_on_its_share() -> None:
    command, _ = _command("l4-ts-0", gpu={"sharing": "TimeSlicing"})

    config = _sim_config(command.argv)
    assert config.sim_gpu == "NVIDIA-L4"  # the GFD label says NVIDIA-L4-SHARED
    assert config.sim_mode is SharingMode.TIME_SLICING


def test_a_mig_pod_runs_on_its_instance() -> None:
    command, placement = _command("a100-mig-0", gpu={"sharing": "MIG", "migProfile": "2g.10gb"})

    config = _sim_config(command.argv)
    assert config.sim_mode is SharingMode.MIG
    assert config.sim_gpu == "NVIDIA-A100-SXM4-40GB"
    assert config.sim_mig_profile == "2g.10gb"
    assert config.sim_mig_instance == placement.slots[0].mig_instance == 0
    assert command.env["NVIDIA_VISIBLE_DEVICES"] == "0:0"


def test_vllm_serve_and_a_later_host_flag_are_understood() -> None:
    obj = _pod(gpu={"sharing": "Exclusive"})
    container = obj["spec"]["containers"][0]
    container["command"] = ["vllm", "serve", "facebook/opt-125m"]
    container["args"] = ["--host", "0.0.0.0", "--port", "8000"]
    view = parse_pod(obj)
    command = local_command(view, _placement("h100-0", view), ENGINE, {}, {}, STATE)

    config = _sim_config(command.argv)
    assert (config.model, config.host) == ("facebook/opt-125m", "127.64.0.7")


def test_other_commands_are_refused_with_the_way_out() -> None:
    obj = _pod(gpu={"sharing": "Exclusive"})
    obj["spec"]["containers"][0]["command"] = ["/pause"]
    view = parse_pod(obj)

    with pytest.raises(UnsupportedPodError, match="kwok node"):
        local_command(view, _placement("h100-0", view), ENGINE, {}, {}, STATE)


def test_the_simulator_needs_a_gpu_request() -> None:
    obj = _pod(gpu={"sharing": "Exclusive"})
    obj["spec"]["containers"][0]["resources"] = {}
    view = parse_pod(obj)

    with pytest.raises(UnsupportedPodError, match="needs one"):
        local_command(view, _placement("h100-0", view), ENGINE, {}, {}, STATE)


def test_env_resolves_fields_and_references_and_names_what_is_missing() -> None:
    obj = _pod(gpu={"sharing": "Exclusive"})
    obj["spec"]["containers"][0]["env"] = [
        {"name": "LITERAL", "value": "x"},
        {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {
            "name": "APP",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['slmpack.dev/deployment']"}},
        },
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}}},
        {
            "name": "OPT",
            "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k", "optional": True}},
        },
    ]
    view = parse_pod(obj)

    assert podexec.env_references(view) == {("Secret", "hf", "HF_TOKEN"), ("ConfigMap", "c", "k")}
    env = resolve_env(view, "127.64.0.9", "127.64.0.1", {("Secret", "hf", "HF_TOKEN"): "s3cret"})
    assert env == {
        "LITERAL": "x",
        "ME": "chat-abc",
        "IP": "127.64.0.9",
        "APP": "chat",
        "TOKEN": "s3cret",
    }
    with pytest.raises(UnsupportedPodError, match="Secret team-a/hf has no key 'HF_TOKEN'"):
        resolve_env(view, "127.64.0.9", "127.64.0.1", {})


def test_pod_fields_the_runner_acts_on() -> None:
    obj = _pod(gpu={"sharing": "Exclusive"})
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    obj["metadata"]["deletionGracePeriodSeconds"] = 7
    view = parse_pod(obj)

    assert view.deleting
    assert view.grace_seconds == 7
    assert view.container.readiness is not None
    assert (view.container.readiness.path, view.container.readiness.port) == ("/health", 8000)
    assert view.restart_policy == "Always"


def test_the_launcher_config_env_name_matches_the_launcher() -> None:
    assert podexec.LAUNCHER_CONFIG_ENV == CONFIG_ENV


def test_dcgm_command_serves_the_node_on_its_address() -> None:
    labels = FLEET["h100-0"]["metadata"]["labels"]
    gpus = gpu_devices.node_gpus(labels, FLEET["h100-0"]["status"]["allocatable"])
    assert gpus is not None
    command = podexec.dcgm_command("h100-0", gpus, "127.64.0.1", SIM_DIR, ENGINE, {}, STATE)

    argv = list(command.argv)
    assert argv[:3] == ["/venv/bin/python", "-m", "slmpack.sim.dcgm"]
    assert argv[argv.index("--sim-gpu-count") + 1] == "8"
    assert argv[argv.index("--host") + 1] == "127.64.0.1"
    assert argv[argv.index("--port") + 1] == str(podexec.DCGM_PORT)
    assert json.dumps(command.env)  # plain strings only


def test_pods_inherit_only_the_harmless_part_of_the_runners_environment() -> None:
    env = podexec.base_environment({"PATH": "/bin", "KUBECONFIG": "/secret", "HOME": "/root"})

    assert env["PATH"] == "/bin"
    assert env["HOME"] == "/root"
    assert "KUBECONFIG" not in env


def test_the_vllm_cpu_engine_serves_the_tiny_model_under_the_pods_name() -> None:
    from slmpack.dataplane.vllm_cpu import VllmCpuInstall

    install = VllmCpuInstall(Path("/cpu/bin/python"), Path("/models/tiny"), Path("/cache"))
    engine = EngineSettings(EngineKind.VLLM_CPU, python="/venv/bin/python", vllm_cpu=install)
    view = parse_pod(_pod(gpu={"sharing": "Exclusive"}))
    placement = _placement("h100-0", view)
    env = resolve_env(view, placement.pod_ip, placement.host_ip, {})
    command = local_command(view, placement, engine, env, {}, STATE)

    argv = list(command.argv)
    assert command.what == "vllm-cpu"
    assert argv[:3] == ["/cpu/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--model") + 1] == "/models/tiny"
    pod_args = list(view.container.argv)
    served = pod_args[pod_args.index("--served-model-name") + 1]
    assert argv[argv.index("--served-model-name") + 1] == served
    assert argv[argv.index("--host") + 1] == "127.64.0.7"
    assert argv[argv.index("--port") + 1] == "8000"
    assert argv.count("--model") == 1
    assert command.env["HF_HUB_OFFLINE"] == "1"


def test_packed_engines_on_the_vllm_cpu_build_keep_their_port_placeholder() -> None:
    from slmpack.dataplane.vllm_cpu import VllmCpuInstall

    install = VllmCpuInstall(Path("/cpu/bin/python"), Path("/models/tiny"), Path("/cache"))
    engine = EngineSettings(EngineKind.VLLM_CPU, python="/venv/bin/python", vllm_cpu=install)
    view = parse_pod(_pod(gpu={"sharing": "Packed", "replicasPerGPU": 2}))
    placement = _placement("h100-0", view)
    env = resolve_env(view, placement.pod_ip, placement.host_ip, {})
    command = local_command(view, placement, engine, env, {}, STATE)

    config = parse_config(command.env[CONFIG_ENV], "test")
    argv = config.engine_argv(1)
    assert argv[0] == "/cpu/bin/python"
    assert argv[argv.index("--port") + 1] == str(config.engine_port(1))
