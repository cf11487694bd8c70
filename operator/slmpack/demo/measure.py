"""Rates over a measurement window from Prometheus range-vector samples (pure).

Each series gives its own rate from its first and last sample in the window, timestamps
included, so a 1 s scrape interval costs no accuracy however short the window; rates of
several series (engines, GPUs) add up.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WindowRate:
    """A summed counter rate over a window, per wall second."""

    per_wall_second: float
    series: int  # series that had two samples or more


def counter_rate(matrix: Sequence[Mapping[str, Any]]) -> WindowRate:
    """Sum over series of (last − first) / (t_last − t_first); counter resets count from 0,
    as Prometheus' `rate` does."""
    total = 0.0
    counted = 0
    for series in matrix:
        values = [(float(t), float(v)) for t, v in series.get("values", [])]
        if len(values) < 2:
            continue
        increase = 0.0
        for (_, before), (_, after) in itertools.pairwise(values):
            increase += after - before if after >= before else after
        span = values[-1][0] - values[0][0]
        if span <= 0:
            continue
        total += increase / span
        counted += 1
    return WindowRate(total, counted)


def range_query(metric: str, selector: str, window_seconds: float, end_unix: float) -> str:
    """PromQL for the raw samples of `metric{selector}` in the window ending at `end_unix`."""
    return f"{metric}{{{selector}}}[{max(1, round(window_seconds))}s] @ {end_unix:.3f}"
