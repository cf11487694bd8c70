"""Calibrated performance and power model of vLLM replicas sharing one GPU.

One engine runs a loop of steps. Each step has a CPU phase (scheduling, sampling, output
processing: `cpu_s`) and a GPU phase (`gpu_s`). The GPU phase follows a roofline:

    gpu_s = max(weights / (bandwidth_efficiency * peak_bandwidth)
                  + kv_read / (attention_bandwidth_efficiency * peak_bandwidth),
                flops / (compute_efficiency * peak_flops)) + gpu_step_overhead_s

    kv_read = KV of every running sequence at its mean context (paged attention reads it at a
              lower efficiency than the dense weight GEMMs, the bottleneck the reference
              paper identifies)
    flops = (decode tokens + prefill tokens admitted this step) * FLOPs per token

Several engines on one GPU overlap one engine's CPU phase with another's GPU phase, which is
where packing gains throughput. When k engines are in their GPU phase together, the GPU serves
them at an aggregate speed r(k) relative to one engine alone:

- MPS overlaps kernels: r(k) = min(k, concurrent_bandwidth_efficiency / solo_utilisation), so
  the gain is capped by the bandwidth one engine leaves unused (and falls below 1 when the
  overlapping kernels interfere more than they fill).
- Time-slicing (and Packed, whose engines share the GPU the same way) serialises contexts and
  pays a switch cost: r(k) = 1 / (1 + time_slice_overhead_ratio) once two contend.
- MIG partitions bandwidth and SMs by slices; each instance is a small exclusive GPU.

A mean-value fixed point gives the cycle: T = cpu (+) G, with G = g * k / r(k) and
k = 1 + (n - 1) * G / T the mean number of engines in their GPU phase. Latencies come from the
same model at the operating load, with an M/M/c (Erlang C) queue in front of the batch slots.
Power is idle + (TDP - idle) * (w_dram * DRAM activity + w_busy * busy ratio), capped at TDP.

The constants live in `perf_params.yaml`, fitted by `hack/calibrate.py` to published figures so
later measurements on real GPUs can recalibrate them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from slmpack.catalog.models import decode_flops_per_token, kv_bytes_for_sequence, weight_bytes
from slmpack.catalog.types import GPUSpec, MigProfile, ModelSpec
from slmpack.planner.types import EngineSettings, PerfPoint, SharingMode, Workload

#: Fixed-point iterations for the co-location model; it converges in well under 30.
_FIXED_POINT_ITERATIONS = 60
_FIXED_POINT_TOLERANCE = 1e-7
#: The operating batch is found to this share of the largest batch (well below one sequence).
_BISECTION_TOLERANCE = 1e-3


@dataclass(frozen=True)
class PerfParams:
    """Fitted constants of the performance and power model (see perf_params.yaml)."""

    bandwidth_efficiency: float  # achieved / peak DRAM bandwidth of the weight GEMMs
    attention_bandwidth_efficiency: float  # the same for paged-attention KV reads
    compute_efficiency: float  # achieved / peak dense tensor FLOP/s
    concurrent_bandwidth_efficiency: float  # ceiling reached by overlapping kernels (MPS)
    gpu_step_overhead_s: float  # launch gaps and small kernels per step
    cpu_step_base_s: float  # scheduler + sampler + output processing per step
    cpu_per_seq_s: float  # per running sequence per step
    cpu_per_prefill_token_s: float  # per prompt token admitted
    cpu_gpu_overlap_ratio: float  # 0: synchronous engine loop, 1: CPU fully hidden
    time_slice_overhead_ratio: float  # context-switch cost under time-slicing
    power_dram_weight: float  # share of (TDP - idle) drawn at full DRAM activity
    power_busy_weight: float  # share of (TDP - idle) drawn while kernels run

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> PerfParams:
        names = {f.name for f in fields(cls)}
        missing = sorted(names - data.keys())
        if missing:
            raise ValueError(f"performance parameters miss {', '.join(missing)}")
        values = {name: float(data[name]) for name in names}
        return cls(**values)


@cache
def default_perf_params() -> PerfParams:
    text = resources.files("slmpack.planner").joinpath("perf_params.yaml").read_text()
    return load_perf_params_text(text)


def load_perf_params(path: Path) -> PerfParams:
    return load_perf_params_text(path.read_text())


def load_perf_params_text(text: str) -> PerfParams:
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("params"), dict):
        raise ValueError("a performance parameter file needs a 'params' mapping")
    return PerfParams.from_mapping(doc["params"])


@dataclass(frozen=True)
class Device:
    """What one engine sees: a whole GPU or one MIG instance."""

    bandwidth_bytes_per_s: float
    flops_per_s: float
    memory_bytes: int

    @classmethod
    def whole(cls, gpu: GPUSpec) -> Device:
        return cls(gpu.memory_bandwidth_bytes_per_s, gpu.bf16_dense_flops, gpu.memory_bytes)

    @classmethod
    def mig(cls, gpu: GPUSpec, profile: MigProfile) -> Device:
        # Hardware partitioning: DRAM bandwidth follows memory slices, SMs follow compute slices.
        return cls(
            gpu.memory_bandwidth_bytes_per_s * profile.memory_slices / 8,
            gpu.bf16_dense_flops * profile.compute_slices / 7,
            profile.memory_bytes,
        )


@dataclass(frozen=True)
class EngineStep:
    """One decode step of one engine running alone on its device."""

    running_seqs: float
    prefill_tokens: float
    bytes_moved: float
    flops: float
    gpu_s: float
    cpu_s: float

    def utilisation(self, device: Device) -> float:
        """Share of the device's peak the GPU phase achieves (the roofline's binding side)."""
        if self.gpu_s <= 0:
            return 0.0
        return max(
            self.bytes_moved / (self.gpu_s * device.bandwidth_bytes_per_s),
            self.flops / (self.gpu_s * device.flops_per_s),
        )


def engine_step(
    model: ModelSpec,
    engine: EngineSettings,
    workload: Workload,
    device: Device,
    params: PerfParams,
    running_seqs: float,
) -> EngineStep:
    """Cost of one decode step with `running_seqs` sequences in the batch."""
    mean_context = workload.mean_input_tokens + workload.mean_output_tokens // 2
    # Steady state: a sequence lives mean_output steps, so running/mean_output new ones per step.
    prefill = running_seqs * workload.mean_input_tokens / workload.mean_output_tokens
    kv_read = running_seqs * kv_bytes_for_sequence(model, mean_context, engine.kv_dtype)
    weights = weight_bytes(model, engine.weight_dtype)
    bytes_moved = weights + kv_read
    flops = running_seqs * decode_flops_per_token(model, mean_context) + prefill * (
        decode_flops_per_token(model, workload.mean_input_tokens // 2)
    )
    memory_s = (
        weights / params.bandwidth_efficiency + kv_read / params.attention_bandwidth_efficiency
    ) / device.bandwidth_bytes_per_s
    compute_s = flops / (params.compute_efficiency * device.flops_per_s)
    gpu_s = max(memory_s, compute_s) + params.gpu_step_overhead_s
    cpu_s = (
        params.cpu_step_base_s
        + params.cpu_per_seq_s * running_seqs
        + params.cpu_per_prefill_token_s * prefill
    )
    return EngineStep(running_seqs, prefill, bytes_moved, flops, gpu_s, cpu_s)


def _speedup(mode: SharingMode, contenders: float, solo_util: float, params: PerfParams) -> float:
    """Aggregate GPU service speed with `contenders` engines in their GPU phase (1 = one alone)."""
    if contenders <= 1.0:
        return contenders if contenders > 0 else 1.0
    if mode is SharingMode.MPS:
        ceiling = params.concurrent_bandwidth_efficiency / max(solo_util, 1e-9)
        if ceiling >= 1.0:
            return min(contenders, ceiling)
        # Overlapping kernels can also interfere (L2 and DRAM-page thrash): below solo speed.
        return 1.0 - (1.0 - ceiling) * min(1.0, contenders - 1.0)
    if mode in (SharingMode.TIME_SLICING, SharingMode.PACKED):
        contention = min(1.0, contenders - 1.0)
        return 1.0 / (1.0 + params.time_slice_overhead_ratio * contention)
    return 1.0


def _combine(cpu_s: float, gpu_s: float, overlap: float) -> float:
    return max(cpu_s, gpu_s) + (1.0 - overlap) * min(cpu_s, gpu_s)


@dataclass(frozen=True)
class Cycle:
    """Steady-state loop of one engine among `engines` co-located ones."""

    step: EngineStep
    cycle_s: float  # mean step time = mean inter-token latency
    gpu_phase_s: float  # GPU phase stretched by contention
    contenders: float  # mean engines in their GPU phase while one is

    @property
    def slowdown(self) -> float:
        return self.gpu_phase_s / self.step.gpu_s


def colocated_cycle(
    step: EngineStep, engines: int, mode: SharingMode, device: Device, params: PerfParams
) -> Cycle:
    """Solve the mean-value fixed point for `engines` identical engines sharing one device."""
    solo_util = step.utilisation(device)
    gpu_phase = step.gpu_s
    cycle = _combine(step.cpu_s, gpu_phase, params.cpu_gpu_overlap_ratio)
    contenders = 1.0
    if engines == 1:
        return Cycle(step, cycle, gpu_phase, contenders)
    for _ in range(_FIXED_POINT_ITERATIONS):
        contenders = 1.0 + (engines - 1) * min(1.0, gpu_phase / cycle)
        speed = _speedup(mode, contenders, solo_util, params)
        target = step.gpu_s * contenders / speed
        previous = gpu_phase
        gpu_phase = 0.5 * gpu_phase + 0.5 * target  # damped: the map oscillates undamped
        cycle = _combine(step.cpu_s, gpu_phase, params.cpu_gpu_overlap_ratio)
        if abs(gpu_phase - previous) <= _FIXED_POINT_TOLERANCE * gpu_phase:
            break
    return Cycle(step, cycle, gpu_phase, contenders)


def erlang_c_wait_probability(servers: int, offered_erlangs: float) -> float:
    """Probability an arrival waits in an M/M/c queue (Erlang C), computed stably."""
    if servers <= 0:
        return 1.0
    if offered_erlangs >= servers:
        return 1.0
    erlang_b = 1.0
    for k in range(1, servers + 1):
        erlang_b = offered_erlangs * erlang_b / (k + offered_erlangs * erlang_b)
    utilisation = offered_erlangs / servers
    return erlang_b / (1.0 - utilisation + utilisation * erlang_b)


def queue_wait_quantile_s(
    servers: int, offered_erlangs: float, service_s: float, quantile: float
) -> float:
    """Wait before admission at `quantile` in an M/M/c queue (0 when most arrivals never wait)."""
    if offered_erlangs >= servers:
        return math.inf
    p_wait = erlang_c_wait_probability(servers, offered_erlangs)
    tail = 1.0 - quantile
    if p_wait <= tail:
        return 0.0
    drain_rate = (servers - offered_erlangs) / service_s
    return math.log(p_wait / tail) / drain_rate


@dataclass(frozen=True)
class PackingShape:
    """How engines sit on one physical GPU."""

    mode: SharingMode
    engines_per_device: int  # engines sharing one device (GPU or MIG instance)
    devices_per_gpu: int  # 1, or the number of MIG instances
    device: Device


def predict(
    model: ModelSpec,
    gpu: GPUSpec,
    shape: PackingShape,
    engine: EngineSettings,
    workload: Workload,
    kv_capacity_tokens: float,
    params: PerfParams,
    load_ratio: float = 0.8,
) -> PerfPoint:
    """Saturated throughput per GPU, and latencies when the GPU carries `load_ratio` of it."""
    if not 0.0 < load_ratio < 1.0:
        raise ValueError("load_ratio must lie strictly between 0 and 1")
    engines = shape.engines_per_device
    device = shape.device
    # A running sequence holds up to input+output tokens of KV; beyond that vLLM preempts.
    kv_limited = kv_capacity_tokens / workload.tokens_per_request
    batch = max(1.0, min(float(engine.max_num_seqs), kv_limited))
    saturated = colocated_cycle(
        engine_step(model, engine, workload, device, params, batch),
        engines,
        shape.mode,
        device,
        params,
    )
    replicas = engines * shape.devices_per_gpu
    output_tps = replicas * batch / saturated.cycle_s
    total_factor = workload.tokens_per_request / workload.mean_output_tokens

    operating = _operating_cycle(
        model, engine, workload, shape, params, batch, output_tps * load_ratio / replicas
    )
    latency = _latencies(model, engine, workload, shape, params, operating, batch)

    busy_one = min(1.0, saturated.gpu_phase_s / saturated.cycle_s)
    device_busy = 1.0 - (1.0 - busy_one) ** engines
    bytes_per_s = replicas * saturated.step.bytes_moved / saturated.cycle_s
    flops_per_s = replicas * saturated.step.flops / saturated.cycle_s
    dram_active = min(1.0, bytes_per_s / gpu.memory_bandwidth_bytes_per_s)
    # MIG instances run side by side: the whole GPU is busy in proportion to the slices in use.
    busy = device_busy * (shape.device.flops_per_s * shape.devices_per_gpu / gpu.bf16_dense_flops)
    busy = min(1.0, busy)
    tensor_active = min(1.0, flops_per_s / gpu.bf16_dense_flops)
    power = power_watts(gpu, dram_active, busy, params)
    return PerfPoint(
        total_tokens_per_s=output_tps * total_factor,
        output_tokens_per_s=output_tps,
        effective_batch_per_replica=batch,
        step_s=saturated.cycle_s,
        itl_p99_s=latency.itl_p99_s,
        ttft_p50_s=latency.ttft_p50_s,
        ttft_p99_s=latency.ttft_p99_s,
        gpu_busy_ratio=busy,
        dram_active_ratio=dram_active,
        tensor_active_ratio=tensor_active,
        power_watts=power,
    )


def power_watts(gpu: GPUSpec, dram_active: float, busy: float, params: PerfParams) -> float:
    """Board power from activity, capped at TDP."""
    dynamic = params.power_dram_weight * dram_active + params.power_busy_weight * busy
    return min(gpu.tdp_watts, gpu.idle_watts + (gpu.tdp_watts - gpu.idle_watts) * dynamic)


def _operating_cycle(
    model: ModelSpec,
    engine: EngineSettings,
    workload: Workload,
    shape: PackingShape,
    params: PerfParams,
    max_batch: float,
    output_tps_per_replica: float,
) -> Cycle:
    """Cycle at the running-batch size that carries the offered load (bisection on Little's law)."""
    low, high = 0.0, max_batch
    cycle = colocated_cycle(
        engine_step(model, engine, workload, shape.device, params, max_batch),
        shape.engines_per_device,
        shape.mode,
        shape.device,
        params,
    )
    while high - low > _BISECTION_TOLERANCE * max_batch:
        mid = (low + high) / 2
        cycle = colocated_cycle(
            engine_step(model, engine, workload, shape.device, params, max(mid, 1e-3)),
            shape.engines_per_device,
            shape.mode,
            shape.device,
            params,
        )
        # The batch drains mid/cycle tokens per second; raise it until that meets the load.
        if mid / cycle.cycle_s < output_tps_per_replica:
            low = mid
        else:
            high = mid
    return cycle


@dataclass(frozen=True)
class _Latency:
    itl_p99_s: float
    ttft_p50_s: float
    ttft_p99_s: float


def _latencies(
    model: ModelSpec,
    engine: EngineSettings,
    workload: Workload,
    shape: PackingShape,
    params: PerfParams,
    operating: Cycle,
    max_batch: float,
) -> _Latency:
    step_s = operating.cycle_s
    prefill_rate = params.compute_efficiency * shape.device.flops_per_s / operating.slowdown

    def prefill_s(tokens: int) -> float:
        return tokens * decode_flops_per_token(model, tokens // 2) / prefill_rate

    chunk = min(workload.p99_input_tokens, engine.max_num_batched_tokens)
    extra_chunks = max(0, math.ceil(workload.p99_input_tokens / engine.max_num_batched_tokens) - 1)
    # Each replica's batch slots are servers; a request holds one for mean_output steps. The
    # router spreads load evenly, so one replica's queue stands for all.
    servers = max(1, int(max_batch))
    service_s = workload.mean_output_tokens * step_s
    offered = operating.step.running_seqs
    wait_p50 = queue_wait_quantile_s(servers, offered, service_s, 0.5)
    wait_p99 = queue_wait_quantile_s(servers, offered, service_s, 0.99)
    return _Latency(
        itl_p99_s=step_s + prefill_s(chunk),
        ttft_p50_s=wait_p50 + step_s + prefill_s(workload.mean_input_tokens),
        ttft_p99_s=wait_p99 + (1 + extra_chunks) * step_s + prefill_s(workload.p99_input_tokens),
    )
