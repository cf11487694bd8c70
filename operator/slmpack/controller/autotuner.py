"""The autotuner's shell: once per interval per SLMDeployment with autotune on, read its signals
from Prometheus, run the pure policy, and write the decision to status (and, in Auto mode,
queue the reconcile that applies it).

The reconciler stays the only writer of children: the autotuner writes `status.autotune` and
the `Autotuned` condition under its own field manager, and the reconciler reads the target
back from status. So a restarted operator resumes from status, and the spec is never written.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from slmpack.api.v1alpha1 import (
    API_VERSION,
    KIND,
    Condition,
    SLMDeploymentSpec,
    SLMDeploymentStatus,
)
from slmpack.autotune.model import Packing, build_prior
from slmpack.autotune.policy import (
    MetricsUnavailable,
    Observation,
    PolicyConfig,
    RunningConfig,
    TunerState,
    TuneSpec,
    tune,
)
from slmpack.autotune.prometheus import (
    PrometheusClient,
    PrometheusConfig,
    PrometheusError,
    PrometheusRejectedError,
    collect_snapshot,
)
from slmpack.autotune.signals import DeploymentRef
from slmpack.controller import tuning
from slmpack.controller.kube import KubeApi
from slmpack.controller.settings import AutotuneSettings, Settings

if TYPE_CHECKING:  # the reconciler imports this module
    from slmpack.controller.reconciler import Controller, Key

log = logging.getLogger("slmpack.autotuner")

FIELD_MANAGER = "slmpack-autotuner"
#: How often the loop looks for due SLMDeployments, and for the peering verdict.
TICK_SECONDS = 1.0
PEERING_CHECK_SECONDS = 10.0


def policy_config(settings: AutotuneSettings) -> PolicyConfig:
    window = float(settings.window_seconds)
    base = PolicyConfig()
    return replace(
        base,
        window_s=window,
        settle_s=settings.settle_seconds,
        scale_down_stabilisation_s=settings.scale_down_stabilisation_seconds,
        repack_cooldown_s=settings.repack_cooldown_seconds,
        # Staleness is judged in windows: a short test window must not look stale at 60 s.
        max_snapshot_age_s=max(2 * window, 2 * settings.interval_seconds),
        max_sample_age_s=1.5 * window,
    )


def prometheus_config(settings: AutotuneSettings) -> PrometheusConfig | None:
    if not settings.prometheus_url:
        return None
    return PrometheusConfig(
        url=settings.prometheus_url,
        bearer_token_file=settings.bearer_token_file,
        ca_file=settings.ca_file,
        insecure_skip_verify=settings.insecure_skip_verify,
        timeout_s=settings.timeout_seconds,
    )


class Autotuner:
    def __init__(
        self,
        controller: Controller,
        api: KubeApi,
        settings: Settings,
        prometheus: PrometheusClient | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.controller = controller
        self.api = api  # field manager slmpack-autotuner
        self.settings = settings
        self.tuning = settings.autotune
        self.prometheus = prometheus
        self.clock = clock
        self.policy = policy_config(settings.autotune)
        self._due: dict[Key, float] = {}
        self._in_flight: set[Key] = set()
        self._states: dict[Key, tuple[int, TunerState]] = {}
        self._slots = asyncio.Semaphore(settings.autotune.concurrency)
        self._active = not settings.peering
        self._peering_checked = 0.0
        self._task: asyncio.Task[None] | None = None
        self._passes: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="autotuner")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._passes) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        if self.prometheus is not None:
            await self.prometheus.close()

    # --- scheduling -----------------------------------------------------------------------

    def _first_due(self, key: Key, now: float) -> float:
        # Spread first passes over the interval so a thousand SLMDeployments do not all query
        # Prometheus in the same second after a restart.
        spread = min(self.tuning.interval_seconds, 30.0)
        return now + (zlib.crc32("/".join(key).encode()) % 1000) / 1000 * spread

    async def _loop(self) -> None:
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Autotuner scan failed")
            await asyncio.sleep(TICK_SECONDS)

    async def _tick(self) -> None:
        now = self.clock()
        if self.settings.peering and now - self._peering_checked >= PEERING_CHECK_SECONDS:
            self._peering_checked = now
            self._active = await self._peering_allows()
        if not self._active:
            return
        wanted: set[Key] = set()
        for key, body in self.controller.store.slmds.items():
            mode = ((body.get("spec") or {}).get("autotune") or {}).get("mode", "Off")
            if mode == "Off" or (body.get("metadata") or {}).get("deletionTimestamp"):
                continue
            wanted.add(key)
            due = self._due.setdefault(key, self._first_due(key, now))
            if due <= now and key not in self._in_flight:
                self._in_flight.add(key)
                self._due[key] = now + self.tuning.interval_seconds
                task = asyncio.create_task(self._guarded(key), name=f"autotune-{key[0]}/{key[1]}")
                self._passes.add(task)
                task.add_done_callback(self._passes.discard)
        for key in set(self._due) - wanted:
            self._due.pop(key, None)
            self._states.pop(key, None)
            self.controller.metrics.set_conditions(*key, (), scope="autotuner")
            self.controller.metrics.set_measured(*key, {})

    async def _peering_allows(self) -> bool:
        namespaces = self.settings.namespaces
        kind = "KopfPeering" if namespaces else "ClusterKopfPeering"
        try:
            peering = await self.api.get(
                kind, namespaces[0] if namespaces else None, self.settings.peering
            )
        except ApiException as err:
            log.warning(
                "Cannot read peering %s: HTTP %s; not tuning", self.settings.peering, err.status
            )
            return False
        peers = (peering or {}).get("status") or {}
        return tuning.is_active_peer(peers, self.settings.priority, datetime.now(UTC))

    async def _guarded(self, key: Key) -> None:
        try:
            async with self._slots:
                await self.tune_once(key)
        except asyncio.CancelledError:
            raise
        except ApiException as err:
            self.controller.metrics.autotune_passes.labels(result="error").inc()
            log.warning("Autotune of %s/%s: HTTP %s %s", *key, err.status, err.reason)
        except Exception:
            self.controller.metrics.autotune_passes.labels(result="error").inc()
            log.exception("Autotune of %s/%s failed", *key)
        finally:
            self._in_flight.discard(key)

    # --- one pass -------------------------------------------------------------------------

    async def tune_once(self, key: Key) -> None:
        body = self.controller.store.slmds.get(key)
        if body is None:
            return
        try:
            spec = SLMDeploymentSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            return  # the reconciler reports it
        mode = spec.autotune.mode
        if mode == "Off":
            return
        generation = int((body.get("metadata") or {}).get("generation", 0))
        try:
            status = SLMDeploymentStatus.model_validate(body.get("status") or {})
        except ValidationError:
            status = SLMDeploymentStatus()
        planned = self.controller.decisions.get(key)
        now_s = self.clock()
        now = datetime.fromtimestamp(now_s, UTC)
        if self.prometheus is None:
            condition = tuning.not_configured_condition(status.conditions, generation, now)
            self.controller.metrics.set_conditions(
                *key, [(condition.type, condition.status, condition.reason)], scope="autotuner"
            )
            old = next((c for c in status.conditions if c.type == tuning.AUTOTUNED), None)
            if old != condition:
                await self._write(key, None, condition)
            return
        if planned is None:
            return  # not planned (yet): nothing runs to measure
        running = RunningConfig(
            Packing.of(planned.candidate), planned.replicas, status.ready_replicas or 0
        )
        override: str | None = None
        observation: Observation | MetricsUnavailable
        try:
            snapshot = await collect_snapshot(
                self.prometheus,
                DeploymentRef(*key),
                window_s=self.tuning.window_seconds,
                recorded=self.tuning.recorded_rules,
            )
            observation = Observation.from_snapshot(snapshot, running)
        except PrometheusRejectedError as err:
            observation = MetricsUnavailable(now_s, str(err))
            override = tuning.PROMETHEUS_REJECTED
        except PrometheusError as err:
            observation = MetricsUnavailable(now_s, str(err))
        cached = self._states.get(key)
        state = (
            cached[1]
            if cached is not None and cached[0] == generation
            else tuning.state_from(status.autotune, generation)
        )
        decision, state = tune(
            state,
            observation,
            build_prior(planned.request),
            TuneSpec.from_spec(spec),
            now_s,
            self.policy,
        )
        self._states[key] = (generation, state)
        result = tuning.outcome(
            status.autotune,
            status.conditions,
            decision,
            state,
            mode,
            generation,
            now,
            self.tuning.history,
            override,
        )
        metrics = self.controller.metrics
        metrics.autotune_passes.labels(result=result.entry["reason"]).inc()
        metrics.set_conditions(
            *key,
            [(result.condition.type, result.condition.status, result.condition.reason)],
            scope="autotuner",
        )
        inputs = result.entry.get("inputs")
        if inputs is not None:
            metrics.set_measured(*key, inputs)
        if result.news:
            metrics.autotune_decisions.labels(
                *key, result.entry["action"], result.entry["reason"]
            ).inc()
        if result.changed:
            await self._write(key, result.status, result.condition)
        event = tuning.events_for(result, decision)
        if event is not None:
            log.info("Autotune %s/%s: %s", *key, result.entry["message"])
            await self.controller.event(
                body, event[0], event[1], result.entry["message"], "Autotune"
            )
        if mode == "Auto" and result.changed:
            # The reconciler applies the target; the status watch event would queue it too,
            # this only saves the round trip.
            self.controller.queue.add(key)

    async def _write(self, key: Key, autotune: dict[str, Any] | None, condition: Condition) -> None:
        # Only the Autotuned entry: the conditions list is keyed by type, so server-side
        # apply leaves the reconciler's entries to the reconciler.
        status: dict[str, Any] = {
            "conditions": [condition.model_dump(by_alias=True, exclude_none=True)]
        }
        if autotune is not None:
            status["autotune"] = autotune
        await self.api.apply_status(
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": {"name": key[1], "namespace": key[0]},
                "status": status,
            }
        )
