"""Which simulated GPU devices a pod gets on a runner node, as the device plugin hands them out."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slmpack.devcluster.gpu_devices import (
    DeviceError,
    DeviceSlot,
    NodeGpus,
    assign_devices,
    gpu_requests,
    node_gpus,
    sharing_mode,
    visible_devices,
)
from slmpack.devcluster.gpu_nodes import parse_fleet_yaml
from slmpack.planner.types import SharingMode

from .controller_fixtures import (
    REPO_ROOT,
    fleet_nodes,
    mig_single_node,
    pool_node,
    renamed_shared_node,
)

FLEET = fleet_nodes()


def _gpus(node: dict[str, Any]) -> NodeGpus:
    gpus = node_gpus(node["metadata"]["labels"], node["status"]["allocatable"])
    assert gpus is not None
    return gpus


def test_whole_gpus_give_one_slot_per_gpu_lowest_first() -> None:
    gpus = _gpus(FLEET["h100-0"])

    assert (gpus.product, gpus.gpu_count, len(gpus.slots)) == ("NVIDIA-H100-80GB-HBM3", 8, 8)
    first = assign_devices(gpus, {"nvidia.com/gpu": 1}, ())
    second = assign_devices(gpus, {"nvidia.com/gpu": 2}, first)
    assert [s.gpu for s in first] == [0]
    assert [s.gpu for s in second] == [1, 2]
    assert sharing_mode(gpus, first, packed=False) is SharingMode.EXCLUSIVE
    assert sharing_mode(gpus, first, packed=True) is SharingMode.PACKED


def test_time_slicing_spreads_shares_over_the_least_used_gpus() -> None:
    node = pool_node(
        "l4x2", gpuProduct="NVIDIA-L4", gpusPerNode=2, sharing="time-slicing", replicas=4
    )
    gpus = _gpus(node)

    assert (gpus.product, len(gpus.slots)) == ("NVIDIA-L4", 8)
    taken: list[DeviceSlot] = []
    for _ in range(4):
        taken += assign_devices(gpus, {"nvidia.com/gpu": 1}, taken)
    assert sorted(s.gpu for s in taken) == [0, 0, 1, 1]
    assert sharing_mode(gpus, taken[:1], packed=False) is SharingMode.TIME_SLICING


def test_mps_and_the_renamed_shared_resource() -> None:
    gpus = _gpus(renamed_shared_node())
    slots = assign_devices(gpus, {"nvidia.com/gpu.shared": 1}, ())

    assert gpus.product == "NVIDIA-L4"
    assert slots[0].resource == "nvidia.com/gpu.shared"
    mps = _gpus(
        pool_node("m", gpuProduct="NVIDIA-H100-80GB-HBM3", gpusPerNode=2, sharing="mps", replicas=4)
    )
    assert sharing_mode(mps, assign_devices(mps, {"nvidia.com/gpu": 1}, ()), False) is (
        SharingMode.MPS
    )


def test_mig_mixed_numbers_instances_per_gpu_and_profile() -> None:
    gpus = _gpus(FLEET["a100-mig-0"])  # per GPU: 2x 1g.5gb, 1x 2g.10gb, 1x 3g.20gb

    small = [s for s in gpus.slots if s.resource == "nvidia.com/mig-1g.5gb"]
    assert len(small) == 16
    taken: list[DeviceSlot] = []
    for _ in range(3):
        taken += assign_devices(gpus, {"nvidia.com/mig-1g.5gb": 1}, taken)
    assert [(s.gpu, s.mig_profile, s.mig_instance) for s in taken] == [
        (0, "1g.5gb", 0),
        (0, "1g.5gb", 1),
        (1, "1g.5gb", 0),
    ]
    assert sharing_mode(gpus, taken, packed=False) is SharingMode.MIG
    assert visible_devices(taken) == "0:0,0:1,1:0"
    assert not [s for s in gpus.slots if s.resource == "nvidia.com/gpu"]


def test_mig_single_advertises_instances_as_gpus() -> None:
    gpus = _gpus(mig_single_node())  # 8x A100-40GB, 7x 1g.5gb each

    assert (gpus.product, gpus.gpu_count, len(gpus.slots)) == ("NVIDIA-A100-SXM4-40GB", 8, 56)
    slot = assign_devices(gpus, {"nvidia.com/gpu": 1}, ())[0]
    assert (slot.gpu, slot.mig_profile, slot.mig_instance) == (0, "1g.5gb", 0)


def test_a_full_node_or_a_gpu_less_node_refuses_with_the_count() -> None:
    gpus = _gpus(FLEET["h100-0"])
    everything = assign_devices(gpus, {"nvidia.com/gpu": 8}, ())

    with pytest.raises(DeviceError, match="only 0 of 8 are free"):
        assign_devices(gpus, {"nvidia.com/gpu": 1}, everything)
    with pytest.raises(DeviceError, match="no simulated GPUs"):
        assign_devices(None, {"nvidia.com/gpu": 1}, ())
    assert node_gpus(FLEET["cpu-0"]["metadata"]["labels"], {}) is None
    assert assign_devices(None, {}, ()) == ()


def test_only_positive_nvidia_limits_are_requests() -> None:
    limits = {"nvidia.com/gpu": "1", "cpu": "4", "nvidia.com/mig-1g.5gb": "0"}

    assert gpu_requests(limits) == {"nvidia.com/gpu": 1}


@given(st.lists(st.integers(min_value=1, max_value=3), max_size=12))
def test_no_slot_is_ever_handed_out_twice(requests: list[int]) -> None:
    gpus = _gpus(pool_node("l4s", gpuProduct="NVIDIA-L4", gpusPerNode=3, sharing="mps", replicas=3))
    taken: list[DeviceSlot] = []
    for count in requests:
        try:
            taken += assign_devices(gpus, {"nvidia.com/gpu": count}, taken)
        except DeviceError:
            assert len(gpus.slots) - len(taken) < count
    assert len(set(taken)) == len(taken)
    loads = [sum(1 for s in taken if s.gpu == g) for g in range(3)]
    assert max(loads) - min(loads) <= 1  # spread evenly, as the plugin prefers


def test_a_runner_pool_is_left_to_the_runner_and_kwok_pools_stay_as_they_were() -> None:
    runner_node = pool_node(
        "run", gpuProduct="NVIDIA-H100-80GB-HBM3", gpusPerNode=8, kubelet="runner"
    )
    kwok_node = FLEET["h100-0"]

    assert "annotations" not in runner_node["metadata"]
    assert runner_node["metadata"]["labels"]["slmpack.io/kubelet"] == "runner"
    assert kwok_node["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}
    assert kwok_node["metadata"]["labels"]["slmpack.io/kubelet"] == "kwok"


def test_the_runner_fleet_file_parses() -> None:
    path = REPO_ROOT / "hack" / "fleets" / "runner.yaml"
    fleet = parse_fleet_yaml(path.read_text(encoding="utf-8"), str(path))

    assert {pool.kubelet for pool in fleet.pools} == {"runner"}
