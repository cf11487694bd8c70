"""What one NVML pass over a node saw. Plain records in base units; None means NVML did not
give the value (the call failed, and `NodeReading.errors` says why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class MigMode(StrEnum):
    """``nvmlDeviceGetMigMode`` current mode; UNSUPPORTED where the GPU has no MIG."""

    ENABLED = "enabled"
    DISABLED = "disabled"
    UNSUPPORTED = "unsupported"
    UNKNOWN = "unknown"  # the call failed for another reason


@dataclass(frozen=True)
class CallError:
    """One failed NVML call: the function name and the error class without its prefix
    (``NVMLError_NotSupported`` -> ``NotSupported``)."""

    call: str
    error: str
    gpu: str = ""  # index of the GPU it concerned, "" for system calls


@dataclass(frozen=True)
class ProcessReading:
    """One compute process on a GPU or MIG device (``nvmlDeviceGetComputeRunningProcesses``)."""

    pid: int
    used_memory_bytes: int | None  # None where the driver withholds it
    gpu_instance_id: int | None = None  # the MIG GPU instance, None on a whole GPU


@dataclass(frozen=True)
class UtilizationSample:
    """One ``nvmlDeviceGetProcessUtilization`` sample: a process's utilisation over one of
    the driver's sampling periods, in percent. NVML gives samples only for processes that
    ran in the period."""

    pid: int
    timestamp_us: int
    sm_percent: int
    memory_percent: int


@dataclass(frozen=True)
class MigDeviceReading:
    """One MIG device (a compute instance inside a GPU instance)."""

    gpu_instance_id: int
    compute_instance_id: int
    uuid: str
    profile: str | None  # "3g.40gb", as the device plugin names it; None if unreadable
    memory_total_bytes: int | None
    memory_used_bytes: int | None
    processes: tuple[ProcessReading, ...] = ()


@dataclass(frozen=True)
class GpuReading:
    """One physical GPU. Utilization percentages are over NVML's last sampling period."""

    index: int
    uuid: str
    name: str | None  # as NVML spells it: "NVIDIA H100 80GB HBM3"
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    mig_mode: MigMode = MigMode.UNKNOWN
    mig_devices: tuple[MigDeviceReading, ...] = ()
    sm_utilization_percent: int | None = None  # utilization.gpu: time a kernel was running
    memory_utilization_percent: int | None = None  # utilization.memory: time memory was busy
    power_mw: int | None = None
    power_limit_mw: int | None = None
    energy_mj: int | None = None  # since the driver loaded
    processes: tuple[ProcessReading, ...] = ()  # whole GPU; under MIG, those of every device
    #: Samples newer than the previous pass; None where NVML does not provide them (MIG).
    utilization_samples: tuple[UtilizationSample, ...] | None = None


@dataclass(frozen=True)
class NodeReading:
    """Every GPU of the node, with the driver versions and the calls that failed."""

    driver_version: str | None
    cuda_driver_version: str | None  # "12.4"
    gpus: tuple[GpuReading, ...]
    errors: tuple[CallError, ...] = field(default=())
