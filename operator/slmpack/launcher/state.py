"""What is known about each engine right now, shared by the supervisor and the router.

The supervisor writes process and health facts; the router counts its open requests and may
mark an engine unreachable early, before the next probe notices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class EngineState:
    index: int
    port: int
    pid: int | None = None
    #: The last /health probe answered 200 and the process has not exited since.
    healthy: bool = False
    restarts: int = 0
    last_exit_code: int | None = None
    in_flight_requests: int = 0

    def mark_unreachable(self) -> None:
        """The router could not get a response; stop routing here until a probe succeeds."""
        self.healthy = False

    def summary(self) -> dict[str, Any]:
        return {
            "engine": self.index,
            "port": self.port,
            "pid": self.pid,
            "healthy": self.healthy,
            "restarts": self.restarts,
            "last_exit_code": self.last_exit_code,
            "in_flight_requests": self.in_flight_requests,
        }
