"""Per-request records and the run's report: throughput, latency percentiles, goodput (pure).

Definitions (the same as `vllm bench serve` where it has one):

- duration: from the schedule's time 0 to the end of the last response;
- throughput: output tokens (and input + output tokens) of successful requests per second of
  duration; request rate: successful requests per second;
- TTFT: send to the first token chunk; ITL: the gaps between token chunks, pooled over
  requests; TPOT: a request's mean gap, (last token - first token) / (tokens - 1); E2E: send
  to the end of the response;
- percentiles: linear interpolation between the closest ranks (NumPy's default);
- goodput: successful requests per second whose TTFT and ITL statistic (see `Slo`) are both
  within the targets.

`time_scale` converts wall time to the server's time: a vllm-sim run at `--sim-speedup 5` has
scale 5, so latencies are multiplied and rates divided by it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ItlStat = Literal["mean", "p99", "max"]
ITL_STATS: tuple[ItlStat, ...] = ("mean", "p99", "max")
REPORT_PERCENTILES = (50.0, 90.0, 99.0)


@dataclass(frozen=True)
class RequestRecord:
    """What one request did; times are wall seconds, relative to its own send."""

    index: int
    base_url: str
    scheduled_s: float  # planned send, seconds from the run's start
    sent_s: float  # actual send, seconds from the run's start
    prompt_tokens: int  # the server's count when it sent usage, else the planned length
    requested_output_tokens: int
    output_tokens: int  # the server's count when it sent usage, else token chunks seen
    ttft_s: float | None
    itl_s: tuple[float, ...]
    e2e_s: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def tpot_s(self) -> float | None:
        return sum(self.itl_s) / len(self.itl_s) if self.itl_s else None

    def itl_stat_s(self, stat: ItlStat) -> float | None:
        if not self.itl_s:
            return None
        if stat == "mean":
            return self.tpot_s
        if stat == "max":
            return max(self.itl_s)
        return percentile(sorted(self.itl_s), 99.0)


@dataclass(frozen=True)
class Slo:
    """Latency targets in the report's time (seconds); None means no bound.

    A request meets the SLO when its TTFT is within `ttft_s` and its ITL statistic (`itl_stat`:
    its own mean gap, 99th-percentile gap or largest gap) is within `itl_s`. The run attains
    the SLO when the p99 TTFT and p99 ITL over all requests are within the targets.
    """

    ttft_s: float | None = None
    itl_s: float | None = None
    itl_stat: ItlStat = "p99"

    def met_by(self, record: RequestRecord, time_scale: float = 1.0) -> bool:
        if not record.ok:
            return False
        if self.ttft_s is not None and (
            record.ttft_s is None or record.ttft_s * time_scale > self.ttft_s
        ):
            return False
        if self.itl_s is not None:
            itl = record.itl_stat_s(self.itl_stat)
            if itl is not None and itl * time_scale > self.itl_s:
                return False
        return True


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of ascending values, interpolating linearly; NaN if empty."""
    if not sorted_values:
        return math.nan
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


@dataclass(frozen=True)
class Distribution:
    """Summary of one latency, in the report's seconds."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float], scale: float = 1.0) -> Distribution:
        ordered = sorted(v * scale for v in values)
        if not ordered:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        p50, p90, p99 = (percentile(ordered, q) for q in REPORT_PERCENTILES)
        return cls(len(ordered), math.fsum(ordered) / len(ordered), p50, p90, p99, ordered[-1])


@dataclass(frozen=True)
class Goodput:
    slo: Slo
    requests: int  # successful requests meeting the SLO
    per_s: float
    ratio: float  # of all requests sent
    ttft_p99_met: bool | None  # None: no TTFT target
    itl_p99_met: bool | None


@dataclass(frozen=True)
class Report:
    time_scale: float
    duration_s: float
    requests: int
    completed: int
    failed: int
    errors: dict[str, int]
    input_tokens: int
    output_tokens: int
    failed_output_tokens: int  # tokens received by requests that then failed
    request_rate_per_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    ttft_s: Distribution
    itl_s: Distribution
    tpot_s: Distribution
    e2e_s: Distribution
    goodput: Goodput | None
    peak_in_flight: int
    send_lag_s: Distribution  # how late requests left against the plan (wall seconds)
    completed_by_url: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = _json_safe(asdict(self))
        return doc


def summarize(
    records: Sequence[RequestRecord],
    duration_wall_s: float,
    *,
    slo: Slo | None = None,
    time_scale: float = 1.0,
    peak_in_flight: int = 0,
) -> Report:
    """The report of a run; `duration_wall_s` as the driver measured it."""
    if time_scale <= 0:
        raise ValueError("time_scale must be positive")
    ok = [r for r in records if r.ok]
    duration = duration_wall_s * time_scale
    per_s = 1.0 / duration if duration > 0 else math.nan
    input_tokens = sum(r.prompt_tokens for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)
    errors = Counter(r.error for r in records if r.error is not None)
    ttft = Distribution.of([r.ttft_s for r in ok if r.ttft_s is not None], time_scale)
    itl = Distribution.of([g for r in ok for g in r.itl_s], time_scale)
    goodput = None
    if slo is not None:
        meeting = sum(1 for r in ok if slo.met_by(r, time_scale))
        goodput = Goodput(
            slo,
            meeting,
            meeting * per_s,
            meeting / len(records) if records else math.nan,
            None if slo.ttft_s is None else bool(ttft.p99 <= slo.ttft_s),
            None if slo.itl_s is None else bool(itl.count == 0 or itl.p99 <= slo.itl_s),
        )
    return Report(
        time_scale=time_scale,
        duration_s=duration,
        requests=len(records),
        completed=len(ok),
        failed=len(records) - len(ok),
        errors=dict(sorted(errors.items())),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        failed_output_tokens=sum(r.output_tokens for r in records if not r.ok),
        request_rate_per_s=len(ok) * per_s,
        output_tokens_per_s=output_tokens * per_s,
        total_tokens_per_s=(input_tokens + output_tokens) * per_s,
        ttft_s=ttft,
        itl_s=itl,
        tpot_s=Distribution.of([t for r in ok if (t := r.tpot_s) is not None], time_scale),
        e2e_s=Distribution.of([r.e2e_s for r in ok], time_scale),
        goodput=goodput,
        peak_in_flight=peak_in_flight,
        send_lag_s=Distribution.of([max(0.0, r.sent_s - r.scheduled_s) for r in records]),
        completed_by_url=dict(sorted(Counter(r.base_url for r in ok).items())),
    )


def _json_safe(value: Any) -> Any:
    """NaN and infinity become null: JSON has no spelling for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def format_report(report: Report) -> str:
    """A short human-readable summary (milliseconds for latencies)."""

    def ms(d: Distribution) -> str:
        if d.count == 0:
            return "n/a"
        return f"p50 {d.p50 * 1e3:.1f}  p90 {d.p90 * 1e3:.1f}  p99 {d.p99 * 1e3:.1f} ms"

    lines = [
        f"duration           {report.duration_s:.2f} s"
        + (f" (time scale {report.time_scale:g})" if report.time_scale != 1 else ""),
        f"requests           {report.completed} ok / {report.requests}"
        + (f", errors {report.errors}" if report.errors else ""),
        f"request rate       {report.request_rate_per_s:.2f} /s",
        f"output tokens/s    {report.output_tokens_per_s:.1f}",
        f"total tokens/s     {report.total_tokens_per_s:.1f}",
        f"TTFT               {ms(report.ttft_s)}",
        f"ITL                {ms(report.itl_s)}",
        f"TPOT               {ms(report.tpot_s)}",
        f"E2E                {ms(report.e2e_s)}",
        f"peak in flight     {report.peak_in_flight}",
    ]
    if report.goodput is not None:
        g = report.goodput
        lines.append(
            f"goodput            {g.per_s:.2f} req/s ({g.requests} requests, "
            f"{g.ratio:.1%} of sent; p99 TTFT met: {g.ttft_p99_met}, p99 ITL met: "
            f"{g.itl_p99_met})"
        )
    return "\n".join(lines)
