"""The imperative shell: keeps the latest objects seen on the watches, and reconciles one
SLMDeployment at a time by reading that cache, calling the pure `decide`/`render`/`status`
functions, and writing only what differs.

Level-based: create, update, resume, a child's drift and a GPU node change all just queue the
SLMDeployment's key; one reconcile pass handles every case the same way, and ten passes over
an unchanged world make no writes after the first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from slmpack.api.v1alpha1 import (
    API_VERSION,
    KIND,
    Condition,
    SLMDeploymentSpec,
    SLMDeploymentStatus,
)
from slmpack.catalog.gpus import GpuCatalog, default_gpu_catalog
from slmpack.catalog.models import ModelCatalog, default_model_catalog, model_from_hf_config
from slmpack.catalog.types import ModelSpec
from slmpack.controller import status as st
from slmpack.controller import tuning
from slmpack.controller.decide import Decision, PlanFailedError, decide
from slmpack.controller.drift import contains
from slmpack.controller.inventory import GpuOffer, cluster_offers, offer_kinds
from slmpack.controller.kube import KubeApi, is_temporary
from slmpack.controller.metrics import OperatorMetrics
from slmpack.controller.settings import Settings
from slmpack.controller.workqueue import WorkQueue
from slmpack.errors import CatalogError, SlmpackError
from slmpack.render.workload import (
    CHILD_KINDS,
    DEPLOYMENT_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    Owner,
    RenderDefaults,
    children,
    selector_string,
    service_endpoint,
)

log = logging.getLogger("slmpack.controller")

Key = tuple[str, str]  # (namespace, name)
ChildKey = tuple[str, str, str]  # (kind, namespace, name)
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def _timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


def owner_key(body: Mapping[str, Any]) -> Key | None:
    """The SLMDeployment that controls a child, from its owner references."""
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith("slmpack.dev/"):
            return (str(meta.get("namespace", "")), str(ref.get("name", "")))
    return None


def model_from_spec(
    spec: SLMDeploymentSpec, catalog: ModelCatalog, config_json: Mapping[str, Any] | None
) -> ModelSpec:
    """The model's architecture: from a ConfigMap's config.json, the catalogue, or the HF id."""
    source = spec.model.config
    if config_json is not None:
        return model_from_hf_config(config_json, name=spec.model.effective_served_name)
    name = source.catalog_name if source and source.catalog_name else None
    if name is None and spec.model.scheme == "hf":
        name = spec.model.location
    if name is None:
        raise PlanFailedError(
            "UnknownModel",
            f"cannot tell the architecture of {spec.model.uri}: set model.config.catalogName "
            "or model.config.configMapRef (a ConfigMap with its config.json)",
        )
    try:
        return catalog.entry(name).spec
    except CatalogError as err:
        raise PlanFailedError(
            "UnknownModel",
            f"{err} Set model.config.configMapRef to a ConfigMap holding its config.json",
        ) from err


@dataclass
class Store:
    """The latest version of every object the watches delivered."""

    slmds: dict[Key, dict[str, Any]] = field(default_factory=dict)
    children: dict[ChildKey, dict[str, Any]] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Pods by owning SLMDeployment, then pod name (from the deployment label).
    pods: dict[Key, dict[str, dict[str, Any]]] = field(default_factory=dict)


class Controller:
    def __init__(
        self,
        api: KubeApi,
        settings: Settings,
        metrics: OperatorMetrics,
        clock: Clock = utc_now,
        gpus: GpuCatalog | None = None,
        models: ModelCatalog | None = None,
    ) -> None:
        self.api = api
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.gpus = gpus or default_gpu_catalog()
        self.models = models or default_model_catalog()
        self.store = Store()
        self.queue: WorkQueue[Key] = WorkQueue(
            settings.backoff_base_seconds, settings.backoff_max_seconds
        )
        self.defaults = RenderDefaults(settings.vllm_image, settings.launcher_image)
        self.offers: tuple[GpuOffer, ...] = ()
        self._offer_kinds: frozenset[str] = frozenset()
        self._workers: list[asyncio.Task[None]] = []
        #: The last decision per SLMDeployment: the autotuner measures what it runs.
        self.decisions: dict[Key, Decision] = {}

    # --- watch events -------------------------------------------------------------------

    def on_slmd(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        key = _key(body)
        if event_type == "DELETED":
            self.store.slmds.pop(key, None)
            self.decisions.pop(key, None)
            self.metrics.forget(*key)
            return
        old = self.store.slmds.get(key)
        self.store.slmds[key] = dict(body)
        # Our own status writes come back as events; they change nothing to decide.
        if old is not None and _same_input(old, body):
            return
        self.queue.add(key, urgent=True)

    def on_child(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        namespace, name = _key(body)
        child_key = (kind, namespace, name)
        if event_type == "DELETED":
            self.store.children.pop(child_key, None)
        else:
            self.store.children[child_key] = dict(body)
        owner = owner_key(body)
        if owner is not None and owner in self.store.slmds:
            self.queue.add(owner)

    def on_pod(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(DEPLOYMENT_LABEL)
        if not owner:
            return
        key = (str(meta.get("namespace", "")), str(owner))
        pods = self.store.pods.setdefault(key, {})
        name = str(meta.get("name", ""))
        old = pods.get(name)
        if event_type == "DELETED":
            pods.pop(name, None)
            if not pods:
                self.store.pods.pop(key, None)
        else:
            pods[name] = dict(body)
        # Pod status churns (probes, heartbeats); only a change in what status reports about
        # faults needs a pass.
        before = st.pod_fault([old]) if old is not None else None
        after = st.pod_fault([body]) if event_type != "DELETED" else None
        if before != after and key in self.store.slmds:
            self.queue.add(key)

    def on_node(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        name = str((body.get("metadata") or {}).get("name", ""))
        if event_type == "DELETED":
            self.store.nodes.pop(name, None)
        else:
            self.store.nodes[name] = dict(body)
        self.offers = cluster_offers(self.store.nodes.values())
        kinds = offer_kinds(self.offers)
        if kinds != self._offer_kinds:
            # A kind of GPU capacity appeared or vanished: plans may change. Node heartbeats
            # and pods filling nodes change no kind and queue nothing.
            self._offer_kinds = kinds
            for key in self.store.slmds:
                self.queue.add(key)

    # --- workers ------------------------------------------------------------------------

    async def prime(self) -> None:
        """Load nodes and owned objects once before the first reconcile, so nothing is planned
        against an empty inventory, or re-applied for want of its child, while the watches
        are still listing."""
        for node in await self.api.list("Node"):
            self.store.nodes[str(node["metadata"]["name"])] = node
        namespaces = self.settings.namespaces or (None,)
        for kind in CHILD_KINDS:
            for namespace in namespaces:
                for child in await self.api.list(
                    kind, namespace, f"{MANAGED_BY_LABEL}={MANAGED_BY}"
                ):
                    meta = child["metadata"]
                    self.store.children[(kind, meta["namespace"], meta["name"])] = child
        self.offers = cluster_offers(self.store.nodes.values())
        self._offer_kinds = offer_kinds(self.offers)

    def start(self) -> None:
        for index in range(self.settings.workers):
            self._workers.append(asyncio.create_task(self._work(), name=f"reconcile-{index}"))

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        self.queue.close()

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            self.metrics.queue_depth.set(len(self.queue))
            started = time.perf_counter()
            try:
                result = await self.reconcile(key)
                self.queue.forget(key)
            except ApiException as err:
                result = "retry" if is_temporary(err) else "error"
                delay = self.queue.retry_later(key)
                log.warning(
                    "Reconcile of %s/%s failed with HTTP %s %s: %s; retrying in %.1fs",
                    *key,
                    err.status,
                    err.reason,
                    str(err.body)[:300],
                    delay,
                )
            except Exception:
                result = "error"
                delay = self.queue.retry_later(key)
                log.exception("Reconcile of %s/%s failed; retrying in %.1fs", *key, delay)
            finally:
                self.queue.done(key)
            self.metrics.reconciles.labels(result=result).inc()
            self.metrics.reconcile_seconds.observe(time.perf_counter() - started)

    # --- reconcile ----------------------------------------------------------------------

    async def reconcile(self, key: Key) -> str:
        body = self.store.slmds.get(key)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return "ok"  # owner references let the garbage collector remove the children
        meta = body["metadata"]
        generation = int(meta.get("generation", 0))
        previous = _parse_status(body)
        try:
            spec = SLMDeploymentSpec.model_validate(body.get("spec") or {})
            decision = await self._decide(key, spec, previous)
        except PlanFailedError as failure:
            self.decisions.pop(key, None)
            await self._report_failure(body, previous, generation, failure)
            return "plan_failed"
        self.decisions[key] = decision
        owner = Owner(key[1], key[0], str(meta.get("uid", "")))
        deployment = await self._apply_children(owner, spec, decision)
        pods = self.store.pods.get(key, {}).values()
        rollout = st.rollout_of(deployment, decision.engines_per_pod, pods)
        await self._report_plan(body, previous, generation, spec, decision, rollout)
        self.metrics.planned_replicas.labels(*key).set(decision.replicas)
        self.metrics.ready_replicas.labels(*key).set(rollout.ready_replicas)
        self.metrics.planned_gpus.labels(*key).set(decision.gpus)
        self.metrics.replicas_per_gpu.labels(*key).set(decision.candidate.replicas_per_gpu)
        return "ok"

    async def _decide(
        self, key: Key, spec: SLMDeploymentSpec, previous: SLMDeploymentStatus
    ) -> Decision:
        config_json = None
        source = spec.model.config
        if source is not None and source.config_map_ref is not None:
            ref = source.config_map_ref
            config_map = await self.api.get("ConfigMap", key[0], ref.name)
            data = (config_map or {}).get("data") or {}
            if ref.key not in data:
                raise PlanFailedError(
                    "ModelConfigNotFound",
                    f"ConfigMap {ref.name} with key {ref.key} not found in namespace {key[0]}; "
                    "create it from the model's config.json",
                )
            try:
                config_json = json.loads(data[ref.key])
            except json.JSONDecodeError as err:
                raise PlanFailedError(
                    "InvalidModelConfig", f"ConfigMap {ref.name} key {ref.key}: {err}"
                ) from err
        target = tuning.target_of(previous.autotune) if spec.autotune.mode == "Auto" else None
        try:
            model = model_from_spec(spec, self.models, config_json)
            return decide(
                spec,
                model,
                self.offers,
                self.gpus,
                autotuned_replicas=target.replicas if target else None,
                autotuned_packing=target.packing_key if target else None,
            )
        except PlanFailedError:
            raise
        except SlmpackError as err:  # an architecture or spec the planner rejects
            raise PlanFailedError("InvalidSpec", str(err)) from err

    async def _apply_children(
        self, owner: Owner, spec: SLMDeploymentSpec, decision: Decision
    ) -> dict[str, Any] | None:
        async def ensure(obj: dict[str, Any]) -> dict[str, Any] | None:
            child_key = (obj["kind"], owner.namespace, obj["metadata"]["name"])
            have = self.store.children.get(child_key)
            if have is None or not contains(have, obj):
                result = await self.api.apply(obj)
                log.info("Applied %s %s/%s", obj["kind"], owner.namespace, owner.name)
                if result is not None:
                    self.store.children[child_key] = result
                    have = result
            return have

        # The children do not depend on each other: apply them concurrently.
        wanted = children(owner, spec, decision, self.defaults)
        results = await asyncio.gather(*(ensure(obj) for obj in wanted))
        return next(
            (
                have
                for obj, have in zip(wanted, results, strict=True)
                if obj["kind"] == "Deployment"
            ),
            None,
        )

    async def _write_status(self, body: Mapping[str, Any], status: SLMDeploymentStatus) -> None:
        meta = body["metadata"]
        # Exported on every pass, written or not, so a restarted operator reports them too.
        self.metrics.set_conditions(
            *_key(body),
            [
                (c.type, c.status, c.reason)
                for c in status.conditions
                if c.type in st.OWNED_CONDITIONS
            ],
            scope="operator",
        )
        # The autotuner's fields stay under its own field manager.
        wanted = {k: v for k, v in status.as_dict().items() if k in OWNED_STATUS_FIELDS}
        if _owned_status(body.get("status") or {}) == _owned_status(wanted):
            return
        await self.api.apply_status(
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "status": wanted,
            }
        )

    async def _report_plan(
        self,
        body: Mapping[str, Any],
        previous: SLMDeploymentStatus,
        generation: int,
        spec: SLMDeploymentSpec,
        decision: Decision,
        rollout: st.Rollout,
    ) -> None:
        now = _timestamp(self.clock())
        owned = [c for c in previous.conditions if c.type in st.OWNED_CONDITIONS]
        conditions = st.planned_conditions(owned, decision, rollout, generation, now)
        plan = st.plan_status(decision, spec.model.effective_served_name)
        key = _key(body)
        status = SLMDeploymentStatus(
            observed_generation=generation,
            conditions=conditions,
            plan=plan,
            replicas=rollout.replicas,
            ready_replicas=rollout.ready_replicas,
            ready_text=f"{rollout.ready_replicas}/{decision.replicas}",
            selector=selector_string(key[1]),
            endpoint=service_endpoint(Owner(key[1], key[0], "")),
        )
        await self._write_status(body, status)
        was = _condition(previous.conditions, st.PLANNED)
        if previous.plan != plan or was is None or was.status != "True":
            await self.event(body, "Normal", "Planned", _first(conditions, st.PLANNED).message)

    async def _report_failure(
        self,
        body: Mapping[str, Any],
        previous: SLMDeploymentStatus,
        generation: int,
        failure: PlanFailedError,
    ) -> None:
        now = _timestamp(self.clock())
        owned = [c for c in previous.conditions if c.type in st.OWNED_CONDITIONS]
        conditions = st.failed_conditions(owned, failure.reason, failure.message, generation, now)
        status = previous.model_copy(
            update={"observed_generation": generation, "conditions": conditions}
        )
        await self._write_status(body, status)
        was = _condition(previous.conditions, st.PLANNED)
        if was is None or was.status != "False" or was.message != failure.message:
            log.warning("Planning %s/%s failed: %s", *_key(body), failure.message)
            await self.event(body, "Warning", failure.reason, failure.message)

    async def event(
        self,
        body: Mapping[str, Any],
        type_: str,
        reason: str,
        note: str,
        action: str = "Plan",
    ) -> None:
        """Best effort: a lost Event must not undo or repeat the reconcile that raised it."""
        meta = body["metadata"]
        now = self.clock()
        try:
            await self._create_event(meta, now, type_, reason, note, action)
        except ApiException as err:
            log.warning(
                "Could not record Event %s on %s: HTTP %s", reason, meta["name"], err.status
            )

    async def _create_event(
        self,
        meta: Mapping[str, Any],
        now: datetime,
        type_: str,
        reason: str,
        note: str,
        action: str,
    ) -> None:
        await self.api.create(
            {
                "apiVersion": "events.k8s.io/v1",
                "kind": "Event",
                "metadata": {"generateName": f"{meta['name']}-", "namespace": meta["namespace"]},
                "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "reportingController": "slmpack.dev/operator",
                "reportingInstance": self.settings.instance[:128],
                "action": action,
                "reason": reason,
                "note": note[:1024],
                "type": type_,
                "regarding": {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta.get("uid", ""),
                },
            }
        )


def _parse_status(body: Mapping[str, Any]) -> SLMDeploymentStatus:
    try:
        return SLMDeploymentStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return SLMDeploymentStatus()  # written by something else; rebuilt from scratch


def _condition(conditions: tuple[Condition, ...], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def _first(conditions: tuple[Condition, ...], type_: str) -> Condition:
    found = _condition(conditions, type_)
    assert found is not None
    return found


#: Status fields this controller writes; others (the autotuner's) are left alone.
OWNED_STATUS_FIELDS = frozenset(
    {
        "observedGeneration",
        "conditions",
        "plan",
        "replicas",
        "readyReplicas",
        "readyText",
        "selector",
        "endpoint",
    }
)


def _owned_status(status: Mapping[str, Any]) -> dict[str, Any]:
    owned = {k: v for k, v in status.items() if k in OWNED_STATUS_FIELDS}
    owned["conditions"] = sorted(
        (c for c in status.get("conditions") or [] if c.get("type") in st.OWNED_CONDITIONS),
        key=lambda c: str(c.get("type")),
    )
    return owned


def _same_input(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Nothing a reconcile reads changed (only our own status, or metadata noise)."""
    old_meta = old.get("metadata") or {}
    new_meta = new.get("metadata") or {}
    return (
        old_meta.get("generation") == new_meta.get("generation")
        and old_meta.get("deletionTimestamp") == new_meta.get("deletionTimestamp")
        and old.get("spec") == new.get("spec")
        # The autotuner's target is an input in Auto mode (written to status by the autotuner).
        and tuning.raw_target(old.get("status")) == tuning.raw_target(new.get("status"))
    )
