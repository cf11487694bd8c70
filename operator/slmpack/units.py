"""Parsing of user-facing quantities (durations like "500ms") into base units."""

from __future__ import annotations

import re

from slmpack.errors import InvalidSpecError

MIB = 1024**2
GIB = 1024**3

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s|m)\s*$")
_SECONDS_PER_UNIT = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_duration_s(text: str) -> float:
    """'500ms' -> 0.5. Units: us, ms, s, m. Rejects zero, negatives and bare numbers."""
    match = _DURATION.match(text)
    if not match:
        raise InvalidSpecError(
            f"cannot read duration {text!r}: write a positive number with a unit, "
            "e.g. 500ms, 1.5s or 50ms"
        )
    value = float(match.group(1)) * _SECONDS_PER_UNIT[match.group(2)]
    if value <= 0:
        raise InvalidSpecError(f"duration {text!r} must be greater than zero")
    return value


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds:.2f}s"
