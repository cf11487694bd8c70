"""The autotuning policy on synthetic traces from the planner's perf model."""

from __future__ import annotations

import itertools
import json
import math
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmpack.api.v1alpha1 import SLMDeploymentSpec
from slmpack.autotune.model import Packing, Quantity, build_prior
from slmpack.autotune.policy import (
    Action,
    Decision,
    MetricsUnavailable,
    Observation,
    PolicyConfig,
    Reason,
    RunningConfig,
    TunerState,
    TuneSpec,
    _rising,
    expected_gain_ratio,
    gpus_for,
    tune,
)
from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog
from slmpack.planner.plan import PlanRequest
from slmpack.planner.types import Objective, SharingMode, Slo

from .test_autotune_sim import (
    START_S,
    TICK_S,
    Step,
    Trace,
    Truth,
    exact_truth,
    make_truth,
    plan_request,
    recommended,
    simulate,
)

#: The policy's defaults, named once for the assertions on them.
CONFIG = PolicyConfig()


def _converge(
    objective: Objective, seed: int, modes: tuple[SharingMode, ...]
) -> tuple[Truth, Packing, Packing, list[Step]]:
    request = plan_request(modes=modes, objective=objective)
    prior = build_prior(request)
    truth = make_truth(prior, random.Random(seed))
    spec = TuneSpec(objective=objective, min_replicas=1, max_replicas=64)
    best = truth.best(objective, spec.slo)
    demand = 2.1 * truth.capacity(best)  # about three GPUs at the target utilisation
    trace = simulate(truth, spec, lambda _: demand, start=recommended(request), ticks=90, seed=seed)
    assert trace.cluster is not None
    final = trace.cluster.packing
    repacks = trace.actions(Action.REPACK)
    return truth, best, final, repacks


@pytest.mark.parametrize(
    ("objective", "modes"),
    [
        (Objective.THROUGHPUT, (SharingMode.MPS,)),
        (Objective.ENERGY, (SharingMode.MPS,)),
        (Objective.BALANCED, (SharingMode.MPS,)),
        (Objective.BALANCED, (SharingMode.EXCLUSIVE, SharingMode.PACKED)),
    ],
)
def test_a_prior_off_by_thirty_percent_converges_within_a_few_decisions(
    objective: Objective, modes: tuple[SharingMode, ...]
) -> None:
    exact = 0
    seeds = range(6)
    for seed in seeds:
        truth, best, final, repacks = _converge(objective, seed, modes)
        ratio = truth.score(final, objective) / truth.score(best, objective)
        # Within the repack threshold of the true best, after at most four repacks, the last
        # within 30 minutes.
        assert ratio >= 1 - CONFIG.repack_gain_ratio, (seed, best.key, final.key)
        assert len(repacks) <= 4, (seed, [r.decision.message for r in repacks])
        assert all(r.at_s - START_S <= 1800 for r in repacks)
        exact += final == best
    assert exact >= len(seeds) - 2


def test_noisy_metrics_do_not_flap() -> None:
    request = plan_request(objective=Objective.THROUGHPUT)
    prior = build_prior(request)
    truth = make_truth(prior, random.Random(7))
    start = recommended(request)
    # Between the target (0.75) and the scale-out threshold (0.85) of three GPUs.
    demand = 3 * 0.8 * truth.capacity(start)
    spec = TuneSpec(objective=Objective.THROUGHPUT)
    trace = simulate(
        truth, spec, lambda _: demand, start=start, replicas=9, ticks=240, seed=7, noise=0.1
    )
    late = [s for s in trace.actions() if s.tick >= 60]
    assert not late, [s.decision.message for s in late]
    assert all(s.decision.event_type == "Normal" for s in trace.steps)
    # Trials only, each tried once and concluded once: no packing is explored twice.
    explored = [s.decision.target for s in trace.actions(Action.REPACK) if s.decision.exploring]
    assert len(explored) == len(set(explored)) <= 2
    assert len(trace.actions(Action.REPACK)) <= 2 * len(explored)
    # Replica count never reverses direction more than once (one settling overshoot at most).
    counts = [s.decision.target_replicas or 0 for s in trace.actions(Action.SCALE)]
    reversals = sum(
        1 for a, b, c in zip(counts, counts[1:], counts[2:], strict=False) if (b - a) * (c - b) < 0
    )
    assert reversals <= 1


def _steady_trace(**kwargs: Any) -> tuple[Trace, float]:
    request = plan_request(objective=Objective.THROUGHPUT)
    prior = build_prior(request)
    truth = exact_truth(prior)
    start = recommended(request)
    demand = 2.1 * truth.capacity(start)
    spec = TuneSpec(objective=Objective.THROUGHPUT, slo=Slo(ttft_p99_s=2.0))
    trace = simulate(truth, spec, lambda _: demand, start=start, replicas=9, **kwargs)
    return trace, demand


def test_a_prometheus_outage_holds_even_when_load_jumps() -> None:
    request = plan_request(objective=Objective.THROUGHPUT)
    truth = exact_truth(build_prior(request))
    start = recommended(request)
    base = 2.1 * truth.capacity(start)

    def demand(t: float) -> float:
        return base * (3.0 if t >= 900 else 1.0)

    def outage(t: float) -> bool:
        return 900 <= t < 1500

    trace = simulate(
        truth,
        TuneSpec(objective=Objective.THROUGHPUT),
        demand,
        start=start,
        replicas=9,
        ticks=60,
        outage=outage,
    )
    during = [s for s in trace.steps if 900 <= s.at_s - START_S < 1500]
    assert during
    assert all(s.decision.action is Action.HOLD for s in during)
    assert all(s.decision.reason is Reason.PROMETHEUS_UNAVAILABLE for s in during)
    assert all(s.decision.event_type == "Warning" for s in during)
    after = [s for s in trace.actions() if s.at_s - START_S >= 1500]
    assert after
    assert after[0].decision.action is Action.SCALE


def test_a_missing_required_metric_holds() -> None:
    trace, _ = _steady_trace(
        ticks=40, drop=lambda t: ("generation_tokens_per_s",) if t >= 300 else ()
    )
    late = [s for s in trace.steps if s.at_s - START_S >= 300]
    assert all(s.decision.action is Action.HOLD for s in late)
    assert all(s.decision.reason is Reason.METRICS_MISSING for s in late)
    assert "generation tokens/s" in late[0].decision.message


def test_missing_latency_blocks_scale_in_and_repacks() -> None:
    request = plan_request(objective=Objective.THROUGHPUT)
    truth = exact_truth(build_prior(request))
    start = recommended(request)
    demand = 0.5 * truth.capacity(start)  # one GPU's worth, but eight GPUs run
    spec = TuneSpec(objective=Objective.THROUGHPUT, slo=Slo(itl_p99_s=0.2))
    no_latency = ("ttft_p99_s", "itl_p99_s")
    trace = simulate(
        truth, spec, lambda _: demand, start=start, replicas=24, ticks=40, drop=lambda _: no_latency
    )
    assert not trace.actions()
    trace = simulate(truth, spec, lambda _: demand, start=start, replicas=24, ticks=40)
    assert trace.actions(Action.SCALE)


def test_stale_snapshots_and_stale_scrapes_hold() -> None:
    request = plan_request()
    prior = build_prior(request)
    start = recommended(request)
    running = RunningConfig(start, 3, 3)
    spec = TuneSpec()
    fresh = Observation(
        at_s=START_S,
        running=running,
        generation_tokens_per_s=1000.0,
        requests_running=30.0,
        requests_waiting=0.0,
        engines_reporting=3,
        newest_sample_age_s=10.0,
    )
    old, _ = tune(TunerState(), fresh, prior, spec, START_S + 600)
    assert (old.action, old.reason) == (Action.HOLD, Reason.METRICS_STALE)
    scrapes = Observation(**{**fresh.__dict__, "newest_sample_age_s": 400.0})
    stale, _ = tune(TunerState(), scrapes, prior, spec, START_S + 5)
    assert (stale.action, stale.reason) == (Action.HOLD, Reason.METRICS_STALE)
    partial = Observation(**{**fresh.__dict__, "engines_reporting": 2})
    missing, _ = tune(TunerState(), partial, prior, spec, START_S + 5)
    assert (missing.action, missing.reason) == (Action.HOLD, Reason.METRICS_MISSING)


def test_a_rollout_in_progress_holds() -> None:
    trace, _ = _steady_trace(ticks=30, rollout_s=240.0)
    reasons = {s.decision.reason for s in trace.steps}
    assert Reason.ROLLOUT_IN_PROGRESS in reasons
    for step in trace.steps:
        if step.decision.reason is Reason.ROLLOUT_IN_PROGRESS:
            assert step.decision.action is Action.HOLD


def test_a_load_spike_scales_out_fast_and_back_in_slowly() -> None:
    request = plan_request(objective=Objective.THROUGHPUT)
    prior = build_prior(request)
    truth = make_truth(prior, random.Random(3))
    start = recommended(request)
    base = 1.5 * truth.capacity(start)
    spike_from, spike_to = 3600.0, 5400.0

    def demand(t: float) -> float:
        return base * (3.0 if spike_from <= t < spike_to else 1.0)

    trace = simulate(
        truth,
        TuneSpec(objective=Objective.THROUGHPUT),
        demand,
        start=start,
        ticks=400,
        seed=3,
        noise=0.08,
    )
    assert trace.cluster is not None
    steps = trace.steps
    before = next(s for s in steps if s.at_s - START_S >= spike_from - TICK_S)
    gpus_before = gpus_for(before.replicas, before.packing)

    # Out: enough capacity for the spike (below the scale-out threshold) within 4 minutes.
    def enough(step: Step) -> bool:
        capacity = gpus_for(step.replicas, step.packing) * truth.capacity(step.packing)
        return step.demand / capacity <= CONFIG.scale_up_utilisation_ratio

    reached = next(s for s in steps if s.at_s - START_S >= spike_from and enough(s))
    assert reached.at_s - START_S - spike_from <= 240

    # In: not before the stabilisation window, one GPU per step, steps a window apart.
    ins = [
        s
        for s in trace.actions(Action.SCALE)
        if s.at_s - START_S >= spike_to and (s.decision.target_replicas or 0) < s.replicas
    ]
    assert ins
    # (Less one window: the synthetic window at the spike's end already sees the low load.)
    quiet_s = CONFIG.scale_down_stabilisation_s - CONFIG.window_s
    assert ins[0].at_s - START_S - spike_to >= quiet_s
    for step in ins:
        freed = gpus_for(step.replicas, step.packing) - (step.decision.target_gpus or 0)
        assert freed == CONFIG.max_scale_down_gpus
    for a, b in itertools.pairwise(ins):
        assert b.at_s - a.at_s >= CONFIG.scale_down_stabilisation_s
    final = trace.steps[-1]
    assert gpus_for(final.replicas, final.packing) <= gpus_before + 1


def test_a_rising_trend_needs_four_windows_and_a_clear_slope() -> None:
    rising = [(60.0 * i, 100.0 + 5.0 * i + (-1) ** i) for i in range(5)]
    assert _rising(rising, 2.0)
    assert not _rising(rising[:3], 2.0)  # too few windows to tell a trend from noise
    noisy = [(60.0 * i, 100.0 + 8.0 * (-1) ** i) for i in range(6)]
    assert not _rising(noisy, 2.0)
    assert not _rising([(60.0 * i, 100.0 - 5.0 * i) for i in range(5)], 2.0)


def test_a_ramp_scales_out_after_one_hot_window() -> None:
    request = plan_request(objective=Objective.THROUGHPUT)
    prior = build_prior(request)
    truth = exact_truth(prior)
    start = recommended(request)
    capacity = truth.capacity(start)

    def demand(t: float) -> float:  # 0.6 of two GPUs, rising 4% of it per minute
        return 2 * 0.6 * capacity * (1 + 0.04 * max(0.0, t - 600) / 60)

    spec = TuneSpec(objective=Objective.THROUGHPUT)
    first = {}
    for z in (CONFIG.rising_trend_z, math.inf):
        config = PolicyConfig(rising_trend_z=z, repack_gain_ratio=10.0)  # scaling only
        trace = simulate(truth, spec, demand, start=start, replicas=2 * start.replicas_per_gpu,
                         ticks=60, noise=0.02, config=config)  # fmt: skip
        outs = [s for s in trace.actions(Action.SCALE) if s.decision.reason is Reason.LOAD_ROSE]
        assert outs
        first[z] = outs[0].tick
    assert first[CONFIG.rising_trend_z] < first[math.inf]


def test_full_batch_slots_scale_out_when_the_capacity_estimate_says_there_is_room() -> None:
    request = plan_request(objective=Objective.THROUGHPUT)
    prior = build_prior(request)
    truth = exact_truth(prior)
    start = recommended(request)
    demand = 3 * 0.8 * truth.capacity(start)  # between the target and the scale-out threshold
    spec = TuneSpec(objective=Objective.THROUGHPUT)
    messages = {}
    for occupancy in (CONFIG.scale_up_occupancy_ratio, 0.3):
        config = PolicyConfig(scale_up_occupancy_ratio=occupancy, repack_gain_ratio=10.0)
        trace = simulate(truth, spec, lambda _: demand, start=start,
                         replicas=3 * start.replicas_per_gpu, ticks=12, noise=0.02,
                         config=config)  # fmt: skip
        messages[occupancy] = [s.decision.message for s in trace.actions(Action.SCALE)]
    assert messages[CONFIG.scale_up_occupancy_ratio] == []
    assert any("batch slots" in m for m in messages[0.3]), messages[0.3]


def test_scale_in_frees_whole_gpus() -> None:
    request = plan_request(objective=Objective.THROUGHPUT)
    truth = exact_truth(build_prior(request))
    start = recommended(request)
    n = start.replicas_per_gpu
    demand = 1.2 * truth.capacity(start)
    trace = simulate(
        truth,
        TuneSpec(objective=Objective.THROUGHPUT),
        lambda _: demand,
        start=start,
        replicas=8 * n + 1,
        ticks=120,
    )
    ins = trace.actions(Action.SCALE)
    assert ins
    for step in ins:
        target = step.decision.target
        assert target is not None
        assert step.decision.target_replicas is not None
        assert step.decision.target_replicas % target.replicas_per_gpu == 0


def test_min_and_max_replicas_are_respected() -> None:
    request = plan_request(objective=Objective.THROUGHPUT)
    truth = exact_truth(build_prior(request))
    start = recommended(request)
    n = start.replicas_per_gpu
    huge = 10 * truth.capacity(start)
    capped = TuneSpec(objective=Objective.THROUGHPUT, min_replicas=2, max_replicas=2 * n)
    trace = simulate(truth, capped, lambda _: huge, start=start, replicas=n, ticks=30)
    targets = [s.decision.target_replicas for s in trace.steps if s.decision.target_replicas]
    assert max(targets) <= 2 * n
    at_max = [s for s in trace.steps if s.decision.reason is Reason.AT_MAX_REPLICAS]
    assert at_max
    assert all(s.replicas == 2 * n for s in at_max)

    floor = TuneSpec(objective=Objective.THROUGHPUT, min_replicas=2 * n, max_replicas=4 * n)
    trace = simulate(truth, floor, lambda _: 1.0, start=start, replicas=4 * n, ticks=80)
    assert min(s.decision.target_replicas or 0 for s in trace.steps) >= 2 * n

    outside = simulate(truth, floor, lambda _: 1.0, start=start, replicas=n, ticks=8)
    first = outside.actions()[0].decision
    assert (first.reason, first.target_replicas) == (Reason.OUTSIDE_BOUNDS, 2 * n)


def _violations(trace: Trace, slo: Slo) -> list[str]:
    """Repacks whose target truly misses the SLO at the load it was sized for."""
    assert trace.cluster is not None
    truth = trace.cluster.truth
    out = []
    for step in trace.actions(Action.REPACK):
        decision = step.decision
        assert decision.target is not None
        assert decision.target_replicas is not None
        per_gpu = step.demand / gpus_for(decision.target_replicas, decision.target)
        if not truth.meets_slo(decision.target, slo, per_gpu):
            out.append(f"{decision.reason}: {decision.target.key} ({decision.message})")
    return out


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    seed=st.integers(0, 10_000),
    objective=st.sampled_from(list(Objective)),
    modes=st.sampled_from(
        [
            (SharingMode.MPS,),
            (SharingMode.EXCLUSIVE, SharingMode.PACKED),
            (SharingMode.TIME_SLICING,),
        ]
    ),
    itl_slack=st.floats(0.8, 1.6),
    ttft_s=st.sampled_from([None, 0.2, 1.0]),
    load_gpus=st.floats(0.5, 4.0),
)
def test_exploration_never_steps_into_an_slo_violation(
    seed: int,
    objective: Objective,
    modes: tuple[SharingMode, ...],
    itl_slack: float,
    ttft_s: float | None,
    load_gpus: float,
) -> None:
    # The ITL bound sits around the plan's pick, so some neighbours are infeasible.
    loose = plan_request(modes=modes, objective=objective)
    start = recommended(loose)
    prior = build_prior(loose)
    point = prior.get(start)
    assert point is not None
    start_itl = point.latency_p99_s(Quantity.ITL, 0.75)
    slo = Slo(itl_p99_s=start_itl * itl_slack, ttft_p99_s=ttft_s)
    truth = make_truth(prior, random.Random(seed))
    demand = load_gpus * truth.capacity(start)
    spec = TuneSpec(objective=objective, slo=slo, max_replicas=64)
    trace = simulate(truth, spec, lambda _: demand, start=start, ticks=60, seed=seed)
    assert _violations(trace, slo) == []


def test_stepping_stones_open_packings_the_margin_blocks_without_violations() -> None:
    # An ITL bound 1.4x the plan's pick: the packings with more replicas per GPU have medians
    # within it but bounds beyond it, until a neighbour is measured.
    request = plan_request(modes=(SharingMode.MPS,), objective=Objective.ENERGY)
    start = recommended(request)
    prior = build_prior(request)
    point = prior.get(start)
    assert point is not None
    slo = Slo(itl_p99_s=1.4 * point.latency_p99_s(Quantity.ITL, 0.75))
    spec = TuneSpec(objective=Objective.ENERGY, slo=slo, max_replicas=64)
    stones = 0
    for seed in range(4):
        truth = make_truth(prior, random.Random(seed))
        demand = 2.1 * truth.capacity(start)
        trace = simulate(truth, spec, lambda _, d=demand: d, start=start, ticks=90, seed=seed)
        repacks = trace.actions(Action.REPACK)
        stones += sum("on the way to" in r.decision.message for r in repacks)
        assert _violations(trace, slo) == []
        assert len(repacks) <= 4, (seed, [r.decision.message for r in repacks])
    assert stones >= 3


def test_a_stone_worse_than_what_runs_is_taken_only_when_its_target_repays_it() -> None:
    # Qwen2.5-1.5B on an L4: every MPS packing with a better median than the Exclusive pick is
    # blocked by its ITL bound, and every safe MPS packing scores below the Exclusive pick.
    l4 = default_gpu_catalog().get("NVIDIA-L4")
    request = PlanRequest(
        default_model_catalog().get("qwen2.5-1.5b"),
        l4,
        modes=(SharingMode.EXCLUSIVE, SharingMode.MPS),
        objective=Objective.ENERGY,
        slo=Slo(2.5, 0.2),
    )
    start = recommended(request)
    assert start.mode is SharingMode.EXCLUSIVE
    prior = build_prior(request)
    spec = TuneSpec(objective=Objective.ENERGY, slo=request.slo, max_replicas=64)
    stones = {20.0: 0, 0.0: 0}
    for payback, seed in itertools.product(stones, range(3)):
        truth = make_truth(prior, random.Random(seed), bias=0.0, slope=0.05)
        demand = 2.1 * truth.capacity(start)
        config = PolicyConfig(stepping_stone_payback_windows=payback)
        trace = simulate(truth, spec, lambda _, d=demand: d, start=start, ticks=60, seed=seed,
                         config=config)  # fmt: skip
        assert _violations(trace, request.slo) == []
        repacks = trace.actions(Action.REPACK)
        stones[payback] += sum("on the way to" in r.decision.message for r in repacks)
    assert stones[0.0] == 0
    assert stones[20.0] >= 2


def test_a_trial_that_measures_faster_but_not_surely_within_the_slo_is_left() -> None:
    request = plan_request(modes=(SharingMode.MPS,), objective=Objective.THROUGHPUT)
    start = recommended(request)
    prior = build_prior(request)
    exact = exact_truth(prior)
    demand = 2.1 * exact.capacity(start)
    tried = Packing(SharingMode.MPS, 5, 128)  # what the policy tries first from here
    # The bound sits at twice the tried packing's predicted ITL p99 on four GPUs.
    slo = Slo(itl_p99_s=2.0 * exact.p99_s(tried, Quantity.ITL, demand / 4))
    spec = TuneSpec(objective=Objective.THROUGHPUT, slo=slo, max_replicas=64)
    left = {}
    for latency in (1.0, 2.0):
        # 20% faster than predicted, so it measures better; with latency 2.0 its true p99 is
        # 0.74 of the bound, too near for the bound once measured.
        truth = exact_truth(prior)
        truth.speed[tried], truth.latency[tried] = 1.2, latency
        trace = simulate(truth, spec, lambda _: demand, start=start, ticks=40, noise=0.01)
        repacks = trace.actions(Action.REPACK)
        assert repacks[0].decision.target == tried
        assert _violations(trace, slo) == []
        left[latency] = [r for r in repacks if "still misses the SLO" in r.decision.message]
    assert left[1.0] == []
    assert left[2.0]
    assert left[2.0][0].packing == tried


def test_expected_gain_is_optimistic_only_under_uncertainty() -> None:
    assert expected_gain_ratio(110.0, 0.0, 100.0) == pytest.approx(0.10)
    assert expected_gain_ratio(90.0, 0.0, 100.0) == 0.0
    uncertain = expected_gain_ratio(100.0, 0.15, 100.0)
    assert 0.05 < uncertain < 0.07  # sd * phi(0) for a small sd
    assert expected_gain_ratio(100.0, 0.05, 100.0) < uncertain


def test_decision_renders_a_status_entry() -> None:
    packing = Packing(SharingMode.MPS, 3, 192)
    target = Packing(SharingMode.MPS, 5, 128)
    decision = Decision(
        at_s=START_S,
        action=Action.REPACK,
        reason=Reason.EXPLORING,
        message="trying MPS x5 seqs=128",
        current=packing,
        current_replicas=9,
        target=target,
        target_replicas=15,
        exploring=True,
        expected_gain_ratio=0.0712,
    )
    entry = decision.as_status_entry()
    assert entry["time"] == "2023-11-14T22:13:20Z"
    assert entry["from"] == {"mode": "MPS", "replicasPerGPU": 3, "maxNumSeqs": 192, "replicas": 9}
    assert entry["to"]["gpus"] == 3
    assert entry["expectedGainRatio"] == 0.071
    assert decision.changes
    assert decision.event_type == "Normal"
    json.dumps(entry)


def test_tuner_state_survives_a_restart() -> None:
    trace, _ = _steady_trace(ticks=40)
    assert trace.state is not None
    assert trace.state.measured
    restored = TunerState.from_dict(json.loads(json.dumps(trace.state.as_dict())))
    assert restored == trace.state


def test_tune_spec_reads_the_custom_resource() -> None:
    spec = SLMDeploymentSpec.model_validate(
        {
            "model": {"uri": "hf://facebook/opt-1.3b"},
            "autotune": {
                "mode": "Auto",
                "minReplicas": 2,
                "maxReplicas": 12,
                "objective": "Energy",
            },
            "slo": {"ttftP99": "500ms", "itlP99": "50ms"},
        }
    )
    tuned = TuneSpec.from_spec(spec)
    assert tuned.objective is Objective.ENERGY
    assert (tuned.min_replicas, tuned.max_replicas) == (2, 12)
    assert tuned.slo == Slo(ttft_p99_s=0.5, itl_p99_s=0.05)
    assert tuned.clamp(40) == 12
    assert tuned.clamp(0) == 2
    assert TuneSpec().clamp(0) == 1  # never to zero: no engine, no demand signal


def test_an_unplanned_packing_holds() -> None:
    prior = build_prior(plan_request())
    stranger = Packing(SharingMode.MPS, 3, 7)
    observation = Observation(
        at_s=START_S,
        running=RunningConfig(stranger, 3, 3),
        generation_tokens_per_s=100.0,
        requests_running=3.0,
        requests_waiting=0.0,
        engines_reporting=3,
    )
    decision, _ = tune(TunerState(), observation, prior, TuneSpec(), START_S)
    assert (decision.action, decision.reason) == (Action.HOLD, Reason.PACKING_NOT_IN_PLAN)


def test_outage_before_any_data_holds_without_a_target() -> None:
    prior = build_prior(plan_request())
    decision, state = tune(
        TunerState(), MetricsUnavailable(START_S, "timeout"), prior, TuneSpec(), START_S
    )
    assert decision.action is Action.HOLD
    assert decision.target is None
    assert state == TunerState()
    assert math.isclose(decision.at_s, START_S)
