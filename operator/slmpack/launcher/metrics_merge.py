"""Merge the engines' Prometheus exposition into one, each sample labelled with its engine.

Every vLLM process labels its own metrics `engine="0"` (its engine-core index, not our
position in the pod), so the label is overwritten with the launcher's engine index. Parsing
and re-rendering with prometheus_client keeps histograms (`_bucket`, `_sum`, `_count`),
counters (`_total`) and their `_created` series intact, and writes each family's HELP and
TYPE once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

#: Label carrying the engine's index within the pod.
ENGINE_LABEL = "engine"


class MetricsParseError(ValueError):
    """An engine's /metrics body is not Prometheus text format."""


def relabel_engine(text: str, engine_index: int) -> list[Metric]:
    """Parse one engine's exposition and set `engine="<index>"` on every sample."""
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as exc:  # the parser raises ValueError, IndexError, ... on bad input
        raise MetricsParseError(f"engine {engine_index}: {exc}") from exc
    value = str(engine_index)
    for family in families:
        family.samples = [
            s._replace(labels={**s.labels, ENGINE_LABEL: value}) for s in family.samples
        ]
    return families


def merge_families(per_engine: Iterable[list[Metric]]) -> list[Metric]:
    """One family per name, samples in engine order; HELP and TYPE from the first engine."""
    merged: dict[str, Metric] = {}
    for families in per_engine:
        for family in families:
            into = merged.get(family.name)
            if into is None:
                into = Metric(family.name, family.documentation, family.type, family.unit)
                merged[family.name] = into
            into.samples.extend(family.samples)
    return list(merged.values())


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def render(families: list[Metric]) -> str:
    """Prometheus text format (0.0.4) of already-collected families."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry).decode()


def merge_engine_metrics(texts: Mapping[int, str]) -> tuple[str, dict[int, str]]:
    """Merged exposition of the engines' bodies keyed by engine index.

    Returns the text and, per engine whose body could not be parsed, why; such an engine is
    left out rather than failing the whole scrape.
    """
    parsed: list[list[Metric]] = []
    errors: dict[int, str] = {}
    for index in sorted(texts):
        try:
            parsed.append(relabel_engine(texts[index], index))
        except MetricsParseError as exc:
            errors[index] = str(exc)
    return render(merge_families(parsed)), errors
