"""Which engine gets the next request: pure, so the choice can be tested without sockets."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class EngineLoad:
    """One engine as the router sees it at the moment of choosing."""

    index: int
    healthy: bool
    in_flight_requests: int


def choose_engine(
    engines: Sequence[EngineLoad], excluded: Collection[int], last_chosen: int
) -> int | None:
    """The healthy, not excluded engine with the fewest requests in flight.

    Ties go to the first such engine after `last_chosen` in index order (wrapping), so equally
    loaded engines take turns instead of engine 0 getting every request of a quiet period.
    None when no engine qualifies.
    """
    candidates = [e for e in engines if e.healthy and e.index not in excluded]
    if not candidates:
        return None
    fewest = min(e.in_flight_requests for e in candidates)
    tied = sorted(e.index for e in candidates if e.in_flight_requests == fewest)
    return next((i for i in tied if i > last_chosen), tied[0])
