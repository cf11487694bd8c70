"""The autotuner's online performance model: the planner's prediction for every packing (the
prior), corrected by what the running packings measure.

Pure: frozen records in, frozen records out; numpy for a few small linear solves.

The prior. For each candidate packing the planner's performance model gives, besides the
saturated `PerfPoint`, two curves computed once per plan:

- the mean decode step of one replica against its running batch (`step_curve`), and
- TTFT and ITL p99 against the load, as a share of saturated capacity (`LOAD_GRID`).

Power at load ρ follows the planner's activity model at the batch that carries ρ
(`_power_curve`): continuous batching keeps the engine stepping at partial load, so power stays
near its saturated value until the batch nears one sequence, not on a line from idle.

What is measured. In one window at a packing: output tokens/s and running sequences per
replica, p99 latencies, and attributed power. Each replica emits one token per running
sequence per step, so the measured mean step is running / rate, at any load; its ratio to the
prior's step at the same batch is the packing's speed factor `c` (capacity = c x prior). This is
what lets a lightly loaded packing tell its capacity without being pushed to saturation.
Latency is modelled as the prior's curve evaluated at the corrected load and scaled by 1/c (a
faster engine serves every step faster) times a residual factor; power as the prior's power at
the corrected load times a factor.

The correction. Each log-factor (speed, TTFT residual, ITL residual, power) is a Gaussian
process over packings with the kernel  k(a, b) = phi(a)' diag(s^2) phi(b) + s_point^2 [a == b]:
a Bayesian linear model on packing features (intercept, log2 replicas per GPU, log2 batch,
sharing mode) plus an independent per-packing term. Its posterior mean is the ridge (least
squares shrunk toward the prior's zero) fit of the measured log-ratios; its variance is the
uncertainty the policy's SLO margin uses. Measuring one packing moves the shared terms, so its
neighbours are corrected before they are tried, while the per-packing term keeps unmeasured
packings uncertain.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import numpy as np

from slmpack.planner.perf import (
    Device,
    PerfParams,
    colocated_cycle,
    default_perf_params,
    engine_step,
    power_watts,
)
from slmpack.planner.plan import PlanRequest, enumerate_candidates
from slmpack.planner.types import Candidate, SharingMode

#: Loads (share of saturated capacity) at which the prior's latencies are tabulated. Finer
#: near saturation, where TTFT p99 turns up steeply (Erlang C). Beyond the last point a packing
#: counts as overloaded.
LOAD_GRID: tuple[float, ...] = (
    0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95,
)  # fmt: skip
#: Batch sizes tabulated per step curve (geometric from 1 to the saturated batch).
STEP_CURVE_POINTS = 16
#: Order of the modes in the feature vector.
_MODES = tuple(SharingMode)


class Quantity(StrEnum):
    SPEED = "speed"
    TTFT = "ttft"
    ITL = "itl"
    POWER = "power"


@dataclass(frozen=True)
class Packing:
    """What the autotuner may change about how replicas share a GPU."""

    mode: SharingMode
    replicas_per_gpu: int
    max_num_seqs: int
    mig_profile: str | None = None

    @classmethod
    def of(cls, candidate: Candidate) -> Packing:
        return cls(
            candidate.mode,
            candidate.replicas_per_gpu,
            candidate.engine.max_num_seqs,
            candidate.mig_profile,
        )

    @property
    def key(self) -> str:
        """Same text as the planner's Candidate.key."""
        profile = f"/{self.mig_profile}" if self.mig_profile else ""
        return f"{self.mode.value}{profile} x{self.replicas_per_gpu} seqs={self.max_num_seqs}"

    def features(self) -> tuple[float, ...]:
        """Intercept, log2 replicas per GPU, log2 (batch / 64), one indicator per mode."""
        modes = tuple(1.0 if self.mode is m else 0.0 for m in _MODES)
        return (
            1.0,
            math.log2(self.replicas_per_gpu),
            math.log2(self.max_num_seqs / 64),
            *modes,
        )

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.mode.value,
            "replicasPerGPU": self.replicas_per_gpu,
            "maxNumSeqs": self.max_num_seqs,
        }
        if self.mig_profile:
            out["migProfile"] = self.mig_profile
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Packing:
        return cls(
            SharingMode(data["mode"]),
            int(data["replicasPerGPU"]),
            int(data["maxNumSeqs"]),
            data.get("migProfile"),
        )


def _interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear, flat beyond the first point, and the last value beyond the end."""
    if x <= xs[0]:
        return ys[0]
    for i in range(1, len(xs)):
        if x <= xs[i]:
            t = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
            return ys[i - 1] + t * (ys[i] - ys[i - 1])
    return ys[-1]


@dataclass(frozen=True)
class PriorPoint:
    """The planner's prediction for one packing, as curves the autotuner can evaluate."""

    candidate: Candidate
    step_curve: tuple[tuple[float, float], ...]  # (running seqs per replica, mean step s)
    ttft_p99_s: tuple[float, ...]  # at LOAD_GRID
    itl_p99_s: tuple[float, ...]  # at LOAD_GRID
    idle_power_watts: float
    #: Board power at LOAD_GRID; empty: a straight line from idle to saturated.
    power_curve_watts: tuple[float, ...] = ()

    @functools.cached_property
    def packing(self) -> Packing:
        return Packing.of(self.candidate)

    @property
    def output_capacity_tokens_per_s(self) -> float:
        """Generated tokens/s per GPU at saturation."""
        return self.candidate.perf.output_tokens_per_s

    @property
    def total_per_output_tokens(self) -> float:
        perf = self.candidate.perf
        return perf.total_tokens_per_s / perf.output_tokens_per_s

    @property
    def batch_per_replica(self) -> float:
        return self.candidate.perf.effective_batch_per_replica

    def step_s(self, running_per_replica: float) -> float:
        xs = [b for b, _ in self.step_curve]
        ys = [s for _, s in self.step_curve]
        return _interpolate(xs, ys, running_per_replica)

    def latency_p99_s(self, quantity: Quantity, load_ratio: float) -> float:
        """TTFT or ITL p99 at `load_ratio` of saturated capacity; infinite past LOAD_GRID."""
        if load_ratio > LOAD_GRID[-1]:
            return math.inf
        curve = self.ttft_p99_s if quantity is Quantity.TTFT else self.itl_p99_s
        return _interpolate(LOAD_GRID, curve, load_ratio)

    def power_watts(self, load_ratio: float) -> float:
        saturated = self.candidate.perf.power_watts
        load = min(max(load_ratio, 0.0), 1.0)
        if not self.power_curve_watts:
            return self.idle_power_watts + load * (saturated - self.idle_power_watts)
        return _interpolate(
            (0.0, *LOAD_GRID, 1.0),
            (self.idle_power_watts, *self.power_curve_watts, saturated),
            load,
        )


@dataclass(frozen=True)
class Prior:
    points: tuple[PriorPoint, ...]

    @functools.cached_property
    def _by_packing(self) -> dict[Packing, PriorPoint]:
        return {p.packing: p for p in self.points}

    def get(self, packing: Packing) -> PriorPoint | None:
        return self._by_packing.get(packing)

    @functools.cached_property
    def features(self) -> np.ndarray:
        """One row of Packing.features() per point."""
        return np.asarray([p.packing.features() for p in self.points], dtype=float)

    def __contains__(self, packing: object) -> bool:
        return packing in self._by_packing

    def candidate(self, packing: Packing) -> Candidate | None:
        """The planner's Candidate to render for a packing the policy chose."""
        point = self.get(packing)
        return point.candidate if point else None


def _device(request: PlanRequest, candidate: Candidate) -> Device:
    if candidate.mig_profile:
        return Device.mig(request.gpu, request.gpu.mig_profile(candidate.mig_profile))
    return Device.whole(request.gpu)


def _step_curve(
    request: PlanRequest, candidate: Candidate, params: PerfParams
) -> tuple[tuple[float, float], ...]:
    device = _device(request, candidate)
    engines = 1 if candidate.mode is SharingMode.MIG else candidate.replicas_per_gpu
    top = max(1.0, candidate.perf.effective_batch_per_replica)
    batches = sorted(
        {top ** (i / (STEP_CURVE_POINTS - 1)) for i in range(STEP_CURVE_POINTS)} | {top}
    )
    out: list[tuple[float, float]] = []
    for batch in batches:
        step = engine_step(request.model, candidate.engine, request.workload, device, params, batch)
        cycle = colocated_cycle(step, engines, candidate.mode, device, params)
        out.append((batch, cycle.cycle_s))
    return tuple(out)


def _power_curve(
    request: PlanRequest, candidate: Candidate, params: PerfParams
) -> tuple[float, ...]:
    """Board power at each load of LOAD_GRID, by the planner's activity model.

    Continuous batching keeps an engine stepping at partial load, only with a smaller batch:
    the weights are still read every step, so the busy ratio, and with it the power, stays
    close to saturation until the batch nears one sequence. A straight line from idle to the
    saturated power would put a lightly loaded packing far below what it draws, and a power
    factor fitted there would misjudge the same packing at 0.75. At load rho the batch b
    carries rho of the saturated rate per replica (b / step(b)); the engine has work a share
    1 - exp(-b) of the time; engines combine as in `perf.predict`.
    """
    gpu = request.gpu
    device = _device(request, candidate)
    mig = candidate.mode is SharingMode.MIG
    engines = 1 if mig else candidate.replicas_per_gpu
    replicas = candidate.replicas_per_gpu
    top = max(1.0, candidate.perf.effective_batch_per_replica)
    per_replica_capacity = candidate.perf.output_tokens_per_s / replicas
    batches = [top ** (i / (STEP_CURVE_POINTS - 1)) for i in range(STEP_CURVE_POINTS)]
    batches = [b / 8 for b in (1.0, 2.0, 4.0)] + batches  # below one sequence: idle gaps
    rates, busy, traffic = [], [], []
    for batch in batches:
        step = engine_step(request.model, candidate.engine, request.workload, device, params,
                           batch)  # fmt: skip
        cycle = colocated_cycle(step, engines, candidate.mode, device, params)
        active = 1.0 - math.exp(-batch)
        rates.append(batch / cycle.cycle_s)
        busy.append(min(1.0, cycle.gpu_phase_s / cycle.cycle_s) * active)
        traffic.append(step.bytes_moved / cycle.cycle_s * active)
    out = []
    for load in LOAD_GRID:
        rate = load * per_replica_capacity
        one = _interpolate(rates, busy, rate)
        device_busy = 1.0 - (1.0 - one) ** engines
        slices = device.flops_per_s * (replicas if mig else 1) / gpu.bf16_dense_flops
        dram = min(1.0, replicas * _interpolate(rates, traffic, rate)
                   / gpu.memory_bandwidth_bytes_per_s)  # fmt: skip
        out.append(power_watts(gpu, dram, min(1.0, device_busy * slices), params))
    return tuple(out)


@functools.lru_cache(maxsize=64)
def build_prior(request: PlanRequest, params: PerfParams | None = None) -> Prior:
    """The prior for every packing the planner enumerates for `request` (cached per request:
    it costs one enumeration per point of LOAD_GRID)."""
    params = params or default_perf_params()
    base = enumerate_candidates(request, params)
    by_load = [
        {c.key: c.perf for c in enumerate_candidates(replace(request, load_ratio=load), params)}
        for load in LOAD_GRID
    ]
    points = []
    for candidate in base:
        points.append(
            PriorPoint(
                candidate=candidate,
                step_curve=_step_curve(request, candidate, params),
                ttft_p99_s=tuple(perfs[candidate.key].ttft_p99_s for perfs in by_load),
                itl_p99_s=tuple(perfs[candidate.key].itl_p99_s for perfs in by_load),
                idle_power_watts=request.gpu.idle_watts,
                power_curve_watts=_power_curve(request, candidate, params),
            )
        )
    return Prior(tuple(points))


# --- measurements ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunningMean:
    """A mean over at most `cap` recent windows (older ones fade as an EWMA of weight 1/cap)."""

    count: float = 0.0
    value: float = 0.0

    def add(self, x: float | None, cap: float) -> RunningMean:
        if x is None or not math.isfinite(x):
            return self
        n = min(self.count + 1.0, cap)
        return RunningMean(n, self.value + (x - self.value) / n)

    def get(self) -> float | None:
        return self.value if self.count > 0 else None


@dataclass(frozen=True)
class WindowMeasurement:
    """One clean window at one packing, normalised per GPU and per replica."""

    output_tokens_per_s_per_gpu: float
    total_tokens_per_s_per_gpu: float
    running_per_replica: float
    output_tokens_per_s_per_replica: float
    watts_per_gpu: float | None
    ttft_p99_s: float | None
    itl_p99_s: float | None
    slo_met: bool | None  # None: no SLO, or no latency measured


@dataclass(frozen=True)
class LoadStats:
    """Measurements of one packing within one load bucket."""

    load_ratio: float  # bucket centre: output tokens/s per GPU over the prior's capacity
    output_tokens_per_s_per_gpu: RunningMean = field(default_factory=RunningMean)
    total_tokens_per_s_per_gpu: RunningMean = field(default_factory=RunningMean)
    running_per_replica: RunningMean = field(default_factory=RunningMean)
    step_s: RunningMean = field(default_factory=RunningMean)
    watts_per_gpu: RunningMean = field(default_factory=RunningMean)
    ttft_p99_s: RunningMean = field(default_factory=RunningMean)
    itl_p99_s: RunningMean = field(default_factory=RunningMean)
    slo_met_ratio: RunningMean = field(default_factory=RunningMean)

    @property
    def windows(self) -> float:
        return self.output_tokens_per_s_per_gpu.count

    @property
    def tokens_per_joule(self) -> float | None:
        watts = self.watts_per_gpu.get()
        total = self.total_tokens_per_s_per_gpu.get()
        if watts is None or total is None or watts <= 0:
            return None
        return total / watts

    def add(self, m: WindowMeasurement, cap: float, min_running: float) -> LoadStats:
        step = None
        if m.running_per_replica >= min_running and m.output_tokens_per_s_per_replica > 0:
            step = m.running_per_replica / m.output_tokens_per_s_per_replica
        slo = None if m.slo_met is None else float(m.slo_met)
        return LoadStats(
            self.load_ratio,
            self.output_tokens_per_s_per_gpu.add(m.output_tokens_per_s_per_gpu, cap),
            self.total_tokens_per_s_per_gpu.add(m.total_tokens_per_s_per_gpu, cap),
            self.running_per_replica.add(m.running_per_replica if step else None, cap),
            self.step_s.add(step, cap),
            self.watts_per_gpu.add(m.watts_per_gpu, cap),
            self.ttft_p99_s.add(m.ttft_p99_s, cap),
            self.itl_p99_s.add(m.itl_p99_s, cap),
            self.slo_met_ratio.add(slo, cap),
        )


@dataclass(frozen=True)
class MeasuredPoint:
    """Everything measured at one packing, by load bucket."""

    packing: Packing
    loads: tuple[LoadStats, ...] = ()

    @property
    def windows(self) -> float:
        return sum(s.windows for s in self.loads)


#: Width of a load bucket (share of the prior's saturated capacity).
LOAD_BUCKET = 0.1


def load_bucket(load_ratio: float) -> float:
    return round(round(max(load_ratio, 0.0) / LOAD_BUCKET) * LOAD_BUCKET, 3)


def record(
    measured: Sequence[MeasuredPoint],
    packing: Packing,
    point: PriorPoint,
    window: WindowMeasurement,
    *,
    cap: float,
    min_running: float,
) -> tuple[MeasuredPoint, ...]:
    """`measured` with one more window at `packing`, in its load bucket."""
    bucket = load_bucket(window.output_tokens_per_s_per_gpu / point.output_capacity_tokens_per_s)
    existing = next((m for m in measured if m.packing == packing), MeasuredPoint(packing))
    loads = {s.load_ratio: s for s in existing.loads}
    loads[bucket] = loads.get(bucket, LoadStats(bucket)).add(window, cap, min_running)
    updated = MeasuredPoint(packing, tuple(loads[k] for k in sorted(loads)))
    others = tuple(m for m in measured if m.packing != packing)
    return tuple(sorted((*others, updated), key=lambda m: m.packing.key))


# --- the fit --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorrectionPrior:
    """Prior standard deviations of one log-factor, and the noise of one window."""

    feature_sd: tuple[float, ...]  # per feature of Packing.features()
    point_sd: float  # per packing, beyond what the features explain
    noise_sd: float  # of one window's log-ratio

    def __post_init__(self) -> None:
        if len(self.feature_sd) != 3 + len(_MODES):
            raise ValueError("feature_sd needs one entry per packing feature")


def _feature_sd(
    intercept: float, per_doubling: float, per_batch: float, mode: float
) -> tuple[float, ...]:
    return (intercept, per_doubling, per_batch, *([mode] * len(_MODES)))


@dataclass(frozen=True)
class ModelConfig:
    """Prior uncertainty of the planner's predictions (log scale: 0.1 is about +-10%).

    Speed: the intercept's 0.25 makes a prior that is 30% off overall about one standard
    deviation away; per doubling of replicas per GPU another 0.08 (the co-location gain is the
    least certain part of the perf model, fitted to one paper's MPS runs); per packing 0.08.
    One window's speed ratio scatters by about 8% (rates over one minute at 15 s scrapes).
    Latency residuals scatter more per window (p99 from coarse histogram buckets: 0.15).
    Power is the best-known term (board power follows activity closely): 0.15 overall.
    """

    speed: CorrectionPrior = CorrectionPrior(_feature_sd(0.25, 0.15, 0.08, 0.10), 0.05, 0.08)
    latency: CorrectionPrior = CorrectionPrior(_feature_sd(0.15, 0.05, 0.05, 0.05), 0.08, 0.15)
    power: CorrectionPrior = CorrectionPrior(_feature_sd(0.15, 0.03, 0.03, 0.05), 0.05, 0.05)
    #: Latency and power windows above this load (by the corrected capacity) do not enter the
    #: fit: near saturation the prior's p99 curve is too steep to compare against.
    max_fit_load_ratio: float = 0.9
    #: Below one running sequence per replica the step estimate is mostly idle time.
    min_running_per_replica: float = 1.0
    #: The speed ratio's trend with the batch (see `_saturation_ratio`) counts once its slope
    #: is this many standard errors from zero, over batches at least this far apart.
    saturation_slope_z: float = 2.0
    min_saturation_batch_span_ratio: float = 2.0
    #: The most the trend may take off the capacity at saturation.
    min_saturation_ratio: float = 0.6


@dataclass(frozen=True)
class Correction:
    """A log-normal multiplicative correction."""

    mean_log: float = 0.0
    sd_log: float = 0.0

    @property
    def factor(self) -> float:
        return math.exp(self.mean_log)

    def bound(self, z: float) -> float:
        """exp(mean + z sd): z > 0 an upper, z < 0 a lower confidence bound."""
        return math.exp(self.mean_log + z * self.sd_log)


@dataclass(frozen=True)
class Estimate:
    """The corrected prediction for one packing."""

    point: PriorPoint
    speed: Correction
    ttft: Correction
    itl: Correction
    power: Correction
    windows: float  # measured windows at this packing
    #: What the measured batches' trend takes off the capacity at the saturated batch (1: no
    #: trend measured). It sizes and sets the utilisation; scores stay on the speed factor, so
    #: a measured packing is not ranked against unmeasured ones on a term only it has.
    saturation: float = 1.0

    def capacity_tokens_per_s(self, z: float = 0.0) -> float:
        """Generated tokens/s per GPU at saturation by the speed factor; z < 0 for a lower
        bound."""
        return self.point.output_capacity_tokens_per_s * self.speed.bound(z)

    def saturated_capacity_tokens_per_s(self, z: float = 0.0) -> float:
        """`capacity_tokens_per_s` with the measured trend toward the saturated batch."""
        return self.capacity_tokens_per_s(z) * self.saturation

    def load_ratio(self, output_tokens_per_s_per_gpu: float, z: float = 0.0) -> float:
        """Load as a share of capacity; with z > 0, against the capacity's lower bound."""
        return output_tokens_per_s_per_gpu / self.capacity_tokens_per_s(-z)

    def latency_p99_s(
        self, quantity: Quantity, output_tokens_per_s_per_gpu: float, z: float = 0.0
    ) -> float:
        """p99 at a per-GPU load; z > 0 for an upper bound (slower engine, more queueing)."""
        residual = self.ttft if quantity is Quantity.TTFT else self.itl
        load = self.load_ratio(output_tokens_per_s_per_gpu, z)
        sd = math.hypot(self.speed.sd_log, residual.sd_log)
        scale = math.exp(residual.mean_log - self.speed.mean_log + z * sd)
        return self.point.latency_p99_s(quantity, load) * scale

    def power_watts(self, load_ratio: float) -> float:
        return self.point.power_watts(load_ratio) * self.power.factor

    def tokens_per_joule(self, load_ratio: float) -> float:
        """Total (prompt + generated) tokens per joule at `load_ratio` of capacity."""
        total = load_ratio * self.capacity_tokens_per_s() * self.point.total_per_output_tokens
        watts = self.power_watts(load_ratio)
        return total / watts if watts > 0 else 0.0


@dataclass(frozen=True)
class _Posterior:
    """One log-factor's posterior over every packing, kept to look ahead (`Model.lookahead`)."""

    covariance: np.ndarray
    noise_sd: float  # of one window


@dataclass(frozen=True)
class Model:
    estimates: Mapping[Packing, Estimate]
    #: Per quantity; empty for a model built by hand (lookahead then changes nothing).
    posteriors: Mapping[Quantity, _Posterior] = field(default_factory=dict)
    index: Mapping[Packing, int] = field(default_factory=dict)

    def get(self, packing: Packing) -> Estimate | None:
        return self.estimates.get(packing)

    def lookahead(self, target: Packing, measured_at: Packing, windows: float) -> Estimate | None:
        """`target`'s estimate once `windows` more windows are measured at `measured_at`.

        The GP's variance after an observation does not depend on the value observed, and its
        mean is expected to stay where it is: so this is the same estimate with each
        log-factor's standard deviation shrunk by the rank-one update of one more
        observation, var(t) - cov(t, m)^2 / (var(m) + noise^2 / windows). It tells how much a
        measurement at a safe packing would tighten the bound of one that is not safe yet.
        """
        estimate = self.estimates.get(target)
        t, m = self.index.get(target), self.index.get(measured_at)
        if estimate is None or t is None or m is None or windows <= 0:
            return estimate

        def shrink(quantity: Quantity, correction: Correction) -> Correction:
            post = self.posteriors.get(quantity)
            if post is None:
                return correction
            cov = post.covariance
            var = cov[t, t] - cov[t, m] ** 2 / (cov[m, m] + post.noise_sd**2 / windows)
            return Correction(correction.mean_log, math.sqrt(max(float(var), 1e-12)))

        return replace(
            estimate,
            speed=shrink(Quantity.SPEED, estimate.speed),
            ttft=shrink(Quantity.TTFT, estimate.ttft),
            itl=shrink(Quantity.ITL, estimate.itl),
            power=shrink(Quantity.POWER, estimate.power),
        )


def _weighted_mean(pairs: Iterable[tuple[float, float]]) -> tuple[float, float] | None:
    """(mean, total weight) of (value, weight) pairs, None when the weight is zero."""
    total = 0.0
    acc = 0.0
    for value, weight in pairs:
        total += weight
        acc += value * weight
    return (acc / total, total) if total > 0 else None


def _posterior(
    features: np.ndarray,
    config: CorrectionPrior,
    observed: Mapping[int, tuple[float, float]],
) -> tuple[list[Correction], _Posterior]:
    """GP posterior of a log-factor at every packing, given (mean log-ratio, windows) at some:
    the marginal at each packing, and the joint covariance."""
    variances = np.square(np.asarray(config.feature_sd))
    kernel = (features * variances) @ features.T + config.point_sd**2 * np.eye(len(features))
    if not observed:
        sd = np.sqrt(np.diag(kernel))
        return [Correction(0.0, float(v)) for v in sd], _Posterior(kernel, config.noise_sd)
    index = np.asarray(sorted(observed))
    y = np.asarray([observed[i][0] for i in index])
    noise = np.asarray([config.noise_sd**2 / observed[i][1] for i in index])
    gram = kernel[np.ix_(index, index)] + np.diag(noise)
    cross = kernel[:, index]
    mean = cross @ np.linalg.solve(gram, y)
    covariance = kernel - cross @ np.linalg.solve(gram, cross.T)
    var = np.maximum(np.diag(covariance), 1e-12)
    marginals = [Correction(float(m), float(math.sqrt(v))) for m, v in zip(mean, var, strict=True)]
    return marginals, _Posterior(covariance, config.noise_sd)


def _bucket_speed_ratios(
    point: PriorPoint, loads: Sequence[LoadStats]
) -> list[tuple[float, float, float]]:
    """(running batch, log speed ratio, windows) of every bucket with a step measured."""
    out = []
    for s in loads:
        running, step = s.running_per_replica.get(), s.step_s.get()
        if running is None or step is None or step <= 0:
            continue
        out.append((running, math.log(point.step_s(running) / step), s.step_s.count))
    return out


def _speed_ratios(point: PriorPoint, loads: Sequence[LoadStats]) -> tuple[float, float] | None:
    return _weighted_mean((ratio, count) for _, ratio, count in _bucket_speed_ratios(point, loads))


def least_squares_line(
    xs: Sequence[float], ys: Sequence[float], weights: Sequence[float] | None = None
) -> tuple[float, float, float, float] | None:
    """(x mean, y mean, slope, weighted sum of squared x deviations) of the weighted
    least-squares line through the points; None when the xs do not vary."""
    ws = list(weights) if weights is not None else [1.0] * len(xs)
    total = sum(ws)
    if total <= 0:
        return None
    x_mean = sum(w * x for w, x in zip(ws, xs, strict=True)) / total
    y_mean = sum(w * y for w, y in zip(ws, ys, strict=True)) / total
    sxx = sum(w * (x - x_mean) ** 2 for w, x in zip(ws, xs, strict=True))
    if sxx <= 0:
        return None
    sxy = sum(w * (x - x_mean) * (y - y_mean) for w, x, y in zip(ws, xs, ys, strict=True))
    return x_mean, y_mean, sxy / sxx, sxx


def _saturation_ratio(point: PriorPoint, loads: Sequence[LoadStats], config: ModelConfig) -> float:
    """How much lower the speed ratio is at the saturated batch than where it was measured.

    The speed factor is one number per packing, fitted where the packing ran; but a step can
    grow with the batch faster than the prior's (longer contexts, a heavier CPU phase), and
    then the factor measured at part load overstates the capacity at saturation, which is
    what utilisation and sizing need. A weighted least-squares line of the per-bucket log
    ratio over log running batch, extrapolated from the batches measured (their weighted mean)
    to the saturated one, gives the correction when its slope is clearly negative and the
    batches span enough; otherwise none. It only ever lowers the capacity.
    """
    buckets = _bucket_speed_ratios(point, loads)
    xs = [math.log(running) for running, _, _ in buckets]
    if len(xs) < 2 or max(xs) - min(xs) < math.log(config.min_saturation_batch_span_ratio):
        return 1.0
    # Weights are inverse variances, so the slope's standard error is 1 / sqrt(sxx).
    weights = [count / config.speed.noise_sd**2 for _, _, count in buckets]
    line = least_squares_line(xs, [ratio for _, ratio, _ in buckets], weights)
    if line is None:
        return 1.0
    x_mean, _, slope, sxx = line
    if slope >= -config.saturation_slope_z / math.sqrt(sxx):
        return 1.0
    top = math.log(max(point.batch_per_replica, 1.0))
    ratio = math.exp(slope * max(0.0, top - x_mean))
    return min(1.0, max(config.min_saturation_ratio, ratio))


def _latency_ratios(
    point: PriorPoint,
    loads: Sequence[LoadStats],
    quantity: Quantity,
    speed_log: float,
    max_load: float,
) -> tuple[float, float] | None:
    pairs = []
    for s in loads:
        mean = s.ttft_p99_s if quantity is Quantity.TTFT else s.itl_p99_s
        measured, output = mean.get(), s.output_tokens_per_s_per_gpu.get()
        if measured is None or output is None or measured <= 0:
            continue
        load = output / (point.output_capacity_tokens_per_s * math.exp(speed_log))
        predicted = point.latency_p99_s(quantity, load)
        if load > max_load or not math.isfinite(predicted) or predicted <= 0:
            continue
        pairs.append((math.log(measured / predicted) + speed_log, mean.count))
    return _weighted_mean(pairs)


def _power_ratios(
    point: PriorPoint, loads: Sequence[LoadStats], speed_log: float
) -> tuple[float, float] | None:
    pairs = []
    for s in loads:
        watts, output = s.watts_per_gpu.get(), s.output_tokens_per_s_per_gpu.get()
        if watts is None or output is None or watts <= 0:
            continue
        load = output / (point.output_capacity_tokens_per_s * math.exp(speed_log))
        pairs.append((math.log(watts / point.power_watts(load)), s.watts_per_gpu.count))
    return _weighted_mean(pairs)


def fit(
    prior: Prior, measured: Sequence[MeasuredPoint], config: ModelConfig | None = None
) -> Model:
    """Correct the prior with every measured packing (those outside the prior are ignored)."""
    config = config or ModelConfig()
    points = prior.points
    index = {p.packing: i for i, p in enumerate(points)}
    features = prior.features
    loads = {index[m.packing]: m.loads for m in measured if m.packing in index}

    speed_obs = {i: r for i, ls in loads.items() if (r := _speed_ratios(points[i], ls)) is not None}
    speed, speed_post = _posterior(features, config.speed, speed_obs)
    ttft_obs, itl_obs, power_obs = {}, {}, {}
    for i, ls in loads.items():
        c = speed[i].mean_log
        if r := _latency_ratios(points[i], ls, Quantity.TTFT, c, config.max_fit_load_ratio):
            ttft_obs[i] = r
        if r := _latency_ratios(points[i], ls, Quantity.ITL, c, config.max_fit_load_ratio):
            itl_obs[i] = r
        if (r := _power_ratios(points[i], ls, c)) is not None:
            power_obs[i] = r
    ttft, ttft_post = _posterior(features, config.latency, ttft_obs)
    itl, itl_post = _posterior(features, config.latency, itl_obs)
    power, power_post = _posterior(features, config.power, power_obs)
    windows = {m.packing: m.windows for m in measured}
    saturation = {i: _saturation_ratio(points[i], ls, config) for i, ls in loads.items()}
    return Model(
        {
            p.packing: Estimate(
                p,
                speed[i],
                ttft[i],
                itl[i],
                power[i],
                windows.get(p.packing, 0.0),
                saturation.get(i, 1.0),
            )
            for i, p in enumerate(points)
        },
        {
            Quantity.SPEED: speed_post,
            Quantity.TTFT: ttft_post,
            Quantity.ITL: itl_post,
            Quantity.POWER: power_post,
        },
        index,
    )
