"""kopf handlers: thin adapters from watch events to the controller's work queue.

They only record the object and queue its SLMDeployment; all decisions happen in
`slmpack.controller.reconciler`. Event handlers (rather than kopf's create/update handlers)
keep kopf from writing its own bookkeeping into the objects, so a converged cluster sees no
writes at all. They are coroutines so that they run on the event loop with the controller,
never in kopf's thread pool.
"""

from __future__ import annotations

from collections.abc import Callable

import kopf

from slmpack.controller.reconciler import Controller
from slmpack.handlers import children, nodes, slmdeployments

ControllerRef = Callable[[], Controller]


def build_registry(controller: ControllerRef) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    slmdeployments.register(registry, controller)
    children.register(registry, controller)
    nodes.register(registry, controller)
    return registry
