"""The launcher's own metrics, `slmpack_launcher_*`, in a registry of their own.

A private registry (not the process-global one) keeps two launchers in one test process
apart and keeps the Python runtime metrics out: the engines already export theirs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import generate_latest


class LauncherMetrics:
    """Counters and gauges the router and supervisor update."""

    def __init__(self, engine_count: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests_routed = Counter(
            "slmpack_launcher_requests_routed",
            "Requests the router sent to an engine (each retry counts again).",
            ["engine"],
            registry=self.registry,
        )
        self.retries = Counter(
            "slmpack_launcher_retries",
            "Requests retried on another engine because this one refused the connection or "
            "closed it before sending response headers.",
            ["engine"],
            registry=self.registry,
        )
        self.unavailable_responses = Counter(
            "slmpack_launcher_unavailable_responses",
            "Requests answered 503 because no healthy engine could take them.",
            registry=self.registry,
        )
        self.upstream_aborts = Counter(
            "slmpack_launcher_upstream_aborts",
            "Responses cut off because the engine failed after sending headers.",
            ["engine"],
            registry=self.registry,
        )
        self.engine_restarts = Counter(
            "slmpack_launcher_engine_restarts",
            "Engine processes restarted after they exited.",
            ["engine"],
            registry=self.registry,
        )
        self.metrics_scrape_errors = Counter(
            "slmpack_launcher_metrics_scrape_errors",
            "Failed fetches or parses of an engine's /metrics.",
            ["engine"],
            registry=self.registry,
        )
        self.engines_healthy = Gauge(
            "slmpack_launcher_engines_healthy",
            "Engines whose /health answered 200 at the last probe.",
            registry=self.registry,
        )
        self.engines_configured = Gauge(
            "slmpack_launcher_engines_configured",
            "Engines in the launcher config.",
            registry=self.registry,
        )
        self.in_flight_requests = Gauge(
            "slmpack_launcher_in_flight_requests",
            "Requests the router has open to this engine.",
            ["engine"],
            registry=self.registry,
        )
        self.engines_configured.set(engine_count)
        # Pre-create the per-engine series so they read 0 rather than being absent.
        for index in range(engine_count):
            label = str(index)
            for metric in (
                self.requests_routed,
                self.retries,
                self.upstream_aborts,
                self.engine_restarts,
                self.metrics_scrape_errors,
            ):
                metric.labels(label)
            self.in_flight_requests.labels(label)

    def exposition(self) -> str:
        return generate_latest(self.registry).decode()
