"""GPU offers read from Node dicts: one per kind of capacity, merged across nodes."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from slmpack.controller.inventory import (
    GPU_RESOURCE,
    SHARED_GPU_RESOURCE,
    GpuOffer,
    cluster_offers,
    node_offers,
    offer_kinds,
)

from .controller_fixtures import (
    PRODUCT,
    REPLICAS,
    STRATEGY,
    fleet_nodes,
    h100_node,
    mig_single_node,
    mps_node,
    ready,
    renamed_shared_node,
)

FLEET = fleet_nodes()


def _only(offers: list[GpuOffer]) -> GpuOffer:
    assert len(offers) == 1, offers
    return offers[0]


def _selects(offer: GpuOffer, node: dict[str, Any]) -> bool:
    labels = node["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in offer.node_selector)


def test_h100_node_offers_its_eight_whole_gpus() -> None:
    node = FLEET["h100-0"]
    offer = _only(node_offers(node))

    assert offer.product == "NVIDIA-H100-80GB-HBM3"
    assert (offer.sharing, offer.resource) == ("none", GPU_RESOURCE)
    assert (offer.slots_per_gpu, offer.mig_profile) == (1, None)
    assert (offer.nodes, offer.allocatable) == (("h100-0",), 8)
    assert dict(offer.node_selector) == {PRODUCT: "NVIDIA-H100-80GB-HBM3", STRATEGY: "none"}
    assert _selects(offer, node)


def test_mig_mixed_node_offers_one_kind_per_profile() -> None:
    # all-balanced on A100-40GB is 2x 1g.5gb, 1x 2g.10gb and 1x 3g.20gb per GPU, 8 GPUs.
    node = FLEET["a100-mig-0"]
    offers = {o.mig_profile: o for o in node_offers(node)}

    assert set(offers) == {"1g.5gb", "2g.10gb", "3g.20gb"}
    assert {p: o.allocatable for p, o in offers.items()} == {
        "1g.5gb": 16,
        "2g.10gb": 8,
        "3g.20gb": 8,
    }
    for profile, offer in offers.items():
        assert offer.product == "NVIDIA-A100-SXM4-40GB"
        assert offer.sharing == "mig"
        assert offer.resource == f"nvidia.com/mig-{profile}"
        assert offer.slots_per_gpu == 1
        assert _selects(offer, node)
    # MIG-enabled GPUs advertise nvidia.com/gpu: 0, which must not become a whole-GPU offer.
    assert all(o.resource != GPU_RESOURCE for o in offers.values())


def test_time_sliced_l4_offers_four_slots_and_strips_shared_suffix() -> None:
    node = FLEET["l4-ts-0"]
    offer = _only(node_offers(node))

    assert offer.product == "NVIDIA-L4"
    assert (offer.sharing, offer.resource, offer.slots_per_gpu) == ("time-slicing", GPU_RESOURCE, 4)
    # The pods must land on the shared nodes only, so the selector keeps the -SHARED label.
    assert dict(offer.node_selector) == {
        PRODUCT: "NVIDIA-L4-SHARED",
        STRATEGY: "time-slicing",
        REPLICAS: "4",
    }
    assert _selects(offer, node)
    assert offer.allocatable == 4  # one GPU x 4 replicas


def test_cpu_node_offers_nothing() -> None:
    assert node_offers(FLEET["cpu-0"]) == []


def test_mig_single_strategy_is_read_from_the_product_label() -> None:
    node = mig_single_node()
    offer = _only(node_offers(node))

    assert node["metadata"]["labels"][PRODUCT] == "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"
    assert (offer.product, offer.sharing, offer.mig_profile) == (
        "NVIDIA-A100-SXM4-40GB",
        "mig",
        "1g.5gb",
    )
    assert offer.resource == GPU_RESOURCE
    assert offer.allocatable == 7 * 8
    assert dict(offer.node_selector) == {PRODUCT: "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"}


def test_rename_by_default_offers_the_shared_resource() -> None:
    node = renamed_shared_node()
    offer = _only(node_offers(node))

    assert node["metadata"]["labels"][PRODUCT] == "NVIDIA-L4"  # no -SHARED when renamed
    assert (offer.resource, offer.sharing, offer.slots_per_gpu) == (
        SHARED_GPU_RESOURCE,
        "time-slicing",
        4,
    )
    assert _selects(offer, node)


def test_mps_node_offers_mps_slots() -> None:
    offer = _only(node_offers(mps_node()))

    assert (offer.product, offer.sharing, offer.slots_per_gpu) == (
        "NVIDIA-H100-80GB-HBM3",
        "mps",
        4,
    )
    assert offer.allocatable == 2 * 4


def test_node_without_sharing_strategy_label_selects_on_product_only() -> None:
    # GFD before the MPS release sets no sharing-strategy label; selecting on it would match
    # no node at all.
    node = h100_node()
    del node["metadata"]["labels"][STRATEGY]
    offer = _only(node_offers(node))

    assert offer.sharing == "none"
    assert dict(offer.node_selector) == {PRODUCT: "NVIDIA-H100-80GB-HBM3"}


def test_old_gfd_time_slicing_without_strategy_label_is_still_time_slicing() -> None:
    # Old GFD marks time-slicing only by replicas > 1 and the -SHARED product. Offering such a
    # node as whole GPUs would let Packed pods claim a quarter GPU and size for a whole one.
    node = copy.deepcopy(FLEET["l4-ts-0"])
    del node["metadata"]["labels"][STRATEGY]
    offer = _only(node_offers(node))

    assert (offer.sharing, offer.slots_per_gpu) == ("time-slicing", 4)
    assert dict(offer.node_selector) == {PRODUCT: "NVIDIA-L4-SHARED", REPLICAS: "4"}
    assert _selects(offer, node)


@pytest.mark.parametrize(
    "break_node",
    [pytest.param(lambda n: n["spec"].update(unschedulable=True), id="cordoned")],
)
def test_unusable_nodes_offer_nothing(break_node: Any) -> None:
    node = copy.deepcopy(FLEET["h100-0"])
    assert node_offers(node)  # the same node offers GPUs while healthy
    break_node(node)
    assert node_offers(node) == []


@pytest.mark.parametrize("status", ["False", "Unknown"])
def test_a_node_missing_heartbeats_keeps_its_offer(status: str) -> None:
    # Readiness flaps with kubelet heartbeats; the plan must not follow it.
    node = ready(copy.deepcopy(FLEET["h100-0"]), status=status)
    assert node_offers(node) == node_offers(FLEET["h100-0"])


def test_merging_sums_capacity_and_lists_nodes_sorted() -> None:
    nodes = [FLEET["h100-1"], FLEET["h100-0"]]
    (offer,) = cluster_offers(nodes)

    assert offer.nodes == ("h100-0", "h100-1")
    assert offer.allocatable == 8 + 8


def test_default_fleet_offers_five_kinds_in_key_order() -> None:
    offers = cluster_offers(FLEET.values())

    assert [(o.key, o.nodes, o.allocatable) for o in offers] == [
        ("NVIDIA-A100-SXM4-40GB/mig/1g.5gb", ("a100-mig-0",), 16),
        ("NVIDIA-A100-SXM4-40GB/mig/2g.10gb", ("a100-mig-0",), 8),
        ("NVIDIA-A100-SXM4-40GB/mig/3g.20gb", ("a100-mig-0",), 8),
        ("NVIDIA-H100-80GB-HBM3/none", ("h100-0", "h100-1"), 16),
        ("NVIDIA-L4/time-slicingx4", ("l4-ts-0", "l4-ts-1"), 8),
    ]


def test_same_product_under_other_sharing_stays_a_separate_offer() -> None:
    # Same GPU, different vLLM flags: merging would plan whole-GPU memory for MPS slots.
    offers = cluster_offers([FLEET["h100-0"], mps_node()])

    assert sorted(o.sharing for o in offers) == ["mps", "none"]


def test_offer_kinds_ignore_node_count_and_capacity() -> None:
    one = cluster_offers([FLEET["h100-0"]])
    two = cluster_offers([FLEET["h100-0"], FLEET["h100-1"]])
    assert one != two
    assert offer_kinds(one) == offer_kinds(two) == {"NVIDIA-H100-80GB-HBM3/none"}

    with_l4 = cluster_offers([FLEET["h100-0"], FLEET["l4-ts-0"]])
    assert offer_kinds(with_l4) == {"NVIDIA-H100-80GB-HBM3/none", "NVIDIA-L4/time-slicingx4"}


def test_cordoned_node_drops_out_of_the_merge() -> None:
    cordoned = copy.deepcopy(FLEET["h100-1"])
    cordoned["spec"]["unschedulable"] = True
    (offer,) = cluster_offers([FLEET["h100-0"], cordoned])

    assert (offer.nodes, offer.allocatable) == (("h100-0",), 8)


# --- memory the node agent measured (its slmpack.dev/gpu-inventory annotation) -------------


def _annotated(
    node: dict[str, Any], product: str, memory: list[int | None], mig: dict[str, int] | None = None
) -> dict[str, Any]:
    from slmpack.nodeagent.inventory import (
        ANNOTATION_KEY,
        SCHEMA_VERSION,
        GpuInventory,
        MigDeviceInventory,
        NodeGpuInventory,
        annotation_value,
    )
    from slmpack.nodeagent.readings import MigMode

    devices = tuple(
        MigDeviceInventory(n + 1, 0, profile, f"MIG-{n}", size)
        for n, (profile, size) in enumerate((mig or {}).items())
    )
    inventory = NodeGpuInventory(
        SCHEMA_VERSION,
        "550.127.08",
        "12.4",
        tuple(
            GpuInventory(
                i,
                f"GPU-{i}",
                product,
                size,
                MigMode.ENABLED if devices else MigMode.DISABLED,
                devices,
            )
            for i, size in enumerate(memory)
        ),
    )
    node = copy.deepcopy(node)
    node["metadata"].setdefault("annotations", {})[ANNOTATION_KEY] = annotation_value(inventory)
    return node


def test_an_offer_carries_the_smallest_memory_the_agent_measured() -> None:
    mib = 1024**2
    node = _annotated(FLEET["h100-0"], "NVIDIA-H100-80GB-HBM3", [81559 * mib, 80000 * mib, None])

    offer = _only(node_offers(node))

    assert offer.measured_memory_bytes == 80000 * mib
    assert offer.measured_mig_memory_bytes is None
    # Without the annotation (or with one this version cannot read) nothing is measured.
    assert _only(node_offers(FLEET["h100-0"])).measured_memory_bytes is None
    broken = copy.deepcopy(FLEET["h100-0"])
    broken["metadata"].setdefault("annotations", {})["slmpack.dev/gpu-inventory"] = "{"
    assert _only(node_offers(broken)).measured_memory_bytes is None


def test_measured_memory_of_another_product_is_ignored() -> None:
    node = _annotated(FLEET["h100-0"], "NVIDIA-L4", [23034 * 1024**2])

    assert _only(node_offers(node)).measured_memory_bytes is None


def test_merged_offers_keep_the_smallest_measurement_of_their_nodes() -> None:
    mib = 1024**2
    small = _annotated(FLEET["h100-0"], "NVIDIA-H100-80GB-HBM3", [80000 * mib])
    large = _annotated(FLEET["h100-1"], "NVIDIA-H100-80GB-HBM3", [81559 * mib])

    (offer,) = cluster_offers([large, small])
    (half,) = cluster_offers([large, FLEET["h100-0"]])

    assert offer.nodes == ("h100-0", "h100-1")
    assert offer.measured_memory_bytes == 80000 * mib
    assert half.measured_memory_bytes == 81559 * mib  # the unmeasured node adds nothing


def test_mig_offers_carry_the_measured_memory_of_their_profile() -> None:
    mib = 1024**2
    node = _annotated(
        FLEET["a100-mig-0"],
        "NVIDIA-A100-SXM4-40GB",
        [40960 * mib],
        {"1g.5gb": 4800 * mib, "3g.20gb": 19968 * mib},
    )
    offers = {o.mig_profile: o for o in node_offers(node)}

    assert offers["1g.5gb"].measured_mig_memory_bytes == 4800 * mib
    assert offers["3g.20gb"].measured_mig_memory_bytes == 19968 * mib
    assert offers["2g.10gb"].measured_mig_memory_bytes is None
    assert offers["2g.10gb"].measured_memory_bytes == 40960 * mib


def test_a_new_measurement_changes_the_offer_kinds() -> None:
    node = _annotated(FLEET["h100-0"], "NVIDIA-H100-80GB-HBM3", [80000 * 1024**2])

    plain = offer_kinds(cluster_offers([FLEET["h100-0"]]))
    measured = offer_kinds(cluster_offers([node]))

    assert plain == {"NVIDIA-H100-80GB-HBM3/none"}
    assert measured != plain  # the agent's first annotation re-plans what runs there
    assert offer_kinds(cluster_offers([node])) == measured
