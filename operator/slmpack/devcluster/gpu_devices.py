"""Simulated GPU devices of a node and which of them a pod gets (pure).

The NVIDIA device plugin advertises a node's GPUs as extended resources and, when the kubelet
admits a pod, picks the concrete devices behind the pod's request. The runner does the same
for its simulated nodes, from the labels and allocatable that `gpu_nodes` put on them:

- whole GPUs (`nvidia.com/gpu`, no sharing): one pod per GPU, lowest free index first;
- time-slicing or MPS with R replicas (`nvidia.com/gpu` or `nvidia.com/gpu.shared`): R
  shares per GPU. The plugin's preferred allocation for replicated devices spreads requests
  over the GPUs with the fewest shares handed out, so the runner does the same (ties: lowest
  index);
- MIG (`nvidia.com/mig-<profile>` in mixed strategy, `nvidia.com/gpu` in single strategy):
  one pod per instance; instances are numbered per GPU and profile, in GPU order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from slmpack.devcluster.errors import DevClusterError
from slmpack.devcluster.gpu_nodes import GPU_PRODUCTS, GPU_RESOURCE, SHARED_GPU_RESOURCE
from slmpack.planner.types import SharingMode

_SHARED_SUFFIX = "-SHARED"
_MIG_INFIX = "-MIG-"
_MIG_RESOURCE_PREFIX = "nvidia.com/mig-"


class DeviceError(DevClusterError):
    """The node cannot give the pod the devices it asks for."""


@dataclass(frozen=True, order=True)
class DeviceSlot:
    """One unit of an extended resource: a whole GPU, one share of a GPU, or a MIG instance."""

    resource: str
    gpu: int
    #: MIG profile (`1g.10gb`) and the instance's index among that profile's on this GPU.
    mig_profile: str | None = None
    mig_instance: int | None = None
    #: Which of the GPU's time-slicing or MPS replicas.
    replica: int = 0


@dataclass(frozen=True)
class NodeGpus:
    """A simulated node's GPUs, read back from its labels and allocatable."""

    #: The physical GPU's GFD product without `-SHARED` or `-MIG-...` (a catalogue name).
    product: str
    gpu_count: int
    sharing: str
    replicas: int
    slots: tuple[DeviceSlot, ...]

    @property
    def resources(self) -> frozenset[str]:
        return frozenset(slot.resource for slot in self.slots)


def _int_label(labels: Mapping[str, str], key: str, default: int) -> int:
    try:
        return int(labels.get(key, default))
    except ValueError:
        return default


def _quantity(value: str | int) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


def _mig_per_gpu_single(product: str, profile: str, labels: Mapping[str, str]) -> int:
    config = labels.get("nvidia.com/mig.config", "")
    known = GPU_PRODUCTS.get(product)
    if known is not None and config == f"all-{profile}" and profile in known.mig_profiles:
        return known.mig_profiles[profile]
    return 1


def node_gpus(labels: Mapping[str, str], allocatable: Mapping[str, str | int]) -> NodeGpus | None:
    """The node's GPUs, or None for a node without `nvidia.com/gpu.present`."""
    if labels.get("nvidia.com/gpu.present") != "true":
        return None
    label_product = labels.get("nvidia.com/gpu.product", "")
    product = label_product.removesuffix(_SHARED_SUFFIX)
    single_profile: str | None = None
    if _MIG_INFIX in product:
        product, single_profile = product.split(_MIG_INFIX, 1)
    sharing = labels.get("nvidia.com/gpu.sharing-strategy", "none")
    replicas = max(1, _int_label(labels, "nvidia.com/gpu.replicas", 1))
    counted = max(0, _int_label(labels, "nvidia.com/gpu.count", 0))
    slots: list[DeviceSlot] = []
    if single_profile is not None:
        per_gpu = _mig_per_gpu_single(product, single_profile, labels)
        gpus = max(1, counted // per_gpu)
        resource = (
            SHARED_GPU_RESOURCE
            if _quantity(allocatable.get(SHARED_GPU_RESOURCE, 0))
            else GPU_RESOURCE
        )
        slots = [
            DeviceSlot(resource, gpu, single_profile, instance, replica)
            for gpu in range(gpus)
            for instance in range(per_gpu)
            for replica in range(replicas)
        ]
        return NodeGpus(product, gpus, sharing, replicas, tuple(slots))
    gpus = counted
    for resource, quantity in sorted(allocatable.items()):
        if not resource.startswith(_MIG_RESOURCE_PREFIX):
            continue
        profile = resource.removeprefix(_MIG_RESOURCE_PREFIX)
        mig_replicas = max(1, _int_label(labels, f"{resource}.replicas", 1))
        per_gpu = _quantity(quantity) // mig_replicas // max(1, gpus)
        slots += [
            DeviceSlot(resource, gpu, profile, instance, replica)
            for gpu in range(gpus)
            for instance in range(per_gpu)
            for replica in range(mig_replicas)
        ]
    for resource in (GPU_RESOURCE, SHARED_GPU_RESOURCE):
        advertised = _quantity(allocatable.get(resource, 0))
        if advertised <= 0:
            continue
        per_gpu = replicas if sharing != "none" else 1
        slots += [
            DeviceSlot(resource, gpu, replica=replica)
            for gpu in range(min(gpus, advertised // per_gpu))
            for replica in range(per_gpu)
        ]
    return NodeGpus(product, gpus, sharing, replicas, tuple(slots))


def gpu_requests(limits: Mapping[str, str | int]) -> dict[str, int]:
    """The `nvidia.com/*` part of a container's limits (extended resources are limits)."""
    out: dict[str, int] = {}
    for resource, quantity in limits.items():
        if resource.startswith("nvidia.com/") and _quantity(quantity) > 0:
            out[resource] = _quantity(quantity)
    return out


def assign_devices(
    gpus: NodeGpus | None, requests: Mapping[str, int], taken: Collection[DeviceSlot]
) -> tuple[DeviceSlot, ...]:
    """The slots a pod gets for `requests`, given the slots other pods hold."""
    if not requests:
        return ()
    if gpus is None:
        raise DeviceError(
            f"The pod asks for {dict(requests)} but the node has no simulated GPUs "
            "(no nvidia.com/gpu.present label)"
        )
    taken_set = set(taken)
    load = Counter(slot.gpu for slot in taken_set)
    chosen: list[DeviceSlot] = []
    for resource, count in sorted(requests.items()):
        free = [s for s in gpus.slots if s.resource == resource and s not in taken_set]
        if len(free) < count:
            raise DeviceError(
                f"The pod asks for {count} {resource} but only {len(free)} of "
                f"{sum(1 for s in gpus.slots if s.resource == resource)} are free on the node"
            )
        for _ in range(count):
            if gpus.sharing != "none" and free[0].mig_profile is None:
                pick = min(free, key=lambda s: (load[s.gpu], s.gpu, s.replica))
            else:
                pick = free[0]
            free.remove(pick)
            load[pick.gpu] += 1
            chosen.append(pick)
    return tuple(chosen)


def sharing_mode(gpus: NodeGpus, slots: Collection[DeviceSlot], packed: bool) -> SharingMode:
    """How the engines of a pod share their simulated GPU (the sim's `--sim-mode`)."""
    if any(slot.mig_profile is not None for slot in slots):
        return SharingMode.MIG
    if packed:
        return SharingMode.PACKED
    if gpus.sharing == "mps":
        return SharingMode.MPS
    if gpus.sharing == "time-slicing":
        return SharingMode.TIME_SLICING
    return SharingMode.EXCLUSIVE


def visible_devices(slots: Collection[DeviceSlot]) -> str:
    """NVIDIA_VISIBLE_DEVICES as the plugin would set it (GPU indices, MIG as `gpu:instance`)."""
    names: list[str] = []
    for slot in sorted(slots):
        name = str(slot.gpu) if slot.mig_profile is None else f"{slot.gpu}:{slot.mig_instance}"
        if name not in names:
            names.append(name)
    return ",".join(names)
