"""The simulated GPU node builders and the fleet file parser (pure, no cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slmpack.devcluster import gpu_nodes
from slmpack.devcluster.errors import FleetError
from slmpack.devcluster.gpu_nodes import NodePool, build_fleet_nodes, build_node, parse_fleet

REPO_ROOT = Path(__file__).resolve().parents[2]


def _pool(**fields: Any) -> NodePool:
    return NodePool.model_validate({"name": "pool", "count": 1, **fields})


def _labels(node: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = node["metadata"]["labels"]
    return labels


def _allocatable(node: dict[str, Any]) -> dict[str, str]:
    allocatable: dict[str, str] = node["status"]["allocatable"]
    return allocatable


def test_h100_node_has_gfd_labels_taint_and_eight_gpus() -> None:
    node = build_node(_pool(gpuProduct="NVIDIA-H100-80GB-HBM3", gpusPerNode=8), 0)

    labels = _labels(node)
    assert node["metadata"]["name"] == "pool-0"
    assert node["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}
    assert labels["nvidia.com/gpu.present"] == "true"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.memory"] == "81559"
    assert labels["nvidia.com/gpu.count"] == "8"
    assert labels["nvidia.com/gpu.family"] == "hopper"
    assert (labels["nvidia.com/gpu.compute.major"], labels["nvidia.com/gpu.compute.minor"]) == (
        "9",
        "0",
    )
    assert labels["nvidia.com/mig.capable"] == "true"
    assert labels["nvidia.com/mig.config"] == "all-disabled"
    assert labels["nvidia.com/gpu.sharing-strategy"] == "none"
    assert labels["nvidia.com/gpu.replicas"] == "1"
    assert node["spec"]["taints"] == [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]
    assert _allocatable(node)["nvidia.com/gpu"] == "8"
    assert node["status"]["capacity"] == node["status"]["allocatable"]


def test_time_slicing_multiplies_gpus_and_marks_the_product_shared() -> None:
    node = build_node(
        _pool(gpuProduct="NVIDIA-L4", gpusPerNode=2, sharing="time-slicing", replicas=4), 0
    )

    assert _allocatable(node)["nvidia.com/gpu"] == "8"
    assert _labels(node)["nvidia.com/gpu.product"] == "NVIDIA-L4-SHARED"
    assert _labels(node)["nvidia.com/gpu.replicas"] == "4"
    assert _labels(node)["nvidia.com/gpu.sharing-strategy"] == "time-slicing"
    assert _labels(node)["nvidia.com/gpu.family"] == "ada-lovelace"


def test_renamed_shared_resource_keeps_the_plain_product_name() -> None:
    node = build_node(
        _pool(
            gpuProduct="NVIDIA-L4",
            gpusPerNode=1,
            sharing="mps",
            replicas=3,
            renameByDefault=True,
        ),
        0,
    )

    assert _allocatable(node)["nvidia.com/gpu.shared"] == "3"
    assert "nvidia.com/gpu" not in _allocatable(node)
    assert _labels(node)["nvidia.com/gpu.product"] == "NVIDIA-L4"
    assert _labels(node)["nvidia.com/gpu.sharing-strategy"] == "mps"


def test_mig_mixed_balanced_a100_advertises_each_profile_and_no_whole_gpus() -> None:
    node = build_node(
        _pool(gpuProduct="NVIDIA-A100-SXM4-40GB", gpusPerNode=8, migLayout="all-balanced"), 0
    )

    allocatable = _allocatable(node)
    labels = _labels(node)
    assert allocatable["nvidia.com/mig-1g.5gb"] == "16"
    assert allocatable["nvidia.com/mig-2g.10gb"] == "8"
    assert allocatable["nvidia.com/mig-3g.20gb"] == "8"
    assert allocatable["nvidia.com/gpu"] == "0"
    assert labels["nvidia.com/mig.strategy"] == "mixed"
    assert labels["nvidia.com/mig.config"] == "all-balanced"
    assert labels["nvidia.com/mig.config.state"] == "success"
    assert labels["nvidia.com/mig-1g.5gb.count"] == "16"
    assert labels["nvidia.com/mig-1g.5gb.product"] == "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-40GB"


@pytest.mark.parametrize(
    ("product", "layout", "resource", "count_per_gpu"),
    [
        ("NVIDIA-H100-80GB-HBM3", "all-1g.10gb", "nvidia.com/mig-1g.10gb", 7),
        ("NVIDIA-H100-80GB-HBM3", "all-3g.40gb", "nvidia.com/mig-3g.40gb", 2),
        ("NVIDIA-A100-SXM4-40GB", "all-2g.10gb", "nvidia.com/mig-2g.10gb", 3),
        ("NVIDIA-A100-SXM4-40GB", "all-7g.40gb", "nvidia.com/mig-7g.40gb", 1),
    ],
)
def test_uniform_mig_layouts_use_the_profile_maximum(
    product: str, layout: str, resource: str, count_per_gpu: int
) -> None:
    node = build_node(_pool(gpuProduct=product, gpusPerNode=4, migLayout=layout), 0)

    assert _allocatable(node)[resource] == str(4 * count_per_gpu)


def test_mig_single_strategy_advertises_slices_as_gpus() -> None:
    node = build_node(
        _pool(
            gpuProduct="NVIDIA-A100-SXM4-40GB",
            gpusPerNode=8,
            migStrategy="single",
            migLayout="all-1g.5gb",
        ),
        0,
    )

    assert _allocatable(node)["nvidia.com/gpu"] == "56"
    assert _labels(node)["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"
    assert _labels(node)["nvidia.com/gpu.memory"] == "5120"
    assert not any(key.startswith("nvidia.com/mig-") for key in _allocatable(node))


def test_cpu_only_pool_has_no_gpu_labels_resources_or_taint() -> None:
    node = build_node(_pool(cpuCores=16, memoryGib=64), 0)

    assert not any(key.startswith("nvidia.com/") for key in _labels(node))
    assert not any(key.startswith("nvidia.com/") for key in _allocatable(node))
    assert node["spec"] == {}
    assert _allocatable(node)["cpu"] == "16"
    assert _allocatable(node)["memory"] == "64Gi"


def test_gpu_taint_can_be_turned_off_and_extra_labels_are_added() -> None:
    node = build_node(
        _pool(gpuProduct="Tesla-T4", gpusPerNode=1, gpuTaint=False, labels={"zone": "a"}), 0
    )

    assert node["spec"] == {}
    assert _labels(node)["zone"] == "a"
    assert _labels(node)["nvidia.com/gpu.family"] == "turing"


def test_the_nvidia_prefix_may_be_left_out_of_the_product() -> None:
    assert gpu_nodes.gpu_product("H100-80GB-HBM3").product == "NVIDIA-H100-80GB-HBM3"


def test_builders_are_deterministic() -> None:
    fleet = parse_fleet({"pools": [{"name": "a", "count": 3, "profile": "a100-40gb-mig"}]})

    assert build_fleet_nodes(fleet) == build_fleet_nodes(fleet)
    assert [n["metadata"]["name"] for n in build_fleet_nodes(fleet)] == ["a-0", "a-1", "a-2"]


@given(
    gpus=st.integers(min_value=1, max_value=16),
    replicas=st.integers(min_value=2, max_value=64),
    sharing=st.sampled_from(["time-slicing", "mps"]),
    rename=st.booleans(),
)
def test_shared_gpus_advertise_gpus_times_replicas(
    gpus: int, replicas: int, sharing: str, rename: bool
) -> None:
    pool = _pool(
        gpuProduct="NVIDIA-L4",
        gpusPerNode=gpus,
        sharing=sharing,
        replicas=replicas,
        renameByDefault=rename,
    )
    resource = "nvidia.com/gpu.shared" if rename else "nvidia.com/gpu"

    assert _allocatable(build_node(pool, 0))[resource] == str(gpus * replicas)


def test_default_fleet_file_parses_into_the_documented_pools() -> None:
    path = REPO_ROOT / "hack" / "fleets" / "default.yaml"

    fleet = gpu_nodes.parse_fleet_yaml(path.read_text(), str(path))

    by_name = {pool.name: pool for pool in fleet.pools}
    assert set(by_name) == {"h100", "a100-mig", "l4-ts", "cpu"}
    assert by_name["a100-mig"].mig_layout == "all-balanced"
    assert by_name["l4-ts"].replicas == 4
    assert by_name["cpu"].gpu_product is None
    assert len(build_fleet_nodes(fleet)) == sum(pool.count for pool in fleet.pools)


def test_profile_fields_can_be_overridden() -> None:
    fleet = parse_fleet(
        {"pools": [{"name": "l4", "count": 1, "profile": "l4-time-slicing", "replicas": 8}]}
    )

    assert _allocatable(build_fleet_nodes(fleet)[0])["nvidia.com/gpu"] == "8"


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ([], "expected a mapping with a 'pools' list"),
        ({"pools": "h100"}, "'pools' must be a list"),
        ({"pools": []}, "'pools' is empty"),
        ({"pools": [{"name": "x", "count": 1, "profile": "tpu"}]}, "profile 'tpu' is unknown"),
        (
            {"pools": [{"name": "x", "count": 1, "gpusPerNod": 8}]},
            "pools.0.gpusPerNod: Extra inputs are not permitted",
        ),
        ({"pools": [{"name": "H100", "count": 1}]}, "must be lower-case"),
        ({"pools": [{"name": "x", "count": -1}]}, "pools.0.count"),
        (
            {"pools": [{"name": "x", "count": 1}, {"name": "x", "count": 2}]},
            "pool name 'x' is used twice",
        ),
        (
            {"pools": [{"name": "x", "count": 1, "gpuProduct": "NVIDIA-B300", "gpusPerNode": 8}]},
            "Unknown GPU product 'NVIDIA-B300'; use one of:",
        ),
        (
            {"pools": [{"name": "x", "count": 1, "gpuProduct": "NVIDIA-L4"}]},
            "gpusPerNode must be at least 1",
        ),
        (
            {"pools": [{"name": "x", "count": 1, "gpusPerNode": 2}]},
            "gpusPerNode need a gpuProduct",
        ),
        (
            {
                "pools": [
                    {
                        "name": "x",
                        "count": 1,
                        "gpuProduct": "NVIDIA-L4",
                        "gpusPerNode": 1,
                        "replicas": 4,
                    }
                ]
            },
            "replicas > 1 needs sharing",
        ),
        (
            {
                "pools": [
                    {
                        "name": "x",
                        "count": 1,
                        "gpuProduct": "NVIDIA-L4",
                        "gpusPerNode": 1,
                        "sharing": "time-slicing",
                    }
                ]
            },
            "needs replicas of 2 or more",
        ),
        (
            {
                "pools": [
                    {
                        "name": "x",
                        "count": 1,
                        "gpuProduct": "NVIDIA-L4",
                        "gpusPerNode": 1,
                        "migLayout": "all-1g.5gb",
                    }
                ]
            },
            "NVIDIA-L4 has no MIG support",
        ),
        (
            {
                "pools": [
                    {
                        "name": "x",
                        "count": 1,
                        "gpuProduct": "NVIDIA-A100-SXM4-40GB",
                        "gpusPerNode": 8,
                        "migLayout": "all-1g.10gb",
                    }
                ]
            },
            "MIG layout 'all-1g.10gb' is not known for NVIDIA-A100-SXM4-40GB; use one of: "
            "all-disabled, all-balanced, all-1g.5gb",
        ),
        (
            {
                "pools": [
                    {
                        "name": "x",
                        "count": 1,
                        "gpuProduct": "NVIDIA-A100-SXM4-40GB",
                        "gpusPerNode": 8,
                        "migStrategy": "single",
                        "migLayout": "all-balanced",
                    }
                ]
            },
            "migStrategy: single needs one profile on every GPU",
        ),
    ],
)
def test_bad_fleets_are_rejected_with_a_message_naming_the_problem(
    document: Any, expected: str
) -> None:
    with pytest.raises(FleetError) as error:
        parse_fleet(document, "fleet.yaml")

    assert expected in str(error.value)
    assert "fleet.yaml" in str(error.value)


def test_invalid_yaml_names_the_file_and_line() -> None:
    with pytest.raises(FleetError) as error:
        gpu_nodes.parse_fleet_yaml("pools:\n  - name: [unclosed\n", "broken.yaml")

    assert str(error.value).startswith("broken.yaml is not valid YAML")
    assert '"broken.yaml", line 2' in str(error.value)
