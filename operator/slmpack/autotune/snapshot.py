"""One SLMDeployment's measurement at one instant, as typed values (pure records).

`slmpack.autotune.prometheus.collect_snapshot` fills a `Snapshot` from Prometheus; tests and
simulators build one directly. The policy never sees PromQL or HTTP, only these records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from slmpack.autotune.signals import KEYED_BY, REQUIRED, DeploymentRef, Signal


@dataclass(frozen=True)
class Sample:
    """One element of an instant-query result."""

    labels: Mapping[str, str]
    value: float
    timestamp_s: float


@dataclass(frozen=True)
class Snapshot:
    """Every signal of one SLMDeployment, evaluated by Prometheus at `evaluated_at_s`.

    A signal whose query returned nothing (or NaN, as histogram_quantile does with no traffic)
    is absent from `values` and `keyed` and listed in `missing`.
    """

    deployment: DeploymentRef
    evaluated_at_s: float  # Unix time the queries were evaluated at
    window_s: int  # the rate and average window of the queries
    values: Mapping[Signal, float] = field(default_factory=dict)
    keyed: Mapping[Signal, Mapping[str, float]] = field(default_factory=dict)

    @property
    def missing(self) -> tuple[Signal, ...]:
        return tuple(s for s in Signal if s not in self.values and s not in self.keyed)

    @property
    def missing_required(self) -> tuple[Signal, ...]:
        return tuple(s for s in self.missing if s in REQUIRED)

    def value(self, signal: Signal) -> float | None:
        return self.values.get(signal)

    def age_s(self, now_s: float) -> float:
        """Seconds between the evaluation and `now_s`."""
        return max(0.0, now_s - self.evaluated_at_s)

    def newest_sample_age_s(self) -> float | None:
        """How old the newest vLLM scrape was at evaluation: large when the targets are down
        but Prometheus still answers."""
        return self.values.get(Signal.NEWEST_SAMPLE_AGE_S)


def snapshot_from_samples(
    deployment: DeploymentRef,
    evaluated_at_s: float,
    window_s: int,
    results: Mapping[Signal, tuple[Sample, ...]],
) -> Snapshot:
    """Fold query results into a Snapshot, dropping NaN and infinite values."""
    values: dict[Signal, float] = {}
    keyed: dict[Signal, dict[str, float]] = {}
    for signal, samples in results.items():
        finite = [s for s in samples if math.isfinite(s.value)]
        label = KEYED_BY.get(signal)
        if label is None:
            if finite:
                values[signal] = finite[0].value
            continue
        by_key = {s.labels.get(label, ""): s.value for s in finite}
        if by_key:
            keyed[signal] = by_key
    return Snapshot(deployment, evaluated_at_s, window_s, values, keyed)
