"""Splitting one GPU's energy between the replicas on it (pure).

NVML meters energy per physical GPU only. Over each sampling window the agent splits the
GPU's energy delta between its processes, by the first method that has data:

1. ``sm_utilization``: each process's share of the SM utilisation NVML sampled for it since
   the previous pass (``nvmlDeviceGetProcessUtilization``, summed over its samples);
2. ``memory``: its share of the GPU memory the processes hold, where NVML gives no per-process
   utilisation (MIG devices, older GPUs) or every process was idle;
3. ``even``: an equal share per process, where NVML gives neither.

Processes outside any pod (or whose pod is unknown), and windows with no process at all, count
as unattributed energy, so replica energy plus unattributed energy is the GPU's energy.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from slmpack.nodeagent.pods import Workload
from slmpack.nodeagent.readings import UtilizationSample

MJ_PER_J = 1000.0


class Method(StrEnum):
    SM_UTILIZATION = "sm_utilization"
    MEMORY = "memory"
    EVEN = "even"


@dataclass(frozen=True, order=True)
class Slot:
    """One replica's place on a GPU: the workload and, under MIG, the GPU instance ("" for
    the whole GPU)."""

    workload: Workload
    gpu_instance: str = ""


@dataclass(frozen=True)
class ProcessOnGpu:
    pid: int
    slot: Slot | None  # None: not in a known pod
    used_memory_bytes: int | None


@dataclass(frozen=True)
class WindowShares:
    """How one window's energy is split. ``shares`` sum to 1 when there are processes (the
    None key holds the share of processes outside any known pod)."""

    method: Method | None  # None: no process in the window
    shares: Mapping[Slot | None, float]
    #: Mean SM utilisation (0..1) of each slot over the window; empty without samples.
    sm_utilization: Mapping[Slot, float] = field(default_factory=dict)


def _normalise(weights: Mapping[Slot | None, float]) -> dict[Slot | None, float]:
    total = sum(weights.values())
    return {k: v / total for k, v in weights.items()}


def window_shares(
    processes: Iterable[ProcessOnGpu], samples: Iterable[UtilizationSample] | None
) -> WindowShares:
    """The split of one GPU's window between its processes (see the module docstring)."""
    procs = list(processes)
    if not procs:
        return WindowShares(method=None, shares={})
    slot_of = {p.pid: p.slot for p in procs}

    sm_utilization: dict[Slot, float] = {}
    if samples is not None:
        sample_list = [s for s in samples if s.pid in slot_of]
        # NVML returns samples only for processes that ran, so the busiest process's sample
        # count stands for the sampling periods in the window; a process absent from a
        # period was idle in it.
        periods = max(Counter(s.pid for s in sample_list).values(), default=0)
        sm_by_slot: dict[Slot | None, float] = defaultdict(float)
        for s in sample_list:
            sm_by_slot[slot_of[s.pid]] += s.sm_percent
        if periods:
            for slot, total in sm_by_slot.items():
                if slot is not None:
                    sm_utilization[slot] = min(1.0, total / (100.0 * periods))
        if sum(sm_by_slot.values()) > 0:
            return WindowShares(Method.SM_UTILIZATION, _normalise(sm_by_slot), sm_utilization)

    memory: dict[Slot | None, float] = defaultdict(float)
    for p in procs:
        memory[p.slot] += float(p.used_memory_bytes or 0)
    if sum(memory.values()) > 0:
        return WindowShares(Method.MEMORY, _normalise(memory), sm_utilization)

    even: dict[Slot | None, float] = defaultdict(float)
    for p in procs:
        even[p.slot] += 1.0
    return WindowShares(Method.EVEN, _normalise(even), sm_utilization)


def energy_delta_joules(previous_mj: int | None, current_mj: int | None) -> float | None:
    """Energy over a window from two readings of NVML's counter; None when either is missing
    or the counter went back (the driver reloaded), so that window is skipped."""
    if previous_mj is None or current_mj is None or current_mj < previous_mj:
        return None
    return (current_mj - previous_mj) / MJ_PER_J


def split_energy(delta_joules: float, shares: WindowShares) -> tuple[dict[Slot, float], float]:
    """(joules per slot, unattributed joules); they add up to ``delta_joules``."""
    per_slot = {
        slot: delta_joules * share
        for slot, share in shares.shares.items()
        if slot is not None and share > 0
    }
    return per_slot, max(0.0, delta_joules - sum(per_slot.values()))


@dataclass(frozen=True)
class GpuKey:
    """The labels that name a physical GPU in the metrics."""

    index: str
    uuid: str


@dataclass
class _Entry:
    joules: float = 0.0
    last_seen: float = 0.0


class EnergyLedger:
    """Running totals of attributed energy: counters, so they only grow. A slot's series is
    dropped after ``retention_seconds`` without energy (its pod is gone), which Prometheus
    reads as the end of that series."""

    def __init__(self, retention_seconds: float = 900.0) -> None:
        self.retention_seconds = retention_seconds
        self._replicas: dict[tuple[GpuKey, Slot, Method], _Entry] = {}
        self._unattributed: dict[GpuKey, float] = {}

    def add(
        self,
        gpu: GpuKey,
        delta_joules: float,
        shares: WindowShares,
        now: float,
    ) -> None:
        per_slot, unattributed = split_energy(delta_joules, shares)
        method = shares.method
        if method is not None:
            for slot, joules in per_slot.items():
                entry = self._replicas.setdefault((gpu, slot, method), _Entry())
                entry.joules += joules
                entry.last_seen = now
        self._unattributed[gpu] = self._unattributed.get(gpu, 0.0) + unattributed

    def prune(self, now: float) -> None:
        stale = [k for k, e in self._replicas.items() if now - e.last_seen > self.retention_seconds]
        for key in stale:
            del self._replicas[key]

    def replicas(self) -> list[tuple[GpuKey, Slot, Method, float]]:
        return [(g, s, m, e.joules) for (g, s, m), e in sorted(self._replicas.items(), key=_order)]

    def unattributed(self) -> list[tuple[GpuKey, float]]:
        return sorted(self._unattributed.items(), key=lambda kv: (kv[0].index, kv[0].uuid))


def _order(item: tuple[tuple[GpuKey, Slot, Method], _Entry]) -> tuple[str, str, Slot, str]:
    (gpu, slot, method), _ = item
    return (gpu.index, gpu.uuid, slot, method.value)
