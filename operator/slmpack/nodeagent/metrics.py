"""The node agent's Prometheus metrics, built from one `Snapshot` (pure), and the collector
that serves the latest snapshot.

Names are ``slmpack_gpu_*`` (per physical GPU or MIG device), ``slmpack_replica_*`` (per
container on a GPU) and ``slmpack_node_agent_*`` (the agent itself), in base units. GPU labels
follow dcgm-exporter (``gpu`` index, ``UUID``, ``GPU_I_ID``, ``GPU_I_PROFILE``) so the two
join. A value NVML did not give is left out, never reported as 0; the error counter says why.
Counters are declared without ``_total``, which the exposition appends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from slmpack import metricnames as mn
from slmpack.nodeagent.attribution import GpuKey, Method, Slot
from slmpack.nodeagent.inventory import gfd_product_name
from slmpack.nodeagent.readings import GpuReading, NodeReading

GPU_LABELS = mn.NODE_AGENT_GPU_LABELS
MIG_LABELS = (*GPU_LABELS, "GPU_I_ID", "GPU_I_PROFILE")
REPLICA_LABELS = mn.NODE_AGENT_REPLICA_LABELS

_MW_PER_W = 1000.0
_MJ_PER_J = 1000.0
_PERCENT = 100.0


@dataclass(frozen=True)
class ReplicaSample:
    """What one container holds on one GPU (or MIG device) now."""

    gpu: GpuKey
    slot: Slot
    memory_bytes: int | None
    sm_utilization_ratio: float | None  # over the last window; None without NVML samples


@dataclass(frozen=True)
class Snapshot:
    """Everything the metrics show, as of the last pass."""

    reading: NodeReading | None  # None until NVML answered once
    replicas: tuple[ReplicaSample, ...] = ()
    replica_energy: tuple[tuple[GpuKey, Slot, Method, float], ...] = ()
    unattributed_energy: tuple[tuple[GpuKey, float], ...] = ()
    nvml_errors: Mapping[tuple[str, str], int] = field(default_factory=dict)
    api_errors: Mapping[str, int] = field(default_factory=dict)
    annotation_writes: int = 0
    nvml_up: bool = False
    last_pass_timestamp_seconds: float | None = None


def _gpu_labels(gpu: GpuReading) -> list[str]:
    return [str(gpu.index), gpu.uuid]


def _gauge(name: str, doc: str, labels: tuple[str, ...]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _counter(name: str, doc: str, labels: tuple[str, ...]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


def gpu_families(reading: NodeReading) -> list[Metric]:
    """``slmpack_gpu_*`` from one reading."""
    info = _gauge(
        "slmpack_gpu_info",
        "1 per GPU; the labels carry its product (GPU Feature Discovery spelling), driver, "
        "CUDA version and MIG mode.",
        (*GPU_LABELS, "product", "driver_version", "cuda_version", "mig_mode"),
    )
    mem_total = _gauge("slmpack_gpu_memory_total_bytes", "GPU memory size.", GPU_LABELS)
    mem_used = _gauge("slmpack_gpu_memory_used_bytes", "GPU memory in use.", GPU_LABELS)
    power = _gauge("slmpack_gpu_power_watts", "Power draw (nvmlDeviceGetPowerUsage).", GPU_LABELS)
    limit = _gauge(
        "slmpack_gpu_power_limit_watts",
        "Power limit in force (nvmlDeviceGetEnforcedPowerLimit).",
        GPU_LABELS,
    )
    energy = _counter(
        mn.NODE_AGENT_GPU_ENERGY.name, mn.NODE_AGENT_GPU_ENERGY.documentation, GPU_LABELS
    )
    sm = _gauge(
        "slmpack_gpu_sm_utilization_ratio",
        "Share of NVML's last sampling period in which a kernel ran (utilization.gpu); "
        "1 means 100 percent. Absent on MIG-enabled GPUs.",
        GPU_LABELS,
    )
    mem_util = _gauge(
        "slmpack_gpu_memory_utilization_ratio",
        "Share of NVML's last sampling period in which memory was read or written "
        "(utilization.memory); 1 means 100 percent.",
        GPU_LABELS,
    )
    procs = _gauge("slmpack_gpu_compute_processes", "Compute processes on the GPU.", GPU_LABELS)
    mig_info = _gauge(
        "slmpack_gpu_mig_device_info",
        "1 per MIG device; GPU_I_PROFILE is the profile as the device plugin names it.",
        (*MIG_LABELS, "compute_instance", "mig_uuid"),
    )
    mig_total = _gauge("slmpack_gpu_mig_memory_total_bytes", "MIG device memory size.", MIG_LABELS)
    mig_used = _gauge("slmpack_gpu_mig_memory_used_bytes", "MIG device memory in use.", MIG_LABELS)

    for gpu in sorted(reading.gpus, key=lambda g: g.index):
        labels = _gpu_labels(gpu)
        info.add_metric(
            [
                *labels,
                gfd_product_name(gpu.name) if gpu.name else "",
                reading.driver_version or "",
                reading.cuda_driver_version or "",
                gpu.mig_mode.value,
            ],
            1,
        )
        procs.add_metric(labels, len(gpu.processes))
        if gpu.memory_total_bytes is not None:
            mem_total.add_metric(labels, gpu.memory_total_bytes)
        if gpu.memory_used_bytes is not None:
            mem_used.add_metric(labels, gpu.memory_used_bytes)
        if gpu.power_mw is not None:
            power.add_metric(labels, gpu.power_mw / _MW_PER_W)
        if gpu.power_limit_mw is not None:
            limit.add_metric(labels, gpu.power_limit_mw / _MW_PER_W)
        if gpu.energy_mj is not None:
            energy.add_metric(labels, gpu.energy_mj / _MJ_PER_J)
        if gpu.sm_utilization_percent is not None:
            sm.add_metric(labels, gpu.sm_utilization_percent / _PERCENT)
        if gpu.memory_utilization_percent is not None:
            mem_util.add_metric(labels, gpu.memory_utilization_percent / _PERCENT)
        for mig in gpu.mig_devices:
            mig_labels = [*labels, str(mig.gpu_instance_id), mig.profile or ""]
            mig_info.add_metric([*mig_labels, str(mig.compute_instance_id), mig.uuid], 1)
            if mig.memory_total_bytes is not None:
                mig_total.add_metric(mig_labels, mig.memory_total_bytes)
            if mig.memory_used_bytes is not None:
                mig_used.add_metric(mig_labels, mig.memory_used_bytes)
    return [
        info,
        mem_total,
        mem_used,
        power,
        limit,
        energy,
        sm,
        mem_util,
        procs,
        mig_info,
        mig_total,
        mig_used,
    ]


def _replica_labels(gpu: GpuKey, slot: Slot) -> list[str]:
    w = slot.workload
    return [w.namespace, w.pod, w.container, gpu.index, gpu.uuid, slot.gpu_instance]


def replica_families(snapshot: Snapshot) -> list[Metric]:
    """``slmpack_replica_*`` and the unattributed energy."""
    memory = _gauge(
        "slmpack_replica_gpu_memory_bytes",
        "GPU memory held by the container's processes (nvmlDeviceGetComputeRunningProcesses).",
        REPLICA_LABELS,
    )
    sm = _gauge(
        "slmpack_replica_sm_utilization_ratio",
        "The container's mean SM utilisation over the last window, from NVML's per-process "
        "samples; 1 means 100 percent. Absent where NVML has no per-process samples (MIG).",
        REPLICA_LABELS,
    )
    energy = _counter(
        mn.NODE_AGENT_REPLICA_ENERGY.name,
        mn.NODE_AGENT_REPLICA_ENERGY.documentation,
        mn.NODE_AGENT_REPLICA_ENERGY.labels,
    )
    unattributed = _counter(
        "slmpack_gpu_unattributed_energy_joules",
        "GPU energy of windows without processes and of processes outside any known pod.",
        GPU_LABELS,
    )
    for sample in snapshot.replicas:
        labels = _replica_labels(sample.gpu, sample.slot)
        if sample.memory_bytes is not None:
            memory.add_metric(labels, sample.memory_bytes)
        if sample.sm_utilization_ratio is not None:
            sm.add_metric(labels, sample.sm_utilization_ratio)
    for gpu, slot, method, joules in snapshot.replica_energy:
        energy.add_metric([*_replica_labels(gpu, slot), method.value], joules)
    for gpu, joules in snapshot.unattributed_energy:
        unattributed.add_metric([gpu.index, gpu.uuid], joules)
    return [memory, sm, energy, unattributed]


def agent_families(snapshot: Snapshot) -> list[Metric]:
    """``slmpack_node_agent_*``: NVML and API errors, NVML state, last pass."""
    nvml_errors = _counter(
        "slmpack_node_agent_nvml_errors",
        "NVML calls that failed, by function and error (NotSupported, GpuIsLost, "
        "DriverNotLoaded, ...); the metric that call feeds is absent meanwhile.",
        ("call", "error"),
    )
    for (call, error), count in sorted(snapshot.nvml_errors.items()):
        nvml_errors.add_metric([call, error], count)
    api_errors = _counter(
        "slmpack_node_agent_api_errors",
        "Kubernetes API requests that failed (list_pods, apply_annotation).",
        ("call",),
    )
    for call, count in sorted(snapshot.api_errors.items()):
        api_errors.add_metric([call], count)
    writes = _counter(
        "slmpack_node_agent_annotation_writes",
        "Writes of the node's GPU inventory annotation (only when it changed).",
        (),
    )
    writes.add_metric([], snapshot.annotation_writes)
    up = _gauge("slmpack_node_agent_nvml_up", "1 while NVML answers, 0 while it cannot.", ())
    up.add_metric([], 1 if snapshot.nvml_up else 0)
    families: list[Metric] = [nvml_errors, api_errors, writes, up]
    if snapshot.last_pass_timestamp_seconds is not None:
        last = _gauge(
            "slmpack_node_agent_last_pass_timestamp_seconds",
            "Unix time of the last sampling pass that read NVML.",
            (),
        )
        last.add_metric([], snapshot.last_pass_timestamp_seconds)
        families.append(last)
    return families


def build_families(snapshot: Snapshot) -> list[Metric]:
    """Every family of one snapshot."""
    families = agent_families(snapshot)
    if snapshot.reading is not None:
        families = gpu_families(snapshot.reading) + replica_families(snapshot) + families
    return families


class SnapshotCollector(Collector):
    """Serves the latest snapshot; the sampling loop replaces it after each pass."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot = Snapshot(reading=None)

    def update(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snapshot = self._snapshot
        yield from build_families(snapshot)
