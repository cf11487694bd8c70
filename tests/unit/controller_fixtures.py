"""Node dicts and SLMDeployment specs for the controller's unit tests.

Fleet nodes come from the dev cluster's own builders (the labels GFD and the device plugin
would set); the rest are built by hand for label sets the fleet file does not produce.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from slmpack.api.v1alpha1 import SLMDeploymentSpec
from slmpack.devcluster.gpu_nodes import NodePool, build_fleet_nodes, build_node, parse_fleet_yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FLEET = REPO_ROOT / "hack" / "fleets" / "default.yaml"

PRODUCT = "nvidia.com/gpu.product"
STRATEGY = "nvidia.com/gpu.sharing-strategy"
REPLICAS = "nvidia.com/gpu.replicas"


def ready(node: dict[str, Any], status: str = "True") -> dict[str, Any]:
    """The node with a Ready condition: the builders leave status.conditions to the kubelet
    (kwok), and the inventory only trusts nodes that report Ready."""
    out = copy.deepcopy(node)
    out["status"]["conditions"] = [{"type": "Ready", "status": status}]
    return out


def fleet_nodes() -> dict[str, dict[str, Any]]:
    """hack/fleets/default.yaml's nodes by name: h100-{0,1}, a100-mig-0, l4-ts-{0,1}, cpu-0."""
    fleet = parse_fleet_yaml(DEFAULT_FLEET.read_text(encoding="utf-8"), str(DEFAULT_FLEET))
    return {n["metadata"]["name"]: ready(n) for n in build_fleet_nodes(fleet)}


def pool_node(name: str = "pool", index: int = 0, **fields: Any) -> dict[str, Any]:
    pool = NodePool.model_validate({"name": name, "count": index + 1, **fields})
    return ready(build_node(pool, index))


def mig_single_node() -> dict[str, Any]:
    """A100-40GB under MIG single strategy: 7x 1g.5gb per GPU advertised as nvidia.com/gpu."""
    return pool_node(
        "a100-single",
        gpuProduct="NVIDIA-A100-SXM4-40GB",
        gpusPerNode=8,
        migStrategy="single",
        migLayout="all-1g.5gb",
    )


def renamed_shared_node() -> dict[str, Any]:
    """L4 time-sliced x4 with renameByDefault: nvidia.com/gpu.shared, no -SHARED suffix."""
    return pool_node(
        "l4-renamed",
        gpuProduct="NVIDIA-L4",
        gpusPerNode=1,
        sharing="time-slicing",
        replicas=4,
        renameByDefault=True,
    )


def mps_node() -> dict[str, Any]:
    return pool_node(
        "h100-mps", gpuProduct="NVIDIA-H100-80GB-HBM3", gpusPerNode=2, sharing="mps", replicas=4
    )


def t4_node() -> dict[str, Any]:
    return pool_node("t4", gpuProduct="Tesla-T4", gpusPerNode=1)


def h100_node(name: str = "h100", index: int = 0) -> dict[str, Any]:
    return pool_node(name, index, gpuProduct="NVIDIA-H100-80GB-HBM3", gpusPerNode=8)


def spec(**fields: Any) -> SLMDeploymentSpec:
    """An opt-1.3b spec (catalogue entry via its hf:// id) with `fields` merged in."""
    body: dict[str, Any] = {"model": {"uri": "hf://facebook/opt-1.3b"}, **fields}
    return SLMDeploymentSpec.model_validate(body)
