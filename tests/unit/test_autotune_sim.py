"""A synthetic cluster for the autotuner's tests, driven by the planner's performance model.

The truth is the prior with every packing's speed, latency and power off by a factor: an
overall bias up to +-30%, trends across replicas per GPU and batch size (the co-location gain
and batching curve the perf model is least sure of), and a little per-packing scatter. Each
observation is what Prometheus would report for the truth at the offered load, with
multiplicative noise. The tests at the bottom check the harness itself.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from slmpack.autotune.model import (
    Packing,
    Prior,
    PriorPoint,
    Quantity,
    build_prior,
    fit,
)
from slmpack.autotune.policy import (
    Action,
    Decision,
    MetricsUnavailable,
    Observation,
    PolicyConfig,
    RunningConfig,
    TunerState,
    TuneSpec,
    gpus_for,
    tune,
)
from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog
from slmpack.planner.plan import PlanRequest, plan
from slmpack.planner.types import Objective, SharingMode, Slo

GPUS = default_gpu_catalog()
MODELS = default_model_catalog()
H100 = GPUS.get("NVIDIA-H100-80GB-HBM3")
#: Seconds between tuning passes.
TICK_S = 30.0
START_S = 1_700_000_000.0


def plan_request(
    modes: tuple[SharingMode, ...] = (SharingMode.MPS,),
    model: str = "opt-1.3b",
    objective: Objective = Objective.BALANCED,
    slo: Slo | None = None,
) -> PlanRequest:
    return PlanRequest(MODELS.get(model), H100, modes=modes, objective=objective, slo=slo or Slo())


def recommended(request: PlanRequest) -> Packing:
    chosen = plan(request).recommended
    assert chosen is not None
    return Packing.of(chosen)


@dataclass(frozen=True)
class Truth:
    """How the packings really behave: the prior times per-packing factors."""

    prior: Prior
    speed: dict[Packing, float]
    latency: dict[Packing, float]
    power: dict[Packing, float]

    def point(self, packing: Packing) -> PriorPoint:
        point = self.prior.get(packing)
        assert point is not None
        return point

    def capacity(self, packing: Packing) -> float:
        """Generated tokens/s per GPU at saturation."""
        return self.point(packing).output_capacity_tokens_per_s * self.speed[packing]

    def step_s(self, packing: Packing, running: float) -> float:
        return self.point(packing).step_s(running) / self.speed[packing]

    def p99_s(self, packing: Packing, quantity: Quantity, per_gpu: float) -> float:
        load = per_gpu / self.capacity(packing)
        scale = self.latency[packing] / self.speed[packing]
        return self.point(packing).latency_p99_s(quantity, load) * scale

    def watts(self, packing: Packing, load: float) -> float:
        return self.point(packing).power_watts(load) * self.power[packing]

    def score(self, packing: Packing, objective: Objective, load: float = 0.75) -> float:
        point = self.point(packing)
        throughput = self.capacity(packing) * point.total_per_output_tokens
        energy = load * throughput / self.watts(packing, load)
        if objective is Objective.THROUGHPUT:
            return throughput
        if objective is Objective.ENERGY:
            return energy
        return math.sqrt(throughput * energy)

    def meets_slo(self, packing: Packing, slo: Slo, per_gpu: float) -> bool:
        bounds = ((Quantity.TTFT, slo.ttft_p99_s), (Quantity.ITL, slo.itl_p99_s))
        return all(b is None or self.p99_s(packing, q, per_gpu) <= b for q, b in bounds)

    def best(self, objective: Objective, slo: Slo, load: float = 0.75) -> Packing:
        """The best packing whose p99 meets the SLO at `load` of its true capacity."""
        packings = [p.packing for p in self.prior.points]
        ok = [p for p in packings if self.meets_slo(p, slo, load * self.capacity(p))]
        return max(ok, key=lambda p: (self.score(p, objective), p.key))


def make_truth(
    prior: Prior,
    rng: random.Random,
    *,
    bias: float = 0.3,
    slope: float = 0.12,
    batch_slope: float = 0.06,
    scatter: float = 0.02,
) -> Truth:
    """Speed off by exp(a + b log2 n + c log2(seqs/64) + e): a up to +-`bias` (log scale,
    about +-30%), b up to +-`slope` per doubling of replicas per GPU (+-30% across 1 to 8),
    c up to +-`batch_slope` per doubling of the batch, e up to +-`scatter` per packing.
    Latency residuals are off by up to +-10% overall, power by up to +-15%."""
    a = rng.uniform(-bias, bias)
    b = rng.uniform(-slope, slope)
    c = rng.uniform(-batch_slope, batch_slope)
    latency_bias = rng.uniform(-0.1, 0.1)
    power_bias = rng.uniform(0.85, 1.15)
    speed, latency, power = {}, {}, {}
    for point in prior.points:
        p = point.packing
        x = a + b * math.log2(p.replicas_per_gpu) + c * math.log2(p.max_num_seqs / 64)
        speed[p] = math.exp(x + rng.uniform(-scatter, scatter))
        latency[p] = math.exp(latency_bias + rng.uniform(-scatter, scatter))
        power[p] = power_bias * math.exp(rng.uniform(-scatter, scatter))
    return Truth(prior, speed, latency, power)


def exact_truth(prior: Prior) -> Truth:
    ones = {p.packing: 1.0 for p in prior.points}
    return Truth(prior, ones, dict(ones), dict(ones))


@dataclass
class SyntheticCluster:
    """Replicas of one packing serving an offered load, seen through noisy metrics."""

    truth: Truth
    packing: Packing
    replicas: int
    rng: random.Random
    noise: float = 0.05  # log-normal sd of each rate and gauge; twice that for p99s
    rollout_s: float = 0.0  # how long a change takes to become ready
    ready_at_s: float = 0.0

    def _noise(self, sd: float) -> float:
        return math.exp(self.rng.gauss(0.0, sd)) if sd > 0 else 1.0

    def operating(self, demand: float) -> tuple[float, float, float]:
        """(served generated tokens/s per replica, running per replica, waiting per replica)."""
        t, k = self.truth, self.packing
        per_replica_capacity = t.capacity(k) / k.replicas_per_gpu
        offered = demand / self.replicas
        served = min(offered, per_replica_capacity)
        top = t.point(k).batch_per_replica
        low, high = 0.0, top
        for _ in range(50):  # the batch at which batch / step(batch) carries the load
            mid = (low + high) / 2
            if mid < served * t.step_s(k, mid):
                low = mid
            else:
                high = mid
        load = offered / per_replica_capacity
        waiting = 0.0 if load < 0.9 else top * (load - 0.9) * 2
        return served, high, waiting

    def per_gpu(self, demand: float) -> float:
        served, _, _ = self.operating(demand)
        return served * self.replicas / gpus_for(self.replicas, self.packing)

    def observe(self, now_s: float, demand: float, drop: Sequence[str] = ()) -> Observation:
        t, k, replicas = self.truth, self.packing, self.replicas
        served, running, waiting = self.operating(demand)
        gpus = gpus_for(replicas, k)
        per_gpu = served * replicas / gpus
        generated = served * replicas * self._noise(self.noise)
        prompt_ratio = t.point(k).total_per_output_tokens - 1.0
        load = min(1.0, per_gpu / t.capacity(k))
        observation = Observation(
            at_s=now_s,
            running=RunningConfig(k, replicas, replicas if now_s >= self.ready_at_s else 0),
            generation_tokens_per_s=generated,
            prompt_tokens_per_s=generated * prompt_ratio,
            requests_running=running * replicas * self._noise(self.noise),
            requests_waiting=waiting * replicas * self._noise(self.noise),
            engines_reporting=replicas,
            newest_sample_age_s=10.0,
            ttft_p99_s=t.p99_s(k, Quantity.TTFT, per_gpu) * self._noise(2 * self.noise),
            itl_p99_s=t.p99_s(k, Quantity.ITL, per_gpu) * self._noise(2 * self.noise),
            finished_requests_per_s=generated / 292,
            attributed_watts=t.watts(k, load) * gpus * self._noise(self.noise / 2),
        )
        dropped: dict[str, Any] = dict.fromkeys(drop)
        return replace(observation, **dropped)

    def apply(self, decision: Decision, now_s: float) -> None:
        if decision.action is Action.HOLD:
            return
        assert decision.target is not None
        assert decision.target_replicas is not None
        self.packing = decision.target
        self.replicas = decision.target_replicas
        self.ready_at_s = now_s + self.rollout_s


@dataclass(frozen=True)
class Step:
    tick: int
    at_s: float
    demand: float  # offered generated tokens/s
    packing: Packing  # what ran when the decision was taken
    replicas: int
    decision: Decision


@dataclass
class Trace:
    steps: list[Step] = field(default_factory=list)
    cluster: SyntheticCluster | None = None
    state: TunerState | None = None

    def actions(self, action: Action | None = None) -> list[Step]:
        return [
            s
            for s in self.steps
            if s.decision.action is not Action.HOLD
            and (action is None or s.decision.action is action)
        ]


def simulate(
    truth: Truth,
    spec: TuneSpec,
    demand: Callable[[float], float],
    *,
    start: Packing,
    replicas: int | None = None,
    ticks: int = 80,
    seed: int = 0,
    noise: float = 0.05,
    config: PolicyConfig | None = None,
    drop: Callable[[float], Sequence[str]] = lambda _: (),
    outage: Callable[[float], bool] = lambda _: False,
    rollout_s: float = 0.0,
) -> Trace:
    """Run the policy in Auto mode against the synthetic cluster, one pass per TICK_S."""
    rng = random.Random(seed)
    cluster = SyntheticCluster(
        truth, start, replicas or start.replicas_per_gpu, rng, noise, rollout_s
    )
    state = TunerState()
    trace = Trace(cluster=cluster)
    for tick in range(ticks):
        now = START_S + tick * TICK_S
        elapsed = tick * TICK_S
        offered = demand(elapsed)
        observation: Observation | MetricsUnavailable
        if outage(elapsed):
            observation = MetricsUnavailable(now, "connection refused")
        else:
            observation = cluster.observe(now, offered, drop(elapsed))
        decision, state = tune(state, observation, truth.prior, spec, now, config)
        trace.steps.append(Step(tick, now, offered, cluster.packing, cluster.replicas, decision))
        cluster.apply(decision, now)
    trace.state = state
    return trace


# --- the harness itself ---------------------------------------------------------------------


def test_an_exact_prior_is_measured_as_exact() -> None:
    """The step identity (running / rate) recovers the prior's speed when nothing is off."""
    request = plan_request()
    prior = build_prior(request)
    truth = exact_truth(prior)
    start = recommended(request)
    capacity = truth.capacity(start)
    trace = simulate(
        truth, TuneSpec(), lambda _: 2.2 * capacity, start=start, replicas=3 * 3, noise=0.0
    )
    assert trace.state is not None
    assert trace.cluster is not None
    estimate = fit(prior, trace.state.measured).get(trace.cluster.packing)
    assert estimate is not None
    assert estimate.windows > 5
    assert abs(estimate.speed.mean_log) < 0.03
    assert abs(estimate.power.mean_log) < 0.03


def test_truth_spread_is_about_thirty_percent() -> None:
    prior = build_prior(plan_request())
    factors = [
        f for seed in range(20) for f in make_truth(prior, random.Random(seed)).speed.values()
    ]
    assert min(factors) < 0.75
    assert max(factors) > 1.3
