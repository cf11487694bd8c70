"""Arrival schedules: Poisson counts, ramps, bursts, even spacing, and the phase syntax."""

import itertools
import math
import statistics

import pytest

from slmpack.loadgen.arrivals import Phase, Schedule, arrival_times, parse_phase


def test_poisson_count_and_gaps_match_the_rate() -> None:
    rate, duration = 50.0, 200.0
    times = arrival_times(Schedule((Phase(duration, rate),)), seed=3)
    # 10,000 expected; the Poisson deviation is 100, so 3% is many deviations.
    assert len(times) == pytest.approx(rate * duration, rel=0.03)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.03)
    # Exponential gaps: the standard deviation equals the mean (evenly spaced would give 0).
    assert statistics.stdev(gaps) == pytest.approx(1 / rate, rel=0.05)
    assert list(times) == sorted(times)
    assert times[0] >= 0
    assert times[-1] <= duration


def test_the_same_seed_gives_the_same_times_and_another_seed_does_not() -> None:
    schedule = Schedule((Phase(10, 5),))
    assert arrival_times(schedule, 1) == arrival_times(schedule, 1)
    assert arrival_times(schedule, 1) != arrival_times(schedule, 2)


def test_a_ramp_puts_arrivals_where_the_rate_integral_says() -> None:
    # Rate 0 -> 100/s over 100 s: 5,000 arrivals, a quarter of them in the first half.
    phase = Phase(100, 0, 100)
    assert phase.expected_requests == 5000
    times = arrival_times(Schedule((phase,)), seed=7)
    first_half = sum(1 for t in times if t < 50)
    assert len(times) == pytest.approx(5000, rel=0.04)
    assert first_half / len(times) == pytest.approx(0.25, abs=0.02)


@pytest.mark.parametrize(("start", "end"), [(0.0, 10.0), (10.0, 0.0), (4.0, 4.0), (3.0, 9.0)])
def test_inverse_undoes_the_cumulative_rate(start: float, end: float) -> None:
    phase = Phase(20, start, end)
    for t in (0.0, 0.5, 7.0, 13.3, 20.0):
        assert phase.inverse(phase.cumulative(t)) == pytest.approx(t, abs=1e-9)


def test_uniform_steps_and_bursts_are_exact() -> None:
    schedule = Schedule(
        (
            Phase(2, 2, process="uniform"),  # 4 arrivals, half a gap in from each end
            Phase(0, burst=3),  # 3 at t = 2
            Phase(1, 4, process="uniform", burst=1),  # 1 at t = 2, then 4 at 2.125 + k/4
        )
    )
    times = arrival_times(schedule, seed=0)
    assert times == pytest.approx([0.25, 0.75, 1.25, 1.75, 2, 2, 2, 2, 2.125, 2.375, 2.625, 2.875])
    assert schedule.duration_s == 3
    assert schedule.expected_requests == 12


def test_max_requests_cuts_the_schedule() -> None:
    schedule = Schedule((Phase(0, burst=5), Phase(100, 10)), max_requests=8)
    times = arrival_times(schedule, seed=0)
    assert len(times) == 8
    assert times[:5] == (0, 0, 0, 0, 0)
    assert schedule.expected_requests == 8


def test_a_ramp_down_to_zero_ends_with_few_arrivals() -> None:
    times = arrival_times(Schedule((Phase(10, 200, 0, process="uniform"),)), seed=0)
    assert len(times) == 1000
    assert sum(1 for t in times if t > 9) == pytest.approx(10, abs=1)  # the last 1% of area


def test_parse_phase() -> None:
    assert parse_phase("rate=10,duration=60") == Phase(60, 10)
    assert parse_phase("rate=5..50, duration=120s") == Phase(120, 5, 50)
    assert parse_phase("burst=500") == Phase(burst=500)
    assert parse_phase("rate=3,duration=1,process=uniform") == Phase(1, 3, process="uniform")
    for bad in ("rate=10", "rate=x,duration=1", "speed=3", "rate=1,rate=2,duration=1", "burst"):
        with pytest.raises(ValueError, match="phase"):
            parse_phase(bad)


def test_invalid_phases_are_refused() -> None:
    with pytest.raises(ValueError, match="rate_per_s"):
        Phase(10, -1)
    with pytest.raises(ValueError, match="finite"):
        Phase(math.inf, 1)
    with pytest.raises(ValueError, match="at least one phase"):
        Schedule(())
