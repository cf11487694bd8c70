"""NVML access: one `read()` walks every GPU (and MIG device) through pynvml and returns a
`NodeReading`. Each call is guarded on its own: a failure leaves that value None and is
recorded as a `CallError`, so a GPU without an energy counter still reports its memory.

Errors that mean NVML as a whole is gone (driver not loaded, library missing, not
initialised, driver/library mismatch) end the pass with `NvmlUnavailableError`; the next
`read()` initialises NVML again.

The module functions are looked up on the ``nvml`` object at call time, so tests can patch
``pynvml``'s functions and the device-file fake (`slmpack.nodeagent.fake_nvml`) can stand
in for the whole module.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Protocol

import pynvml

from slmpack.errors import SlmpackError
from slmpack.nodeagent.inventory import format_cuda_version, mig_profile_name
from slmpack.nodeagent.readings import (
    CallError,
    GpuReading,
    MigDeviceReading,
    MigMode,
    NodeReading,
    ProcessReading,
    UtilizationSample,
)

logger = logging.getLogger("slmpack.nodeagent")

MIB_BYTES = 1024**2

#: Errors after which no NVML call can succeed until NVML is initialised again.
FATAL_ERRORS = frozenset(
    {"Uninitialized", "DriverNotLoaded", "LibraryNotFound", "LibRmVersionMismatch"}
)

#: (call, error) pairs that are normal answers, not failures: a GPU without MIG, an empty MIG
#: slot, no utilisation sample since the last pass, and the privileged GPU-instance queries
#: whose answer has a fallback.
_EXPECTED = frozenset(
    {
        ("nvmlDeviceGetMigMode", "NotSupported"),
        ("nvmlDeviceGetMigDeviceHandleByIndex", "NotFound"),
        ("nvmlDeviceGetProcessUtilization", "NotFound"),
        ("nvmlDeviceGetGpuInstanceById", "NoPermission"),
        ("nvmlDeviceGetGpuInstanceById", "NotSupported"),
        ("nvmlGpuInstanceGetInfo", "NoPermission"),
        ("nvmlGpuInstanceGetInfo", "NotSupported"),
    }
)

# MIG profile name suffixes by GPU instance profile ID, as go-nvlib names them.
_PROFILE_SUFFIX = {
    pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1: "+me",
    pynvml.NVML_GPU_INSTANCE_PROFILE_2_SLICE_REV1: "+me",
    pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_ALL_ME: "+me.all",
    pynvml.NVML_GPU_INSTANCE_PROFILE_2_SLICE_ALL_ME: "+me.all",
    pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_NO_ME: "-me",
    pynvml.NVML_GPU_INSTANCE_PROFILE_2_SLICE_NO_ME: "-me",
    pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_GFX: "+gfx",
    pynvml.NVML_GPU_INSTANCE_PROFILE_2_SLICE_GFX: "+gfx",
    pynvml.NVML_GPU_INSTANCE_PROFILE_4_SLICE_GFX: "+gfx",
}
#: The largest MIG GPU instance (7 of 7 compute slices) always has the OFA engine.
_FULL_GPU_SLICES = 7


def nvml_error_name(err: BaseException) -> str:
    """``NVMLError_GpuIsLost`` -> ``GpuIsLost``; a code pynvml has no class for -> ``Code<n>``."""
    name = type(err).__name__
    if name.startswith("NVMLError_"):
        return name.removeprefix("NVMLError_")
    return f"Code{getattr(err, 'value', 'Unknown')}"


class NvmlUnavailableError(SlmpackError):
    """NVML cannot be used at all right now; the message says why and what to check."""

    def __init__(self, call: str, error: str, detail: str) -> None:
        hint = {
            "DriverNotLoaded": "is the NVIDIA driver loaded on this node?",
            "LibraryNotFound": "is the pod started with runtimeClassName nvidia and "
            "NVIDIA_VISIBLE_DEVICES=all, so libnvidia-ml.so.1 is mounted?",
            "LibRmVersionMismatch": "the driver was upgraded under the agent; restart it",
            "NoPermission": "the container cannot open the NVIDIA device nodes",
        }.get(error, "see the NVIDIA driver's state on this node")
        super().__init__(f"NVML is unavailable: {call} failed with {error} ({detail}); {hint}")
        self.call = call
        self.error = error


class GpuBackend(Protocol):
    """Where readings come from: NVML through pynvml, or the device-file fake."""

    def read(self) -> NodeReading:
        """One pass over every GPU; raises NvmlUnavailableError when NVML is unusable."""
        ...

    def close(self) -> None: ...


class _FatalNvmlError(Exception):
    def __init__(self, call: str, err: BaseException) -> None:
        super().__init__(call)
        self.call = call
        self.err = err


class _Pass:
    """One read: guarded calls and the errors they collected."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.errors: list[CallError] = []

    def call(self, name: str, *args: Any, gpu: str = "") -> Any:
        """The call's result, or None when it raised an NVML error (kept unless it is
        an expected answer); fatal errors end the pass."""
        try:
            return getattr(self.nvml, name)(*args)
        except pynvml.NVMLError as err:
            error = nvml_error_name(err)
            if error in FATAL_ERRORS:
                raise _FatalNvmlError(name, err) from err
            if (name, error) not in _EXPECTED:
                self.errors.append(CallError(call=name, error=error, gpu=gpu))
            return None


def _as_str(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


class PynvmlBackend:
    """`GpuBackend` over pynvml (or any object with the same functions)."""

    def __init__(self, nvml: Any = pynvml) -> None:
        self._nvml = nvml
        self._initialised = False
        self._last_sample_us: dict[str, int] = {}  # per GPU UUID
        self._profile_suffix: dict[str, str] = {}  # per MIG UUID; stable while it exists

    def _init(self) -> None:
        if self._initialised:
            return
        try:
            self._nvml.nvmlInit()
        except pynvml.NVMLError as err:
            raise NvmlUnavailableError("nvmlInit", nvml_error_name(err), str(err)) from err
        self._initialised = True
        logger.info("Initialised NVML")

    def close(self) -> None:
        if self._initialised:
            with contextlib.suppress(pynvml.NVMLError):
                self._nvml.nvmlShutdown()
            self._initialised = False

    def read(self) -> NodeReading:
        self._init()
        p = _Pass(self._nvml)
        try:
            cuda = p.call("nvmlSystemGetCudaDriverVersion")
            driver = _as_str(p.call("nvmlSystemGetDriverVersion"))
            count = p.call("nvmlDeviceGetCount") or 0
            gpus = [g for g in (self._read_gpu(p, i) for i in range(count)) if g is not None]
        except _FatalNvmlError as fatal:
            self.close()
            error = nvml_error_name(fatal.err)
            raise NvmlUnavailableError(fatal.call, error, str(fatal.err)) from fatal.err
        return NodeReading(
            driver_version=driver,
            cuda_driver_version=format_cuda_version(cuda) if cuda is not None else None,
            gpus=tuple(gpus),
            errors=tuple(p.errors),
        )

    def _read_gpu(self, p: _Pass, index: int) -> GpuReading | None:
        gpu = str(index)
        handle = p.call("nvmlDeviceGetHandleByIndex", index, gpu=gpu)
        if handle is None:
            return None
        uuid = _as_str(p.call("nvmlDeviceGetUUID", handle, gpu=gpu))
        if uuid is None:
            return None  # every metric is keyed by UUID; the error counter says why it is gone
        memory = p.call("nvmlDeviceGetMemoryInfo", handle, gpu=gpu)
        mig_mode = self._mig_mode(p, handle, gpu)
        util = p.call("nvmlDeviceGetUtilizationRates", handle, gpu=gpu)
        mig_devices: tuple[MigDeviceReading, ...] = ()
        if mig_mode is MigMode.ENABLED:
            total = int(memory.total) if memory is not None else None
            mig_devices = self._read_mig_devices(p, handle, gpu, total)
            processes = tuple(proc for mig in mig_devices for proc in mig.processes)
        else:
            processes = self._processes(p, handle, gpu, None)
        return GpuReading(
            index=index,
            uuid=uuid,
            name=_as_str(p.call("nvmlDeviceGetName", handle, gpu=gpu)),
            memory_total_bytes=_opt_int(memory.total) if memory is not None else None,
            memory_used_bytes=_opt_int(memory.used) if memory is not None else None,
            mig_mode=mig_mode,
            mig_devices=mig_devices,
            sm_utilization_percent=_opt_int(util.gpu) if util is not None else None,
            memory_utilization_percent=_opt_int(util.memory) if util is not None else None,
            power_mw=_opt_int(p.call("nvmlDeviceGetPowerUsage", handle, gpu=gpu)),
            power_limit_mw=_opt_int(p.call("nvmlDeviceGetEnforcedPowerLimit", handle, gpu=gpu)),
            energy_mj=_opt_int(p.call("nvmlDeviceGetTotalEnergyConsumption", handle, gpu=gpu)),
            processes=processes,
            utilization_samples=self._samples(p, handle, gpu, uuid),
        )

    @staticmethod
    def _mig_mode(p: _Pass, handle: Any, gpu: str) -> MigMode:
        try:
            current, _pending = p.nvml.nvmlDeviceGetMigMode(handle)
        except pynvml.NVMLError as err:
            error = nvml_error_name(err)
            if error in FATAL_ERRORS:
                raise _FatalNvmlError("nvmlDeviceGetMigMode", err) from err
            if error == "NotSupported":
                return MigMode.UNSUPPORTED
            p.errors.append(CallError("nvmlDeviceGetMigMode", error, gpu))
            return MigMode.UNKNOWN
        return MigMode.ENABLED if current == pynvml.NVML_DEVICE_MIG_ENABLE else MigMode.DISABLED

    @staticmethod
    def _processes(
        p: _Pass, handle: Any, gpu: str, gpu_instance_id: int | None
    ) -> tuple[ProcessReading, ...]:
        procs = p.call("nvmlDeviceGetComputeRunningProcesses", handle, gpu=gpu) or []
        return tuple(
            ProcessReading(
                pid=int(proc.pid),
                used_memory_bytes=_opt_int(proc.usedGpuMemory),
                gpu_instance_id=gpu_instance_id,
            )
            for proc in procs
        )

    def _samples(
        self, p: _Pass, handle: Any, gpu: str, uuid: str
    ) -> tuple[UtilizationSample, ...] | None:
        since = self._last_sample_us.get(uuid, 0)
        try:
            raw = p.nvml.nvmlDeviceGetProcessUtilization(handle, since)
        except pynvml.NVMLError as err:
            error = nvml_error_name(err)
            if error in FATAL_ERRORS:
                raise _FatalNvmlError("nvmlDeviceGetProcessUtilization", err) from err
            if error == "NotFound":
                return ()  # no sample since the last pass: every process was idle
            p.errors.append(CallError("nvmlDeviceGetProcessUtilization", error, gpu))
            return None
        samples = tuple(
            UtilizationSample(
                pid=int(s.pid),
                timestamp_us=int(s.timeStamp),
                sm_percent=int(s.smUtil),
                memory_percent=int(s.memUtil),
            )
            for s in raw
            if int(s.timeStamp) > since  # the driver may repeat the sample at `since`
        )
        if samples:
            self._last_sample_us[uuid] = max(s.timestamp_us for s in samples)
        return samples

    def _read_mig_devices(
        self, p: _Pass, parent: Any, gpu: str, device_memory_bytes: int | None
    ) -> tuple[MigDeviceReading, ...]:
        slots = p.call("nvmlDeviceGetMaxMigDeviceCount", parent, gpu=gpu) or 0
        devices: list[MigDeviceReading] = []
        for slot in range(slots):
            handle = p.call("nvmlDeviceGetMigDeviceHandleByIndex", parent, slot, gpu=gpu)
            if handle is None:
                continue
            uuid = _as_str(p.call("nvmlDeviceGetUUID", handle, gpu=gpu))
            gi = p.call("nvmlDeviceGetGpuInstanceId", handle, gpu=gpu)
            ci = p.call("nvmlDeviceGetComputeInstanceId", handle, gpu=gpu)
            if uuid is None or gi is None or ci is None:
                continue
            memory = p.call("nvmlDeviceGetMemoryInfo", handle, gpu=gpu)
            devices.append(
                MigDeviceReading(
                    gpu_instance_id=int(gi),
                    compute_instance_id=int(ci),
                    uuid=uuid,
                    profile=self._profile(
                        p, parent, handle, gpu, uuid, int(gi), device_memory_bytes
                    ),
                    memory_total_bytes=_opt_int(memory.total) if memory is not None else None,
                    memory_used_bytes=_opt_int(memory.used) if memory is not None else None,
                    processes=self._processes(p, handle, gpu, int(gi)),
                )
            )
        return tuple(sorted(devices, key=lambda d: (d.gpu_instance_id, d.compute_instance_id)))

    def _profile(
        self,
        p: _Pass,
        parent: Any,
        handle: Any,
        gpu: str,
        uuid: str,
        gpu_instance_id: int,
        device_memory_bytes: int | None,
    ) -> str | None:
        attrs = p.call("nvmlDeviceGetAttributes", handle, gpu=gpu)
        if attrs is None or not device_memory_bytes:
            return None
        gpu_slices = int(attrs.gpuInstanceSliceCount)
        if uuid not in self._profile_suffix:
            self._profile_suffix[uuid] = self._suffix(
                p, parent, gpu, gpu_instance_id, gpu_slices, int(attrs.sharedOfaCount)
            )
        return mig_profile_name(
            gpu_slices=gpu_slices,
            compute_slices=int(attrs.computeInstanceSliceCount),
            memory_mib=int(attrs.memorySizeMB),
            device_memory_bytes=device_memory_bytes,
            suffix=self._profile_suffix[uuid],
        )

    @staticmethod
    def _suffix(
        p: _Pass, parent: Any, gpu: str, gpu_instance_id: int, gpu_slices: int, ofa: int
    ) -> str:
        """The profile's attribute suffix from its GPU instance profile ID. Reading that
        needs MIG monitoring rights; without them, a small instance with the optical-flow
        engine is taken for a "+me" one (true of the A100, A30, H100 and H200 profiles)."""
        instance = p.call("nvmlDeviceGetGpuInstanceById", parent, gpu_instance_id, gpu=gpu)
        info = p.call("nvmlGpuInstanceGetInfo", instance, gpu=gpu) if instance is not None else None
        if info is not None:
            return _PROFILE_SUFFIX.get(int(info.profileId), "")
        return "+me" if ofa > 0 and gpu_slices < _FULL_GPU_SLICES else ""
