"""What GPUs the cluster offers, read from the labels and allocatable resources that NVIDIA's
GPU Feature Discovery and device plugin put on nodes. Pure: Node dicts in, offers out.

An *offer* is one way of getting GPU capacity: a product under one sharing setup (whole GPUs,
time-slicing or MPS with N replicas, or one MIG profile). The planner sizes replicas per offer,
and the rendered pods select exactly the nodes of the offer they were sized for, because the
same product under a different sharing setup needs different vLLM flags.

Where the slmpack node agent runs, its node annotation `slmpack.dev/gpu-inventory` adds what
NVML measured: an offer carries the smallest GPU (and MIG instance) memory measured on its
nodes, which the planner uses when it is below the catalogue's (`controller.decide`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from slmpack.catalog.gpus import normalize_product
from slmpack.nodeagent.inventory import (
    ANNOTATION_KEY,
    InventoryFormatError,
    NodeGpuInventory,
    inventory_from_json,
)

GPU_RESOURCE = "nvidia.com/gpu"
SHARED_GPU_RESOURCE = "nvidia.com/gpu.shared"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
PRODUCT_LABEL = "nvidia.com/gpu.product"
SHARING_LABEL = "nvidia.com/gpu.sharing-strategy"
REPLICAS_LABEL = "nvidia.com/gpu.replicas"
SHARED_SUFFIX = "-SHARED"

OfferSharing = Literal["none", "time-slicing", "mps", "mig"]

_MIG_SINGLE = re.compile(r"^(?P<gpu>.+)-MIG-(?P<profile>\d+g\.\d+gb(?:\+me)?)$")


@dataclass(frozen=True)
class GpuOffer:
    """GPU capacity of one kind on a set of nodes."""

    product: str  # the physical GPU's product label, without -SHARED or -MIG-<profile>
    sharing: OfferSharing
    resource: str  # extended resource a pod requests
    node_selector: tuple[tuple[str, str], ...]  # labels that pick exactly these nodes
    slots_per_gpu: int  # device-plugin replicas per GPU (1 without time-slicing/MPS)
    mig_profile: str | None
    nodes: tuple[str, ...]
    allocatable: int  # units of `resource` over all nodes
    #: The smallest memory of one GPU the node agent measured on these nodes (NVML's total);
    #: None when no node of the offer carries its annotation.
    measured_memory_bytes: int | None = None
    #: Likewise for one instance of `mig_profile` (MIG offers only).
    measured_mig_memory_bytes: int | None = None

    @property
    def key(self) -> str:
        profile = f"/{self.mig_profile}" if self.mig_profile else ""
        slots = f"x{self.slots_per_gpu}" if self.slots_per_gpu > 1 else ""
        return f"{self.product}/{self.sharing}{profile}{slots}"


def _smallest(*values: int | None) -> int | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def measured_memory(
    inventory: NodeGpuInventory | None, product: str, mig_profile: str | None
) -> tuple[int | None, int | None]:
    """(GPU, MIG instance) memory the agent measured on one node for GPUs of `product`, the
    smallest of each; None where the inventory has no such GPU or instance."""
    if inventory is None:
        return None, None
    wanted = normalize_product(product)
    gpus = [g for g in inventory.gpus if g.product and normalize_product(g.product) == wanted]
    whole = _smallest(*(g.memory_bytes for g in gpus))
    instance = None
    if mig_profile is not None:
        instance = _smallest(
            *(m.memory_bytes for g in gpus for m in g.mig_devices if m.profile == mig_profile)
        )
    return whole, instance


@functools.lru_cache(maxsize=4096)
def _inventory(text: str) -> NodeGpuInventory | None:
    """`parse_inventory_annotation` of one annotation value, memoised: every node event
    recomputes the offers of all nodes, and the annotation changes only with the hardware."""
    try:
        return inventory_from_json(text)
    except InventoryFormatError:
        return None  # GFD's labels still tell what the node offers


def _with_measured(offer: GpuOffer, inventory: NodeGpuInventory | None) -> GpuOffer:
    whole, instance = measured_memory(inventory, offer.product, offer.mig_profile)
    return replace(offer, measured_memory_bytes=whole, measured_mig_memory_bytes=instance)


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(str(value))
    except ValueError:
        return default


def _is_usable(node: Mapping[str, Any]) -> bool:
    """Cordoned nodes offer nothing. A NotReady node still does: readiness flaps with kubelet
    heartbeats, and re-planning every SLMDeployment on each gap would churn the fleet; the
    scheduler already keeps pods off nodes that are down."""
    return not node.get("spec", {}).get("unschedulable")


def _strip_shared(label: str) -> str:
    return label[: -len(SHARED_SUFFIX)] if label.endswith(SHARED_SUFFIX) else label


def node_offers(node: Mapping[str, Any]) -> list[GpuOffer]:
    """The offers of one node (empty for nodes without NVIDIA GPUs or not schedulable), with
    the memory its node agent measured when it annotated the node."""
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    text = annotations.get(ANNOTATION_KEY)
    inventory = _inventory(text) if isinstance(text, str) else None
    return [_with_measured(o, inventory) for o in _label_offers(node)]


def _label_offers(node: Mapping[str, Any]) -> list[GpuOffer]:
    if not _is_usable(node):
        return []
    meta = node.get("metadata", {})
    name = str(meta.get("name", ""))
    labels: Mapping[str, str] = meta.get("labels") or {}
    allocatable: Mapping[str, Any] = node.get("status", {}).get("allocatable") or {}
    product_label = labels.get(PRODUCT_LABEL)
    if not product_label:
        return []
    offers: list[GpuOffer] = []
    strategy = labels.get(SHARING_LABEL)
    sharing: OfferSharing = "none"
    if strategy == "time-slicing":
        sharing = "time-slicing"
    elif strategy == "mps":
        sharing = "mps"
    slots = max(1, _int(labels.get(REPLICAS_LABEL, "1"), 1))
    if strategy is None and slots > 1:
        # GFD before the sharing-strategy label knew only time-slicing; replicas > 1 is it.
        sharing = "time-slicing"
    physical = _strip_shared(product_label)
    single = _MIG_SINGLE.match(physical)
    for resource in (GPU_RESOURCE, SHARED_GPU_RESOURCE):
        count = _int(allocatable.get(resource, 0))
        if count <= 0:
            continue
        selector = [(PRODUCT_LABEL, product_label)]
        if single:
            offers.append(
                GpuOffer(
                    product=single["gpu"],
                    sharing="mig",
                    resource=resource,
                    node_selector=tuple(selector),
                    slots_per_gpu=slots,
                    mig_profile=single["profile"],
                    nodes=(name,),
                    allocatable=count,
                )
            )
            continue
        if strategy is not None:  # older GFD versions do not set it
            selector.append((SHARING_LABEL, strategy))
        if sharing != "none":
            selector.append((REPLICAS_LABEL, str(slots)))
        offers.append(
            GpuOffer(
                product=physical,
                sharing=sharing if slots > 1 else "none",
                resource=resource,
                node_selector=tuple(selector),
                slots_per_gpu=slots,
                mig_profile=None,
                nodes=(name,),
                allocatable=count,
            )
        )
    for resource, value in allocatable.items():
        count = _int(value)
        if not resource.startswith(MIG_RESOURCE_PREFIX) or count <= 0:
            continue
        profile = resource[len(MIG_RESOURCE_PREFIX) :]
        offers.append(
            GpuOffer(
                product=physical,
                sharing="mig",
                resource=resource,
                node_selector=((PRODUCT_LABEL, product_label),),
                slots_per_gpu=max(1, _int(labels.get(f"{resource}.replicas", "1"), 1)),
                mig_profile=profile,
                nodes=(name,),
                allocatable=count,
            )
        )
    return offers


def cluster_offers(nodes: Iterable[Mapping[str, Any]]) -> tuple[GpuOffer, ...]:
    """Offers of all nodes, merged by kind (nodes and capacity summed), in a stable order."""
    merged: dict[tuple[Any, ...], GpuOffer] = {}
    for node in nodes:
        for offer in node_offers(node):
            kind = (
                offer.product,
                offer.sharing,
                offer.resource,
                offer.node_selector,
                offer.slots_per_gpu,
                offer.mig_profile,
            )
            seen = merged.get(kind)
            if seen is None:
                merged[kind] = offer
            else:
                merged[kind] = replace(
                    seen,
                    nodes=tuple(sorted((*seen.nodes, *offer.nodes))),
                    allocatable=seen.allocatable + offer.allocatable,
                    # Pods may land on any node of the offer: plan for the smallest.
                    measured_memory_bytes=_smallest(
                        seen.measured_memory_bytes, offer.measured_memory_bytes
                    ),
                    measured_mig_memory_bytes=_smallest(
                        seen.measured_mig_memory_bytes, offer.measured_mig_memory_bytes
                    ),
                )
    return tuple(sorted(merged.values(), key=lambda o: o.key))


def offer_kinds(offers: Iterable[GpuOffer]) -> frozenset[str]:
    """What a plan depends on: the kinds of offer and the memory measured on them, not node
    names or free capacity.

    A node joining a pool that already exists changes nothing to plan, so it must not
    re-plan every SLMDeployment; a node agent's first measurement (or a smaller one) does.
    """
    return frozenset(_kind(o) for o in offers)


def _kind(offer: GpuOffer) -> str:
    measured = (offer.measured_memory_bytes, offer.measured_mig_memory_bytes)
    if measured == (None, None):
        return offer.key
    return f"{offer.key}@{measured[0]}/{measured[1]}"
