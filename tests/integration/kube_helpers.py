"""Small polling helpers for tests against a live cluster."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes.client.exceptions import ApiException

T = TypeVar("T")

POLL_INTERVAL_SECONDS = 0.1


def wait_for(probe: Callable[[], T | None], what: str, timeout_seconds: float = 20.0) -> T:
    """Call `probe` until it returns something other than None/False; fail after the timeout."""
    deadline = time.monotonic() + timeout_seconds
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last is not None and last is not False:
            return last
        time.sleep(POLL_INTERVAL_SECONDS)
    raise AssertionError(f"Timed out after {timeout_seconds:g} s waiting for {what}")


#: The controller-manager creates a namespace's default ServiceAccount within a second when
#: idle; on a busy 2-core machine it has taken over 20 s.
DEFAULT_SERVICE_ACCOUNT_TIMEOUT_SECONDS = 90.0


def wait_for_default_service_account(core: Any, namespace: str) -> None:
    """Block until `namespace` has its default ServiceAccount: the ServiceAccount admission
    plugin rejects pods until the controller-manager has created it."""

    def exists() -> bool:
        try:
            core.read_namespaced_service_account("default", namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    wait_for(
        exists,
        f"ServiceAccount default in {namespace}",
        timeout_seconds=DEFAULT_SERVICE_ACCOUNT_TIMEOUT_SECONDS,
    )
