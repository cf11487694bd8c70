"""A simulated serving world for the autotuner: one SLMDeployment on simulated GPUs, driven in
virtual time by the vLLM simulator's engine, seen through what Prometheus would report.

Pure: no clock, no I/O, randomness only from the seeded `random.Random` passed in. The
benchmark `bench/autotune.py` and its test drive it; the policy never imports it.

- **Engines.** Every replica is the simulator's `Scheduler` stepped by its `StepCostModel`
  (the planner's roofline with the batch actually scheduled), with the engine settings and KV
  cache of the planner's candidate for the packing, as the operator would render them.
- **The truth is not the prior.** The world's `PerfParams` are the planner's defaults changed
  by a `Perturbation` (speed, co-location gain, CPU share, power), and requests have the load
  generator's ShareGPT-like lognormal lengths rather than the means the prior assumes, so the
  prior the policy starts from is wrong by a known amount.
- **One representative per GPU shape.** A Kubernetes Service spreads requests at random, so
  every replica of a deployment sees a Poisson stream at 1/R of the rate and the replicas on
  equally filled GPUs are statistically alike. Each distinct GPU fill (all GPUs hold n
  replicas, and possibly one holds fewer) is simulated by one replica whose neighbours run at
  its own recent duty (mean field, as `slmpack.sim.offline` does); its counts are multiplied by
  the replicas it stands for. This keeps a multi-hour trace at seconds per window however many
  GPUs the deployment spans.
- **Power** per GPU is the planner's `power_watts` on the engines' DRAM bytes and busy time,
  combined per GPU as dcgm-sim does (`slmpack.sim.gpu_readings`); energy integrates it.
- **A scale** keeps the replicas that stay as they are, as a Deployment's scale does: new
  replicas start empty, and removed ones drain (the operator's pods finish what they run within
  their termination grace period) for at most one window, taking no new requests, their work
  and energy counted while they drain.
- **A repack** replaces every replica: the old ones drain what they hold, as above, and the new
  ones start empty and take every new request. Model loading time is not modelled: the
  operator's rollout replaces one pod at a time, which costs a share of the capacity for the
  rollout's length, not a queue of recomputed requests.
- **Prometheus.** `snapshot_of` turns a window into the `Snapshot` `collect_snapshot` would
  build: rates and averages over the window with multiplicative log-normal noise, and p99s by
  `histogram_quantile` over vLLM's TTFT and ITL buckets (plus noise).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from slmpack import metricnames as mn
from slmpack.autotune.model import Packing, Prior, PriorPoint
from slmpack.autotune.signals import DeploymentRef, Signal
from slmpack.autotune.snapshot import Snapshot
from slmpack.catalog.types import GPUSpec, ModelSpec
from slmpack.loadgen.lengths import LengthDistribution, sharegpt_input, sharegpt_output
from slmpack.planner.perf import Device, EngineStep, PerfParams, power_watts
from slmpack.planner.types import SharingMode
from slmpack.sim.memory_grant import block_bytes
from slmpack.sim.scheduler import Scheduler, SimRequest
from slmpack.sim.timing import StepCostModel

#: Time constant (simulated s) of the recent duty a replica's mean-field neighbours run at:
#: about the half second dcgm-sim and the sim's engines average activity over.
DUTY_TIME_CONSTANT_S = 0.5
#: The co-location slowdown is recomputed when the batch or the neighbours' duty moves by more
#: than this share (the sim's engine uses the same refresh rule).
SLOWDOWN_REFRESH_RATIO = 0.1


@dataclass(frozen=True)
class Perturbation:
    """How the world differs from the planner's calibrated parameters (1.0 = not at all).

    speed_ratio: every step is this much faster (efficiencies up, fixed costs down).
    colocation_ratio: the MPS overlap ceiling times this, the time-slicing switch cost over it
        (the co-location gain, the least certain part of the perf model).
    cpu_ratio: the engine's CPU phase times this (shifts where packing pays).
    power_ratio: dynamic power (above idle) times this.
    """

    speed_ratio: float = 1.0
    colocation_ratio: float = 1.0
    cpu_ratio: float = 1.0
    power_ratio: float = 1.0

    def apply(self, params: PerfParams) -> PerfParams:
        s, c = self.speed_ratio, self.cpu_ratio
        return replace(
            params,
            bandwidth_efficiency=params.bandwidth_efficiency * s,
            attention_bandwidth_efficiency=params.attention_bandwidth_efficiency * s,
            compute_efficiency=params.compute_efficiency * s,
            gpu_step_overhead_s=params.gpu_step_overhead_s / s,
            cpu_step_base_s=params.cpu_step_base_s * c / s,
            cpu_per_seq_s=params.cpu_per_seq_s * c / s,
            cpu_per_prefill_token_s=params.cpu_per_prefill_token_s * c / s,
            concurrent_bandwidth_efficiency=(
                params.concurrent_bandwidth_efficiency * self.colocation_ratio
            ),
            time_slice_overhead_ratio=params.time_slice_overhead_ratio / self.colocation_ratio,
            power_dram_weight=params.power_dram_weight * self.power_ratio,
            power_busy_weight=params.power_busy_weight * self.power_ratio,
        )

    def as_dict(self) -> dict[str, float]:
        return {
            "speedRatio": self.speed_ratio,
            "colocationRatio": self.colocation_ratio,
            "cpuRatio": self.cpu_ratio,
            "powerRatio": self.power_ratio,
        }


@dataclass(frozen=True)
class World:
    """The truth one deployment runs in: model, GPU, parameters, request lengths."""

    model: ModelSpec
    gpu: GPUSpec
    prior: Prior  # only for the packings' engine settings and KV sizes, never its predictions
    params: PerfParams
    inputs: LengthDistribution = field(default_factory=sharegpt_input)
    outputs: LengthDistribution = field(default_factory=sharegpt_output)

    def point(self, packing: Packing) -> PriorPoint:
        point = self.prior.get(packing)
        if point is None:
            raise ValueError(f"{packing.key} is not among the planned packings")
        return point

    def device(self, packing: Packing) -> Device:
        if packing.mig_profile:
            return Device.mig(self.gpu, self.gpu.mig_profile(packing.mig_profile))
        return Device.whole(self.gpu)

    @property
    def mean_output_tokens(self) -> float:
        return self.outputs.mean


@dataclass
class ReplicaWindow:
    """What one replica did in one window (simulated seconds, counts)."""

    duration_s: float
    generated_tokens: int = 0
    prompt_tokens: int = 0
    finished: int = 0
    preemptions: int = 0
    running_s: float = 0.0  # integral of running requests over time
    waiting_s: float = 0.0
    kv_usage_s: float = 0.0
    gpu_busy_s: float = 0.0  # GPU phase, stretched by the neighbours
    bytes_moved: float = 0.0
    ttft_s: list[float] = field(default_factory=list)
    itl_s: list[float] = field(default_factory=list)
    last_step_end_s: float | None = None  # None: no step ran in the window


class ReplicaSim:
    """One simulated engine, stepped in virtual time under a Poisson stream of requests."""

    def __init__(
        self,
        world: World,
        packing: Packing,
        engines_per_device: int,
        rng: random.Random,
        start_s: float,
    ) -> None:
        point = world.point(packing)
        engine = point.candidate.engine
        self.world = world
        self.rng = rng
        self.engines = engines_per_device
        self.cost = StepCostModel(world.model, engine, world.device(packing), world.params,
                                  packing.mode)  # fmt: skip
        blocks = point.candidate.memory.kv_cache_bytes // block_bytes(world.model, engine)
        self.scheduler = Scheduler(engine.max_num_seqs, engine.max_num_batched_tokens, blocks)
        self.max_model_len = engine.max_model_len
        self.now_s = start_s
        self.next_arrival_s: float | None = None
        self._duty_gpu_s = 0.0
        self._duty_span_s = 0.0
        self._slowdown = 1.0
        self._slowdown_key: tuple[int, float] | None = None
        self._serial = 0

    def _request(self, at_s: float) -> SimRequest:
        self._serial += 1
        prompt = self.world.inputs.sample(self.rng)
        output = max(1, min(self.world.outputs.sample(self.rng), self.max_model_len - prompt))
        return SimRequest(str(self._serial), prompt, output, at_s)

    def fork(self) -> ReplicaSim:
        """An independent copy of this engine's state (its requests, queue and clocks): the
        replicas a scale-in removes, left to drain what this representative holds."""
        shared = {id(self.world): self.world, id(self.cost): self.cost}
        return copy.deepcopy(self, shared)

    def outstanding(self) -> list[SimRequest]:
        return [*self.scheduler.running, *self.scheduler.waiting]

    def _decay(self, span_s: float, gpu_s: float) -> None:
        keep = math.exp(-span_s / DUTY_TIME_CONSTANT_S)
        self._duty_gpu_s = self._duty_gpu_s * keep + gpu_s
        self._duty_span_s = self._duty_span_s * keep + span_s

    def _slowdown_for(self, step: EngineStep, seqs: int) -> float:
        if self.engines <= 1:
            return 1.0
        duty = self._duty_gpu_s / self._duty_span_s if self._duty_span_s > 0 else 0.0
        key = self._slowdown_key
        stale = (
            key is None
            or abs(seqs - key[0]) > SLOWDOWN_REFRESH_RATIO * max(1, seqs)
            or abs(duty - key[1]) > SLOWDOWN_REFRESH_RATIO * max(duty, 1e-3)
        )
        if stale:
            self._slowdown = self.cost.slowdown(step, [duty] * (self.engines - 1))
            self._slowdown_key = (seqs, duty)
        return self._slowdown

    def run(self, end_s: float, rate_per_s: float) -> ReplicaWindow:
        """Serve Poisson arrivals at `rate_per_s` until `end_s`; what the window saw."""
        out = ReplicaWindow(duration_s=end_s - self.now_s)
        scheduler, cost, rng = self.scheduler, self.cost, self.rng
        preempted_before = scheduler.preemptions_total
        if rate_per_s <= 0:
            self.next_arrival_s = None
        elif self.next_arrival_s is None or self.next_arrival_s < self.now_s:
            self.next_arrival_s = self.now_s + rng.expovariate(rate_per_s)
        now = self.now_s
        while now < end_s:
            nxt = self.next_arrival_s
            while nxt is not None and nxt <= now:
                scheduler.add(self._request(nxt))
                nxt += rng.expovariate(rate_per_s)
            self.next_arrival_s = nxt
            if scheduler.idle:
                until = end_s if nxt is None else min(nxt, end_s)
                self._decay(until - now, 0.0)
                now = until
                continue
            batch = scheduler.schedule(now)
            if not batch.work:
                break  # cannot happen with a non-empty queue that fits; guards the loop
            step = cost.step(batch.scheduled_seqs, batch.decode_seqs, batch.decode_context_tokens,
                             batch.prefill_chunks)  # fmt: skip
            slowdown = self._slowdown_for(step, batch.scheduled_seqs)
            cycle = cost.cycle_s(step, slowdown)
            running, waiting = len(scheduler.running), len(scheduler.waiting)
            out.running_s += running * cycle
            out.waiting_s += waiting * cycle
            out.kv_usage_s += scheduler.kv_usage_ratio * cycle
            out.gpu_busy_s += step.gpu_s * slowdown
            out.bytes_moved += step.bytes_moved
            self._decay(cycle, step.gpu_s)
            now += cycle
            out.last_step_end_s = now
            outcome = scheduler.complete(batch, now)
            out.generated_tokens += outcome.generated_tokens
            out.prompt_tokens += outcome.prompt_tokens
            out.finished += len(outcome.finished)
            out.itl_s.extend(outcome.inter_token_s)
            for request in outcome.first_tokens:
                out.ttft_s.append(now - request.arrival_s)
        self.now_s = now
        out.preemptions = scheduler.preemptions_total - preempted_before
        return out


@dataclass(frozen=True)
class WindowStats:
    """One window of a deployment, as the truth (before any measurement noise)."""

    start_s: float
    end_s: float
    packing: Packing
    replicas: int
    gpus: int
    offered_requests_per_s: float
    generated_tokens: float
    prompt_tokens: float
    finished: float
    preemptions: float
    running_mean: float  # requests, summed over replicas, averaged over the window
    waiting_mean: float
    kv_usage_ratio: float
    energy_joules: float
    ttft_p99_s: float | None  # exact, from every request's latency
    itl_p99_s: float | None
    ttft_hist_p99_s: float | None  # histogram_quantile over vLLM's buckets
    itl_hist_p99_s: float | None
    itl_mean_s: float | None

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def total_tokens(self) -> float:
        return self.generated_tokens + self.prompt_tokens

    @property
    def watts(self) -> float:
        return self.energy_joules / self.duration_s

    def slo_met(self, ttft_p99_s: float | None, itl_p99_s: float | None) -> bool:
        """True p99s within the bounds; a window without traffic meets any SLO."""
        checks = ((self.ttft_p99_s, ttft_p99_s), (self.itl_p99_s, itl_p99_s))
        return all(v is None or b is None or v <= b for v, b in checks)


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """Prometheus' histogram_quantile over non-cumulative bucket counts (last is +Inf):
    linear within the bucket holding the rank, the highest finite bound past it."""
    total = float(sum(counts))
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, count in enumerate(counts):
        if seen + count >= rank and count > 0:
            if i >= len(bounds):
                return float(bounds[-1])
            low = bounds[i - 1] if i > 0 else 0.0
            return float(low + (bounds[i] - low) * (rank - seen) / count)
        seen += count
    return float(bounds[-1])


def _weighted_quantile(samples: Sequence[tuple[np.ndarray, float]], q: float) -> float | None:
    values = [v for v, _ in samples if len(v)]
    if not values:
        return None
    weights = [np.full(len(v), w) for v, w in samples if len(v)]
    x = np.concatenate(values)
    wts = np.concatenate(weights)
    order = np.argsort(x)
    cum = np.cumsum(wts[order])
    index = int(np.searchsorted(cum, q * cum[-1]))
    return float(x[order][min(index, len(x) - 1)])


def _bucket_counts(
    samples: Sequence[tuple[np.ndarray, float]], bounds: Sequence[float]
) -> list[float]:
    counts = np.zeros(len(bounds) + 1)
    edges = np.asarray(bounds)
    for values, weight in samples:
        if len(values):
            # Prometheus buckets are le: a value equal to a bound falls in that bucket.
            counts += weight * np.bincount(
                np.searchsorted(edges, values, side="left"), minlength=len(bounds) + 1
            )
    return [float(c) for c in counts]


@dataclass
class _Group:
    packing: Packing
    gpus: int
    replicas_per_gpu: int
    sim: ReplicaSim
    draining: bool = False  # removed by a scale-in: takes no requests, gone after one window

    @property
    def replicas(self) -> int:
        return self.gpus * self.replicas_per_gpu


def _fills(packing: Packing, replicas: int) -> dict[int, int]:
    """GPUs per fill (replicas on the GPU): every GPU full, and possibly one holding the rest."""
    n = packing.replicas_per_gpu
    fills = {n: replicas // n} if replicas >= n else {}
    if replicas % n:
        fills[replicas % n] = 1
    return fills


class Deployment:
    """One SLMDeployment in the world: a packing and a replica count, stepped window by window."""

    def __init__(
        self, world: World, packing: Packing, replicas: int, rng: random.Random, start_s: float
    ) -> None:
        self.world = world
        self.rng = rng
        self.packing = packing
        self.replicas = replicas
        self.groups = self._groups(packing, replicas, start_s)

    def _group(self, packing: Packing, gpus: int, fill: int, start_s: float) -> _Group:
        engines = 1 if packing.mode is SharingMode.MIG else fill
        sim = ReplicaSim(self.world, packing, engines, random.Random(self.rng.random()), start_s)
        return _Group(packing, gpus, fill, sim)

    def _groups(self, packing: Packing, replicas: int, start_s: float) -> list[_Group]:
        return [
            self._group(packing, gpus, fill, start_s)
            for fill, gpus in _fills(packing, replicas).items()
        ]

    @property
    def gpus(self) -> int:
        """GPUs serving (draining replicas' GPUs are charged energy, not counted here)."""
        return sum(g.gpus for g in self.groups if not g.draining)

    def reconfigure(self, packing: Packing, replicas: int, now_s: float) -> None:
        """Run `replicas` of `packing` from `now_s`: a scale keeps the replicas that stay, a
        repack replaces every replica (the old ones drain, the new ones start empty)."""
        if packing == self.packing and replicas == self.replicas:
            return
        if packing == self.packing:
            self._rescale(replicas, now_s)
            return
        # A rollout replaces pods; each old one drains what it holds before it goes.
        for g in self.groups:
            g.draining = True
        self.packing, self.replicas = packing, replicas
        self.groups += self._groups(packing, replicas, now_s)

    def _rescale(self, replicas: int, now_s: float) -> None:
        """Same packing, another count: per fill, add empty GPUs or drain some.

        Groups of one fill are first merged into the largest: a window after a change, every
        replica of a fill sees the same Poisson share and is in the same steady state, so one
        representative stands for all of them (its in-flight work stands, in expectation, for
        that of the ones it replaces).
        """
        serving: dict[int, _Group] = {}
        for g in sorted((g for g in self.groups if not g.draining), key=lambda g: -g.gpus):
            kept = serving.setdefault(g.replicas_per_gpu, g)
            if kept is not g:
                kept.gpus += g.gpus
        groups: list[_Group] = []
        wanted = _fills(self.packing, replicas)
        for fill in sorted(set(serving) | set(wanted), reverse=True):
            have, want = serving.get(fill), wanted.get(fill, 0)
            held = have.gpus if have else 0
            if have is not None and want < held:
                groups.append(
                    _Group(have.packing, held - want, fill, have.sim.fork(), draining=True)
                )
                have.gpus = want
            if have is not None and have.gpus > 0:
                groups.append(have)
            if want > held:
                groups.append(self._group(self.packing, want - held, fill, now_s))
        self.replicas = replicas
        self.groups = groups

    def run(self, end_s: float, requests_per_s: float) -> WindowStats:
        """Serve `requests_per_s` (all replicas together) until `end_s`."""
        start_s = self.groups[0].sim.now_s
        per_replica = requests_per_s / self.replicas
        windows = [(g, g.sim.run(end_s, 0.0 if g.draining else per_replica)) for g in self.groups]
        duration = end_s - start_s
        gpu = self.world.gpu
        energy = 0.0
        for g, w in windows:
            span = duration
            if g.draining:  # its GPUs are held until the last removed replica is done
                span = 0.0 if w.last_step_end_s is None else w.last_step_end_s - start_s
            if span <= 0.0:
                continue
            busy_one = min(1.0, w.gpu_busy_s / span)
            dram = min(1.0, g.replicas_per_gpu * w.bytes_moved / span
                       / gpu.memory_bandwidth_bytes_per_s)  # fmt: skip
            if g.packing.mode is SharingMode.MIG:
                device = self.world.device(g.packing)
                busy = g.replicas_per_gpu * busy_one * device.flops_per_s / gpu.bf16_dense_flops
            else:
                busy = 1.0 - (1.0 - busy_one) ** g.replicas_per_gpu
            energy += g.gpus * power_watts(gpu, dram, min(1.0, busy), self.world.params) * span
        self.groups = [g for g in self.groups if not g.draining]

        def total(attr: str) -> float:
            return sum(g.replicas * float(getattr(w, attr)) for g, w in windows)

        ttft = [(np.asarray(w.ttft_s), float(g.replicas)) for g, w in windows]
        itl = [(np.asarray(w.itl_s), float(g.replicas)) for g, w in windows]
        itl_count = sum(len(v) * wt for v, wt in itl)
        itl_sum = sum(float(v.sum()) * wt for v, wt in itl)
        return WindowStats(
            start_s=start_s,
            end_s=end_s,
            packing=self.packing,
            replicas=self.replicas,
            gpus=self.gpus,
            offered_requests_per_s=requests_per_s,
            generated_tokens=total("generated_tokens"),
            prompt_tokens=total("prompt_tokens"),
            finished=total("finished"),
            preemptions=total("preemptions"),
            running_mean=total("running_s") / duration,
            waiting_mean=total("waiting_s") / duration,
            kv_usage_ratio=sum(g.replicas * w.kv_usage_s for g, w in windows if not g.draining)
            / duration
            / self.replicas,
            energy_joules=energy,
            ttft_p99_s=_weighted_quantile(ttft, 0.99),
            itl_p99_s=_weighted_quantile(itl, 0.99),
            ttft_hist_p99_s=histogram_quantile(
                0.99, mn.TIME_TO_FIRST_TOKEN_BUCKETS_S,
                _bucket_counts(ttft, mn.TIME_TO_FIRST_TOKEN_BUCKETS_S),
            ),
            itl_hist_p99_s=histogram_quantile(
                0.99, mn.INTER_TOKEN_LATENCY_BUCKETS_S,
                _bucket_counts(itl, mn.INTER_TOKEN_LATENCY_BUCKETS_S),
            ),
            itl_mean_s=itl_sum / itl_count if itl_count else None,
        )  # fmt: skip


@dataclass(frozen=True)
class MeasurementNoise:
    """Log-normal standard deviations of what Prometheus reports for one window.

    Rates over one minute at a 15 s scrape interval move by a few percent with the scrape
    phase; gauges averaged over four samples more; p99s by histogram_quantile over coarse
    buckets most (the bucket interpolation itself is applied exactly, on top of this).
    """

    rate_sd: float = 0.03
    gauge_sd: float = 0.06
    p99_sd: float = 0.08
    power_sd: float = 0.02


def snapshot_of(
    stats: WindowStats,
    deployment: DeploymentRef,
    rng: random.Random,
    noise: MeasurementNoise | None = None,
) -> Snapshot:
    """The Snapshot `collect_snapshot` would return at the end of the window."""
    noise = noise or MeasurementNoise()
    d = stats.duration_s

    def jitter(sd: float) -> float:
        return math.exp(rng.gauss(0.0, sd)) if sd > 0 else 1.0

    rate = jitter(noise.rate_sd)  # one scrape phase for every counter of the window
    values: dict[Signal, float] = {
        Signal.GENERATION_TOKENS_PER_S: stats.generated_tokens / d * rate,
        Signal.PROMPT_TOKENS_PER_S: stats.prompt_tokens / d * rate,
        Signal.REQUESTS_RUNNING: stats.running_mean * jitter(noise.gauge_sd),
        Signal.REQUESTS_WAITING: stats.waiting_mean * jitter(noise.gauge_sd),
        Signal.ENGINES_REPORTING: float(stats.replicas),
        Signal.NEWEST_SAMPLE_AGE_S: rng.uniform(0.0, 15.0),
        Signal.KV_CACHE_USAGE_RATIO: stats.kv_usage_ratio,
        Signal.PREEMPTIONS_PER_S: stats.preemptions / d * rate,
        Signal.ATTRIBUTED_ENERGY_WATTS: stats.watts * jitter(noise.power_sd),
        Signal.GPUS_IN_USE: float(stats.gpus),
    }
    if stats.ttft_hist_p99_s is not None:
        values[Signal.TTFT_P99_S] = stats.ttft_hist_p99_s * jitter(noise.p99_sd)
    if stats.itl_hist_p99_s is not None:
        values[Signal.ITL_P99_S] = stats.itl_hist_p99_s * jitter(noise.p99_sd)
    if stats.itl_mean_s is not None:
        values[Signal.ITL_MEAN_S] = stats.itl_mean_s * jitter(noise.rate_sd)
    keyed = {Signal.FINISHED_REQUESTS_PER_S: {"length": stats.finished / d * rate}}
    return Snapshot(deployment, stats.end_s, round(d), values, keyed)
