"""Every PromQL expression the autotuner sends, and every recording rule it ships, parsed by the
pinned Prometheus' own `promtool` (a syntax error would otherwise surface only as an HTTP 400 at
run time, and the autotuner would hold forever with PrometheusRejected).

Needs the pinned Prometheus (`make prometheus`); without it the test fails and says so.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from slmpack.autotune.signals import (
    DeploymentRef,
    raw_queries,
    recorded_queries,
    render_recording_rules,
)
from slmpack.devcluster import prometheus

REF = DeploymentRef("team-a", 'chat"quoted')


def _promtool() -> Path:
    binary = prometheus.pinned_binary()
    tool = binary.with_name("promtool")
    if not tool.is_file():
        pytest.fail(f"promtool is missing at {tool}: run `make prometheus`", pytrace=False)
    return tool


def _check_rules(path: Path) -> None:
    result = subprocess.run(
        [str(_promtool()), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("window_s", [10, 60])
def test_every_query_parses(tmp_path: Path, window_s: int) -> None:
    queries = [*raw_queries(REF, window_s), *recorded_queries(REF, window_s)]
    rules = [
        {"record": f"slmpack:check_{index}", "expr": query.promql}
        for index, query in enumerate(queries)
    ]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))

    _check_rules(path)


def test_the_shipped_recording_rules_parse(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(render_recording_rules())

    _check_rules(path)


def test_promtool_rejects_a_bad_query(tmp_path: Path) -> None:
    bad = "sum(a * on (UUID) group_left (max by (UUID) (b)))"  # the mistake the others guard
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "bad", "rules": [{"record": "x:y", "expr": bad}]}]})
    )

    with pytest.raises(AssertionError, match="group"):
        _check_rules(path)
