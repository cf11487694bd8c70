"""The operator's own Prometheus metrics (slmpack_operator_*, base units)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciles = Counter(
            "slmpack_operator_reconciles",
            "Reconcile passes, by result (ok, plan_failed, retry, error).",
            ["result"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "slmpack_operator_reconcile_duration_seconds",
            "Wall time of one reconcile pass.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.api_writes = Counter(
            "slmpack_operator_api_writes",
            "Write requests sent to the API server, by kind and verb.",
            ["kind", "verb"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "slmpack_operator_workqueue_depth",
            "SLMDeployments waiting for a reconcile.",
            registry=self.registry,
        )
        self.planned_replicas = Gauge(
            "slmpack_operator_planned_replicas",
            "vLLM replicas planned, by SLMDeployment.",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.conditions = Gauge(
            "slmpack_operator_condition",
            "1 for each condition an SLMDeployment has now (type, status, reason).",
            ["namespace", "name", "type", "status", "reason"],
            registry=self.registry,
        )
        #: By (namespace, name, scope): the reconciler and the autotuner each set their own.
        self._condition_series: dict[tuple[str, str, str], set[tuple[str, ...]]] = {}
        self.ready_replicas = Gauge(
            "slmpack_operator_ready_replicas",
            "vLLM replicas ready, by SLMDeployment.",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.autotune_passes = Counter(
            "slmpack_autotune_passes",
            "Autotuner passes, by the decision's reason (Steady, LoadRose, PrometheusUnavailable,"
            " ...) or error.",
            ["result"],
            registry=self.registry,
        )
        self.autotune_decisions = Counter(
            "slmpack_autotune_decisions",
            "Autotuner decisions that differed from the one before, by SLMDeployment, action "
            "(Hold, Scale, Repack) and reason.",
            ["namespace", "name", "action", "reason"],
            registry=self.registry,
        )

    def set_conditions(
        self,
        namespace: str,
        name: str,
        conditions: Iterable[tuple[str, str, str]],
        scope: str = "operator",
    ) -> None:
        """One series per (type, status, reason) now true of an SLMDeployment; the series of
        its previous conditions (set under the same scope) are removed, so alerts see only the
        current state."""
        current: set[tuple[str, ...]] = {(namespace, name, *c) for c in conditions}
        for labels in self._condition_series.pop((namespace, name, scope), set()) - current:
            with contextlib.suppress(KeyError):
                self.conditions.remove(*labels)
        for labels in current:
            self.conditions.labels(*labels).set(1)
        self._condition_series[(namespace, name, scope)] = current

    def count_write(self, kind: str, verb: str) -> None:
        self.api_writes.labels(kind=kind, verb=verb).inc()

    def forget(self, namespace: str, name: str) -> None:
        for scope in ("operator", "autotuner"):
            self.set_conditions(namespace, name, (), scope)
            self._condition_series.pop((namespace, name, scope), None)
        for gauge in (self.planned_replicas, self.ready_replicas):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)
