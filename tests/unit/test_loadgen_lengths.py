"""Length distributions: seeded, and their samples average to the stated means."""

import math
import random
import statistics

import pytest

from slmpack.loadgen.lengths import (
    Fixed,
    LogNormal,
    Uniform,
    clipped_lognormal_mean,
    parse_length,
    sharegpt_input,
    sharegpt_output,
)

SAMPLES = 40_000


def draw(dist: Fixed | Uniform | LogNormal, seed: int = 0, n: int = SAMPLES) -> list[int]:
    rng = random.Random(seed)
    return [dist.sample(rng) for _ in range(n)]


@pytest.mark.parametrize(
    ("dist", "mean"),
    [
        (sharegpt_input(), 111),
        (sharegpt_output(), 292),
        (LogNormal(500, 0.5, 1, 4096), 500),
        (Uniform(64, 192), 128),
        (Fixed(77), 77),
    ],
)
def test_samples_average_to_the_stated_mean(dist: Fixed | Uniform | LogNormal, mean: int) -> None:
    values = draw(dist)
    assert dist.mean == mean
    # A coefficient of variation near 1.3 gives a standard error of 0.7% at 40,000 samples.
    assert statistics.fmean(values) == pytest.approx(mean, rel=0.025)


def test_sharegpt_presets_are_skewed_and_clipped() -> None:
    for dist in (sharegpt_input(), sharegpt_output()):
        values = draw(dist, seed=5)
        assert min(values) >= 4
        assert max(values) <= 1024
        # sigma 1: the median sits near exp(mu), well below the mean.
        assert statistics.median(values) == pytest.approx(dist.median, rel=0.04)
        assert statistics.median(values) < 0.7 * dist.mean
        assert values.count(1024) > 0  # the clip is reached: the tail is heavy


def test_the_location_makes_the_clipped_mean_exact() -> None:
    dist = sharegpt_output()
    assert clipped_lognormal_mean(dist.mu, 1.0, 4, 1024) == pytest.approx(292, rel=1e-9)
    # Without clipping, the mean of a lognormal is exp(mu + sigma^2 / 2).
    assert clipped_lognormal_mean(4.0, 0.5, 1e-9, 1e12) == pytest.approx(math.exp(4.125))
    # Clipping a mean-292 lognormal at 1024 would lower its mean: the solved mu is higher.
    assert dist.mu > math.log(292) - 0.5


def test_draws_are_seeded() -> None:
    assert draw(sharegpt_input(), 1, 100) == draw(sharegpt_input(), 1, 100)
    assert draw(sharegpt_input(), 1, 100) != draw(sharegpt_input(), 2, 100)


def test_parse_length() -> None:
    assert parse_length("128", "input") == Fixed(128)
    assert parse_length("uniform:10:20", "input") == Uniform(10, 20)
    assert parse_length("lognormal:300:0.8", "output") == LogNormal(300, 0.8, 1, 1024)
    assert parse_length("lognormal:300:0.8:16:2048", "output") == LogNormal(300, 0.8, 16, 2048)
    assert parse_length("sharegpt", "input") == sharegpt_input()
    assert parse_length("sharegpt", "output") == sharegpt_output()
    for bad in ("0", "uniform:5", "lognormal:2000:1", "normal:3:1", "-4"):
        with pytest.raises(ValueError, match="length"):
            parse_length(bad, "output")
