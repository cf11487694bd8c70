"""contains(): does the cluster's copy already hold every field we would apply?"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog
from slmpack.controller.decide import decide
from slmpack.controller.drift import contains
from slmpack.controller.inventory import cluster_offers
from slmpack.render.workload import Owner, RenderDefaults, deployment

from .controller_fixtures import h100_node, spec


@pytest.mark.parametrize(
    ("have", "want"),
    [
        ({"a": 1, "b": {"c": "x", "d": 2}}, {"b": {"c": "x"}}),  # fields we do not own ignored
        ({"replicas": "8"}, {"replicas": 8}),  # int-or-string comes back as a string
        ({"replicas": 8}, {"replicas": "8"}),
        ({"cpu": "500m"}, {"cpu": "0.5"}),  # quantities come back canonical
        ({"cpu": "1"}, {"cpu": "1000m"}),
        ({"cpu": "2"}, {"cpu": 2}),
        ({"memory": "1536Mi"}, {"memory": "1.5Gi"}),
        ({"memory": "1G"}, {"memory": "1e9"}),
        ({"x": None}, {"x": None}),
        ({"flag": True}, {"flag": True}),
        ({"items": [{"n": 1, "extra": 0}, {"n": 2}]}, {"items": [{"n": 1}, {"n": 2}]}),
        ({"items": []}, {"items": []}),
        ({}, {}),
    ],
)
def test_contains(have: Any, want: Any) -> None:
    assert contains(have, want)


@pytest.mark.parametrize(
    ("have", "want"),
    [
        ({"a": 1}, {"a": 1, "b": 2}),  # a field of ours is missing
        ({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}),
        ({"a": None}, {"a": {"b": 1}}),
        ({"a": [1, 2]}, {"a": {"b": 1}}),
        ({"a": {"b": 1}}, {"a": [1]}),
        ({"a": [1, 2, 3]}, {"a": [1, 2]}),  # lists are atomic: extra items are drift
        ({"a": [1]}, {"a": [1, 2]}),
        ({"a": [2, 1]}, {"a": [1, 2]}),  # and ordered
        ({"replicas": "3"}, {"replicas": 2}),
        ({"cpu": "500m"}, {"cpu": "0.6"}),
        ({"memory": "1Gi"}, {"memory": "1G"}),  # binary and decimal suffixes differ
        ({"flag": 1}, {"flag": True}),  # True == 1 in Python, not in JSON
        ({"flag": True}, {"flag": 1}),
        ({"flag": 0}, {"flag": False}),
        ({"flag": "true"}, {"flag": True}),
        ({"name": "vllm"}, {"name": "vllm2"}),
        ({"x": 1}, {"x": None}),
    ],
)
def test_does_not_contain(have: Any, want: Any) -> None:
    assert not contains(have, want)


def _rendered() -> dict[str, Any]:
    parsed = spec(
        gpu={"sharing": "Packed", "replicasPerGPU": 2},
        engine={"resources": {"requests": {"cpu": "1.5", "memory": "8Gi"}}},
    )
    decision = decide(
        parsed,
        default_model_catalog().get("opt-1.3b"),
        cluster_offers([h100_node()]),
        default_gpu_catalog(),
    )
    return deployment(Owner("chat", "ns", "uid"), parsed, decision, RenderDefaults("v", "l"))


def _as_stored(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the apiserver hands back: defaults and metadata added, quantities canonical."""
    stored = copy.deepcopy(manifest)
    stored["metadata"].update(uid="d-uid", resourceVersion="42", generation=1)
    stored["spec"]["template"]["spec"].update(restartPolicy="Always", dnsPolicy="ClusterFirst")
    container = stored["spec"]["template"]["spec"]["containers"][0]
    container["terminationMessagePath"] = "/dev/termination-log"
    for group in ("requests", "limits"):
        resources = container["resources"][group]
        resources.update({k: str(v) for k, v in resources.items()})
    stored["status"] = {"replicas": 1, "readyReplicas": 0}
    return stored


def test_rendered_deployment_is_contained_in_its_stored_copy() -> None:
    manifest = _rendered()
    requests = manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    # 2 engines per pod: 1.5 cpu x 2 = 3, 8Gi x 2 = 16Gi.
    assert requests == {"cpu": 3, "memory": "16Gi"}

    assert contains(_as_stored(manifest), manifest)


def test_another_managers_change_to_our_field_is_drift() -> None:
    manifest = _rendered()
    stored = _as_stored(manifest)
    stored["spec"]["replicas"] = 4
    assert not contains(stored, manifest)

    stored = _as_stored(manifest)
    stored["spec"]["template"]["spec"]["containers"][0]["env"][-1]["value"] = "{}"
    assert not contains(stored, manifest)
