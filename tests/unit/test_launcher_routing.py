"""The router's pure decisions: which engine, and how long to wait before a restart."""

from __future__ import annotations

import pytest

from slmpack.launcher.router import forwardable
from slmpack.launcher.routing import EngineLoad, choose_engine
from slmpack.launcher.supervisor import restart_delay_seconds


def loads(*in_flight: int | None) -> list[EngineLoad]:
    """One engine per argument; None means unhealthy."""
    return [EngineLoad(i, n is not None, n or 0) for i, n in enumerate(in_flight)]


def test_picks_the_engine_with_fewest_requests_in_flight() -> None:
    assert choose_engine(loads(3, 1, 2), excluded=(), last_chosen=1) == 1


def test_ties_take_turns_after_the_last_choice_and_wrap() -> None:
    engines = loads(0, 0, 0)

    assert choose_engine(engines, (), last_chosen=-1) == 0
    assert choose_engine(engines, (), last_chosen=0) == 1
    assert choose_engine(engines, (), last_chosen=2) == 0
    assert choose_engine(loads(1, 0, 5, 0), (), last_chosen=1) == 3
    assert choose_engine(loads(1, 0, 5, 0), (), last_chosen=3) == 1


def test_skips_unhealthy_and_already_tried_engines() -> None:
    assert choose_engine(loads(None, 4, 9), excluded=(), last_chosen=0) == 1
    assert choose_engine(loads(None, 4, 9), excluded={1}, last_chosen=0) == 2
    assert choose_engine(loads(None, 4, 9), excluded={1, 2}, last_chosen=0) is None
    assert choose_engine(loads(None, None), excluded=(), last_chosen=0) is None
    assert choose_engine([], excluded=(), last_chosen=-1) is None


def test_a_simulated_burst_spreads_evenly() -> None:
    in_flight = [0, 0, 0]
    last = -1
    for _ in range(9):
        chosen = choose_engine(loads(*in_flight), (), last)
        assert chosen is not None
        in_flight[chosen] += 1
        last = chosen

    assert in_flight == [3, 3, 3]


@pytest.mark.parametrize(
    ("failures", "expected_seconds"),
    [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (60, 30.0)],
)
def test_restart_backoff_doubles_up_to_the_cap(failures: int, expected_seconds: float) -> None:
    assert restart_delay_seconds(failures, 1.0, 30.0) == expected_seconds


def test_hop_by_hop_headers_are_not_forwarded() -> None:
    headers = {
        "Authorization": "Bearer x",
        "Connection": "keep-alive",
        "Transfer-Encoding": "chunked",
        "Host": "pod:8000",
        "Content-Length": "12",
        "X-Request-Id": "abc",
    }

    assert dict(forwardable(headers)) == {"Authorization": "Bearer x", "X-Request-Id": "abc"}
