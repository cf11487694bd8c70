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

In the steady state a batch of B admits B / mean_output prompts per step (chunked prefill), and
B is capped by max_num_seqs, the KV cache and the step's token budget (`saturated_batch`).

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
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from statistics import NormalDist
from typing import Any

import yaml

from slmpack.catalog.models import decode_flops_per_token, kv_bytes_for_sequence, weight_bytes
from slmpack.catalog.types import GPUSpec, KvDtype, MigProfile, ModelSpec, WeightDtype
from slmpack.planner.types import EngineSettings, PerfPoint, SharingMode, Workload

#: The co-location fixed point is solved to this share of the GPU phase.
_FIXED_POINT_TOLERANCE = 1e-9
#: The operating batch is the centre of the cell, 1/512 of the largest batch wide, that holds
#: the batch carrying the load (half a sequence or finer up to 256 sequences). The grid is part
#: of the model, not a solver tolerance: TTFT p99 near the Erlang C threshold moves by up to
#: 16% when the operating batch moves within a cell.
_BATCH_CELLS = 512
#: Root-finder evaluations before giving up; it needs under 10 at these tolerances.
_ROOT_ITERATIONS = 100


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
    return _StepCosts.of(model, engine, workload, device, params).at(running_seqs)


@dataclass(frozen=True)
class _StepCosts:
    """engine_step for one model, engine, workload and device at any batch size."""

    workload: Workload
    device: Device
    params: PerfParams
    weights_bytes: int
    kv_bytes_per_seq: int  # read per running sequence at its mean context
    decode_flops_per_token: float
    prefill_flops_per_token: float

    @classmethod
    def of(
        cls,
        model: ModelSpec,
        engine: EngineSettings,
        workload: Workload,
        device: Device,
        params: PerfParams,
    ) -> _StepCosts:
        terms = _step_terms(model, engine.weight_dtype, engine.kv_dtype, workload)
        return cls(workload, device, params, *terms)

    def at(self, running_seqs: float) -> EngineStep:
        workload = self.workload
        # Steady state: a sequence lives mean_output steps, so running/mean_output join per step.
        prefill = running_seqs * workload.mean_input_tokens / workload.mean_output_tokens
        return price_step(
            self.device,
            self.params,
            self.weights_bytes,
            running_seqs * self.kv_bytes_per_seq,
            running_seqs * self.decode_flops_per_token + prefill * self.prefill_flops_per_token,
            running_seqs,
            prefill,
        )


def price_step(
    device: Device,
    params: PerfParams,
    weights_bytes: float,
    kv_read_bytes: float,
    flops: float,
    running_seqs: float,
    prefill_tokens: float,
) -> EngineStep:
    """Cost of one step alone on `device`, from what it reads and computes.

    The roofline of the module docstring: the weights at `bandwidth_efficiency`, the KV read by
    attention (`kv_read_bytes`) at `attention_bandwidth_efficiency`, against `flops` at
    `compute_efficiency`; then the CPU phase for `running_seqs` scheduled sequences and
    `prefill_tokens` prompt tokens. `engine_step` feeds it a steady-state batch built from
    workload means; the simulator feeds it the batch it actually scheduled.
    """
    memory_s = (
        weights_bytes / params.bandwidth_efficiency
        + kv_read_bytes / params.attention_bandwidth_efficiency
    ) / device.bandwidth_bytes_per_s
    compute_s = flops / (params.compute_efficiency * device.flops_per_s)
    gpu_s = max(memory_s, compute_s) + params.gpu_step_overhead_s
    cpu_s = (
        params.cpu_step_base_s
        + params.cpu_per_seq_s * running_seqs
        + params.cpu_per_prefill_token_s * prefill_tokens
    )
    return EngineStep(
        running_seqs, prefill_tokens, weights_bytes + kv_read_bytes, flops, gpu_s, cpu_s
    )


@lru_cache(maxsize=1024)
def _step_terms(
    model: ModelSpec, weight_dtype: WeightDtype, kv_dtype: KvDtype, workload: Workload
) -> tuple[int, int, float, float]:
    """The batch-independent terms of _StepCosts, shared by every batch size and packing the
    planner tries for one model."""
    mean_context = workload.mean_input_tokens + workload.mean_output_tokens // 2
    return (
        weight_bytes(model, weight_dtype),
        kv_bytes_for_sequence(model, mean_context, kv_dtype),
        decode_flops_per_token(model, mean_context),
        decode_flops_per_token(model, workload.mean_input_tokens // 2),
    )


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
    overlap = params.cpu_gpu_overlap_ratio
    if engines == 1:
        return Cycle(step, _combine(step.cpu_s, step.gpu_s, overlap), step.gpu_s, 1.0)
    solo_util = step.utilisation(device)
    cpu_s, solo_gpu_s, others = step.cpu_s, step.gpu_s, engines - 1

    def excess(gpu_phase: float) -> float:
        k = 1.0 + others * min(1.0, gpu_phase / _combine(cpu_s, gpu_phase, overlap))
        return solo_gpu_s * k / _speedup(mode, k, solo_util, params) - gpu_phase

    # The stretched phase g * k / r(k) never falls as k rises, and k never falls as the phase
    # grows, so the fixed point lies between the solo phase and the phase with every engine
    # contending.
    low, high = solo_gpu_s, solo_gpu_s * engines / _speedup(mode, engines, solo_util, params)
    excess_low = excess(low)
    if excess_low <= 0.0 or high <= low:
        gpu_phase = low
    else:
        excess_high = excess(high)
        if excess_high >= 0.0:  # every engine contends all the time: no CPU phase shows
            gpu_phase = high
        else:
            gpu_phase = _root(excess, low, excess_low, high, excess_high, _FIXED_POINT_TOLERANCE)
    cycle = _combine(cpu_s, gpu_phase, overlap)
    return Cycle(step, cycle, gpu_phase, 1.0 + others * min(1.0, gpu_phase / cycle))


def _root(
    fn: Callable[[float], float],
    low: float,
    f_low: float,
    high: float,
    f_high: float,
    tol: float,
    cell: float = 0.0,
) -> float:
    """A root of `fn` between `low` and `high`, where it changes sign, once the bracket or the
    residual is within `tol` of it.

    With a `cell` width it stops as soon as the bracket lies within one cell and returns a point
    inside it, for callers that need only the cell holding the root.

    Regula falsi with the Anderson-Bjorck weighting: near-linear functions such as these
    converge in a few evaluations, and shrinking the value kept at the end that did not move
    makes the bracket close from both sides.
    """
    moved = 0  # the end the last probe replaced: 1 high, -1 low
    for _ in range(_ROOT_ITERATIONS):
        if f_low == 0.0:
            return low
        if f_high == 0.0:
            return high
        if high - low <= tol * high:
            break
        x = high - f_high * (high - low) / (f_high - f_low)
        if cell:
            first = math.floor(low / cell)
            last = math.ceil(high / cell) - 1
            if first >= last:
                break
            # Probe the centre of the estimate's cell, which the caller is likely to want, or
            # its far edge once one end of the bracket sits in it.
            estimate = min(max(math.floor(x / cell), first), last)
            if estimate == first:
                x = (first + 1) * cell
            elif estimate == last:
                x = last * cell
            else:
                x = (estimate + 0.5) * cell
        fx = fn(x)
        if abs(fx) <= tol * abs(x):
            return x
        if (fx > 0.0) == (f_high > 0.0):
            if moved == 1:
                weight = 1.0 - fx / f_high
                f_low *= weight if weight > 0.0 else 0.5
            high, f_high, moved = x, fx, 1
        else:
            if moved == -1:
                weight = 1.0 - fx / f_low
                f_high *= weight if weight > 0.0 else 0.5
            low, f_low, moved = x, fx, -1
    return (low + high) / 2


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
    return _queue_waits_s(servers, offered_erlangs, service_s, (quantile,))[0]


def _queue_waits_s(
    servers: int, offered_erlangs: float, service_s: float, quantiles: tuple[float, ...]
) -> tuple[float, ...]:
    """queue_wait_quantile_s at several quantiles, sharing one Erlang C sum."""
    if offered_erlangs >= servers:
        return tuple(math.inf for _ in quantiles)
    p_wait = erlang_c_wait_probability(servers, offered_erlangs)
    drain_rate = (servers - offered_erlangs) / service_s
    return tuple(
        0.0 if p_wait <= 1.0 - q else math.log(p_wait / (1.0 - q)) / drain_rate for q in quantiles
    )


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
    batch = saturated_batch(engine, workload, kv_capacity_tokens)
    steps = _StepCosts.of(model, engine, workload, device, params)
    saturated = colocated_cycle(steps.at(batch), engines, shape.mode, device, params)
    replicas = engines * shape.devices_per_gpu
    output_tps = replicas * batch / saturated.cycle_s
    total_factor = workload.tokens_per_request / workload.mean_output_tokens

    operating = _operating_cycle(steps, shape, saturated, output_tps * load_ratio / replicas)
    latency = _latencies(model, engine, workload, shape, params, operating, batch)

    activity = _activity(gpu, shape, saturated, params)
    return PerfPoint(
        total_tokens_per_s=output_tps * total_factor,
        output_tokens_per_s=output_tps,
        effective_batch_per_replica=batch,
        step_s=saturated.cycle_s,
        itl_p99_s=latency.itl_p99_s,
        ttft_p50_s=latency.ttft_p50_s,
        ttft_p99_s=latency.ttft_p99_s,
        gpu_busy_ratio=activity.busy_ratio,
        dram_active_ratio=activity.dram_active_ratio,
        tensor_active_ratio=activity.tensor_active_ratio,
        power_watts=activity.power_watts,
    )


@dataclass(frozen=True)
class LoadPoint:
    """One GPU of a packing carrying a given output load below saturation."""

    output_tokens_per_s: float  # per GPU, as offered
    load_ratio: float  # of the saturated throughput
    batch_per_replica: float  # running sequences that carry the load (Little's law)
    step_s: float  # mean inter-token latency at that batch
    gpu_busy_ratio: float
    power_watts: float

    @property
    def tokens_per_joule(self) -> float:
        """Output tokens per joule."""
        return self.output_tokens_per_s / self.power_watts if self.power_watts > 0 else 0.0


def predict_at_load(
    model: ModelSpec,
    gpu: GPUSpec,
    shape: PackingShape,
    engine: EngineSettings,
    workload: Workload,
    kv_capacity_tokens: float,
    params: PerfParams,
    output_tokens_per_s: float,
) -> LoadPoint:
    """Batch, step and power of one GPU serving `output_tokens_per_s` (below saturation).

    `predict` reports power at saturation, where the reference figures were measured. A GPU
    serving less runs smaller batches whose steps are shorter but no less busy: the weight
    reads and the fixed per-step costs stay, so its power falls far less than its load.
    """
    engines = shape.engines_per_device
    replicas = engines * shape.devices_per_gpu
    batch = saturated_batch(engine, workload, kv_capacity_tokens)
    steps = _StepCosts.of(model, engine, workload, shape.device, params)
    saturated = colocated_cycle(steps.at(batch), engines, shape.mode, shape.device, params)
    capacity = replicas * batch / saturated.cycle_s
    if not 0.0 < output_tokens_per_s < capacity:
        raise ValueError(
            f"a load of {output_tokens_per_s:.0f} output tokens/s is not below this packing's "
            f"saturated {capacity:.0f}"
        )
    operating = _operating_cycle(steps, shape, saturated, output_tokens_per_s / replicas)
    activity = _activity(gpu, shape, operating, params)
    return LoadPoint(
        output_tokens_per_s=output_tokens_per_s,
        load_ratio=output_tokens_per_s / capacity,
        batch_per_replica=operating.step.running_seqs,
        step_s=operating.cycle_s,
        gpu_busy_ratio=activity.busy_ratio,
        power_watts=activity.power_watts,
    )


@dataclass(frozen=True)
class _Activity:
    busy_ratio: float
    dram_active_ratio: float
    tensor_active_ratio: float
    power_watts: float


def _activity(gpu: GPUSpec, shape: PackingShape, cycle: Cycle, params: PerfParams) -> _Activity:
    """What DCGM would read off the whole GPU while every replica runs `cycle`."""
    engines = shape.engines_per_device
    replicas = engines * shape.devices_per_gpu
    busy_one = min(1.0, cycle.gpu_phase_s / cycle.cycle_s)
    device_busy = 1.0 - (1.0 - busy_one) ** engines
    bytes_per_s = replicas * cycle.step.bytes_moved / cycle.cycle_s
    flops_per_s = replicas * cycle.step.flops / cycle.cycle_s
    dram_active = min(1.0, bytes_per_s / gpu.memory_bandwidth_bytes_per_s)
    # MIG instances run side by side: the whole GPU is busy in proportion to the slices in use.
    busy = device_busy * (shape.device.flops_per_s * shape.devices_per_gpu / gpu.bf16_dense_flops)
    busy = min(1.0, busy)
    tensor_active = min(1.0, flops_per_s / gpu.bf16_dense_flops)
    return _Activity(busy, dram_active, tensor_active, power_watts(gpu, dram_active, busy, params))


def saturated_batch(engine: EngineSettings, workload: Workload, kv_capacity_tokens: float) -> float:
    """Running sequences of one saturated engine: the smallest of three limits.

    - `max_num_seqs`;
    - the KV cache: a running sequence holds up to input + output tokens; beyond that vLLM
      preempts;
    - the step's token budget: vLLM's chunked prefill shares `max_num_batched_tokens` per step
      between decodes (one token each) and prompt chunks. A batch of B sequences finishes, and
      so admits, B / mean_output requests per step, so each step carries B * (1 + input /
      output) tokens. With short outputs this binds first: new prompts crowd out decodes and
      the batch never reaches `max_num_seqs`.
    """
    kv_limited = kv_capacity_tokens / workload.tokens_per_request
    per_seq_tokens = 1.0 + workload.mean_input_tokens / workload.mean_output_tokens
    budget_limited = engine.max_num_batched_tokens / per_seq_tokens
    return max(1.0, min(float(engine.max_num_seqs), kv_limited, budget_limited))


def power_watts(gpu: GPUSpec, dram_active: float, busy: float, params: PerfParams) -> float:
    """Board power from activity, capped at TDP."""
    dynamic = params.power_dram_weight * dram_active + params.power_busy_weight * busy
    return min(gpu.tdp_watts, gpu.idle_watts + (gpu.tdp_watts - gpu.idle_watts) * dynamic)


def _operating_cycle(
    steps: _StepCosts, shape: PackingShape, saturated: Cycle, output_tps_per_replica: float
) -> Cycle:
    """Cycle at the running-batch size that carries the offered load (a root of Little's law)."""
    cycles: dict[float, Cycle] = {saturated.step.running_seqs: saturated}

    def cycle_at(batch: float) -> Cycle:
        if batch not in cycles:
            cycles[batch] = colocated_cycle(
                steps.at(batch), shape.engines_per_device, shape.mode, shape.device, steps.params
            )
        return cycles[batch]

    def surplus(batch: float) -> float:
        # The batch drains batch/cycle tokens per second; it grows until that meets the load.
        return batch - output_tps_per_replica * cycle_at(batch).cycle_s

    # Throughput rises with the batch: none at an empty batch, the saturated rate at the largest.
    # Only the sign at an empty batch is certain without solving there; its size is estimated
    # with the saturated slowdown, which is enough to aim the first probe near the root.
    max_batch = saturated.step.running_seqs
    empty = steps.at(0.0)
    empty_cycle_s = _combine(
        empty.cpu_s, empty.gpu_s * saturated.slowdown, steps.params.cpu_gpu_overlap_ratio
    )
    cell = max_batch / _BATCH_CELLS
    root = _root(
        surplus,
        0.0,
        -output_tps_per_replica * empty_cycle_s,
        max_batch,
        surplus(max_batch),
        0.0,
        cell,
    )
    return cycle_at((min(math.floor(root / cell), _BATCH_CELLS - 1) + 0.5) * cell)


#: Standard normal quantile at 0.99.
_Z99 = 2.3263


def _lognormal_sigma(mean: float, p99: float) -> float:
    """The log-sd of a lognormal with this mean and 99th percentile (the lighter-tailed root of
    ln(p99 / mean) = z99 sigma - sigma^2 / 2; the heaviest tail the two allow when none is)."""
    gap = math.log(max(p99, mean) / mean)
    disc = _Z99**2 - 2.0 * gap
    return _Z99 - math.sqrt(disc) if disc > 0 else _Z99


def p99_step_prefill_tokens(workload: Workload, running_seqs: float) -> float:
    """Prompt tokens the slowest 1% of decode steps carry, before the step budget caps them.

    Every running sequence sees each step's gap, so the ITL p99 is the step at the 99th
    percentile of prefill work. In steady state running / mean_output requests join per step
    (Little's law), Poisson; prompts are lognormal with the workload's mean and p99. When joins
    are rare, the p99 step holds one prompt at the (1 - 0.01 / P(any join)) quantile; when
    many join, the per-step sum is close to normal. The larger of the two keeps the estimate
    conservative between those regimes; a step where a join is rarer than 1% adds nothing.
    """
    joins = running_seqs / workload.mean_output_tokens
    share = 1.0 - math.exp(-joins)
    if share <= 0.01:
        return 0.0
    mean = float(workload.mean_input_tokens)
    sigma = _lognormal_sigma(mean, workload.p99_input_tokens)
    mu = math.log(mean) - sigma**2 / 2
    one = math.exp(mu + sigma * NormalDist().inv_cdf(1.0 - 0.01 / share))
    many = joins * mean + _Z99 * math.sqrt(joins * mean**2 * math.exp(sigma**2))
    return max(one, many)


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

    chunk = p99_step_prefill_tokens(workload, operating.step.running_seqs)
    chunk = min(chunk, engine.max_num_batched_tokens)
    # The operating step already carries the mean prefill; the p99 gap adds what lies above it.
    mean_prefill = operating.step.running_seqs * workload.mean_input_tokens
    mean_prefill /= workload.mean_output_tokens
    extra_chunks = max(0, math.ceil(workload.p99_input_tokens / engine.max_num_batched_tokens) - 1)
    # Each replica's batch slots are servers; a request holds one for mean_output steps. The
    # router spreads load evenly, so one replica's queue stands for all.
    servers = max(1, int(max_batch))
    service_s = workload.mean_output_tokens * step_s
    offered = operating.step.running_seqs
    wait_p50, wait_p99 = _queue_waits_s(servers, offered, service_s, (0.5, 0.99))
    return _Latency(
        itl_p99_s=step_s + prefill_s(max(0, math.ceil(chunk - mean_prefill))),
        ttft_p50_s=wait_p50 + step_s + prefill_s(workload.mean_input_tokens),
        ttft_p99_s=wait_p99 + (1 + extra_chunks) * step_s + prefill_s(workload.p99_input_tokens),
    )
