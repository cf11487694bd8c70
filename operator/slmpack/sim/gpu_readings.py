"""What dcgm-exporter would read off a simulated GPU, from its engines' published activity.

Pure: records and a time in, readings and exposition text out.

- DRAM activity: the engines' bytes per second over the GPU's peak bandwidth.
- Busy ratio (GR engine active, SM active, GPU utilisation): the chance that at least one
  engine has kernels running, 1 - prod(1 - busy_i), as the planner's `predict` combines engines.
  MIG instances add up in proportion to their compute slices (of 7); an instance is a
  (profile, index) pair, indices counting per profile as the device plugin numbers them.
- Tensor pipe activity: FLOP/s over the GPU's dense BF16 peak.
- Power: the planner's `power_watts` on those ratios; energy integrates it over time.
- Framebuffer: the driver's reserve (planner `GPU_RESERVED_BYTES`) is reported as reserved,
  the engines' reservations as used, the rest as free.

SM activity is reported equal to the busy ratio: the model does not know how many SMs a
memory-bound kernel keeps busy, and DCGM_FI_PROF_SM_ACTIVE counts an SM with any warp as active.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from slmpack import metricnames as mn
from slmpack.catalog.types import GPUSpec
from slmpack.planner.memory import GPU_RESERVED_BYTES
from slmpack.planner.perf import PerfParams, power_watts
from slmpack.sim.registry import EngineRecord
from slmpack.units import MIB

_Adder = Callable[["mn.MetricSpec", list[tuple[str, str]], str], None]

#: Driver version label dcgm-exporter adds (a recent R550 release; it only needs to look real).
DRIVER_VERSION = "550.127.08"


class PodAttribution(StrEnum):
    """How pod labels go on a GPU that several pods share (dcgm-exporter behaviours).

    - first: the GPU's series carry one pod, the earliest to use it. dcgm-exporter's default
      pod mapper keeps one pod per device under time-slicing (NVIDIA/dcgm-exporter#307).
    - per_pod: one copy of every series per pod with identical values and a ``vgpu`` label,
      as with ``--kubernetes-virtual-gpus`` (dcgm-exporter PR #432, issue #582).
    - none: no pod labels, as older releases did for shared GPUs (#151, #201).
    """

    FIRST = "first"
    PER_POD = "per-pod"
    NONE = "none"


@dataclass(frozen=True)
class Reading:
    """One DCGM entity (a GPU or a MIG instance) at one moment."""

    busy_ratio: float
    dram_active_ratio: float
    tensor_active_ratio: float
    fb_used_mib: int
    fb_free_mib: int
    fb_reserved_mib: int
    pods: tuple[tuple[str, str, str], ...]  # (pod, namespace, container) in start order
    mig_instance: int | None = None
    mig_profile: str | None = None


@dataclass(frozen=True)
class GpuReading:
    gpu: Reading
    power_watts: float
    instances: tuple[Reading, ...]  # MIG instances that run engines; empty without MIG


def _busy(records: Sequence[EngineRecord], now_unix: float) -> float:
    idle = 1.0
    for record in records:
        idle *= 1.0 - min(1.0, record.fresh_activity(now_unix).busy_ratio)
    return 1.0 - idle


def _pods(records: Sequence[EngineRecord]) -> tuple[tuple[str, str, str], ...]:
    seen: dict[tuple[str, str, str], None] = {}
    for r in records:
        if r.pod:
            seen[(r.pod, r.namespace, r.container)] = None
    return tuple(seen)


def read_gpu(
    gpu: GPUSpec, records: Sequence[EngineRecord], params: PerfParams, now_unix: float
) -> GpuReading:
    activities = [r.fresh_activity(now_unix) for r in records]
    dram = min(1.0, sum(a.dram_bytes_per_s for a in activities) / gpu.memory_bandwidth_bytes_per_s)
    tensor = min(1.0, sum(a.flops_per_s for a in activities) / gpu.bf16_dense_flops)
    reserved_mib = GPU_RESERVED_BYTES // MIB
    total_mib = gpu.memory_bytes // MIB
    mig = [r for r in records if r.mig_instance is not None]
    instances: list[Reading] = []
    if mig:
        busy = 0.0
        by_instance: dict[tuple[str, int], list[EngineRecord]] = {}
        for r in mig:
            device = r.mig_device
            assert device is not None
            by_instance.setdefault(device, []).append(r)
        for (profile_name, index), members in sorted(by_instance.items()):
            profile = gpu.mig_profile(profile_name)
            inst_busy = _busy(members, now_unix)
            busy += inst_busy * profile.compute_slices / 7
            used = sum(r.reserved_bytes for r in members) // MIB
            inst_total = profile.memory_bytes // MIB
            inst_acts = [r.fresh_activity(now_unix) for r in members]
            inst_bw = gpu.memory_bandwidth_bytes_per_s * profile.memory_slices / 8
            inst_flops = gpu.bf16_dense_flops * profile.compute_slices / 7
            instances.append(
                Reading(
                    busy_ratio=inst_busy,
                    dram_active_ratio=min(
                        1.0, sum(a.dram_bytes_per_s for a in inst_acts) / inst_bw
                    ),
                    tensor_active_ratio=min(
                        1.0, sum(a.flops_per_s for a in inst_acts) / inst_flops
                    ),
                    fb_used_mib=used,
                    fb_free_mib=max(0, inst_total - reserved_mib - used),
                    fb_reserved_mib=reserved_mib,
                    pods=_pods(members),
                    mig_instance=index,
                    mig_profile=profile.name,
                )
            )
        busy = min(1.0, busy)
    else:
        busy = _busy(records, now_unix)
    used_mib = sum(r.reserved_bytes for r in records) // MIB
    whole = Reading(
        busy_ratio=busy,
        dram_active_ratio=dram,
        tensor_active_ratio=tensor,
        fb_used_mib=used_mib,
        fb_free_mib=max(0, total_mib - reserved_mib - used_mib),
        fb_reserved_mib=reserved_mib,
        pods=_pods(records),
    )
    return GpuReading(whole, power_watts(gpu, dram, busy, params), tuple(instances))


class EnergyCounter:
    """DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION: millijoules, integrating power over time."""

    def __init__(self, start_s: float, watts: float, initial_mj: float = 0.0) -> None:
        self._last_s = start_s
        self._mj = initial_mj
        self._watts = watts

    def advance(self, now_s: float, watts: float) -> float:
        """Add the power held since the last call up to `now_s`, then hold `watts`."""
        if now_s > self._last_s:
            self._mj += self._watts * (now_s - self._last_s) * 1000.0
            self._last_s = now_s
        self._watts = watts
        return self._mj

    @property
    def millijoules(self) -> int:
        return int(self._mj)


@dataclass(frozen=True)
class GpuIdentity:
    """The static labels dcgm-exporter puts on every series of one GPU."""

    index: int
    uuid: str
    model_name: str
    hostname: str
    pci_bus_id: str

    @classmethod
    def simulated(cls, gpu: GPUSpec, hostname: str, index: int) -> GpuIdentity:
        # nvidia-smi's name: a catalogue alias with spaces if there is one, else the GFD name.
        spaced = [a for a in gpu.aliases if " " in a]
        name = spaced[0] if spaced else gpu.product.replace("-", " ")
        gpu_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"slmpack-sim://{hostname}/gpu/{index}")
        return cls(index, f"GPU-{gpu_uuid}", name, hostname, f"00000000:{0x18 + index:02X}:00.0")

    def labels(self) -> list[tuple[str, str]]:
        return [
            (mn.DCGM_LABEL_GPU, str(self.index)),
            (mn.DCGM_LABEL_UUID, self.uuid),
            (mn.DCGM_LABEL_PCI_BUS_ID, self.pci_bus_id),
            (mn.DCGM_LABEL_DEVICE, f"nvidia{self.index}"),
            (mn.DCGM_LABEL_MODEL_NAME, self.model_name),
            (mn.DCGM_LABEL_HOSTNAME, self.hostname),
            (mn.DCGM_LABEL_DRIVER_VERSION, DRIVER_VERSION),
        ]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _label_text(labels: Sequence[tuple[str, str]]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in labels)


def _pod_label_sets(
    pods: Sequence[tuple[str, str, str]], attribution: PodAttribution
) -> list[list[tuple[str, str]]]:
    if attribution is PodAttribution.NONE or not pods:
        return [[]]
    if attribution is PodAttribution.FIRST:
        pod, namespace, container = pods[0]
        return [[("container", container), ("namespace", namespace), ("pod", pod)]]
    return [
        [("container", c), ("namespace", n), ("pod", p), (mn.DCGM_LABEL_VGPU, str(i))]
        for i, (p, n, c) in enumerate(pods)
    ]


def render(gpus: Sequence[tuple[GpuIdentity, GpuReading, int]], attribution: PodAttribution) -> str:
    """dcgm-exporter's text for (identity, reading, energy mJ) of each GPU."""
    series: dict[str, list[str]] = {}

    def add(spec: mn.MetricSpec, labels: list[tuple[str, str]], value: str) -> None:
        series.setdefault(spec.name, []).append(f"{spec.name}{{{_label_text(labels)}}} {value}")

    for identity, reading, energy_mj in gpus:
        base = identity.labels()
        whole = reading.gpu
        for pod_labels in _pod_label_sets(whole.pods, attribution):
            labels = base + pod_labels
            add(mn.DCGM_POWER_USAGE, labels, f"{reading.power_watts:.6f}")
            add(mn.DCGM_TOTAL_ENERGY_CONSUMPTION, labels, str(energy_mj))
            if not reading.instances:
                add(mn.DCGM_GPU_UTIL, labels, str(round(100 * whole.busy_ratio)))
                add(mn.DCGM_MEM_COPY_UTIL, labels, str(round(100 * whole.dram_active_ratio)))
            _add_entity(add, labels, whole)
        for inst in reading.instances:
            inst_base = [
                *base,
                (mn.DCGM_LABEL_MIG_INSTANCE, str(inst.mig_instance)),
                (mn.DCGM_LABEL_MIG_PROFILE, inst.mig_profile or ""),
            ]
            for pod_labels in _pod_label_sets(inst.pods, attribution):
                _add_entity(add, inst_base + pod_labels, inst)
    out: list[str] = []
    for spec in _DCGM_ORDER:
        lines = series.get(spec.name)
        if lines:
            out.append(f"# HELP {spec.name} {spec.documentation}")
            out.append(f"# TYPE {spec.name} {spec.kind.value}")
            out.extend(lines)
    return "\n".join(out) + "\n"


def _add_entity(add: _Adder, labels: list[tuple[str, str]], reading: Reading) -> None:
    add(mn.DCGM_FB_FREE, labels, str(reading.fb_free_mib))
    add(mn.DCGM_FB_USED, labels, str(reading.fb_used_mib))
    add(mn.DCGM_FB_RESERVED, labels, str(reading.fb_reserved_mib))
    add(mn.DCGM_GR_ENGINE_ACTIVE, labels, f"{reading.busy_ratio:.6f}")
    add(mn.DCGM_SM_ACTIVE, labels, f"{reading.busy_ratio:.6f}")
    add(mn.DCGM_PIPE_TENSOR_ACTIVE, labels, f"{reading.tensor_active_ratio:.6f}")
    add(mn.DCGM_DRAM_ACTIVE, labels, f"{reading.dram_active_ratio:.6f}")


_DCGM_ORDER = (
    mn.DCGM_POWER_USAGE,
    mn.DCGM_TOTAL_ENERGY_CONSUMPTION,
    mn.DCGM_GPU_UTIL,
    mn.DCGM_MEM_COPY_UTIL,
    mn.DCGM_FB_FREE,
    mn.DCGM_FB_USED,
    mn.DCGM_FB_RESERVED,
    mn.DCGM_GR_ENGINE_ACTIVE,
    mn.DCGM_SM_ACTIVE,
    mn.DCGM_PIPE_TENSOR_ACTIVE,
    mn.DCGM_DRAM_ACTIVE,
)
