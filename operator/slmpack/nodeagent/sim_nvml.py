"""A SIMULATED NVML for the local world (``--nvml-sim STATE_DIR``): the node agent's readings
taken from the simulated GPUs of one runner node, not from hardware. Nothing is measured.

The runner's vLLM simulators publish what they hold and do in the node's simulator state
folder (`slmpack.sim.registry`); dcgm-sim turns that into DCGM fields, and this backend turns
the same records, through the same functions (`slmpack.sim.gpu_readings.read_gpu`, its
`EnergyCounter` and GPU identities), into what one NVML pass would return:

- per GPU: name, UUID (the same as dcgm-sim's, so the two join), memory, utilisation, power,
  power limit and an energy counter integrating power over simulated time since the agent
  started;
- per process: every engine of the node is a real local process, so its pid, the memory it
  reserved and, off MIG, one utilisation sample per pass (its busy ratio over its last
  ~0.5 s; idle engines get none, as NVML gives samples only for processes that ran);
- MIG: the devices the runner's node declares, with their processes; no per-process samples.

The processes are found by pid, as NVML reports them; which pod each belongs to is then the
agent's ordinary question. The runner's processes are not in kubepods cgroups, so
`runner_pod_locator` answers it from the marker the runner puts in each pod process's
environment (its pod UID), and the agent looks the UID up in the API's pod list as usual.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.types import GPUSpec
from slmpack.devcluster.podexec import RUNNER_POD_ENV
from slmpack.nodeagent.cgroups import ContainerRef
from slmpack.nodeagent.readings import (
    GpuReading,
    MigDeviceReading,
    MigMode,
    NodeReading,
    ProcessReading,
    UtilizationSample,
)
from slmpack.planner.memory import GPU_RESERVED_BYTES
from slmpack.planner.perf import PerfParams, default_perf_params
from slmpack.sim.engine import SimClock
from slmpack.sim.gpu_readings import DRIVER_VERSION, EnergyCounter, GpuIdentity, read_gpu
from slmpack.sim.registry import EngineRecord, GpuState
from slmpack.units import MIB

#: CUDA version a R550 driver reports (nvmlSystemGetCudaDriverVersion), as "12.4".
CUDA_DRIVER_VERSION = "12.4"
_PERCENT = 100
_US = 1_000_000
_MW_PER_W = 1000


@dataclass(frozen=True)
class SimMigDevice:
    """One MIG device of a simulated GPU: the profile and its index among that profile's
    instances on the GPU, as the runner hands them out (`--sim-mig-device GPU:PROFILE:INDEX`)."""

    gpu: int
    profile: str
    index: int

    @classmethod
    def parse(cls, text: str) -> SimMigDevice:
        gpu, profile, index = text.split(":")
        return cls(int(gpu), profile, int(index))


@dataclass(frozen=True)
class SimNvmlConfig:
    state_dir: Path  # the node's simulator state folder (the runner's nodes/<node>/sim)
    gpu: str = "NVIDIA-H100-80GB-HBM3"
    gpu_count: int = 1
    hostname: str = ""  # the node's name: with it the UUIDs are dcgm-sim's
    speedup: float = 1.0
    #: What nvmlDeviceGetMemoryInfo reports as total; None: the catalogue's figure (itself
    #: nvidia-smi's memory.total). Boards and drivers differ (ECC, reserved memory), which is
    #: what the operator's use of measured memory is for.
    memory_total_mib: int | None = None
    mig_devices: tuple[SimMigDevice, ...] = ()


def _gi_ids(devices: Sequence[SimMigDevice]) -> dict[tuple[str, int], int]:
    """GPU instance IDs of one GPU's devices, numbered from 1 in a stable order (NVML numbers
    them by placement; any stable numbering serves the simulation)."""
    ordered = sorted(devices, key=lambda d: (d.profile, d.index))
    return {(d.profile, d.index): n + 1 for n, d in enumerate(ordered)}


class SimulatedNvml:
    """`GpuBackend` over the simulated GPUs of one runner node (see the module docstring)."""

    def __init__(
        self,
        config: SimNvmlConfig,
        params: PerfParams | None = None,
        clock: SimClock | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.gpu: GPUSpec = default_gpu_catalog().get(config.gpu)
        self.params = params or default_perf_params()
        self.clock = clock or SimClock(config.speedup)
        self._wall = wall_clock
        self._host = GpuState(config.state_dir, "0").host
        self.states = [GpuState(config.state_dir, str(i)) for i in range(config.gpu_count)]
        self.identities = [
            GpuIdentity.simulated(self.gpu, config.hostname, i) for i in range(config.gpu_count)
        ]
        self.energy = [EnergyCounter(self.clock.now(), self.gpu.idle_watts) for _ in self.states]
        self._mig: dict[int, list[SimMigDevice]] = {}
        for device in config.mig_devices:
            self._mig.setdefault(device.gpu, []).append(device)
        total_mib = config.memory_total_mib or self.gpu.memory_bytes // MIB
        self._memory_total_bytes = total_mib * MIB

    def close(self) -> None:
        return None

    def read(self) -> NodeReading:
        now_unix = self._wall()
        now_s = self.clock.now()
        gpus = tuple(
            self._read_gpu(index, state.records(), now_unix, now_s)
            for index, state in enumerate(self.states)
        )
        return NodeReading(
            driver_version=DRIVER_VERSION, cuda_driver_version=CUDA_DRIVER_VERSION, gpus=gpus
        )

    def _read_gpu(
        self, index: int, records: list[EngineRecord], now_unix: float, now_s: float
    ) -> GpuReading:
        # Engines of another host sharing the folder have pids NVML here would not list.
        local = [r for r in records if r.host == self._host]
        reading = read_gpu(self.gpu, local, self.params, now_unix)
        energy_mj = self.energy[index].advance(now_s, reading.power_watts)
        identity = self.identities[index]
        used = GPU_RESERVED_BYTES + sum(r.reserved_bytes for r in local)
        base = GpuReading(
            index=index,
            uuid=identity.uuid,
            name=identity.model_name,
            memory_total_bytes=self._memory_total_bytes,
            memory_used_bytes=min(used, self._memory_total_bytes),
            mig_mode=MigMode.DISABLED if self.gpu.mig_capable else MigMode.UNSUPPORTED,
            memory_utilization_percent=round(_PERCENT * reading.gpu.dram_active_ratio),
            power_mw=round(reading.power_watts * _MW_PER_W),
            power_limit_mw=round(self.gpu.tdp_watts * _MW_PER_W),
            energy_mj=int(energy_mj),
        )
        devices = self._mig.get(index, [])
        if devices:
            mig = self._mig_devices(index, devices, local)
            return replace(
                base,
                mig_mode=MigMode.ENABLED,
                mig_devices=mig,
                processes=tuple(p for d in mig for p in d.processes),
                utilization_samples=None,  # NVML has no per-process samples under MIG
            )
        timestamp_us = int(now_unix * _US)
        samples = []
        for record in local:
            activity = record.fresh_activity(now_unix)
            sm = round(_PERCENT * min(1.0, activity.busy_ratio))
            bandwidth = self.gpu.memory_bandwidth_bytes_per_s
            mem = round(_PERCENT * min(1.0, activity.dram_bytes_per_s / bandwidth))
            if sm or mem:
                samples.append(UtilizationSample(record.pid, timestamp_us, sm, mem))
        return replace(
            base,
            sm_utilization_percent=round(_PERCENT * reading.gpu.busy_ratio),
            processes=tuple(ProcessReading(r.pid, r.reserved_bytes) for r in local),
            utilization_samples=tuple(samples),
        )

    def _mig_devices(
        self, index: int, devices: Sequence[SimMigDevice], records: Sequence[EngineRecord]
    ) -> tuple[MigDeviceReading, ...]:
        ids = _gi_ids(devices)
        out = []
        for device in devices:
            gi = ids[(device.profile, device.index)]
            members = [r for r in records if r.mig_device == (device.profile, device.index)]
            held = sum(r.reserved_bytes for r in members)
            profile = self.gpu.mig_profile(device.profile)
            mig_uuid = uuid.uuid5(
                uuid.NAMESPACE_URL,
                f"slmpack-sim://{self.config.hostname}/gpu/{index}/mig/{device.profile}/{device.index}",
            )
            out.append(
                MigDeviceReading(
                    gpu_instance_id=gi,
                    compute_instance_id=0,
                    uuid=f"MIG-{mig_uuid}",
                    profile=profile.name,
                    memory_total_bytes=profile.memory_bytes,
                    memory_used_bytes=min(held, profile.memory_bytes),
                    processes=tuple(ProcessReading(r.pid, r.reserved_bytes, gi) for r in members),
                )
            )
        return tuple(sorted(out, key=lambda d: d.gpu_instance_id))


def pod_uid_from_environ(variables: Mapping[str, str]) -> ContainerRef | None:
    """The pod a runner-started process belongs to, from the runner's marker variable.

    The runner marks its node processes (dcgm-sim, this agent) with ``node:<name>``; those
    are in no pod. The marker names the pod, not the container: the pod's one container is
    the answer (the runner runs only the first container of a pod).
    """
    value = variables.get(RUNNER_POD_ENV, "")
    if not value or ":" in value:
        return None
    return ContainerRef(pod_uid=value, container_id=None)


def _read_environ(pid: int, proc_root: Path) -> dict[str, str] | None:
    try:
        raw = (proc_root / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    out: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def runner_pod_locator(proc_root: Path = Path("/proc")) -> Callable[[int], ContainerRef | None]:
    """The local world's stand-in for the cgroup lookup: a pid's pod UID from the runner's
    marker in ``/proc/<pid>/environ`` (readable for processes of the same user)."""

    def locate(pid: int) -> ContainerRef | None:
        variables = _read_environ(pid, proc_root)
        return pod_uid_from_environ(variables) if variables is not None else None

    return locate
