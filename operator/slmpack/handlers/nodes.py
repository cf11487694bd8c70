"""Watch of Nodes: GPU offers come from their labels and allocatable resources."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kopf

from slmpack.controller.reconciler import Controller


def register(registry: kopf.OperatorRegistry, controller: Callable[[], Controller]) -> None:
    @kopf.on.event("", "v1", "nodes", registry=registry)
    async def node_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        controller().on_node(type, body)
