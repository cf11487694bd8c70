"""Rates over a measurement window from Prometheus range-vector samples (pure).

Each series gives its own rate from its first and last sample in the window, timestamps
included, so a 1 s scrape interval costs no accuracy however short the window; rates of
several series (engines, GPUs) add up. Also the host's CPU use from two /proc/stat readings:
the simulator is only faithful while the host keeps up, so the report shows the headroom.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
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


@dataclass(frozen=True)
class CpuTimes:
    """The `cpu` line of /proc/stat: all cores together, in clock ticks."""

    busy: int
    total: int


def cpu_times(proc_stat: str) -> CpuTimes:
    """Busy and total ticks from /proc/stat's first line (idle and iowait count as idle)."""
    for line in proc_stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(v) for v in fields[1:9]]  # user .. steal; guest is inside user
            idle = ticks[3] + ticks[4]
            return CpuTimes(sum(ticks) - idle, sum(ticks))
    raise ValueError("no aggregate cpu line in /proc/stat")


def host_cpu_busy_ratio(before: CpuTimes, after: CpuTimes) -> float:
    """Share of all cores' time spent busy between two readings."""
    total = after.total - before.total
    return (after.busy - before.busy) / total if total > 0 else 0.0


@dataclass(frozen=True)
class SentLoad:
    """What the load generator actually sent in a window of its run (wall seconds)."""

    requests: int
    output_tokens: int  # requested
    lag_p99_s: float  # actual minus planned send time, over the whole run


def sent_load(sends: Iterable[tuple[float, float, int]], start_s: float, end_s: float) -> SentLoad:
    """From (planned send, actual send, requested output tokens) of every request, seconds from
    the run's start: the requests sent in [start_s, end_s) and how late sends were.

    A host that falls behind sends late, then in bursts; the tokens sent in the window, not the
    plan, are what the deployment was offered there.
    """
    count = tokens = 0
    lags: list[float] = []
    for planned, sent, output_tokens in sends:
        lags.append(max(0.0, sent - planned))
        if start_s <= sent < end_s:
            count += 1
            tokens += output_tokens
    lags.sort()
    p99 = lags[min(len(lags) - 1, int(0.99 * len(lags)))] if lags else 0.0
    return SentLoad(count, tokens, p99)


def process_cpu_ticks(proc_pid_stat: str) -> int:
    """utime + stime of one /proc/<pid>/stat, in clock ticks (fields 14 and 15 of proc(5))."""
    fields = proc_pid_stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
