"""A FAKE NVML: pynvml's functions answered from a device file, for machines without
a GPU (the local world, ``--nvml-fake PATH``) and for the unit tests, which patch these
functions into ``pynvml`` so the real backend's code runs against them.

A device file is JSON (tests/unit/data/nvml/ has files modelled on an H100, an A100 with MIG,
an L4 and error cases)::

    {"driver_version": "550.90.07", "cuda_driver_version": 12040, "period_seconds": 10,
     "errors": {"nvmlInit": "DriverNotLoaded"},           # system calls that fail
     "devices": [{"name": "NVIDIA L4", "uuid": "GPU-...",
                  "memory": {"total": ..., "used": ...}, "utilization": {"gpu": 40, "memory": 20},
                  "power_usage_mw": 41000, "power_limit_mw": 72000, "energy_mj": 123456,
                  "mig_mode": [0, 0], "max_mig_devices": 7, "mig_devices": [...],
                  "processes": [{"pid": 1001, "used_gpu_memory": 123}],
                  "process_utilization": [{"pid": 1001, "sm": 40, "mem": 10}],
                  "errors": {"nvmlDeviceGetPowerUsage": "NotSupported", "*": "GpuIsLost"}}],
     "cgroups": {"1001": "0::/kubepods.slice/..."},         # /proc/<pid>/cgroup of each pid
     "pods": [{"metadata": {...}, "status": {...}}]}        # this node's pods

A field left out of a device answers NotSupported, as NVML does for a missing feature;
``errors`` makes a call fail with the named NVML error (``*``: every call on that device).
Time advances one ``period_seconds`` per pass (each ``nvmlDeviceGetCount``): the energy
counter grows at the file's power and the utilisation samples get new timestamps.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml

#: NVML error names a device file may use, as pynvml names their exception classes.
ERROR_CODES: dict[str, int] = {
    "Uninitialized": pynvml.NVML_ERROR_UNINITIALIZED,
    "InvalidArgument": pynvml.NVML_ERROR_INVALID_ARGUMENT,
    "NotSupported": pynvml.NVML_ERROR_NOT_SUPPORTED,
    "NoPermission": pynvml.NVML_ERROR_NO_PERMISSION,
    "NotFound": pynvml.NVML_ERROR_NOT_FOUND,
    "DriverNotLoaded": pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
    "Timeout": pynvml.NVML_ERROR_TIMEOUT,
    "LibraryNotFound": pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
    "FunctionNotFound": pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
    "GpuIsLost": pynvml.NVML_ERROR_GPU_IS_LOST,
    "LibRmVersionMismatch": pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH,
    "Unknown": pynvml.NVML_ERROR_UNKNOWN,
}
DEFAULT_PERIOD_SECONDS = 10.0
_US = 1_000_000


@dataclass(frozen=True)
class _Device:
    gpu: int
    slot: int | None = None  # MIG device slot under the GPU


@dataclass(frozen=True)
class _GpuInstance:
    gpu: int
    gpu_instance_id: int


def _fail(error: str) -> None:
    if error not in ERROR_CODES:
        raise ValueError(f"unknown NVML error {error!r}; use one of {sorted(ERROR_CODES)}")
    raise pynvml.NVMLError(ERROR_CODES[error])


class FakeNvml:
    """The device file behind pynvml's function names (see the module docstring).
    ``data`` may be changed between passes to inject errors."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data: dict[str, Any] = copy.deepcopy(dict(data))
        self.passes = 0
        self.initialised = False

    @classmethod
    def from_file(cls, path: Path) -> FakeNvml:
        return cls(json.loads(path.read_text()))

    @property
    def period_seconds(self) -> float:
        return float(self.data.get("period_seconds", DEFAULT_PERIOD_SECONDS))

    def functions(self) -> dict[str, Callable[..., Any]]:
        """pynvml function name -> the fake's answer."""
        return {
            "nvmlInit": self.nvml_init,
            "nvmlShutdown": self.nvml_shutdown,
            "nvmlSystemGetDriverVersion": lambda: self._system(
                "nvmlSystemGetDriverVersion", "driver_version"
            ),
            "nvmlSystemGetCudaDriverVersion": lambda: self._system(
                "nvmlSystemGetCudaDriverVersion", "cuda_driver_version"
            ),
            "nvmlDeviceGetCount": self.device_count,
            "nvmlDeviceGetHandleByIndex": self.handle_by_index,
            "nvmlDeviceGetUUID": lambda h: self._field("nvmlDeviceGetUUID", h, "uuid"),
            "nvmlDeviceGetName": lambda h: self._field("nvmlDeviceGetName", h, "name"),
            "nvmlDeviceGetMemoryInfo": self.memory_info,
            "nvmlDeviceGetMigMode": lambda h: list(
                self._field("nvmlDeviceGetMigMode", h, "mig_mode")
            ),
            "nvmlDeviceGetUtilizationRates": self.utilization_rates,
            "nvmlDeviceGetPowerUsage": lambda h: self._field(
                "nvmlDeviceGetPowerUsage", h, "power_usage_mw"
            ),
            "nvmlDeviceGetEnforcedPowerLimit": lambda h: self._field(
                "nvmlDeviceGetEnforcedPowerLimit", h, "power_limit_mw"
            ),
            "nvmlDeviceGetTotalEnergyConsumption": self.total_energy,
            "nvmlDeviceGetComputeRunningProcesses": self.compute_processes,
            "nvmlDeviceGetProcessUtilization": self.process_utilization,
            "nvmlDeviceGetMaxMigDeviceCount": lambda h: self._field(
                "nvmlDeviceGetMaxMigDeviceCount", h, "max_mig_devices"
            ),
            "nvmlDeviceGetMigDeviceHandleByIndex": self.mig_handle,
            "nvmlDeviceGetGpuInstanceId": lambda h: self._field(
                "nvmlDeviceGetGpuInstanceId", h, "gpu_instance_id"
            ),
            "nvmlDeviceGetComputeInstanceId": lambda h: self._field(
                "nvmlDeviceGetComputeInstanceId", h, "compute_instance_id"
            ),
            "nvmlDeviceGetAttributes": self.attributes,
            "nvmlDeviceGetGpuInstanceById": self.gpu_instance_by_id,
            "nvmlGpuInstanceGetInfo": self.gpu_instance_info,
        }

    def module(self) -> SimpleNamespace:
        """An object with pynvml's function names, to hand to `PynvmlBackend`."""
        return SimpleNamespace(**self.functions())

    # --- system ----------------------------------------------------------------------------

    def _check_system(self, call: str) -> None:
        error = (self.data.get("errors") or {}).get(call)
        if error:
            _fail(error)
        if not self.initialised:
            _fail("Uninitialized")

    def nvml_init(self) -> None:
        error = (self.data.get("errors") or {}).get("nvmlInit")
        if error:
            _fail(error)
        self.initialised = True

    def nvml_shutdown(self) -> None:
        self._check_system("nvmlShutdown")
        self.initialised = False

    def _system(self, call: str, key: str) -> Any:
        self._check_system(call)
        if key not in self.data:
            _fail("NotSupported")
        return self.data[key]

    def device_count(self) -> int:
        self._check_system("nvmlDeviceGetCount")
        self.passes += 1  # one pass of the agent: the fake's clock ticks
        return len(self.data.get("devices") or [])

    # --- devices ---------------------------------------------------------------------------

    def _gpu_record(self, gpu: int) -> dict[str, Any]:
        devices = self.data.get("devices") or []
        if not 0 <= gpu < len(devices):
            _fail("InvalidArgument")
        record: dict[str, Any] = devices[gpu]
        return record

    def _record(self, call: str, handle: _Device) -> dict[str, Any]:
        """The record behind a handle, after the errors the file injects for this call."""
        if not self.initialised:
            _fail("Uninitialized")
        gpu = self._gpu_record(handle.gpu)
        record = gpu
        if handle.slot is not None:
            record = next(m for m in gpu.get("mig_devices") or [] if m["slot"] == handle.slot)
        for errors in (gpu.get("errors") or {}, record.get("errors") or {}):
            error = errors.get(call) or errors.get("*")
            if error:
                _fail(error)
        return record

    def _field(self, call: str, handle: _Device, key: str) -> Any:
        record = self._record(call, handle)
        if key not in record:
            _fail("NotSupported")
        return record[key]

    def handle_by_index(self, index: int) -> _Device:
        self._record("nvmlDeviceGetHandleByIndex", _Device(index))
        return _Device(index)

    def memory_info(self, handle: _Device) -> SimpleNamespace:
        memory = self._field("nvmlDeviceGetMemoryInfo", handle, "memory")
        total, used = int(memory["total"]), int(memory["used"])
        return SimpleNamespace(total=total, used=used, free=total - used)

    def utilization_rates(self, handle: _Device) -> SimpleNamespace:
        util = self._field("nvmlDeviceGetUtilizationRates", handle, "utilization")
        return SimpleNamespace(gpu=int(util["gpu"]), memory=int(util["memory"]))

    def total_energy(self, handle: _Device) -> int:
        record = self._record("nvmlDeviceGetTotalEnergyConsumption", handle)
        if "energy_mj" not in record:
            _fail("NotSupported")
        # mW x s = mJ: the counter grows at the file's power, one period per pass.
        grown = self.passes * int(record.get("power_usage_mw", 0)) * self.period_seconds
        return int(record["energy_mj"]) + int(grown)

    def compute_processes(self, handle: _Device) -> list[SimpleNamespace]:
        procs = self._field("nvmlDeviceGetComputeRunningProcesses", handle, "processes")
        return [
            SimpleNamespace(
                pid=int(p["pid"]),
                usedGpuMemory=p.get("used_gpu_memory"),  # None: withheld, as pynvml maps it
                gpuInstanceId=0xFFFFFFFF,
                computeInstanceId=0xFFFFFFFF,
            )
            for p in procs
        ]

    def process_utilization(self, handle: _Device, since_us: int) -> list[SimpleNamespace]:
        samples = self._field("nvmlDeviceGetProcessUtilization", handle, "process_utilization")
        now_us = int(self.passes * self.period_seconds * _US)
        if not samples or now_us <= since_us:
            _fail("NotFound")  # NVML's answer when no sample is newer than `since_us`
        return [
            SimpleNamespace(
                pid=int(s["pid"]),
                timeStamp=now_us,
                smUtil=int(s["sm"]),
                memUtil=int(s.get("mem", 0)),
                encUtil=0,
                decUtil=0,
            )
            for s in samples
        ]

    # --- MIG -------------------------------------------------------------------------------

    def mig_handle(self, handle: _Device, slot: int) -> _Device:
        record = self._record("nvmlDeviceGetMigDeviceHandleByIndex", handle)
        if not any(m["slot"] == slot for m in record.get("mig_devices") or []):
            _fail("NotFound")
        return _Device(handle.gpu, slot)

    def attributes(self, handle: _Device) -> SimpleNamespace:
        attrs = self._field("nvmlDeviceGetAttributes", handle, "attributes")
        fields = (
            "multiprocessorCount",
            "sharedCopyEngineCount",
            "sharedDecoderCount",
            "sharedEncoderCount",
            "sharedJpegCount",
            "sharedOfaCount",
            "gpuInstanceSliceCount",
            "computeInstanceSliceCount",
            "memorySizeMB",
        )
        return SimpleNamespace(**{f: int(attrs.get(f, 0)) for f in fields})

    def gpu_instance_by_id(self, handle: _Device, gpu_instance_id: int) -> _GpuInstance:
        record = self._record("nvmlDeviceGetGpuInstanceById", handle)
        if not any(
            m["gpu_instance_id"] == gpu_instance_id for m in record.get("mig_devices") or []
        ):
            _fail("NotFound")
        return _GpuInstance(handle.gpu, gpu_instance_id)

    def gpu_instance_info(self, instance: _GpuInstance) -> SimpleNamespace:
        record = self._record("nvmlGpuInstanceGetInfo", _Device(instance.gpu))
        mig = next(
            m for m in record["mig_devices"] if m["gpu_instance_id"] == instance.gpu_instance_id
        )
        return SimpleNamespace(
            id=instance.gpu_instance_id, profileId=int(mig["gpu_instance_profile_id"])
        )

    # --- what NVML does not hold: the node's processes and pods ------------------------------

    def cgroup_of(self, pid: int) -> str | None:
        """The file's ``/proc/<pid>/cgroup`` text; None for a pid the file does not list."""
        cgroups: Mapping[str, str] = self.data.get("cgroups") or {}
        return cgroups.get(str(pid))

    def pods(self) -> list[Mapping[str, Any]] | None:
        """The pods of the node in the file, or None when the file has none."""
        pods = self.data.get("pods")
        return list(pods) if pods is not None else None
