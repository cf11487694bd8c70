"""Watch of SLMDeployments: every version seen goes to the controller's cache and queue."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kopf

from slmpack.api.v1alpha1 import GROUP, PLURAL, VERSION
from slmpack.controller.reconciler import Controller


def register(registry: kopf.OperatorRegistry, controller: Callable[[], Controller]) -> None:
    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def slmdeployment_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        controller().on_slmd(type, body)
