"""The autotuner's prior and its online correction."""

from __future__ import annotations

import math

import pytest

from slmpack.autotune.model import (
    LOAD_GRID,
    MeasuredPoint,
    ModelConfig,
    Packing,
    Quantity,
    RunningMean,
    WindowMeasurement,
    build_prior,
    fit,
    load_bucket,
    record,
)
from slmpack.planner.plan import enumerate_candidates
from slmpack.planner.types import SharingMode

from .test_autotune_sim import plan_request, recommended

REQUEST = plan_request()
PRIOR = build_prior(REQUEST)
CONFIG = ModelConfig()


def test_prior_curves_agree_with_the_planner() -> None:
    by_key = {c.key: c for c in enumerate_candidates(REQUEST)}
    assert len(PRIOR.points) == len(by_key)
    for point in PRIOR.points:
        candidate = by_key[point.packing.key]
        perf = candidate.perf
        # The step curve ends at the saturated batch with the saturated step.
        top_batch, top_step = point.step_curve[-1]
        assert top_batch == pytest.approx(perf.effective_batch_per_replica)
        assert top_step == pytest.approx(perf.step_s, rel=1e-6)
        assert point.step_s(1.0) <= top_step
        # The request plans at load 0.8, a point of the latency grid.
        assert point.latency_p99_s(Quantity.ITL, 0.8) == pytest.approx(perf.itl_p99_s)
        assert point.latency_p99_s(Quantity.TTFT, 0.8) == pytest.approx(perf.ttft_p99_s)
        assert math.isinf(point.latency_p99_s(Quantity.TTFT, LOAD_GRID[-1] + 0.01))
        assert point.power_watts(1.0) == pytest.approx(perf.power_watts)
        assert point.power_watts(0.0) == pytest.approx(REQUEST.gpu.idle_watts)
        assert PRIOR.candidate(point.packing) == candidate


def test_without_measurements_the_model_is_the_prior() -> None:
    model = fit(PRIOR, ())
    for point in PRIOR.points:
        estimate = model.get(point.packing)
        assert estimate is not None
        assert estimate.speed.mean_log == 0.0
        assert estimate.speed.sd_log > 0.2
        assert estimate.capacity_tokens_per_s() == pytest.approx(point.output_capacity_tokens_per_s)
    # More replicas per GPU: the co-location gain is less certain.
    single = model.get(Packing(SharingMode.MPS, 2, 256))
    many = model.get(Packing(SharingMode.MPS, 8, 64))
    assert single is not None
    assert many is not None
    assert many.speed.sd_log > single.speed.sd_log


def _windows(packing: Packing, speed: float, count: int) -> MeasuredPoint:
    """`count` windows of a packing that runs `speed` times as fast as the prior says."""
    point = PRIOR.get(packing)
    assert point is not None
    running = 0.5 * point.batch_per_replica
    # Generated tokens/s per replica = running / step, and the true step is prior / speed.
    per_replica = running / (point.step_s(running) / speed)
    window = WindowMeasurement(
        output_tokens_per_s_per_gpu=per_replica * packing.replicas_per_gpu,
        total_tokens_per_s_per_gpu=per_replica * packing.replicas_per_gpu * 1.38,
        running_per_replica=running,
        output_tokens_per_s_per_replica=per_replica,
        watts_per_gpu=None,
        ttft_p99_s=None,
        itl_p99_s=None,
        slo_met=None,
    )
    measured: tuple[MeasuredPoint, ...] = ()
    for _ in range(count):
        measured = record(measured, packing, point, window, cap=30, min_running=1.0)
    return measured[0]


def test_a_measured_packing_corrects_itself_and_its_neighbours() -> None:
    current = recommended(REQUEST)
    measured = _windows(current, speed=0.75, count=10)
    model = fit(PRIOR, (measured,))
    estimate = model.get(current)
    assert estimate is not None
    assert estimate.speed.factor == pytest.approx(0.75, rel=0.03)
    assert estimate.speed.sd_log < 0.03
    # Unmeasured packings move the same way, but stay less certain.
    for packing, other in model.estimates.items():
        if packing != current:
            assert other.speed.mean_log < 0
            assert other.speed.sd_log > estimate.speed.sd_log


def test_uncertainty_shrinks_with_windows() -> None:
    current = recommended(REQUEST)
    few = fit(PRIOR, (_windows(current, 1.2, 2),)).get(current)
    many = fit(PRIOR, (_windows(current, 1.2, 20),)).get(current)
    assert few is not None
    assert many is not None
    assert many.speed.sd_log < few.speed.sd_log


def test_windows_fall_into_load_buckets_and_fade() -> None:
    current = recommended(REQUEST)
    point = _windows(current, 1.0, 40)
    assert [s.load_ratio for s in point.loads] == [load_bucket(point.loads[0].load_ratio)]
    assert point.windows == 30  # capped: older windows fade
    assert RunningMean().add(float("nan"), 10) == RunningMean()
    assert RunningMean(10, 1.0).add(2.0, 10).value == pytest.approx(1.1)


def test_latency_bound_grows_with_uncertainty() -> None:
    current = recommended(REQUEST)
    estimate = fit(PRIOR, ()).get(current)
    assert estimate is not None
    per_gpu = 0.5 * estimate.capacity_tokens_per_s()
    median = estimate.latency_p99_s(Quantity.ITL, per_gpu)
    upper = estimate.latency_p99_s(Quantity.ITL, per_gpu, 2.0)
    assert upper > 1.5 * median


def test_lookahead_shrinks_a_near_neighbour_more_than_a_far_one() -> None:
    current = recommended(REQUEST)
    model = fit(PRIOR, (_windows(current, 0.8, 10),))
    stone = Packing(SharingMode.MPS, 4, 128)
    near = Packing(SharingMode.MPS, 5, 128)
    far = Packing(SharingMode.MPS, 2, 32)
    for target in (near, far):
        now = model.get(target)
        ahead = model.lookahead(target, stone, 3)
        assert now is not None
        assert ahead is not None
        # The expected measurement moves no mean; it only narrows the bounds.
        assert ahead.speed.mean_log == now.speed.mean_log
        assert ahead.speed.sd_log < now.speed.sd_log
        assert ahead.itl.sd_log <= now.itl.sd_log
    near_now, far_now = model.get(near), model.get(far)
    near_ahead, far_ahead = model.lookahead(near, stone, 3), model.lookahead(far, stone, 3)
    assert near_now is not None
    assert far_now is not None
    assert near_ahead is not None
    assert far_ahead is not None
    # One replica per GPU apart, a measurement tells most of what the target's own would.
    assert near_ahead.speed.sd_log < 0.7 * near_now.speed.sd_log
    assert far_ahead.speed.sd_log > 0.85 * far_now.speed.sd_log
    # Looking ahead at the target itself is the fit with those windows added.
    own = model.lookahead(stone, stone, 3)
    assert own is not None
    assert own.speed.sd_log < 0.08 / math.sqrt(3)
