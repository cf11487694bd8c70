"""Small polling helpers for tests against a live cluster."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

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
