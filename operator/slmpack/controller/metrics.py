"""The operator's own Prometheus metrics (slmpack_operator_*, base units)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

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
        self.planned_gpus = Gauge(
            "slmpack_operator_planned_gpus",
            "GPUs (or MIG-instance groups) planned, by SLMDeployment.",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.replicas_per_gpu = Gauge(
            "slmpack_operator_replicas_per_gpu",
            "vLLM replicas per GPU of the running packing, by SLMDeployment.",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.measured_tokens_per_second_per_gpu = Gauge(
            "slmpack_autotune_measured_tokens_per_second_per_gpu",
            "Tokens (prompt and generated) per second per GPU the autotuner last measured.",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.measured_tokens_per_joule = Gauge(
            "slmpack_autotune_measured_tokens_per_joule",
            "Generated tokens per joule the autotuner last measured (attributed GPU energy).",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.utilisation_ratio = Gauge(
            "slmpack_autotune_utilisation_ratio",
            "Demand over the estimated capacity of the running packing, as last measured.",
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

    @property
    def autotune_gauges(self) -> tuple[Gauge, ...]:
        return (
            self.measured_tokens_per_second_per_gpu,
            self.measured_tokens_per_joule,
            self.utilisation_ratio,
        )

    def set_measured(self, namespace: str, name: str, inputs: Mapping[str, Any]) -> None:
        """The autotuner's last measurement (a decision's inputs); absent figures are removed,
        so a panel shows a gap rather than a stale value."""
        fields = (
            (self.measured_tokens_per_second_per_gpu, "throughputTokensPerSecondPerGPU"),
            (self.measured_tokens_per_joule, "tokensPerJoule"),
            (self.utilisation_ratio, "utilisationRatio"),
        )
        for gauge, key in fields:
            value = inputs.get(key)
            if isinstance(value, int | float):
                gauge.labels(namespace, name).set(value)
            else:
                with contextlib.suppress(KeyError):
                    gauge.remove(namespace, name)

    def count_write(self, kind: str, verb: str) -> None:
        self.api_writes.labels(kind=kind, verb=verb).inc()

    def forget(self, namespace: str, name: str) -> None:
        for scope in ("operator", "autotuner"):
            self.set_conditions(namespace, name, (), scope)
            self._condition_series.pop((namespace, name, scope), None)
        for gauge in (
            self.planned_replicas,
            self.ready_replicas,
            self.planned_gpus,
            self.replicas_per_gpu,
            *self.autotune_gauges,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)
