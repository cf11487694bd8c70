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
    return _at_batches(packing, {0.5: speed}, count)


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


def _at_batches(packing: Packing, speeds: dict[float, float], count: int = 5) -> MeasuredPoint:
    """`count` windows at each share of the saturated batch, at its speed over the prior."""
    point = PRIOR.get(packing)
    assert point is not None
    measured: tuple[MeasuredPoint, ...] = ()
    for share, speed in speeds.items():
        running = share * point.batch_per_replica
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
        for _ in range(count):
            measured = record(measured, packing, point, window, cap=30, min_running=1.0)
    return measured[0]


def test_a_speed_that_falls_with_the_batch_lowers_the_saturated_capacity() -> None:
    packing = recommended(REQUEST)
    # Log speed ratio falling 0.2 per unit of log batch, from 1.2 at a tenth of the batch.
    shares = (0.1, 0.25, 0.5)
    falling = {s: 1.2 * math.exp(-0.2 * math.log(s / 0.1)) for s in shares}
    estimate = fit(PRIOR, [_at_batches(packing, falling)]).get(packing)
    assert estimate is not None
    # From the batches' mean log to the saturated batch (share 1).
    mean_log = sum(math.log(s) for s in shares) / len(shares)
    expected = math.exp(-0.2 * (0.0 - mean_log))
    assert estimate.saturation == pytest.approx(expected, rel=0.02)
    assert estimate.saturated_capacity_tokens_per_s() < estimate.capacity_tokens_per_s()


@pytest.mark.parametrize(
    "speeds",
    [
        {0.1: 1.0, 0.25: 1.0, 0.5: 1.0},  # no trend
        {0.1: 0.9, 0.25: 1.0, 0.5: 1.1},  # rising: never raises the capacity
        {0.3: 1.1, 0.45: 0.95},  # batches too close together to extrapolate from
        {0.1: 1.05, 0.25: 0.97, 0.5: 1.04},  # noise, not a trend
    ],
)
def test_no_clear_falling_trend_leaves_the_capacity_alone(speeds: dict[float, float]) -> None:
    packing = recommended(REQUEST)
    estimate = fit(PRIOR, [_at_batches(packing, speeds)]).get(packing)
    assert estimate is not None
    assert estimate.saturation == 1.0
