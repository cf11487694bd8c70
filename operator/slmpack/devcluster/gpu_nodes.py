"""Pure builders of simulated GPU Node manifests, as NVIDIA's GPU Operator would label them.

A real GPU node gets its labels from GPU Feature Discovery (GFD) and its extended resources
from the NVIDIA device plugin. Here the same labels and resources are computed from a
`NodePool` description, so the real kube-scheduler does real fit checks against them while
kwok plays the kubelet. Nothing here calls the API (`node_apply` does).

Label and resource rules followed (NVIDIA k8s-device-plugin / GFD):
- `nvidia.com/gpu.product` is the GPU name with spaces turned into '-'; under time-slicing or
  MPS (replicas > 1) it gets a `-SHARED` suffix unless the resource is renamed to
  `nvidia.com/gpu.shared` (`renameByDefault`).
- Sharing multiplies the advertised count: 8 GPUs with 4 replicas advertise 32.
- MIG `mixed` strategy advertises one resource per profile, `nvidia.com/mig-<profile>`, and
  labels `nvidia.com/mig-<profile>.{product,count,replicas,memory}`; MIG-enabled GPUs no longer
  count as `nvidia.com/gpu`. MIG `single` strategy requires one profile on every GPU and
  advertises the slices as `nvidia.com/gpu`, with the product `<gpu>-MIG-<profile>`.
- The MIG layout is named by the `nvidia.com/mig.config` label (mig-parted's names such as
  `all-1g.10gb`, `all-balanced`, `all-disabled`) and reported in `nvidia.com/mig.config.state`.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from slmpack.devcluster.errors import FleetError

GPU_RESOURCE = "nvidia.com/gpu"
SHARED_GPU_RESOURCE = "nvidia.com/gpu.shared"
GPU_TAINT_KEY = "nvidia.com/gpu"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
#: Label naming the fleet pool a simulated node came from.
POOL_LABEL = "slmpack.io/node-pool"
#: Label naming what plays the kubelet of a simulated node (see `Kubelet`).
KUBELET_LABEL = "slmpack.io/kubelet"
#: Driver reported on every simulated GPU node (GFD labels `nvidia.com/cuda.driver.*`).
CUDA_DRIVER_VERSION = (570, 133, 20)
CUDA_RUNTIME_VERSION = (12, 8)

SharingStrategy = Literal["none", "time-slicing", "mps"]
MigStrategy = Literal["none", "single", "mixed"]
#: What plays a node's kubelet: kwok (pods only look Running) or `slmpack.devcluster.runner`
#: (pods run as local processes). A runner node lacks kwok's annotation, so kwok leaves the
#: node and its pods alone.
Kubelet = Literal["kwok", "runner"]


@dataclass(frozen=True)
class GpuProduct:
    """What GFD reports about one GPU model.

    `mig_profiles` maps each MIG profile to the most instances of it one GPU can hold
    (empty when the model has no MIG, or its profile table is not modelled here).
    """

    product: str
    memory_mib: int
    family: str
    compute_major: int
    compute_minor: int
    mig_capable: bool = False
    mig_profiles: Mapping[str, int] = field(default_factory=dict)
    #: mig-parted's `all-balanced` layout for this model: profile -> instances per GPU.
    mig_balanced: Mapping[str, int] = field(default_factory=dict)


#: Known GPU models, keyed by the GFD product label. Memory is what NVML reports (MiB).
GPU_PRODUCTS: dict[str, GpuProduct] = {
    product.product: product
    for product in (
        GpuProduct(
            "NVIDIA-H100-80GB-HBM3",
            81559,
            "hopper",
            9,
            0,
            mig_capable=True,
            mig_profiles={
                "1g.10gb": 7,
                "1g.20gb": 4,
                "2g.20gb": 3,
                "3g.40gb": 2,
                "4g.40gb": 1,
                "7g.80gb": 1,
            },
            mig_balanced={"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1},
        ),
        GpuProduct(
            "NVIDIA-A100-SXM4-40GB",
            40960,
            "ampere",
            8,
            0,
            mig_capable=True,
            mig_profiles={"1g.5gb": 7, "2g.10gb": 3, "3g.20gb": 2, "4g.20gb": 1, "7g.40gb": 1},
            mig_balanced={"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1},
        ),
        GpuProduct("NVIDIA-A100-SXM4-80GB", 81920, "ampere", 8, 0, mig_capable=True),
        GpuProduct("NVIDIA-H200", 143771, "hopper", 9, 0, mig_capable=True),
        GpuProduct("NVIDIA-L4", 23034, "ada-lovelace", 8, 9),
        GpuProduct("NVIDIA-L40S", 46068, "ada-lovelace", 8, 9),
        GpuProduct("NVIDIA-A10G", 23028, "ampere", 8, 6),
        GpuProduct("Tesla-T4", 15360, "turing", 7, 5),
    )
}

_MIG_PROFILE_MEMORY = re.compile(r"^\d+g\.(\d+)gb$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def gpu_product(name: str) -> GpuProduct:
    """Look a GPU model up by its GFD product label; the `NVIDIA-` prefix may be left out."""
    found = GPU_PRODUCTS.get(name) or GPU_PRODUCTS.get(f"NVIDIA-{name}")
    if found is None:
        known = ", ".join(sorted(GPU_PRODUCTS))
        raise FleetError(f"Unknown GPU product {name!r}; use one of: {known}.")
    return found


def mig_layout(product: GpuProduct, layout: str) -> dict[str, int]:
    """MIG instances per GPU for a mig-parted layout name (`all-disabled` -> no instances)."""
    if layout == "all-disabled":
        return {}
    if not product.mig_capable:
        raise FleetError(
            f"{product.product} has no MIG support, so MIG layout {layout!r} cannot apply; "
            "drop migLayout from the pool or pick a MIG-capable GPU (A100, H100, H200)."
        )
    names = ["all-disabled"]
    if product.mig_profiles:
        names += ["all-balanced", *(f"all-{profile}" for profile in product.mig_profiles)]
    if layout == "all-balanced" and product.mig_balanced:
        return dict(product.mig_balanced)
    profile = layout.removeprefix("all-")
    if layout.startswith("all-") and profile in product.mig_profiles:
        return {profile: product.mig_profiles[profile]}
    raise FleetError(
        f"MIG layout {layout!r} is not known for {product.product}; use one of: {', '.join(names)}."
    )


def mig_profile_memory_mib(profile: str) -> int:
    """Memory of a MIG slice from its name (`3g.20gb` -> 20 GiB), in MiB.

    NVML reports slightly less (e.g. 19968 MiB for 3g.20gb on A100-40GB); the name is close
    enough for scheduling tests.
    """
    match = _MIG_PROFILE_MEMORY.match(profile)
    if match is None:
        raise FleetError(f"MIG profile {profile!r} is not of the form <n>g.<m>gb.")
    return int(match.group(1)) * 1024


class NodePool(BaseModel):
    """A group of identical simulated nodes (one entry of a fleet file's `pools`)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )

    #: Node names are `<name>-<index>`, so this must be a DNS label.
    name: str = Field(min_length=1, max_length=50)
    count: int = Field(ge=0, le=1000)
    #: GFD product label (see GPU_PRODUCTS); None for a CPU-only pool.
    gpu_product: str | None = None
    gpus_per_node: int = Field(default=0, ge=0, le=16)
    sharing: SharingStrategy = "none"
    #: Replicas per GPU under time-slicing or MPS (1 without sharing).
    replicas: int = Field(default=1, ge=1, le=64)
    #: Advertise shared GPUs as nvidia.com/gpu.shared instead of nvidia.com/gpu.
    rename_by_default: bool = False
    mig_strategy: MigStrategy | None = None
    #: mig-parted layout name, e.g. all-1g.10gb, all-balanced, all-disabled.
    mig_layout: str | None = None
    #: Taint GPU nodes with nvidia.com/gpu:NoSchedule, as managed GPU node pools usually are.
    gpu_taint: bool = True
    cpu_cores: int = Field(default=32, ge=1)
    memory_gib: int = Field(default=256, ge=1)
    max_pods: int = Field(default=110, ge=1)
    instance_type: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    kubelet: Kubelet = "kwok"

    @model_validator(mode="after")
    def _consistent(self) -> NodePool:
        try:
            return self._check()
        except FleetError as exc:
            # pydantic reports ValueErrors with the pool's position in the file.
            raise ValueError(str(exc)) from exc

    def _check(self) -> NodePool:
        if not _DNS_LABEL.match(self.name):
            raise ValueError(
                f"name {self.name!r} must be lower-case letters, digits and '-' (a DNS label)"
            )
        if self.gpu_product is None:
            gpu_only = {
                "gpusPerNode": self.gpus_per_node != 0,
                "sharing": self.sharing != "none",
                "replicas": self.replicas != 1,
                "migLayout": self.mig_layout is not None,
                "migStrategy": self.mig_strategy is not None,
            }
            offending = [key for key, is_set in gpu_only.items() if is_set]
            if offending:
                raise ValueError(
                    f"{', '.join(offending)} need a gpuProduct; set one or drop them "
                    "for a CPU-only pool"
                )
            return self
        product = gpu_product(self.gpu_product)
        if self.gpus_per_node < 1:
            raise ValueError("gpusPerNode must be at least 1 when gpuProduct is set")
        if self.sharing == "none" and self.replicas != 1:
            raise ValueError("replicas > 1 needs sharing: time-slicing or mps")
        if self.sharing != "none" and self.replicas < 2:
            raise ValueError(f"sharing: {self.sharing} needs replicas of 2 or more")
        if self.mig_strategy not in (None, "none") and self.mig_layout is None:
            raise ValueError(f"migStrategy: {self.mig_strategy} needs a migLayout")
        if self.mig_layout is not None:
            layout = mig_layout(product, self.mig_layout)
            if self.mig_strategy == "none" and layout:
                raise ValueError("migStrategy: none cannot expose MIG slices; use mixed or single")
            if self.effective_mig_strategy == "single" and len(layout) > 1:
                raise ValueError(
                    f"migStrategy: single needs one profile on every GPU, but "
                    f"{self.mig_layout} mixes {', '.join(layout)}; use migStrategy: mixed"
                )
        return self

    @property
    def product(self) -> GpuProduct | None:
        return gpu_product(self.gpu_product) if self.gpu_product else None

    @property
    def effective_mig_strategy(self) -> MigStrategy:
        """`mixed` when a layout is given without a strategy, `none` without a layout."""
        if self.mig_strategy is not None:
            return self.mig_strategy
        return "mixed" if self.mig_layout is not None else "none"

    def node_names(self) -> list[str]:
        return [f"{self.name}-{index}" for index in range(self.count)]


class Fleet(BaseModel):
    """Every simulated node of a cluster, as pools."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pools: tuple[NodePool, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Fleet:
        seen: set[str] = set()
        for pool in self.pools:
            if pool.name in seen:
                raise ValueError(f"pool name {pool.name!r} is used twice; pool names must differ")
            seen.add(pool.name)
        nodes = [name for pool in self.pools for name in pool.node_names()]
        duplicates = sorted({name for name in nodes if nodes.count(name) > 1})
        if duplicates:
            raise ValueError(
                f"pools produce the same node names ({', '.join(duplicates[:5])}); rename a pool"
            )
        return self


#: Ready-made pools, usable as `profile:` in a fleet file (other keys override them).
PROFILES: dict[str, dict[str, Any]] = {
    "h100-80gb-x8": {
        "gpuProduct": "NVIDIA-H100-80GB-HBM3",
        "gpusPerNode": 8,
        "cpuCores": 192,
        "memoryGib": 2048,
        "instanceType": "p5.48xlarge",
    },
    "a100-40gb-mig": {
        "gpuProduct": "NVIDIA-A100-SXM4-40GB",
        "gpusPerNode": 8,
        "migStrategy": "mixed",
        "migLayout": "all-balanced",
        "cpuCores": 96,
        "memoryGib": 1152,
        "instanceType": "p4d.24xlarge",
    },
    "l4-time-slicing": {
        "gpuProduct": "NVIDIA-L4",
        "gpusPerNode": 1,
        "sharing": "time-slicing",
        "replicas": 4,
        "cpuCores": 8,
        "memoryGib": 32,
        "instanceType": "g6.2xlarge",
    },
    "cpu-only": {"cpuCores": 16, "memoryGib": 64, "instanceType": "m7i.4xlarge"},
}


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {message}")
    return f"Invalid fleet in {source}:\n" + "\n".join(lines)


def parse_fleet(document: Any, source: str = "fleet") -> Fleet:
    """Validate a fleet document (already loaded from YAML); `profile:` entries are expanded."""
    if not isinstance(document, dict) or "pools" not in document:
        raise FleetError(
            f"Invalid fleet in {source}: expected a mapping with a 'pools' list, e.g.\n"
            "pools:\n  - {name: h100, count: 2, profile: h100-80gb-x8}"
        )
    pools = document["pools"]
    if not isinstance(pools, list):
        raise FleetError(f"Invalid fleet in {source}: 'pools' must be a list of pools.")
    if not pools:
        raise FleetError(f"Invalid fleet in {source}: 'pools' is empty; add at least one pool.")
    expanded: list[Any] = []
    for index, pool in enumerate(pools):
        if isinstance(pool, dict) and "profile" in pool:
            profile_name = pool["profile"]
            if profile_name not in PROFILES:
                raise FleetError(
                    f"Invalid fleet in {source}: pools.{index}.profile {profile_name!r} is "
                    f"unknown; use one of: {', '.join(PROFILES)}."
                )
            pool = {**PROFILES[profile_name], **{k: v for k, v in pool.items() if k != "profile"}}
        expanded.append(pool)
    try:
        return Fleet.model_validate({**document, "pools": expanded})
    except ValidationError as exc:
        raise FleetError(_format_validation_error(exc, source)) from exc
    except FleetError as exc:
        raise FleetError(f"Invalid fleet in {source}: {exc}") from exc


def parse_fleet_yaml(text: str, source: str = "fleet") -> Fleet:
    """Parse fleet YAML text; syntax errors name the line."""
    stream = io.StringIO(text)
    stream.name = source  # PyYAML names the stream in its error marks
    try:
        document = yaml.safe_load(stream)
    except yaml.YAMLError as exc:
        raise FleetError(f"{source} is not valid YAML: {exc}") from exc
    return parse_fleet(document, source)


def _gpu_labels_and_resources(
    pool: NodePool, product: GpuProduct
) -> tuple[dict[str, str], dict[str, int]]:
    gpus = pool.gpus_per_node
    replicas = pool.replicas
    shared = pool.sharing != "none"
    labels: dict[str, str] = {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.deploy.device-plugin": "true",
        "nvidia.com/gpu.deploy.gpu-feature-discovery": "true",
        "nvidia.com/gpu.family": product.family,
        "nvidia.com/gpu.compute.major": str(product.compute_major),
        "nvidia.com/gpu.compute.minor": str(product.compute_minor),
        "nvidia.com/cuda.driver.major": str(CUDA_DRIVER_VERSION[0]),
        "nvidia.com/cuda.driver.minor": str(CUDA_DRIVER_VERSION[1]),
        "nvidia.com/cuda.driver.rev": str(CUDA_DRIVER_VERSION[2]),
        "nvidia.com/cuda.runtime.major": str(CUDA_RUNTIME_VERSION[0]),
        "nvidia.com/cuda.runtime.minor": str(CUDA_RUNTIME_VERSION[1]),
        "nvidia.com/mig.capable": str(product.mig_capable).lower(),
        "nvidia.com/mig.strategy": pool.effective_mig_strategy,
        "nvidia.com/gpu.sharing-strategy": pool.sharing,
        "feature.node.kubernetes.io/pci-10de.present": "true",
    }
    if product.mig_capable:
        labels["nvidia.com/mig.config"] = pool.mig_layout or "all-disabled"
        labels["nvidia.com/mig.config.state"] = "success"
    slices = mig_layout(product, pool.mig_layout) if pool.mig_layout else {}
    resource_name = SHARED_GPU_RESOURCE if shared and pool.rename_by_default else GPU_RESOURCE
    shared_suffix = "-SHARED" if shared and not pool.rename_by_default else ""
    resources: dict[str, int] = {}
    if not slices:
        labels["nvidia.com/gpu.product"] = product.product + shared_suffix
        labels["nvidia.com/gpu.memory"] = str(product.memory_mib)
        labels["nvidia.com/gpu.count"] = str(gpus)
        labels["nvidia.com/gpu.replicas"] = str(replicas)
        resources[resource_name] = gpus * replicas
    elif pool.effective_mig_strategy == "single":
        ((profile, per_gpu),) = slices.items()
        labels["nvidia.com/gpu.product"] = f"{product.product}-MIG-{profile}{shared_suffix}"
        labels["nvidia.com/gpu.memory"] = str(mig_profile_memory_mib(profile))
        labels["nvidia.com/gpu.count"] = str(per_gpu * gpus)
        labels["nvidia.com/gpu.replicas"] = str(replicas)
        resources[resource_name] = per_gpu * gpus * replicas
    else:
        # The physical GPUs keep their labels (without sharing); each profile gets its own.
        labels["nvidia.com/gpu.product"] = product.product
        labels["nvidia.com/gpu.memory"] = str(product.memory_mib)
        labels["nvidia.com/gpu.count"] = str(gpus)
        labels["nvidia.com/gpu.replicas"] = "1"
        resources[GPU_RESOURCE] = 0
        for profile, per_gpu in slices.items():
            prefix = f"nvidia.com/mig-{profile}"
            labels[f"{prefix}.product"] = f"{product.product}-MIG-{profile}{shared_suffix}"
            labels[f"{prefix}.count"] = str(per_gpu * gpus)
            labels[f"{prefix}.replicas"] = str(replicas)
            labels[f"{prefix}.memory"] = str(mig_profile_memory_mib(profile))
            resources[prefix] = per_gpu * gpus * replicas
    return labels, resources


def build_node(pool: NodePool, index: int) -> dict[str, Any]:
    """The Node manifest (with status) of node `index` of `pool`."""
    name = f"{pool.name}-{index}"
    product = pool.product
    labels: dict[str, str] = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": pool.instance_type or f"sim-{pool.name}",
        "type": pool.kubelet,
        POOL_LABEL: pool.name,
        KUBELET_LABEL: pool.kubelet,
    }
    resources: dict[str, int] = {}
    taints: list[dict[str, str]] = []
    if product is not None:
        gpu_labels, resources = _gpu_labels_and_resources(pool, product)
        labels.update(gpu_labels)
        if pool.gpu_taint:
            taints.append({"key": GPU_TAINT_KEY, "effect": "NoSchedule"})
    labels.update(pool.labels)
    quantities: dict[str, str] = {
        "cpu": str(pool.cpu_cores),
        "memory": f"{pool.memory_gib}Gi",
        "pods": str(pool.max_pods),
        "ephemeral-storage": "1Ti",
    }
    quantities.update({resource: str(count) for resource, count in sorted(resources.items())})
    metadata: dict[str, Any] = {"name": name, "labels": labels}
    if pool.kubelet == "kwok":
        # kwok manages only nodes carrying this annotation (see launcher).
        metadata["annotations"] = {KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE}
    node: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": metadata,
        "spec": {"taints": taints} if taints else {},
        # A kubelet reports this on registration; the apiserver keeps it on create.
        "status": {"capacity": dict(quantities), "allocatable": dict(quantities)},
    }
    return node


def build_fleet_nodes(fleet: Fleet) -> list[dict[str, Any]]:
    """Node manifests for every node of every pool, in pool order."""
    return [build_node(pool, index) for pool in fleet.pools for index in range(pool.count)]
