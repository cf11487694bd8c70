"""The command line: schedules from flags, usage errors, and runs that reach no server."""

import json
from pathlib import Path

import pytest

from slmpack.loadgen.arrivals import Phase
from slmpack.loadgen.cli import _parser, build_schedule, load_main


def schedule_of(*argv: str) -> tuple[tuple[Phase, ...], int | None]:
    parser = _parser()
    schedule = build_schedule(parser.parse_args(["--base-url", "http://x", *argv]), parser)
    return schedule.phases, schedule.max_requests


def test_flags_become_schedules() -> None:
    assert schedule_of("--rate", "5", "--duration-s", "60") == ((Phase(60, 5),), None)
    assert schedule_of("--num-requests", "100") == ((Phase(burst=100),), 100)
    assert schedule_of("--rate", "inf", "--num-requests", "7") == ((Phase(burst=7),), 7)
    # A rate with only a request count runs long enough for them, then stops.
    phases, cap = schedule_of("--rate", "10", "--num-requests", "50", "--process", "uniform")
    assert phases == (Phase(20, 10, process="uniform"),)
    assert cap == 50
    assert schedule_of("--phase", "rate=1..3,duration=2", "--phase", "burst=4") == (
        (Phase(2, 1, 3), Phase(burst=4)),
        None,
    )


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--rate", "5"],
        ["--duration-s", "5", "--num-requests", "3"],
        ["--rate", "inf"],
        ["--phase", "rate=2"],
        ["--num-requests", "3", "--input-len", "normal:3"],
        ["--num-requests", "3", "--api", "chat", "--prompt-format", "tokens"],
    ],
)
def test_usage_errors_exit_with_status_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        load_main(["--base-url", "http://127.0.0.1:9", *argv])
    assert exc.value.code == 2


def test_an_unreachable_server_fails_every_request(tmp_path: Path) -> None:
    # Port 9 (discard) has no listener here: the model lookup and every request fail fast.
    url = "http://127.0.0.1:9"
    assert load_main(["--base-url", url, "--num-requests", "2", "--quiet"]) == 1
    out = tmp_path / "run.json"
    argv = ["--base-url", url, "--model", "m", "--num-requests", "3", "--json", str(out)]
    assert load_main([*argv, "--quiet"]) == 1
    results = json.loads(out.read_text())["results"]
    assert results["failed"] == 3
    assert results["errors"] == {"ClientConnectorError": 3}
    assert results["output_tokens_per_s"] == 0
    assert results["ttft_s"]["p50"] is None  # no samples: null, not NaN
