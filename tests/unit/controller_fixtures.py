"""Node dicts and SLMDeployment specs for the controller's unit tests.

Fleet nodes come from the dev cluster's own builders (the labels GFD and the device plugin
would set); the rest are built by hand for label sets the fleet file does not produce.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

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


WRITES = ("apply", "apply_status", "create", "delete")


class FakeKube:
    """Records every call; stores what is applied, as the apiserver would echo it back."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []  # (verb, kind)
        self.applied: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.created: list[dict[str, Any]] = []
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.fail_create: ApiException | None = None

    def writes(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0] in WRITES]

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", kind))
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def list(
        self, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        self.calls.append(("list", kind))
        return [copy.deepcopy(o) for (k, ns, _), o in self.objects.items() if k == kind]

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        self.calls.append(("apply", obj["kind"]))
        self.applied.append(copy.deepcopy(obj))
        stored = copy.deepcopy(obj)
        stored["metadata"].update(generation=1, resourceVersion=str(len(self.calls)))
        return stored

    async def apply_status(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        self.calls.append(("apply_status", obj["kind"]))
        self.statuses.append(copy.deepcopy(obj))
        return copy.deepcopy(obj)

    async def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        self.calls.append(("create", obj["kind"]))
        if self.fail_create is not None:
            raise self.fail_create
        self.created.append(copy.deepcopy(obj))
        return copy.deepcopy(obj)

    async def delete(self, kind: str, namespace: str | None, name: str) -> None:
        self.calls.append(("delete", kind))
