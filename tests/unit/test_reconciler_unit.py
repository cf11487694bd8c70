"""The Controller against an in-memory API: what one pass writes, and that a second pass over an
unchanged world writes nothing."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes.client.exceptions import ApiException

from slmpack.api.v1alpha1 import SLMDeploymentSpec
from slmpack.catalog.models import default_model_catalog
from slmpack.controller.decide import PlanFailedError
from slmpack.controller.kube import KINDS, KubeApi
from slmpack.controller.metrics import OperatorMetrics
from slmpack.controller.reconciler import (
    Controller,
    _owned_status,
    _same_input,
    model_from_spec,
    owner_key,
)
from slmpack.controller.settings import Settings

from .controller_fixtures import REPO_ROOT, FakeKube, fleet_nodes, h100_node, spec

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
NOW_TEXT = "2025-03-01T12:00:00Z"
KEY = ("team-a", "chat")
MODELS = default_model_catalog()


def _controller(fake: FakeKube) -> Controller:
    return Controller(
        cast(KubeApi, fake),
        Settings(instance="operator-0"),
        OperatorMetrics(),
        clock=lambda: NOW,
    )


def _slmd(spec_body: Mapping[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "slmpack.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": "chat", "namespace": "team-a", "uid": "u-1", "generation": generation},
        "spec": dict(spec_body or {"model": {"uri": "hf://facebook/opt-1.3b"}}),
    }


def _with_status(body: dict[str, Any], fake: FakeKube) -> dict[str, Any]:
    """The SLMDeployment as the watch delivers it after our last status write."""
    return {**copy.deepcopy(body), "status": copy.deepcopy(fake.statuses[-1]["status"])}


def _feed_children_back(controller: Controller, fake: FakeKube) -> None:
    for obj in fake.applied:
        stored = copy.deepcopy(obj)
        stored["metadata"].update(generation=1, uid=f"uid-{obj['kind']}")
        controller.on_child(obj["kind"], "ADDED", stored)


def _conditions(status: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


async def _drain(controller: Controller) -> list[tuple[str, str]]:
    keys = []
    while len(controller.queue):
        key = await controller.queue.get()
        controller.queue.done(key)
        keys.append(key)
    return keys


@pytest.fixture
def fake() -> FakeKube:
    return FakeKube()


@pytest.fixture
def controller(fake: FakeKube) -> Controller:
    ctrl = _controller(fake)
    ctrl.on_node("ADDED", h100_node())
    return ctrl


# --- watch events -------------------------------------------------------------------------


def test_on_node_builds_offers(fake: FakeKube) -> None:
    ctrl = _controller(fake)
    assert ctrl.offers == ()

    for node in fleet_nodes().values():
        ctrl.on_node("ADDED", node)

    assert [o.key for o in ctrl.offers] == [
        "NVIDIA-A100-SXM4-40GB/mig/1g.5gb",
        "NVIDIA-A100-SXM4-40GB/mig/2g.10gb",
        "NVIDIA-A100-SXM4-40GB/mig/3g.20gb",
        "NVIDIA-H100-80GB-HBM3/none",
        "NVIDIA-L4/time-slicingx4",
    ]
    ctrl.on_node("DELETED", fleet_nodes()["a100-mig-0"])
    assert not any(o.sharing == "mig" for o in ctrl.offers)


async def test_node_change_that_keeps_offer_kinds_queues_nothing(controller: Controller) -> None:
    controller.on_slmd("ADDED", _slmd())
    assert await _drain(controller) == [KEY]

    controller.on_node("MODIFIED", h100_node())  # a heartbeat
    controller.on_node("ADDED", h100_node("h100", 1))  # one more node of a known kind
    assert len(controller.queue) == 0
    assert controller.offers[0].allocatable == 16

    controller.on_node("ADDED", fleet_nodes()["l4-ts-0"])  # a new kind of capacity
    assert await _drain(controller) == [KEY]
    controller.on_node("DELETED", fleet_nodes()["l4-ts-0"])  # and it went away again
    assert await _drain(controller) == [KEY]


async def test_own_status_update_does_not_queue(controller: Controller) -> None:
    body = _slmd()
    controller.on_slmd("ADDED", body)
    await _drain(controller)

    with_status = {**body, "status": {"observedGeneration": 1, "readyText": "0/2"}}
    with_status["metadata"] = {**body["metadata"], "resourceVersion": "99"}
    controller.on_slmd("MODIFIED", with_status)
    assert len(controller.queue) == 0

    controller.on_slmd("MODIFIED", _slmd({"model": {"uri": "hf://x/y"}}, generation=2))
    assert await _drain(controller) == [KEY]
    deleting = _slmd({"model": {"uri": "hf://x/y"}}, generation=2)
    deleting["metadata"]["deletionTimestamp"] = "2025-03-01T12:00:00Z"
    controller.on_slmd("MODIFIED", deleting)
    assert await _drain(controller) == [KEY]


async def test_child_events_queue_their_owner_only(controller: Controller) -> None:
    controller.on_slmd("ADDED", _slmd())
    await _drain(controller)
    owned = {
        "metadata": {
            "name": "chat",
            "namespace": "team-a",
            "ownerReferences": [
                {"apiVersion": "slmpack.dev/v1alpha1", "kind": "SLMDeployment", "name": "chat"}
            ],
        }
    }
    controller.on_child("Deployment", "MODIFIED", owned)
    assert await _drain(controller) == [KEY]

    stray = copy.deepcopy(owned)
    stray["metadata"]["ownerReferences"][0]["name"] = "gone"
    controller.on_child("Deployment", "MODIFIED", stray)
    assert len(controller.queue) == 0

    controller.on_child("Deployment", "DELETED", owned)
    assert ("Deployment", "team-a", "chat") not in controller.store.children
    assert await _drain(controller) == [KEY]


# --- reconcile ----------------------------------------------------------------------------


async def test_first_pass_applies_children_status_and_one_event(
    controller: Controller, fake: FakeKube
) -> None:
    controller.on_slmd("ADDED", _slmd())

    assert await controller.reconcile(KEY) == "ok"

    assert fake.writes() == [
        ("apply", "Deployment"),
        ("apply", "Service"),
        ("apply", "PodDisruptionBudget"),
        ("apply_status", "SLMDeployment"),
        ("create", "Event"),
    ]
    (written,) = fake.statuses
    assert written["metadata"] == {"name": "chat", "namespace": "team-a"}
    status = written["status"]
    assert status["observedGeneration"] == 1
    conds = _conditions(status)
    assert conds["Planned"]["status"] == "True"
    assert conds["Ready"]["status"] == "False"  # nothing runs yet
    assert {c["lastTransitionTime"] for c in conds.values()} == {NOW_TEXT}
    plan = status["plan"]
    assert (plan["model"], plan["product"]) == ("opt-1.3b", "NVIDIA-H100-80GB-HBM3")
    per_gpu = plan["replicasPerGPU"]
    assert status["readyText"] == f"0/{per_gpu}"  # default: one GPU's worth of replicas
    assert status["selector"] == "slmpack.dev/deployment=chat"
    assert status["endpoint"] == "http://chat.team-a.svc:8000/v1"

    (event,) = fake.created
    assert (event["type"], event["reason"]) == ("Normal", "Planned")
    assert event["note"] == conds["Planned"]["message"]
    assert event["regarding"]["uid"] == "u-1"
    assert event["reportingInstance"] == "operator-0"
    assert event["eventTime"] == "2025-03-01T12:00:00.000000Z"
    assert event["metadata"] == {"generateName": "chat-", "namespace": "team-a"}


async def test_second_pass_over_the_same_world_writes_nothing(
    controller: Controller, fake: FakeKube
) -> None:
    body = _slmd()
    controller.on_slmd("ADDED", body)
    await controller.reconcile(KEY)
    _feed_children_back(controller, fake)
    controller.on_slmd("MODIFIED", _with_status(body, fake))
    fake.calls.clear()

    for _ in range(3):
        assert await controller.reconcile(KEY) == "ok"

    assert fake.writes() == []


async def test_rollout_progress_updates_status_without_an_event(
    controller: Controller, fake: FakeKube
) -> None:
    body = _slmd()
    controller.on_slmd("ADDED", body)
    await controller.reconcile(KEY)
    _feed_children_back(controller, fake)
    controller.on_slmd("MODIFIED", _with_status(body, fake))
    deployment = copy.deepcopy(controller.store.children[("Deployment", "team-a", "chat")])
    pods = deployment["spec"]["replicas"]
    deployment["status"] = {
        "observedGeneration": 1,
        "replicas": pods,
        "updatedReplicas": pods,
        "readyReplicas": pods,
        "availableReplicas": pods,
    }
    controller.on_child("Deployment", "MODIFIED", deployment)
    fake.calls.clear()

    await controller.reconcile(KEY)

    assert fake.writes() == [("apply_status", "SLMDeployment")]  # the plan is unchanged
    status = fake.statuses[-1]["status"]
    assert _conditions(status)["Ready"]["status"] == "True"
    per_gpu = status["plan"]["replicasPerGPU"]
    assert status["readyText"] == f"{per_gpu}/{per_gpu}"


async def test_drifted_child_is_applied_again(controller: Controller, fake: FakeKube) -> None:
    body = _slmd()
    controller.on_slmd("ADDED", body)
    await controller.reconcile(KEY)
    _feed_children_back(controller, fake)
    controller.on_slmd("MODIFIED", _with_status(body, fake))
    service = copy.deepcopy(controller.store.children[("Service", "team-a", "chat")])
    service["spec"]["type"] = "NodePort"  # someone edited our field
    controller.on_child("Service", "MODIFIED", service)
    fake.calls.clear()

    await controller.reconcile(KEY)

    assert fake.writes() == [("apply", "Service")]


async def test_rejected_spec_reports_planned_false_once(
    controller: Controller, fake: FakeKube
) -> None:
    body = _slmd({"model": {"uri": "hf://facebook/opt-1.3b"}, "gpu": {"products": ["Tesla-T4"]}})
    controller.on_slmd("ADDED", body)

    assert await controller.reconcile(KEY) == "plan_failed"

    assert fake.writes() == [("apply_status", "SLMDeployment"), ("create", "Event")]
    conds = _conditions(fake.statuses[0]["status"])
    assert (conds["Planned"]["status"], conds["Planned"]["reason"]) == ("False", "NoMatchingGPU")
    assert "Tesla-T4" in conds["Planned"]["message"]
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("False", "NoMatchingGPU")
    (event,) = fake.created
    assert (event["type"], event["reason"]) == ("Warning", "NoMatchingGPU")

    controller.on_slmd("MODIFIED", _with_status(body, fake))
    fake.calls.clear()
    assert await controller.reconcile(KEY) == "plan_failed"
    assert fake.writes() == []


async def test_spec_fixed_after_a_failure_plans_and_says_so(
    controller: Controller, fake: FakeKube
) -> None:
    bad = _slmd({"model": {"uri": "hf://facebook/opt-1.3b"}, "gpu": {"products": ["Tesla-T4"]}})
    controller.on_slmd("ADDED", bad)
    await controller.reconcile(KEY)
    fixed = _with_status(_slmd(generation=2), fake)
    controller.on_slmd("MODIFIED", fixed)
    fake.calls.clear()
    fake.created.clear()

    assert await controller.reconcile(KEY) == "ok"

    conds = _conditions(fake.statuses[-1]["status"])
    assert conds["Planned"]["status"] == "True"
    assert conds["Planned"]["observedGeneration"] == 2
    assert [e["type"] for e in fake.created] == ["Normal"]


async def test_event_failure_does_not_fail_the_pass(controller: Controller, fake: FakeKube) -> None:
    fake.fail_create = ApiException(status=403, reason="Forbidden")
    controller.on_slmd("ADDED", _slmd())

    assert await controller.reconcile(KEY) == "ok"
    assert ("apply_status", "SLMDeployment") in fake.writes()


async def test_deleted_or_deleting_objects_are_not_reconciled(
    controller: Controller, fake: FakeKube
) -> None:
    assert await controller.reconcile(KEY) == "ok"  # never seen
    body = _slmd()
    body["metadata"]["deletionTimestamp"] = "2025-03-01T11:00:00Z"
    controller.on_slmd("MODIFIED", body)

    assert await controller.reconcile(KEY) == "ok"
    assert fake.writes() == []


async def test_model_config_from_a_config_map(controller: Controller, fake: FakeKube) -> None:
    config = (REPO_ROOT / "operator/slmpack/catalog/model_configs/opt-1.3b.json").read_text()
    fake.objects[("ConfigMap", "team-a", "opt")] = {"data": {"config.json": config}}
    body = _slmd(
        {"model": {"uri": "pvc://weights/opt", "config": {"configMapRef": {"name": "opt"}}}}
    )
    controller.on_slmd("ADDED", body)

    assert await controller.reconcile(KEY) == "ok"
    assert ("get", "ConfigMap") in fake.calls


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, "ModelConfigNotFound"),
        ({"other": "{}"}, "ModelConfigNotFound"),
        ({"config.json": "{"}, "InvalidModelConfig"),
    ],
)
async def test_bad_config_map_fails_planning(
    controller: Controller, fake: FakeKube, data: dict[str, str] | None, reason: str
) -> None:
    if data is not None:
        fake.objects[("ConfigMap", "team-a", "opt")] = {"data": data}
    body = _slmd(
        {"model": {"uri": "pvc://weights/opt", "config": {"configMapRef": {"name": "opt"}}}}
    )
    controller.on_slmd("ADDED", body)

    assert await controller.reconcile(KEY) == "plan_failed"
    assert _conditions(fake.statuses[-1]["status"])["Planned"]["reason"] == reason


async def test_prime_loads_nodes_and_children_before_any_pass(fake: FakeKube) -> None:
    fake.objects[("Node", None, "h100-0")] = h100_node()
    child = {"metadata": {"name": "chat", "namespace": "team-a"}, "spec": {}}
    fake.objects[("Service", "team-a", "chat")] = child
    ctrl = _controller(fake)

    await ctrl.prime()

    assert [o.key for o in ctrl.offers] == ["NVIDIA-H100-80GB-HBM3/none"]
    assert ("Service", "team-a", "chat") in ctrl.store.children
    assert fake.writes() == []


# --- pure helpers -------------------------------------------------------------------------


def test_model_from_spec_sources() -> None:
    by_catalog = SLMDeploymentSpec.model_validate(
        {"model": {"uri": "pvc://w/x", "config": {"catalogName": "qwen2.5-0.5b"}}}
    )
    assert model_from_spec(by_catalog, MODELS, None).name == "qwen2.5-0.5b"
    assert model_from_spec(spec(), MODELS, None).name == "opt-1.3b"  # via the hf:// id

    config = json.loads(
        (REPO_ROOT / "operator/slmpack/catalog/model_configs/opt-125m.json").read_text()
    )
    from_json = model_from_spec(spec(model={"uri": "s3://b/tiny"}), MODELS, config)
    assert from_json.name == "tiny"
    assert from_json.num_layers == config["num_hidden_layers"]


@pytest.mark.parametrize("uri", ["pvc://weights/model", "s3://bucket/model", "hf://nobody/model"])
def test_model_from_spec_without_a_known_architecture(uri: str) -> None:
    with pytest.raises(PlanFailedError) as caught:
        model_from_spec(spec(model={"uri": uri}), MODELS, None)

    assert caught.value.reason == "UnknownModel"
    assert "configMapRef" in caught.value.message


def test_catalog_name_never_reads_the_operators_filesystem(tmp_path: Path) -> None:
    # catalogName and hf:// ids come from any user who may create an SLMDeployment; they must
    # name catalogue entries, never files inside the operator's container.
    config = REPO_ROOT / "operator/slmpack/catalog/model_configs/opt-125m.json"
    planted = tmp_path / "config.json"
    planted.write_text(config.read_text())
    parsed = spec(model={"uri": "pvc://w/x", "config": {"catalogName": str(planted)}})

    with pytest.raises(PlanFailedError) as caught:
        model_from_spec(parsed, MODELS, None)
    assert caught.value.reason == "UnknownModel"


def _ref(**fields: Any) -> dict[str, Any]:
    return {"apiVersion": "slmpack.dev/v1alpha1", "kind": "SLMDeployment", "name": "chat", **fields}


@pytest.mark.parametrize(
    ("refs", "expected"),
    [
        ([_ref()], ("team-a", "chat")),
        (
            [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x"}, _ref()],
            ("team-a", "chat"),
        ),
        ([_ref(apiVersion="other.dev/v1")], None),
        ([_ref(kind="Deployment")], None),
        ([], None),
        (None, None),
    ],
)
def test_owner_key(refs: list[dict[str, Any]] | None, expected: tuple[str, str] | None) -> None:
    body = {"metadata": {"name": "chat", "namespace": "team-a", "ownerReferences": refs}}
    assert owner_key(body) == expected


def test_owned_status_ignores_other_managers_parts_and_condition_order() -> None:
    planned = {"type": "Planned", "status": "True"}
    ready = {"type": "Ready", "status": "False"}
    autotuned = {"type": "Autotuned", "status": "True"}
    ours = {"readyText": "0/2", "conditions": [planned, ready]}
    theirs = {
        "readyText": "0/2",
        "recommendation": {"replicas": 4},
        "conditions": [ready, autotuned, planned],
    }

    assert _owned_status(ours) == _owned_status(theirs)
    assert _owned_status(ours) != _owned_status({**theirs, "readyText": "1/2"})
    assert _owned_status({}) == {"conditions": []}


def test_same_input_looks_at_generation_spec_and_deletion_only() -> None:
    old = _slmd()
    assert _same_input(old, {**old, "status": {"readyText": "1/1"}})
    relabelled = copy.deepcopy(old)
    relabelled["metadata"]["labels"] = {"team": "a"}
    assert _same_input(old, relabelled)

    assert not _same_input(old, _slmd(generation=2))
    assert not _same_input(old, _slmd({"model": {"uri": "hf://x/y"}}))
    deleting = copy.deepcopy(old)
    deleting["metadata"]["deletionTimestamp"] = "2025-03-01T12:00:00Z"
    assert not _same_input(old, deleting)


@pytest.mark.parametrize(
    ("kind", "namespace", "name", "path"),
    [
        ("Deployment", "team-a", "chat", "/apis/apps/v1/namespaces/team-a/deployments/chat"),
        ("Deployment", None, None, "/apis/apps/v1/deployments"),  # every namespace
        ("Service", "team-a", "chat", "/api/v1/namespaces/team-a/services/chat"),
        ("ConfigMap", "team-a", None, "/api/v1/namespaces/team-a/configmaps"),
        ("Node", "ignored", "gpu-1", "/api/v1/nodes/gpu-1"),  # cluster-scoped
        (
            "SLMDeployment",
            "ns",
            "a b",
            "/apis/slmpack.dev/v1alpha1/namespaces/ns/slmdeployments/a%20b",
        ),
        ("Event", "ns", None, "/apis/events.k8s.io/v1/namespaces/ns/events"),
    ],
)
def test_resource_paths(kind: str, namespace: str | None, name: str | None, path: str) -> None:
    assert KINDS[kind].path(namespace, name) == path


def test_condition_gauge_keeps_only_current_conditions() -> None:
    from slmpack.controller.metrics import OperatorMetrics

    metrics = OperatorMetrics()
    metrics.set_conditions("ns", "a", [("Ready", "False", "ReplicasNotReady")])
    metrics.set_conditions("ns", "a", [("Ready", "True", "ReplicasReady")])
    labels = {"namespace": "ns", "name": "a", "type": "Ready"}
    now = metrics.registry.get_sample_value(
        "slmpack_operator_condition", {**labels, "status": "True", "reason": "ReplicasReady"}
    )
    gone = metrics.registry.get_sample_value(
        "slmpack_operator_condition", {**labels, "status": "False", "reason": "ReplicasNotReady"}
    )
    assert (now, gone) == (1.0, None)
    metrics.forget("ns", "a")
    assert (
        metrics.registry.get_sample_value(
            "slmpack_operator_condition", {**labels, "status": "True", "reason": "ReplicasReady"}
        )
        is None
    )
