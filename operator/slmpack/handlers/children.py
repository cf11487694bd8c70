"""Watches of the objects SLMDeployments own, so drift and rollout progress queue the owner."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kopf

from slmpack.controller.reconciler import Controller
from slmpack.render.workload import MANAGED_BY

_OWNED = {"app.kubernetes.io/managed-by": MANAGED_BY}
#: (group, version, plural, kind) of every kind the controller renders.
CHILD_KINDS = (
    ("apps", "v1", "deployments", "Deployment"),
    ("", "v1", "services", "Service"),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
)


def register(registry: kopf.OperatorRegistry, controller: Callable[[], Controller]) -> None:
    for group, version, plural, kind in CHILD_KINDS:

        async def child_event(
            type: str | None, body: kopf.Body, _kind: str = kind, **_: Any
        ) -> None:
            controller().on_child(_kind, type, body)

        resource = f"{plural}.{version}.{group}" if group else f"{plural}.{version}"
        kopf.on.event(resource, labels=_OWNED, registry=registry, id=f"{kind.lower()}-event")(
            child_event
        )

    # Pods of the Deployments: the scheduler's and kubelet's reasons for faults (no free GPU,
    # a crash loop) show up only here.
    @kopf.on.event("", "v1", "pods", labels=_OWNED, registry=registry)
    async def pod_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        controller().on_pod(type, body)
