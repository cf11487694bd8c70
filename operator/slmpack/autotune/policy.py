"""The autotuning policy: from one observation and what was learnt before, decide whether to
hold, scale, or repack an SLMDeployment.

Pure: `tune(state, observation, prior, spec, now_s)` returns a `Decision` and the next
`TunerState`; time is an argument, and nothing is read from the cluster or the clock. The
operator calls it once per tuning pass, applies the decision in Auto mode (or reports it in
Recommend mode), and keeps the returned state for the next pass.

Rules, in the order they are tried (constants in `PolicyConfig`, reasoning in
docs/autotune.md):

1. Hold without trustworthy data: Prometheus unreachable, a stale snapshot or stale vLLM
   scrapes, a required signal missing, replicas not all ready or not all reporting, or a
   window that overlaps the last change. Never act on an outage.
2. Keep the replica count within [minReplicas, maxReplicas].
3. Scale out fast when load passes `scale_up_utilisation_ratio` of the estimated capacity,
   when requests queue, or when the SLO is breached under load: straight to the count that
   brings utilisation to the target, at most `max_scale_up_ratio` times the current count.
4. When the SLO is breached at light load (more replicas will not help), repack: back to the
   packing a trial replaced, else to the best one predicted to meet the SLO.
5. Conclude a trial: once the packing being tried is measured, return to the one it replaced
   unless it scored better, or go on to a packing its measurement made safe that beats it.
6. Repack when the expected gain (the expected improvement of the objective under the
   model's uncertainty) reaches `repack_gain_ratio`, and the target's p99 latencies, with the
   model's uncertainty margin and at the load it would carry, meet the SLO. An unmeasured
   packing is explored under the same test: never explore into an SLO violation. When a
   better packing is blocked only by the margin, first try the safe neighbour whose
   measurement narrows its bound most (a stepping stone).
7. Scale in slowly: only after the configuration has been stable for
   `scale_down_stabilisation_s`, sized for the peak demand of that window, one GPU at a time
   and only to counts that free a whole GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from slmpack.api.v1alpha1 import SLMDeploymentSpec
from slmpack.autotune.model import (
    Estimate,
    LoadStats,
    MeasuredPoint,
    Model,
    ModelConfig,
    Packing,
    Prior,
    Quantity,
    RunningMean,
    WindowMeasurement,
    fit,
    least_squares_line,
    record,
)
from slmpack.autotune.signals import Signal
from slmpack.autotune.snapshot import Snapshot
from slmpack.planner.types import Objective, Slo
from slmpack.units import parse_duration_s


class Action(StrEnum):
    HOLD = "Hold"
    SCALE = "Scale"
    REPACK = "Repack"


class Reason(StrEnum):
    """CamelCase, for the Autotuned condition and Events."""

    PROMETHEUS_UNAVAILABLE = "PrometheusUnavailable"
    METRICS_STALE = "MetricsStale"
    METRICS_MISSING = "MetricsMissing"
    ROLLOUT_IN_PROGRESS = "RolloutInProgress"
    SETTLING = "Settling"
    PACKING_NOT_IN_PLAN = "PackingNotInPlan"
    STEADY = "Steady"
    OUTSIDE_BOUNDS = "OutsideReplicaBounds"
    LOAD_ROSE = "LoadRose"
    LOAD_FELL = "LoadFell"
    AT_MAX_REPLICAS = "AtMaxReplicas"
    SLO_BREACHED = "SLOBreached"
    SLO_UNREACHABLE = "SLOUnreachable"
    BETTER_PACKING = "BetterPacking"
    EXPLORATION_REVERTED = "ExplorationReverted"
    EXPLORING = "Exploring"


#: Reasons whose Events are Warnings: someone may need to look.
WARNING_REASONS = frozenset(
    {
        Reason.PROMETHEUS_UNAVAILABLE,
        Reason.METRICS_STALE,
        Reason.METRICS_MISSING,
        Reason.PACKING_NOT_IN_PLAN,
        Reason.AT_MAX_REPLICAS,
        Reason.SLO_BREACHED,
        Reason.SLO_UNREACHABLE,
    }
)


class TrialVerdict(StrEnum):
    NONE = "None"  # no trial under way
    PENDING = "Pending"
    KEEP = "Keep"
    REVERT = "Revert"


@dataclass(frozen=True)
class PolicyConfig:
    """The policy's constants. docs/autotune.md gives the reasoning behind each."""

    #: Utilisation (demand / estimated capacity) that sizing aims for. Leaves a quarter of
    #: headroom: TTFT p99 turns up steeply past about 0.85 (queueing) and load moves between
    #: passes. The planner predicts latencies at 0.8.
    target_utilisation_ratio: float = 0.75
    #: Scale out once utilisation passes this. The gap to the target is the hysteresis: after a
    #: step to the target, window-to-window noise (about 8%) does not reach it.
    scale_up_utilisation_ratio: float = 0.85
    #: Batch slots in use (running requests over replicas x the batch the prior saturates at)
    #: past this also count as hot: the queue forms as the last slots fill, whatever the
    #: capacity estimate says, so this catches a capacity the model overstates.
    scale_up_occupancy_ratio: float = 0.85
    #: Consecutive windows over that utilisation before scaling out (a queue or an SLO breach
    #: acts at once). One window in twenty is 1.6 standard deviations high by chance.
    scale_up_windows: int = 2
    #: While demand is rising (a positive trend over the scale-down window at this many
    #: standard errors, from at least 4 windows), one hot window is enough: follow load up
    #: fast, before a ramp outruns a capacity the model overstates.
    rising_trend_z: float = 2.0
    #: Most replicas one scale-out may reach, as a multiple of the current count.
    max_scale_up_ratio: float = 2.0
    #: Scale in only after the configuration has been stable, and demand below the sized level,
    #: this long (the HPA's default stabilisation window).
    scale_down_stabilisation_s: float = 300.0
    #: Whole GPUs one scale-in or repack may free.
    max_scale_down_gpus: int = 1
    #: Expected gain (see `expected_gain_ratio`) a repack needs. Restarting replicas costs
    #: minutes of model loading, and 5% is about what a few windows can tell apart.
    repack_gain_ratio: float = 0.05
    #: Least time between repacks (a repack restarts every replica).
    repack_cooldown_s: float = 600.0
    #: A safe, unmeasured packing is tried as a stepping stone toward a better one that the SLO
    #: margin still blocks when measuring it would narrow that one's latency bound by at least
    #: this share (log scale): shared trends make a near neighbour's measurement tell most of
    #: what the blocked packing's would, and each step lets the next pass the margin.
    stepping_stone_tightening_ratio: float = 0.05
    #: A stepping stone that scores below what runs costs its shortfall for the windows it is
    #: measured (`min_windows_to_compare`, and one to settle); it is taken when the packing it
    #: opens repays that at its expected gain within this many windows (20 minutes).
    stepping_stone_payback_windows: float = 20.0
    #: Windows measured at the current packing before it is compared with others.
    min_windows_to_compare: int = 3
    #: A trial that cannot be told apart from the packing it replaced is settled by the means
    #: after this many windows.
    max_trial_windows: int = 10
    #: After a change, wait this long for warm-up (CUDA graphs, caches, the router's view)
    #: before a window counts; the rate window must also lie entirely after it.
    settle_s: float = 30.0
    #: The rate and average window of the queries (signals.RULE_WINDOW_S).
    window_s: float = 60.0
    #: A window enters the model only if it starts at least this share of a window after the
    #: last one that did: overlapping windows share samples, and counting both would make the
    #: model surer than its data. Below 1 so that jitter in the pass interval loses no window.
    min_window_spacing_ratio: float = 0.75
    #: Older snapshots are stale: hold.
    max_snapshot_age_s: float = 120.0
    #: vLLM scrapes older than this are stale (a target down while Prometheus answers).
    max_sample_age_s: float = 90.0
    #: Standard deviations of model uncertainty added before a packing counts as meeting the
    #: SLO, and taken off its capacity when sizing a new packing (one-sided about 98%).
    slo_margin_z: float = 2.0
    #: Consecutive windows over the SLO before acting on a breach (one may be a burst).
    slo_breach_windows: int = 2
    #: At or above this utilisation a breach is met with more replicas; below it, with a
    #: packing that has more latency margin.
    breach_scale_out_utilisation_ratio: float = 0.5
    #: Waiting requests per replica that mark a packing as saturated.
    saturated_waiting_per_replica: float = 1.0
    #: Most a queue can inflate the demand estimate (served x (1 + waiting / running)).
    max_backlog_ratio: float = 2.0
    #: Below this utilisation nothing is learnt about capacity or latency: no repacks.
    min_repack_utilisation_ratio: float = 0.2
    #: Windows kept per load bucket before older ones fade (about 30 minutes at 1 per minute).
    window_cap: float = 30.0
    model: ModelConfig = field(default_factory=ModelConfig)


@dataclass(frozen=True)
class TuneSpec:
    """What the user asked of the autotuner."""

    objective: Objective = Objective.BALANCED
    slo: Slo = field(default_factory=Slo)
    min_replicas: int | None = None
    max_replicas: int | None = None

    @classmethod
    def from_spec(cls, spec: SLMDeploymentSpec) -> TuneSpec:
        slo = spec.slo
        return cls(
            objective=Objective(spec.autotune.objective),
            slo=Slo(
                ttft_p99_s=parse_duration_s(slo.ttft_p99) if slo.ttft_p99 else None,
                itl_p99_s=parse_duration_s(slo.itl_p99) if slo.itl_p99 else None,
            ),
            min_replicas=spec.autotune.min_replicas,
            max_replicas=spec.autotune.max_replicas,
        )

    @property
    def has_slo(self) -> bool:
        return self.slo.ttft_p99_s is not None or self.slo.itl_p99_s is not None

    @property
    def needs_power(self) -> bool:
        return self.objective is not Objective.THROUGHPUT

    def clamp(self, replicas: int) -> int:
        # Scale to zero needs a request signal that no running engine can give: at least one.
        low = max(self.min_replicas or 0, 1)
        high = self.max_replicas if self.max_replicas is not None else replicas
        return min(max(replicas, low), max(high, low))


@dataclass(frozen=True)
class RunningConfig:
    """What the operator runs now (from its status), independent of any metric."""

    packing: Packing
    replicas: int  # engines asked for
    ready_replicas: int

    @property
    def gpus(self) -> int:
        return gpus_for(self.replicas, self.packing)


def gpus_for(replicas: int, packing: Packing) -> int:
    return max(1, math.ceil(replicas / packing.replicas_per_gpu))


@dataclass(frozen=True)
class Observation:
    """One snapshot of an SLMDeployment, in the units the policy reasons in."""

    at_s: float
    running: RunningConfig
    generation_tokens_per_s: float | None = None
    prompt_tokens_per_s: float | None = None
    requests_running: float | None = None
    requests_waiting: float | None = None
    engines_reporting: int | None = None
    newest_sample_age_s: float | None = None
    kv_cache_usage_ratio: float | None = None
    ttft_p99_s: float | None = None
    itl_p99_s: float | None = None
    preemptions_per_s: float | None = None
    finished_requests_per_s: float | None = None
    attributed_watts: float | None = None

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot, running: RunningConfig) -> Observation:
        v = snapshot.values
        engines = v.get(Signal.ENGINES_REPORTING)
        finished = snapshot.keyed.get(Signal.FINISHED_REQUESTS_PER_S)
        # The node agent's SM-share split first; DCGM's token-share attribution is the fallback.
        watts = v.get(
            Signal.AGENT_ENERGY_WATTS,
            v.get(Signal.ATTRIBUTED_ENERGY_WATTS, v.get(Signal.ATTRIBUTED_POWER_WATTS)),
        )
        return cls(
            at_s=snapshot.evaluated_at_s,
            running=running,
            generation_tokens_per_s=v.get(Signal.GENERATION_TOKENS_PER_S),
            prompt_tokens_per_s=v.get(Signal.PROMPT_TOKENS_PER_S),
            requests_running=v.get(Signal.REQUESTS_RUNNING),
            requests_waiting=v.get(Signal.REQUESTS_WAITING),
            engines_reporting=round(engines) if engines is not None else None,
            newest_sample_age_s=v.get(Signal.NEWEST_SAMPLE_AGE_S),
            kv_cache_usage_ratio=v.get(Signal.KV_CACHE_USAGE_RATIO),
            ttft_p99_s=v.get(Signal.TTFT_P99_S),
            itl_p99_s=v.get(Signal.ITL_P99_S),
            preemptions_per_s=v.get(Signal.PREEMPTIONS_PER_S),
            finished_requests_per_s=sum(finished.values()) if finished else None,
            attributed_watts=watts,
        )

    def missing_required(self) -> tuple[str, ...]:
        required = {
            "generation tokens/s": self.generation_tokens_per_s,
            "running requests": self.requests_running,
            "waiting requests": self.requests_waiting,
            "engines reporting": self.engines_reporting,
        }
        return tuple(name for name, value in required.items() if value is None)

    @property
    def has_traffic(self) -> bool:
        return (self.generation_tokens_per_s or 0.0) > 0 or (
            self.finished_requests_per_s or 0.0
        ) > 0


@dataclass(frozen=True)
class MetricsUnavailable:
    """No observation this pass (Prometheus down, or a query failed)."""

    at_s: float
    message: str


@dataclass(frozen=True)
class TunerState:
    """What the policy carries from one pass to the next."""

    measured: tuple[MeasuredPoint, ...] = ()
    running: RunningConfig | None = None  # as last seen (ready count ignored)
    changed_at_s: float | None = None  # when `running` was first seen
    ready_since_s: float | None = None  # when every replica was first seen ready since then
    last_scale_up_s: float | None = None
    last_scale_down_s: float | None = None
    last_repack_s: float | None = None
    demand: tuple[tuple[float, float], ...] = ()  # (at_s, generated tokens/s wanted)
    breach_windows: int = 0
    hot_windows: int = 0  # consecutive windows over the scale-out utilisation
    last_window_at_s: float | None = None
    #: The measured packing left to try an unmeasured one: returned to unless the trial wins.
    trial_from: Packing | None = None

    def after_spec_change(self) -> TunerState:
        """What to carry over when the spec (and so the plan) changes: the measurements, which
        stay true of each packing, but no trial, streak or cooldown of the old spec."""
        return TunerState(measured=self.measured, demand=self.demand)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, to survive an operator restart (in an annotation or ConfigMap)."""
        return {
            "measured": [_point_dict(m) for m in self.measured],
            "running": _running_dict(self.running) if self.running else None,
            "changedAt": self.changed_at_s,
            "readySince": self.ready_since_s,
            "lastScaleUp": self.last_scale_up_s,
            "lastScaleDown": self.last_scale_down_s,
            "lastRepack": self.last_repack_s,
            "demand": [list(d) for d in self.demand],
            "breachWindows": self.breach_windows,
            "hotWindows": self.hot_windows,
            "trialFrom": self.trial_from.as_dict() if self.trial_from else None,
            "lastWindowAt": self.last_window_at_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TunerState:
        running = data.get("running")
        return cls(
            measured=tuple(_point_from(m) for m in data.get("measured", ())),
            running=_running_from(running) if running else None,
            changed_at_s=data.get("changedAt"),
            ready_since_s=data.get("readySince"),
            last_scale_up_s=data.get("lastScaleUp"),
            last_scale_down_s=data.get("lastScaleDown"),
            last_repack_s=data.get("lastRepack"),
            demand=tuple((float(a), float(b)) for a, b in data.get("demand", ())),
            breach_windows=int(data.get("breachWindows", 0)),
            hot_windows=int(data.get("hotWindows", 0)),
            trial_from=Packing.from_dict(data["trialFrom"]) if data.get("trialFrom") else None,
            last_window_at_s=data.get("lastWindowAt"),
        )


_LOAD_FIELDS = (
    "output_tokens_per_s_per_gpu",
    "total_tokens_per_s_per_gpu",
    "running_per_replica",
    "step_s",
    "watts_per_gpu",
    "ttft_p99_s",
    "itl_p99_s",
    "slo_met_ratio",
)


def _point_dict(point: MeasuredPoint) -> dict[str, Any]:
    loads = [
        {"load": s.load_ratio}
        | {name: [getattr(s, name).count, getattr(s, name).value] for name in _LOAD_FIELDS}
        for s in point.loads
    ]
    return {"packing": point.packing.as_dict(), "loads": loads}


def _point_from(data: Mapping[str, Any]) -> MeasuredPoint:
    loads = tuple(
        LoadStats(
            float(item["load"]),
            **{name: RunningMean(*map(float, item[name])) for name in _LOAD_FIELDS},
        )
        for item in data["loads"]
    )
    return MeasuredPoint(Packing.from_dict(data["packing"]), loads)


def _running_dict(running: RunningConfig) -> dict[str, Any]:
    return {
        "packing": running.packing.as_dict(),
        "replicas": running.replicas,
        "readyReplicas": running.ready_replicas,
    }


def _running_from(data: Mapping[str, Any]) -> RunningConfig:
    return RunningConfig(
        Packing.from_dict(data["packing"]), int(data["replicas"]), int(data["readyReplicas"])
    )


@dataclass(frozen=True)
class DecisionInputs:
    """What the decision was based on, for the status history and Event messages."""

    snapshot_age_s: float
    gpus: int
    demand_output_tokens_per_s: float
    utilisation_ratio: float | None
    capacity_output_tokens_per_s_per_gpu: float | None
    throughput_total_tokens_per_s_per_gpu: float | None
    tokens_per_joule: float | None
    ttft_p99_s: float | None
    itl_p99_s: float | None
    requests_waiting: float | None
    windows_at_packing: float

    def as_dict(self) -> dict[str, Any]:
        def num(x: float | None, digits: int = 3) -> float | None:
            return None if x is None else round(x, digits)

        out = {
            "snapshotAgeSeconds": num(self.snapshot_age_s, 1),
            "gpus": self.gpus,
            "demandOutputTokensPerSecond": num(self.demand_output_tokens_per_s, 1),
            "utilisationRatio": num(self.utilisation_ratio),
            "capacityOutputTokensPerSecondPerGPU": num(
                self.capacity_output_tokens_per_s_per_gpu, 1
            ),
            "throughputTokensPerSecondPerGPU": num(self.throughput_total_tokens_per_s_per_gpu, 1),
            "tokensPerJoule": num(self.tokens_per_joule, 2),
            "ttftP99Seconds": num(self.ttft_p99_s, 4),
            "itlP99Seconds": num(self.itl_p99_s, 4),
            "requestsWaiting": num(self.requests_waiting, 1),
            "windowsAtPacking": num(self.windows_at_packing, 0),
        }
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class Decision:
    """One pass's outcome: everything a status history entry and an Event need."""

    at_s: float
    action: Action
    reason: Reason
    message: str  # one sentence
    current: Packing | None
    current_replicas: int | None
    target: Packing | None  # equals current unless the action is Repack
    target_replicas: int | None
    exploring: bool = False  # the target has not been measured enough yet
    expected_gain_ratio: float | None = None  # objective gain the model expects from a repack
    inputs: DecisionInputs | None = None

    @property
    def changes(self) -> bool:
        return self.action is not Action.HOLD

    @property
    def target_gpus(self) -> int | None:
        if self.target is None or self.target_replicas is None:
            return None
        return gpus_for(self.target_replicas, self.target)

    @property
    def event_type(self) -> str:
        return "Warning" if self.reason in WARNING_REASONS else "Normal"

    def as_status_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(self.at_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "action": self.action.value,
            "reason": self.reason.value,
            "message": self.message,
        }
        if self.current is not None:
            entry["from"] = self.current.as_dict() | {"replicas": self.current_replicas}
        if self.target is not None:
            entry["to"] = self.target.as_dict() | {
                "replicas": self.target_replicas,
                "gpus": self.target_gpus,
            }
        if self.exploring:
            entry["exploring"] = True
        if self.expected_gain_ratio is not None:
            entry["expectedGainRatio"] = round(self.expected_gain_ratio, 3)
        if self.inputs is not None:
            entry["inputs"] = self.inputs.as_dict()
        return entry


# --- the pass -------------------------------------------------------------------------------


def _track(
    state: TunerState, running: RunningConfig, now_s: float, config: PolicyConfig
) -> TunerState:
    """Note a change of what runs (whoever made it) and when it became fully ready."""
    seen = replace(running, ready_replicas=0)
    last = state.running
    if last != seen:
        state = replace(state, running=seen, changed_at_s=now_s, ready_since_s=None)
        if last is not None and last.packing != seen.packing:
            windows = sum(m.windows for m in state.measured if m.packing == seen.packing)
            trial = windows < config.min_windows_to_compare
            # Leaving a trial for another keeps the packing before it as the one to compare
            # with: that is the packing known to be good.
            incumbent = state.trial_from if state.trial_from not in (None, seen.packing) else None
            origin = incumbent or last.packing
            state = replace(state, last_repack_s=now_s, trial_from=origin if trial else None)
        elif last is not None and seen.replicas > last.replicas:
            state = replace(state, last_scale_up_s=now_s)
        elif last is not None:
            state = replace(state, last_scale_down_s=now_s)
    if running.ready_replicas < running.replicas:
        return replace(state, ready_since_s=None)
    if state.ready_since_s is None:
        return replace(state, ready_since_s=now_s)
    return state


def _demand(obs: Observation, config: PolicyConfig) -> float:
    """Generated tokens/s wanted: what was served, inflated by the queue when one builds."""
    generated = obs.generation_tokens_per_s or 0.0
    running_requests = max(obs.requests_running or 0.0, 1.0)
    backlog = 1.0 + (obs.requests_waiting or 0.0) / running_requests
    return generated * min(backlog, config.max_backlog_ratio)


def _rising(history: Sequence[tuple[float, float]], z: float) -> bool:
    """Whether the least-squares slope of (time, demand) is positive by `z` standard errors."""
    if len(history) < 4:
        return False
    ts = [t for t, _ in history]
    ys = [d for _, d in history]
    line = least_squares_line(ts, ys)
    if line is None:
        return False
    t_mean, y_mean, slope, stt = line
    residual = sum((y - y_mean - slope * (t - t_mean)) ** 2 for t, y in zip(ts, ys, strict=True))
    se = math.sqrt(residual / (len(ts) - 2) / stt)
    return slope > z * se if se > 0 else slope > 0


def _utilisation(obs: Observation, estimate: Estimate, config: PolicyConfig) -> float:
    """Demand over the capacity at saturation of the GPUs that run."""
    return _demand(obs, config) / obs.running.gpus / estimate.saturated_capacity_tokens_per_s()


def _occupancy(obs: Observation, estimate: Estimate) -> float:
    """Share of the batch slots in use: running requests over replicas x saturated batch."""
    slots = obs.running.replicas * max(estimate.point.batch_per_replica, 1.0)
    return (obs.requests_running or 0.0) / slots


@dataclass(frozen=True)
class _Option:
    """A packing evaluated at the current demand."""

    estimate: Estimate
    replicas: int
    score: float
    score_log_sd: float
    meets_slo: bool

    @property
    def packing(self) -> Packing:
        return self.estimate.point.packing

    @property
    def gpus(self) -> int:
        return gpus_for(self.replicas, self.packing)


def _score(estimate: Estimate, objective: Objective, load_ratio: float) -> tuple[float, float]:
    """The objective's median score and the standard deviation of its logarithm.

    Throughput per GPU scales with the speed factor c; tokens per joule with c / w (w the power
    factor); Balanced, their geometric mean, with c / sqrt(w).
    """
    throughput = estimate.capacity_tokens_per_s() * estimate.point.total_per_output_tokens
    speed_sd, power_sd = estimate.speed.sd_log, estimate.power.sd_log
    if objective is Objective.THROUGHPUT:
        return throughput, speed_sd
    energy = estimate.tokens_per_joule(load_ratio)
    if objective is Objective.ENERGY:
        return energy, math.hypot(speed_sd, power_sd)
    return math.sqrt(throughput * energy), math.hypot(speed_sd, power_sd / 2)


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def expected_gain_ratio(score: float, log_sd: float, current_score: float) -> float:
    """E[max(S / current - 1, 0)] for a log-normal score S of median `score`.

    The expected improvement of Bayesian optimisation: a packing whose median is no better
    than the current one still has an expected gain when it is uncertain, which is what makes
    the policy try a neighbour after the measurements shifted the whole model. Once measured,
    its uncertainty and so this optimism vanish, and the expected gain is the plain ratio.
    """
    log_ratio = math.log(score / current_score)
    if log_sd < 1e-9:
        return max(math.exp(log_ratio) - 1.0, 0.0)
    d = log_ratio / log_sd
    return math.exp(log_ratio + log_sd**2 / 2) * _normal_cdf(d + log_sd) - _normal_cdf(d)


def _meets_slo(
    estimate: Estimate, per_gpu_output: float, slo: Slo, z: float, max_load: float
) -> bool:
    return _slo_slack(estimate, per_gpu_output, slo, z, max_load) >= 0.0


def _slo_slack(
    estimate: Estimate, per_gpu_output: float, slo: Slo, z: float, max_load: float
) -> float:
    """How far the z-bound of every p99 (and of the load) stays inside its limit, as the
    smallest log(limit / bound): negative when the packing is not predicted to meet the SLO,
    -inf when it is predicted overloaded."""
    load = estimate.load_ratio(per_gpu_output, z)
    if not load <= max_load:  # also NaN
        return math.log(max_load / load) if math.isfinite(load) else -math.inf
    slack = math.log(max_load / load) if load > 0.0 else math.inf
    for quantity, limit in ((Quantity.TTFT, slo.ttft_p99_s), (Quantity.ITL, slo.itl_p99_s)):
        if limit is None:
            continue
        p99 = estimate.latency_p99_s(quantity, per_gpu_output, z)
        if not math.isfinite(p99):
            return -math.inf
        if p99 > 0.0:
            slack = min(slack, math.log(limit / p99))
    return slack


class _Pass:
    """One call of `tune`: the inputs, and the helpers every rule shares."""

    def __init__(
        self,
        state: TunerState,
        obs: Observation,
        model: Model,
        spec: TuneSpec,
        config: PolicyConfig,
        now_s: float,
    ) -> None:
        self.state, self.obs, self.model = state, obs, model
        self.spec, self.config, self.now_s = spec, config, now_s
        self.running = obs.running
        self.packing = obs.running.packing
        estimate = model.get(self.packing)
        assert estimate is not None
        self.estimate = estimate
        self.demand = _demand(obs, config)
        self.gpus = self.running.gpus
        self.utilisation = _utilisation(obs, estimate, config)
        self.saturated = (obs.requests_waiting or 0.0) / max(
            self.running.replicas, 1
        ) >= config.saturated_waiting_per_replica

    # sizing

    def gpus_needed(self, estimate: Estimate, demand: float) -> int:
        """GPUs that carry `demand` at the target utilisation of the capacity's lower bound."""
        capacity = estimate.saturated_capacity_tokens_per_s(-self.config.slo_margin_z)
        return max(1, math.ceil(demand / (self.config.target_utilisation_ratio * capacity)))

    def option(self, estimate: Estimate, demand: float) -> _Option:
        packing = estimate.point.packing
        gpus = self.gpus_needed(estimate, demand)
        low = max(1, self.gpus - self.config.max_scale_down_gpus)
        high = max(1, math.floor(self.gpus * self.config.max_scale_up_ratio))
        gpus = min(max(gpus, low), high)
        replicas = self.spec.clamp(gpus * packing.replicas_per_gpu)
        per_gpu = demand / gpus_for(replicas, packing)
        meets = _meets_slo(
            estimate,
            per_gpu,
            self.spec.slo,
            self.config.slo_margin_z,
            self.config.model.max_fit_load_ratio,
        )
        score, sd = _score(estimate, self.spec.objective, self.config.target_utilisation_ratio)
        return _Option(estimate, replicas, score, sd, meets)

    # decisions

    def inputs(self) -> DecisionInputs:
        obs = self.obs
        total = (obs.generation_tokens_per_s or 0.0) + (obs.prompt_tokens_per_s or 0.0)
        tpj = None
        if obs.attributed_watts and obs.attributed_watts > 0:
            tpj = total / obs.attributed_watts
        return DecisionInputs(
            snapshot_age_s=self.now_s - obs.at_s,
            gpus=self.gpus,
            demand_output_tokens_per_s=self.demand,
            utilisation_ratio=self.utilisation,
            capacity_output_tokens_per_s_per_gpu=self.estimate.saturated_capacity_tokens_per_s(),
            throughput_total_tokens_per_s_per_gpu=total / self.gpus,
            tokens_per_joule=tpj,
            ttft_p99_s=obs.ttft_p99_s,
            itl_p99_s=obs.itl_p99_s,
            requests_waiting=obs.requests_waiting,
            windows_at_packing=self.estimate.windows,
        )

    def decision(
        self,
        action: Action,
        reason: Reason,
        message: str,
        target: Packing | None = None,
        replicas: int | None = None,
        *,
        exploring: bool = False,
        gain: float | None = None,
    ) -> Decision:
        return Decision(
            at_s=self.now_s,
            action=action,
            reason=reason,
            message=message,
            current=self.packing,
            current_replicas=self.running.replicas,
            target=target or self.packing,
            target_replicas=replicas if replicas is not None else self.running.replicas,
            exploring=exploring,
            expected_gain_ratio=gain,
            inputs=self.inputs(),
        )

    def hold(self, reason: Reason, message: str) -> Decision:
        return self.decision(Action.HOLD, reason, message)

    def scale(self, replicas: int, reason: Reason, message: str) -> Decision:
        return self.decision(Action.SCALE, reason, message, self.packing, replicas)

    # the rules

    def bounds(self) -> Decision | None:
        clamped = self.spec.clamp(self.running.replicas)
        if clamped == self.running.replicas:
            return None
        return self.scale(
            clamped,
            Reason.OUTSIDE_BOUNDS,
            f"{self.running.replicas} replicas lie outside minReplicas/maxReplicas; "
            f"moving to {clamped}",
        )

    def scale_out(self) -> Decision | None:
        config = self.config
        breached = self.state.breach_windows >= config.slo_breach_windows
        breach_under_load = breached and (
            self.utilisation >= config.breach_scale_out_utilisation_ratio
        )
        hot = self.state.hot_windows >= config.scale_up_windows or (
            self.state.hot_windows >= 1 and _rising(self.state.demand, config.rising_trend_z)
        )
        if not (hot or self.saturated or breach_under_load):
            return None
        n = self.packing.replicas_per_gpu
        gpus = self.gpus_needed(self.estimate, self.demand)
        occupancy = _occupancy(self.obs, self.estimate)
        full = occupancy > config.scale_up_occupancy_ratio
        if self.saturated or breach_under_load or (hot and full):
            # A queue hides demand, and full slots say the capacity estimate runs high: at
            # least one more GPU.
            gpus = max(gpus, self.gpus + 1)
        # At most max_scale_up_ratio times the current count, but always at least one GPU more.
        cap = max(
            self.running.replicas + n, math.floor(self.running.replicas * config.max_scale_up_ratio)
        )
        want = min(gpus * n, cap)
        target = self.spec.clamp(want)
        why = (
            f"SLO breached for {self.state.breach_windows} windows at "
            f"{self.utilisation:.0%} utilisation"
            if breach_under_load
            else (
                f"{self.obs.requests_waiting:.0f} requests queue"
                if self.saturated
                else f"utilisation {self.utilisation:.0%} is over "
                f"{config.scale_up_utilisation_ratio:.0%}"
                if self.utilisation > config.scale_up_utilisation_ratio
                else f"{occupancy:.0%} of the batch slots are in use"
            )
        )
        reason = Reason.SLO_BREACHED if breach_under_load else Reason.LOAD_ROSE
        if target <= self.running.replicas:
            high = self.spec.max_replicas
            if high is None or self.running.replicas < high:
                return None  # this window's demand fits what runs
            return self.hold(Reason.AT_MAX_REPLICAS, f"{why}, but maxReplicas ({high}) is reached")
        return self.scale(target, reason, f"{why}; scaling out to {target} replicas")

    def options(self) -> list[_Option]:
        """Every packing other than the current one, evaluated at the current demand."""
        out = []
        high = self.spec.max_replicas
        for packing, estimate in self.model.estimates.items():
            if packing == self.packing:
                continue
            if high is not None and packing.replicas_per_gpu > high:
                continue  # could never fill one GPU
            out.append(self.option(estimate, self.demand))
        return out

    def breach_repack(self) -> Decision | None:
        config = self.config
        if self.state.breach_windows < config.slo_breach_windows:
            return None
        feasible = [o for o in self.options() if o.meets_slo]
        incumbent = [o for o in feasible if o.packing == self.state.trial_from]
        if incumbent:
            feasible = incumbent  # a trial that breaches goes straight back
        if not feasible:
            return self.hold(
                Reason.SLO_UNREACHABLE,
                f"SLO breached at {self.utilisation:.0%} utilisation and no packing is "
                "predicted to meet it; relax the SLO or use a faster GPU",
            )
        best = max(feasible, key=lambda o: (o.score, o.packing.key))
        return self.decision(
            Action.REPACK,
            Reason.SLO_BREACHED,
            f"SLO breached at light load ({self.utilisation:.0%}); repacking to "
            f"{best.packing.key}, predicted to meet it",
            best.packing,
            best.replicas,
            exploring=best.estimate.windows < config.min_windows_to_compare,
        )

    def trial_verdict(self) -> tuple[TrialVerdict, _Option | None]:
        """Whether the packing being tried beat the one it replaced, and that one evaluated.

        The two are compared once each has `min_windows_to_compare` windows, and a verdict
        waits until their scores differ by more than one standard deviation of the
        difference, or until `max_trial_windows`, when the better mean wins.
        """
        incumbent = self.state.trial_from
        before = self.model.get(incumbent) if incumbent is not None else None
        windows = self.estimate.windows
        if incumbent is None:
            return TrialVerdict.NONE, None
        if before is None:
            return TrialVerdict.KEEP, None  # the packing left is no longer planned
        if windows < self.config.min_windows_to_compare:
            return TrialVerdict.PENDING, None
        current = self.option(self.estimate, self.demand)
        back = self.option(before, self.demand)
        if not back.meets_slo:
            return TrialVerdict.KEEP, back
        if not current.meets_slo:
            return TrialVerdict.REVERT, back  # measured, and still not sure at the target load
        margin = math.log(back.score / current.score)
        spread = math.hypot(back.score_log_sd, current.score_log_sd)
        settled = windows >= self.config.max_trial_windows
        if margin > spread or (settled and margin > 0):
            return TrialVerdict.REVERT, back
        if margin < -spread or settled:
            return TrialVerdict.KEEP, back
        return TrialVerdict.PENDING, back

    def conclude_trial(self) -> Decision | None:
        """After a trial is measured, return to the packing it left unless the trial won."""
        verdict, back = self.trial_verdict()
        if verdict is not TrialVerdict.REVERT or back is None:
            return None
        current = self.option(self.estimate, self.demand)
        if current.meets_slo:
            why = (
                f"{self.packing.key} measured {1 - current.score / back.score:.0%} worse than "
                f"{back.packing.key}"
            )
        else:
            why = (
                f"{self.packing.key} measured, and its p99 bound still misses the SLO at "
                f"{self.config.target_utilisation_ratio:.0%} utilisation"
            )
        onward = self.onward(back, why)
        if onward is not None:
            return onward
        return self.decision(
            Action.REPACK,
            Reason.EXPLORATION_REVERTED,
            f"{why}; returning to {back.packing.key}",
            back.packing,
            back.replicas,
            gain=back.score / current.score - 1.0,
        )

    def onward(self, back: _Option, why: str) -> Decision | None:
        """Instead of returning from a worse trial, go on to a packing its measurement made
        safe and that beats the one to return to: one repack instead of two."""
        config = self.config
        candidates = [
            o
            for o in self.options()
            if o.meets_slo and o.packing != back.packing and back.score > 0
        ]
        gains = {
            o.packing: expected_gain_ratio(o.score, o.score_log_sd, back.score) for o in candidates
        }
        best = max(candidates, key=lambda o: (gains[o.packing], o.score, o.packing.key),
                   default=None)  # fmt: skip
        if best is None or gains[best.packing] < config.repack_gain_ratio:
            return None
        gain = gains[best.packing]
        return self.repack_to(
            best,
            gain,
            lambda verb: (
                f"{why}; {verb} {best.packing.key} instead of {back.packing.key}, "
                f"expected {gain:.0%} better than it"
            ),
        )

    def repack_to(self, option: _Option, gain: float, describe: Callable[[str], str]) -> Decision:
        """A repack to `option`, an exploration while it is unmeasured; `describe` writes the
        message around the verb ("trying" or "moving to")."""
        exploring = option.estimate.windows < self.config.min_windows_to_compare
        return self.decision(
            Action.REPACK,
            Reason.EXPLORING if exploring else Reason.BETTER_PACKING,
            describe("trying" if exploring else "moving to"),
            option.packing,
            option.replicas,
            exploring=exploring,
            gain=gain,
        )

    def repack_blocker(self) -> str | None:
        config, obs = self.config, self.obs
        if self.estimate.windows < config.min_windows_to_compare:
            return "measuring the current packing"
        if self.state.trial_from is not None:
            return f"comparing with {self.state.trial_from.key}"
        if self.state.last_repack_s is not None and (
            self.now_s - self.state.last_repack_s < config.repack_cooldown_s
        ):
            return "repack cooling down"
        if self.utilisation < config.min_repack_utilisation_ratio:
            return "too little load to compare packings"
        if self.spec.has_slo and obs.ttft_p99_s is None and obs.itl_p99_s is None:
            return "latency not measured"
        if self.spec.needs_power and obs.attributed_watts is None:
            return "power not measured"
        return None

    def slack(self, estimate: Estimate, option: _Option, z: float) -> float:
        """`_slo_slack` of `estimate` at the load `option` would carry."""
        per_gpu = self.demand / option.gpus
        max_load = self.config.model.max_fit_load_ratio
        return _slo_slack(estimate, per_gpu, self.spec.slo, z, max_load)

    def stepping_stone(
        self,
        options: list[_Option],
        gains: Mapping[Packing, float],
        best_gain: float,
        current_score: float,
    ) -> tuple[_Option, _Option] | None:
        """A safe, unmeasured packing to try on the way to a better one the margin blocks.

        The target is the option with the largest expected gain, above any safe one's, whose
        median prediction meets the SLO but whose bound does not. A stone is a safe option
        that has not been measured; measuring it shrinks the shared trends' uncertainty
        (`Model.lookahead`), most for the nearest neighbours of the target. The stone that
        narrows the target's bound most is taken, if by `stepping_stone_tightening_ratio` and
        if its shortfall against what runs is repaid in `stepping_stone_payback_windows`.
        Returns (stone, target).
        """
        config = self.config
        z = config.slo_margin_z
        floor = max(config.repack_gain_ratio, best_gain)
        blocked = [
            o
            for o in options
            if not o.meets_slo
            and gains[o.packing] >= floor
            and self.slack(o.estimate, o, 0.0) >= 0.0
            and self.slack(o.estimate, o, z) > -math.inf
        ]
        if not blocked:
            return None
        target = max(blocked, key=lambda o: (gains[o.packing], o.score, o.packing.key))
        before = self.slack(target.estimate, target, z)
        windows = float(config.min_windows_to_compare)
        best: tuple[float, float, str, _Option] | None = None
        repaid = gains[target.packing] * config.stepping_stone_payback_windows
        for stone in options:
            if not stone.meets_slo or stone.estimate.windows >= config.min_windows_to_compare:
                continue
            shortfall = max(0.0, 1.0 - stone.score / current_score)
            if shortfall * (config.min_windows_to_compare + 1) > repaid:
                continue
            ahead = self.model.lookahead(target.packing, stone.packing, windows)
            if ahead is None:
                continue
            tightening = self.slack(ahead, target, z) - before
            if tightening < config.stepping_stone_tightening_ratio:
                continue
            key = (tightening, gains[stone.packing], stone.packing.key, stone)
            if best is None or key[:3] > best[:3]:
                best = key
        return (best[3], target) if best is not None else None

    def repack(self) -> Decision | None:
        if self.repack_blocker() is not None:
            return None
        current = self.option(self.estimate, self.demand)
        if current.score <= 0:
            return None
        options = self.options()
        gains = {
            o.packing: expected_gain_ratio(o.score, o.score_log_sd, current.score) for o in options
        }
        feasible = [o for o in options if o.meets_slo]
        best_gain = max((gains[o.packing] for o in feasible), default=0.0)
        step = self.stepping_stone(options, gains, best_gain, current.score)
        if step is not None:
            stone, target = step
            objective = self.spec.objective.value.lower()
            return self.decision(
                Action.REPACK,
                Reason.EXPLORING,
                f"trying {stone.packing.key} on {stone.gpus} GPUs on the way to "
                f"{target.packing.key} (expected {gains[target.packing]:.0%} better "
                f"{objective}, not yet sure to meet the SLO), within the SLO",
                stone.packing,
                stone.replicas,
                exploring=True,
                gain=gains[stone.packing],
            )
        if not feasible:
            return None
        best = max(feasible, key=lambda o: (gains[o.packing], o.score, o.packing.key))
        gain = gains[best.packing]
        if gain < self.config.repack_gain_ratio:
            return None
        objective = self.spec.objective.value.lower()
        return self.repack_to(
            best,
            gain,
            lambda verb: (
                f"{verb} {best.packing.key} on {best.gpus} GPUs: expected {gain:.0%} "
                f"better {objective} than {self.packing.key}, within the SLO"
            ),
        )

    def scale_in(self) -> Decision | None:
        config, state = self.config, self.state
        stable_since = state.changed_at_s if state.changed_at_s is not None else self.now_s
        if self.now_s - stable_since < config.scale_down_stabilisation_s:
            return None
        if state.breach_windows > 0 or self.saturated:
            return None
        if (
            self.spec.has_slo
            and self.obs.has_traffic
            and (self.obs.ttft_p99_s is None and self.obs.itl_p99_s is None)
        ):
            return None  # cannot check the SLO after the step
        horizon = self.now_s - config.scale_down_stabilisation_s
        peak = max((d for t, d in state.demand if t >= horizon), default=self.demand)
        n = self.packing.replicas_per_gpu
        gpus = max(self.gpus_needed(self.estimate, peak), self.gpus - config.max_scale_down_gpus)
        target = self.spec.clamp(gpus * n)
        if target >= self.running.replicas or gpus_for(target, self.packing) >= self.gpus:
            return None  # frees no GPU: keep the replicas, they cost nothing extra
        per_gpu = peak / gpus_for(target, self.packing)
        if not _meets_slo(self.estimate, per_gpu, self.spec.slo, config.slo_margin_z, 1.0):
            return None
        return self.scale(
            target,
            Reason.LOAD_FELL,
            f"peak demand over {config.scale_down_stabilisation_s:.0f}s fits "
            f"{gpus_for(target, self.packing)} GPUs at {config.target_utilisation_ratio:.0%}; "
            f"scaling in to {target} replicas",
        )


def _window(obs: Observation, spec: TuneSpec) -> WindowMeasurement:
    running = obs.running
    gpus = running.gpus
    generated = obs.generation_tokens_per_s or 0.0
    total = generated + (obs.prompt_tokens_per_s or 0.0)
    slo_met = None
    if spec.has_slo and (obs.ttft_p99_s is not None or obs.itl_p99_s is not None):
        slo_met = _latency_ok(obs, spec.slo)
    return WindowMeasurement(
        output_tokens_per_s_per_gpu=generated / gpus,
        total_tokens_per_s_per_gpu=total / gpus,
        running_per_replica=(obs.requests_running or 0.0) / running.replicas,
        output_tokens_per_s_per_replica=generated / running.replicas,
        watts_per_gpu=obs.attributed_watts / gpus if obs.attributed_watts else None,
        ttft_p99_s=obs.ttft_p99_s,
        itl_p99_s=obs.itl_p99_s,
        slo_met=slo_met,
    )


def _latency_ok(obs: Observation, slo: Slo) -> bool:
    checks = ((obs.ttft_p99_s, slo.ttft_p99_s), (obs.itl_p99_s, slo.itl_p99_s))
    return all(v is None or bound is None or v <= bound for v, bound in checks)


def _hold_without_model(
    now_s: float, running: RunningConfig | None, reason: Reason, message: str
) -> Decision:
    packing = running.packing if running else None
    replicas = running.replicas if running else None
    return Decision(now_s, Action.HOLD, reason, message, packing, replicas, packing, replicas)


def _learn(
    state: TunerState, obs: Observation, prior: Prior, spec: TuneSpec, config: PolicyConfig
) -> TunerState:
    point = prior.get(obs.running.packing)
    assert point is not None
    measured = record(
        state.measured,
        obs.running.packing,
        point,
        _window(obs, spec),
        cap=config.window_cap,
        min_running=config.model.min_running_per_replica,
    )
    horizon = obs.at_s - config.scale_down_stabilisation_s
    kept = [d for d in state.demand if d[0] >= horizon]
    history = (*kept, (obs.at_s, _demand(obs, config)))
    breached = spec.has_slo and obs.has_traffic and not _latency_ok(obs, spec.slo)
    return replace(
        state,
        measured=measured,
        demand=history,
        breach_windows=state.breach_windows + 1 if breached else 0,
        last_window_at_s=obs.at_s,
    )


def tune(
    state: TunerState,
    observation: Observation | MetricsUnavailable,
    prior: Prior,
    spec: TuneSpec,
    now_s: float,
    config: PolicyConfig | None = None,
) -> tuple[Decision, TunerState]:
    """One tuning pass. Returns the decision and the state to pass in next time."""
    config = config or PolicyConfig()
    if isinstance(observation, MetricsUnavailable):
        return (
            _hold_without_model(
                now_s,
                state.running,
                Reason.PROMETHEUS_UNAVAILABLE,
                f"holding: no metrics ({observation.message})",
            ),
            state,
        )
    obs = observation
    running = obs.running
    state = _track(state, running, now_s, config)

    def hold(reason: Reason, message: str) -> tuple[Decision, TunerState]:
        return _hold_without_model(now_s, running, reason, message), state

    age = now_s - obs.at_s
    if age > config.max_snapshot_age_s:
        return hold(Reason.METRICS_STALE, f"holding: the snapshot is {age:.0f}s old")
    sample_age = obs.newest_sample_age_s
    if sample_age is not None and sample_age > config.max_sample_age_s:
        return hold(
            Reason.METRICS_STALE, f"holding: the newest vLLM sample is {sample_age:.0f}s old"
        )
    if running.ready_replicas < running.replicas:
        return hold(
            Reason.ROLLOUT_IN_PROGRESS,
            f"holding: {running.ready_replicas} of {running.replicas} replicas are ready",
        )
    missing = obs.missing_required()
    if missing:
        return hold(Reason.METRICS_MISSING, "holding: no " + ", ".join(missing))
    if obs.engines_reporting is not None and obs.engines_reporting < running.replicas:
        return hold(
            Reason.METRICS_MISSING,
            f"holding: {obs.engines_reporting} of {running.replicas} engines report metrics",
        )
    if running.packing not in prior:
        return hold(
            Reason.PACKING_NOT_IN_PLAN,
            f"holding: {running.packing.key} is not among the planned packings",
        )
    ready_since = state.ready_since_s if state.ready_since_s is not None else now_s
    clean_from = ready_since + config.settle_s + config.window_s
    if obs.at_s < clean_from:
        return hold(
            Reason.SETTLING,
            f"holding: the metrics window still overlaps the last change "
            f"(clean in {clean_from - obs.at_s:.0f}s)",
        )

    last = state.last_window_at_s
    fresh = last is None or obs.at_s - last >= config.min_window_spacing_ratio * config.window_s
    if fresh:
        state = _learn(state, obs, prior, spec, config)
    model = fit(prior, state.measured, config.model)
    if fresh:
        estimate = model.get(running.packing)
        assert estimate is not None
        hot = _utilisation(obs, estimate, config) > config.scale_up_utilisation_ratio
        hot = hot or _occupancy(obs, estimate) > config.scale_up_occupancy_ratio
        state = replace(state, hot_windows=state.hot_windows + 1 if hot else 0)
    current = _Pass(state, obs, model, spec, config, now_s)
    urgent = (current.bounds, current.scale_out, current.breach_repack, current.conclude_trial)
    for rule in urgent:
        decision = rule()
        if decision is not None:
            return decision, state
    if current.trial_verdict()[0] is TrialVerdict.KEEP:
        state = replace(state, trial_from=None)  # the trial won: it is the incumbent now
    for rule in (current.repack, current.scale_in):
        decision = rule()
        if decision is not None:
            return decision, state
    blocker = current.repack_blocker()
    detail = f" ({blocker})" if blocker else ""
    return (
        current.hold(
            Reason.STEADY,
            f"utilisation {current.utilisation:.0%} on {current.gpus} GPUs with "
            f"{current.packing.key}{detail}",
        ),
        state,
    )
