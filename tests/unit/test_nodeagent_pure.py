"""The node agent's pure parts: cgroup parsing, GFD product and MIG profile names, the
inventory annotation, pod lookups and energy attribution arithmetic."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slmpack.catalog.gpus import default_gpu_catalog, normalize_product
from slmpack.nodeagent.attribution import (
    EnergyLedger,
    GpuKey,
    Method,
    ProcessOnGpu,
    Slot,
    energy_delta_joules,
    split_energy,
    window_shares,
)
from slmpack.nodeagent.cgroups import ContainerRef, parse_cgroup_path, parse_proc_cgroup
from slmpack.nodeagent.inventory import (
    ANNOTATION_KEY,
    SCHEMA_VERSION,
    GpuInventory,
    MigDeviceInventory,
    NodeGpuInventory,
    annotation_value,
    format_cuda_version,
    gfd_product_name,
    inventory_from_reading,
    mig_profile_name,
    parse_inventory_annotation,
)
from slmpack.nodeagent.pods import PodIndex, PodResolver, StaticPodSource, Workload
from slmpack.nodeagent.readings import (
    GpuReading,
    MigDeviceReading,
    MigMode,
    NodeReading,
    UtilizationSample,
)

UID = "0f3c9a2e-5b7d-4e1f-8a6c-2d9b7e4f1a3c"
CID = "a" * 60 + "0123"
MIB = 1024**2

# --- cgroups -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "container"),
    [
        # cgroup v2 / systemd driver / containerd, Burstable
        (
            "/kubepods.slice/kubepods-burstable.slice/"
            f"kubepods-burstable-pod{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope",
            CID,
        ),
        # systemd driver, Guaranteed (no QoS slice), CRI-O
        (f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{CID}.scope", CID),
        # systemd driver, dockershim-era Docker
        (
            f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"
            f"{UID.replace('-', '_')}.slice/docker-{CID}.scope",
            CID,
        ),
        # cgroupfs driver, BestEffort and Guaranteed
        (f"/kubepods/besteffort/pod{UID}/{CID}", CID),
        (f"/kubepods/pod{UID}/{CID}", CID),
        # seen from inside a cgroup namespace
        (
            f"/../../kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}"
            f".slice/cri-containerd-{CID}.scope",
            CID,
        ),
        # a sub-cgroup the container made below its own
        (f"/kubepods/burstable/pod{UID}/{CID}/worker", CID),
        # the pod's own cgroup, no container
        (f"/kubepods/burstable/pod{UID}", None),
        # cri-o's monitor process sits beside the container, not in it
        (
            f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-conmon-{CID}.scope",
            None,
        ),
    ],
)
def test_cgroup_paths_give_the_pod_uid_and_container(path: str, container: str | None) -> None:
    assert parse_cgroup_path(path) == ContainerRef(pod_uid=UID, container_id=container)


def test_static_pods_have_a_hex_uid() -> None:
    uid = "6c9f5c4e8f8c8b3c1d2e3f4a5b6c7d8e"
    assert parse_cgroup_path(f"/kubepods/burstable/pod{uid}/{CID}") == ContainerRef(uid, CID)


@pytest.mark.parametrize(
    "path",
    [
        "/system.slice/nvidia-persistenced.service",
        "/user.slice/user-1000.slice/session-3.scope",
        "/",
        "/kubepods.slice",  # the QoS parent itself
        "/docker/" + CID,  # a container outside Kubernetes
    ],
)
def test_processes_outside_pods_have_no_ref(path: str) -> None:
    assert parse_cgroup_path(path) is None


def test_cgroup_v1_file_prefers_a_line_naming_the_container() -> None:
    text = (
        f"12:pids:/kubepods/burstable/pod{UID}\n"
        "11:cpuset:/\n"
        f"10:memory:/kubepods/burstable/pod{UID}/{CID}\n"
        "malformed line\n"
    )
    assert parse_proc_cgroup(text) == ContainerRef(UID, CID)
    assert parse_proc_cgroup(f"3:pids:/kubepods/burstable/pod{UID}\n") == ContainerRef(UID, None)
    assert parse_proc_cgroup("0::/init.scope\n") is None
    assert parse_proc_cgroup("") is None


# --- product and MIG names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nvml_name", "label"),
    [
        ("NVIDIA H100 80GB HBM3", "NVIDIA-H100-80GB-HBM3"),
        ("NVIDIA A100-SXM4-40GB", "NVIDIA-A100-SXM4-40GB"),
        ("NVIDIA A100 80GB PCIe", "NVIDIA-A100-80GB-PCIe"),
        ("NVIDIA L4", "NVIDIA-L4"),
        ("NVIDIA H100 NVL", "NVIDIA-H100-NVL"),
        ("Tesla T4", "Tesla-T4"),
        ("  NVIDIA  GeForce RTX(TM) 4090 ", "NVIDIA-GeForce-RTXTM-4090"),
    ],
)
def test_product_names_match_gpu_feature_discovery(nvml_name: str, label: str) -> None:
    assert gfd_product_name(nvml_name) == label


def test_every_catalogue_gpu_is_found_under_its_gfd_name() -> None:
    catalog = default_gpu_catalog()
    for product in catalog.products():
        assert catalog.get(gfd_product_name(product)).product == product
        assert normalize_product(gfd_product_name(product)) == normalize_product(product)


#: Memory NVML reports for these GPUs (nvmlDeviceGetMemoryInfo total, MiB).
DEVICE_MEMORY_MIB = {
    "NVIDIA-H100-80GB-HBM3": 81559,
    "NVIDIA-H100-NVL": 95830,
    "NVIDIA-H200": 143771,
    "NVIDIA-A100-SXM4-80GB": 81920,
    "NVIDIA-A100-SXM4-40GB": 40960,
}


@pytest.mark.parametrize("product", sorted(DEVICE_MEMORY_MIB))
def test_mig_profile_names_match_the_catalogue(product: str) -> None:
    gpu = default_gpu_catalog().get(product)
    assert gpu.mig_profiles
    for profile in gpu.mig_profiles:
        name = mig_profile_name(
            gpu_slices=profile.compute_slices,
            compute_slices=profile.compute_slices,
            memory_mib=profile.memory_bytes // MIB,
            device_memory_bytes=DEVICE_MEMORY_MIB[product] * MIB,
            suffix="+me" if profile.name.endswith("+me") else "",
        )
        assert name == profile.name


def test_a_compute_instance_smaller_than_its_gpu_instance_is_named_with_c() -> None:
    name = mig_profile_name(
        gpu_slices=3, compute_slices=1, memory_mib=19968, device_memory_bytes=40960 * MIB
    )
    assert name == "1c.3g.20gb"


def test_cuda_versions_print_as_nvidia_smi_does() -> None:
    assert format_cuda_version(12040) == "12.4"
    assert format_cuda_version(11080) == "11.8"
    assert format_cuda_version(13000) == "13.0"


# --- the inventory annotation --------------------------------------------------------------------


def a100_mig_reading() -> NodeReading:
    mig = [
        MigDeviceReading(3, 0, "MIG-b", "2g.10gb", 9856 * MIB, 0),
        MigDeviceReading(2, 0, "MIG-a", "3g.20gb", 19968 * MIB, 0),
    ]
    return NodeReading(
        driver_version="550.90.07",
        cuda_driver_version="12.4",
        gpus=(
            GpuReading(
                index=1,
                uuid="GPU-b",
                name="NVIDIA L4",
                memory_total_bytes=24152899584,
                memory_used_bytes=1,
                mig_mode=MigMode.UNSUPPORTED,
                power_mw=20_000,
            ),
            GpuReading(
                index=0,
                uuid="GPU-a",
                name="NVIDIA A100-SXM4-40GB",
                memory_total_bytes=40960 * MIB,
                mig_mode=MigMode.ENABLED,
                mig_devices=tuple(mig),
            ),
        ),
    )


def test_inventory_round_trips_through_the_annotation() -> None:
    inventory = inventory_from_reading(a100_mig_reading())
    value = annotation_value(inventory)
    assert " " not in value  # compact
    doc = json.loads(value)
    assert doc["schemaVersion"] == SCHEMA_VERSION
    assert [g["product"] for g in doc["gpus"]] == ["NVIDIA-A100-SXM4-40GB", "NVIDIA-L4"]
    assert [m["profile"] for m in doc["gpus"][0]["migDevices"]] == ["3g.20gb", "2g.10gb"]
    assert "migDevices" not in doc["gpus"][1]
    node = {"metadata": {"name": "n1", "annotations": {ANNOTATION_KEY: value}}}
    parsed = parse_inventory_annotation(node)
    assert parsed == inventory
    assert parsed is not None
    assert parsed.products == ("NVIDIA-A100-SXM4-40GB", "NVIDIA-L4")
    assert parsed.gpus[0].mig_devices[0] == MigDeviceInventory(
        2, 0, "3g.20gb", "MIG-a", 19968 * MIB
    )


def test_the_annotation_ignores_usage() -> None:
    # Usage changes every pass; the annotation must not, or the agent would write every pass.
    reading = a100_mig_reading()
    busier = NodeReading(
        driver_version=reading.driver_version,
        cuda_driver_version=reading.cuda_driver_version,
        gpus=tuple(
            GpuReading(
                index=g.index,
                uuid=g.uuid,
                name=g.name,
                memory_total_bytes=g.memory_total_bytes,
                memory_used_bytes=(g.memory_used_bytes or 0) + 5,
                mig_mode=g.mig_mode,
                mig_devices=g.mig_devices,
                power_mw=999_999,
                energy_mj=12345,
            )
            for g in reversed(reading.gpus)
        ),
    )
    assert annotation_value(inventory_from_reading(busier)) == annotation_value(
        inventory_from_reading(reading)
    )


def annotated(value: Any) -> dict[str, Any]:
    return {"metadata": {"annotations": {ANNOTATION_KEY: value}}}


@pytest.mark.parametrize(
    "node",
    [
        {},
        {"metadata": {}},
        {"metadata": {"annotations": None}},
        annotated(None),
        annotated("not json"),
        annotated("[]"),
        annotated('{"gpus": []}'),  # no schemaVersion
        annotated('{"schemaVersion": 2, "gpus": []}'),  # newer than this reader
        annotated('{"schemaVersion": 1, "gpus": [{"index": "0", "uuid": "GPU-a"}]}'),
        annotated('{"schemaVersion": 1, "gpus": [{"index": 0}]}'),  # no uuid
        annotated('{"schemaVersion": 1, "gpus": {"index": 0}}'),
        annotated('{"schemaVersion": true, "gpus": []}'),
    ],
)
def test_unreadable_annotations_parse_to_none(node: dict[str, Any]) -> None:
    assert parse_inventory_annotation(node) is None


def test_unknown_fields_and_mig_modes_are_tolerated() -> None:
    value = json.dumps(
        {
            "schemaVersion": 1,
            "futureField": {"x": 1},
            "gpus": [{"index": 0, "uuid": "GPU-a", "migMode": "partial", "extra": True}],
        }
    )
    parsed = parse_inventory_annotation(annotated(value))
    assert parsed == NodeGpuInventory(
        schema_version=1,
        driver_version=None,
        cuda_version=None,
        gpus=(GpuInventory(0, "GPU-a", None, None, MigMode.UNKNOWN),),
    )


# --- pods ----------------------------------------------------------------------------------------


def pod(uid: str, name: str, containers: dict[str, str], namespace: str = "ns") -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "name": name, "namespace": namespace},
        "spec": {"containers": [{"name": n} for n in containers]},
        "status": {
            "containerStatuses": [
                {"name": n, "containerID": f"containerd://{cid}"} for n, cid in containers.items()
            ]
        },
    }


def test_pod_index_names_the_container() -> None:
    index = PodIndex([pod(UID, "p", {"vllm": CID, "sidecar": "b" * 64}), {"metadata": {}}])
    assert len(index) == 1
    assert index.lookup(ContainerRef(UID, CID)) == Workload("ns", "p", "vllm")
    # The pod without the container: known pod, unknown container
    assert index.lookup(ContainerRef(UID, None)) == Workload("ns", "p", "")
    assert not index.knows(ContainerRef(UID, "c" * 64))
    assert index.lookup(ContainerRef("other", CID)) is None


def test_a_single_container_pod_names_its_container_without_an_id() -> None:
    index = PodIndex([pod(UID, "p", {"vllm": CID})])
    assert index.lookup(ContainerRef(UID, None)) == Workload("ns", "p", "vllm")


class CountingSource:
    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods
        self.calls = 0
        self.fail = False

    def list_pods(self) -> list[dict[str, Any]]:
        self.calls += 1
        if self.fail:
            raise ConnectionError("apiserver down")
        return list(self.pods)


def test_resolver_refreshes_on_a_miss_at_most_once_per_interval() -> None:
    now = [0.0]
    source = CountingSource([])
    resolver = PodResolver(source, lambda: now[0], min_refresh_seconds=30)
    ref = ContainerRef(UID, CID)
    assert resolver.resolve(ref) is None
    assert source.calls == 1
    source.pods = [pod(UID, "p", {"vllm": CID})]
    assert resolver.resolve(ref) is None  # too soon to ask again
    assert source.calls == 1
    now[0] = 31
    assert resolver.resolve(ref) == Workload("ns", "p", "vllm")
    assert source.calls == 2
    now[0] = 100
    assert resolver.resolve(ref) == Workload("ns", "p", "vllm")  # a hit asks nothing
    assert source.calls == 2


def test_resolver_keeps_the_old_index_when_the_api_fails() -> None:
    now = [0.0]
    source = CountingSource([pod(UID, "p", {"vllm": CID})])
    resolver = PodResolver(source, lambda: now[0], min_refresh_seconds=1)
    assert resolver.resolve(ContainerRef(UID, CID)) == Workload("ns", "p", "vllm")
    source.fail = True
    now[0] = 5
    assert resolver.resolve(ContainerRef("new-pod", CID)) is None
    assert resolver.failures == 1
    assert resolver.resolve(ContainerRef(UID, CID)) == Workload("ns", "p", "vllm")
    assert StaticPodSource([pod(UID, "p", {})]).list_pods()[0]["metadata"]["uid"] == UID


# --- attribution ---------------------------------------------------------------------------------

A = Slot(Workload("ns", "a", "vllm"))
B = Slot(Workload("ns", "b", "vllm"))


def samples(*rows: tuple[int, int, int]) -> list[UtilizationSample]:
    """(pid, timestamp, sm percent) rows."""
    return [UtilizationSample(pid, ts, sm, 0) for pid, ts, sm in rows]


def test_sm_samples_split_by_utilisation_and_give_mean_utilisation() -> None:
    procs = [ProcessOnGpu(1, A, 10), ProcessOnGpu(2, B, 30), ProcessOnGpu(3, None, 0)]
    shares = window_shares(
        procs,
        samples((1, 100, 60), (2, 100, 20), (1, 200, 40), (2, 200, 0), (3, 200, 20), (9, 200, 99)),
    )
    assert shares.method is Method.SM_UTILIZATION
    assert shares.shares == pytest.approx({A: 100 / 140, B: 20 / 140, None: 20 / 140})
    # Two sampling periods: A ran 60% then 40%, B 20% then 0%.
    assert shares.sm_utilization == pytest.approx({A: 0.5, B: 0.1})


def test_a_process_missing_from_sampling_periods_was_idle_in_them() -> None:
    # NVML samples only processes that ran: B ran in one of the four periods A ran in.
    procs = [ProcessOnGpu(1, A, 1), ProcessOnGpu(2, B, 1)]
    shares = window_shares(
        procs, samples((1, 10, 50), (1, 20, 50), (2, 25, 40), (1, 30, 50), (1, 40, 50))
    )
    assert shares.shares == pytest.approx({A: 200 / 240, B: 40 / 240})
    assert shares.sm_utilization == pytest.approx({A: 0.5, B: 0.1})


def test_idle_processes_fall_back_to_memory_then_even() -> None:
    procs = [ProcessOnGpu(1, A, 3 * MIB), ProcessOnGpu(2, B, MIB), ProcessOnGpu(3, A, None)]
    idle = window_shares(procs, samples((1, 100, 0), (2, 100, 0)))
    assert idle.method is Method.MEMORY
    assert idle.shares == pytest.approx({A: 0.75, B: 0.25})
    assert idle.sm_utilization == {A: 0.0, B: 0.0}
    no_samples = window_shares(procs, None)
    assert no_samples.method is Method.MEMORY
    assert no_samples.sm_utilization == {}
    no_memory = [ProcessOnGpu(1, A, None), ProcessOnGpu(2, B, 0), ProcessOnGpu(3, A, None)]
    even = window_shares(no_memory, [])
    assert even.method is Method.EVEN
    assert even.shares == pytest.approx({A: 2 / 3, B: 1 / 3})


def test_a_window_without_processes_is_all_unattributed() -> None:
    shares = window_shares([], samples((1, 100, 50)))
    assert shares.method is None
    assert split_energy(42.0, shares) == ({}, 42.0)


def test_energy_deltas_skip_missing_readings_and_counter_resets() -> None:
    assert energy_delta_joules(1_000, 6_000) == 5.0
    assert energy_delta_joules(None, 6_000) is None
    assert energy_delta_joules(1_000, None) is None
    assert energy_delta_joules(6_000, 1_000) is None


@given(
    st.lists(
        st.tuples(
            st.sampled_from([A, B, None]),
            st.one_of(st.none(), st.integers(0, 80 * 1024**3)),
            st.lists(st.integers(0, 100), max_size=4),
        ),
        max_size=8,
    ),
    st.floats(0, 1e6),
    st.booleans(),
)
def test_attributed_plus_unattributed_is_the_gpu_energy(
    rows: list[tuple[Slot | None, int | None, list[int]]], joules: float, with_samples: bool
) -> None:
    procs = [ProcessOnGpu(pid, slot, mem) for pid, (slot, mem, _) in enumerate(rows)]
    util = [
        UtilizationSample(pid, ts, sm, 0)
        for pid, (_, _, sms) in enumerate(rows)
        for ts, sm in enumerate(sms)
    ]
    shares = window_shares(procs, util if with_samples else None)
    per_slot, unattributed = split_energy(joules, shares)
    assert all(v >= 0 for v in per_slot.values())
    assert unattributed >= 0
    assert sum(per_slot.values()) + unattributed == pytest.approx(joules, rel=1e-9, abs=1e-6)
    assert all(0 <= r <= 1 for r in shares.sm_utilization.values())
    if procs:
        assert sum(shares.shares.values()) == pytest.approx(1.0)


def test_ledger_counters_only_grow_and_stale_series_are_dropped() -> None:
    gpu = GpuKey("0", "GPU-a")
    ledger = EnergyLedger(retention_seconds=100)
    sm = window_shares(
        [ProcessOnGpu(1, A, 1), ProcessOnGpu(2, B, 1)], samples((1, 1, 30), (2, 1, 10))
    )
    ledger.add(gpu, 40.0, sm, now=0)
    ledger.add(gpu, 40.0, sm, now=10)
    memory = window_shares([ProcessOnGpu(1, A, 1)], None)
    ledger.add(gpu, 8.0, memory, now=20)
    ledger.add(gpu, 5.0, window_shares([], None), now=30)
    assert ledger.replicas() == [
        (gpu, A, Method.MEMORY, 8.0),
        (gpu, A, Method.SM_UTILIZATION, 60.0),
        (gpu, B, Method.SM_UTILIZATION, 20.0),
    ]
    assert ledger.unattributed() == [(gpu, 5.0)]
    ledger.prune(now=115)  # the sm_utilization series last grew at 10, memory at 20
    assert [(s, m) for _, s, m, _ in ledger.replicas()] == [(A, Method.MEMORY)]
    assert ledger.unattributed() == [(gpu, 5.0)]
