"""Open-loop arrival times: a schedule of phases, each a Poisson or evenly spaced process.

A phase lasts `duration_s`; its rate moves linearly from `rate_per_s` to `end_rate_per_s`
(the same for a constant rate, different for a ramp), and `burst` requests arrive together at
its start. A step is two constant phases in a row. Times are seconds from the start of the run.

Open loop means arrivals never wait for responses, so a slow server meets the offered load
rather than a politer one (closed-loop clients slow down with the server and hide queueing).

Poisson arrivals with a changing rate come from time rescaling: unit-rate exponential gaps in
the cumulative rate Λ(t) = ∫ rate, mapped back through Λ⁻¹ (a quadratic for a linear ramp), so
ramps are exact and need no thinning.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

ArrivalProcess = Literal["poisson", "uniform"]
PROCESSES: tuple[ArrivalProcess, ...] = ("poisson", "uniform")


@dataclass(frozen=True)
class Phase:
    """One stretch of the schedule; rates are requests per second."""

    duration_s: float = 0.0
    rate_per_s: float = 0.0
    end_rate_per_s: float | None = None  # None: constant at rate_per_s
    burst: int = 0  # requests sent together at the phase's start
    process: ArrivalProcess = "poisson"

    def __post_init__(self) -> None:
        for name, value in (
            ("duration_s", self.duration_s),
            ("rate_per_s", self.rate_per_s),
            ("end_rate_per_s", self.end_rate),
        ):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.burst < 0:
            raise ValueError(f"burst must be >= 0, got {self.burst}")
        if self.process not in PROCESSES:
            raise ValueError(f"process must be one of {', '.join(PROCESSES)}")

    @property
    def end_rate(self) -> float:
        return self.rate_per_s if self.end_rate_per_s is None else self.end_rate_per_s

    @property
    def expected_requests(self) -> float:
        """Mean number of arrivals: the burst plus the integral of the rate."""
        return self.burst + self.cumulative(self.duration_s)

    def cumulative(self, t: float) -> float:
        """Λ(t): expected arrivals (burst aside) in the first `t` seconds of the phase."""
        if self.duration_s == 0:
            return 0.0
        slope = (self.end_rate - self.rate_per_s) / self.duration_s
        return self.rate_per_s * t + slope * t * t / 2

    def inverse(self, arrivals: float) -> float:
        """The `t` with Λ(t) = `arrivals` (0 <= arrivals <= Λ(duration))."""
        half_slope = (self.end_rate - self.rate_per_s) / (2 * self.duration_s)
        a = self.rate_per_s
        # Root of half_slope t² + a t - arrivals, written to stay exact when the slope is 0
        # (t = arrivals / a) and when the ramp starts from 0 (t = sqrt(arrivals / half_slope)).
        root = math.sqrt(max(0.0, a * a + 4 * half_slope * arrivals))
        if a + root == 0:
            return 0.0
        return min(self.duration_s, 2 * arrivals / (a + root))


@dataclass(frozen=True)
class Schedule:
    """Phases one after another; `max_requests` stops the run early."""

    phases: tuple[Phase, ...]
    max_requests: int | None = None

    def __post_init__(self) -> None:
        if not self.phases:
            raise ValueError("a schedule needs at least one phase")
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError("max_requests must be at least 1")

    @property
    def duration_s(self) -> float:
        return sum(p.duration_s for p in self.phases)

    @property
    def expected_requests(self) -> float:
        total = sum(p.expected_requests for p in self.phases)
        return total if self.max_requests is None else min(total, self.max_requests)


def arrival_times(schedule: Schedule, seed: int) -> tuple[float, ...]:
    """Send times in seconds from the start, non-decreasing; the same seed gives the same times."""
    rng = random.Random(f"{seed}/arrivals")
    times: list[float] = []
    offset = 0.0
    for phase in schedule.phases:
        times.extend([offset] * phase.burst)
        total = phase.cumulative(phase.duration_s)
        if phase.process == "uniform":
            # Evenly spaced in Λ, half a gap in from each end: a constant rate r over d seconds
            # gives exactly r * d arrivals.
            count = math.floor(total + 0.5)
            times.extend(offset + phase.inverse(k + 0.5) for k in range(count))
        else:
            mark = rng.expovariate(1.0)
            while mark <= total:
                times.append(offset + phase.inverse(mark))
                mark += rng.expovariate(1.0)
        offset += phase.duration_s
        if schedule.max_requests is not None and len(times) >= schedule.max_requests:
            break
    if schedule.max_requests is not None:
        del times[schedule.max_requests :]
    return tuple(times)


def parse_phase(text: str) -> Phase:
    """A phase from `key=value` pairs separated by commas.

    Keys: `duration` (seconds, an `s` suffix allowed), `rate` (requests/s, or `A..B` for a
    linear ramp from A to B), `burst` (requests at the phase's start), `process` (`poisson` or
    `uniform`). Examples: `rate=10,duration=60`; `rate=5..50,duration=120`; `burst=500`.
    """
    fields: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"phase {text!r}: expected key=value pairs, got {item!r}")
        if key in fields:
            raise ValueError(f"phase {text!r}: {key} given twice")
        fields[key] = value.strip()
    unknown = sorted(fields.keys() - {"duration", "rate", "burst", "process"})
    if unknown:
        raise ValueError(f"phase {text!r}: unknown key(s) {', '.join(unknown)}")
    try:
        duration = float(fields.get("duration", "0").removesuffix("s"))
        start, sep, end = fields.get("rate", "0").partition("..")
        rate = float(start)
        end_rate = float(end) if sep else None
        burst = int(fields.get("burst", "0"))
    except ValueError as err:
        raise ValueError(f"phase {text!r}: {err}") from None
    process = fields.get("process", "poisson")
    if process not in PROCESSES:
        raise ValueError(f"phase {text!r}: process must be poisson or uniform")
    if (rate > 0 or (end_rate or 0) > 0) and duration <= 0:
        raise ValueError(f"phase {text!r}: a rate needs a duration")
    return Phase(duration, rate, end_rate, burst, "uniform" if process == "uniform" else "poisson")
