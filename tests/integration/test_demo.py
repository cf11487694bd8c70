"""`slmpack demo --quick` end to end: its own cluster, runner, operator and Prometheus, the
packing and one replica per GPU under the same load, and the report files.

The simulator's co-location model gives OPT-1.3B on an H100 more throughput per GPU when
packed, so a packing that measures no better than the baseline fails the test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from slmpack.demo.cli import demo_main
from slmpack.devcluster import launcher

pytestmark = pytest.mark.cluster


def test_quick_demo_reports_packing_ahead_of_one_replica_per_gpu(tmp_path: Path) -> None:
    out = tmp_path / "report"
    cluster = f"pytest-demo-{os.getpid()}"
    # Apart from a developer's demo and from test_runner's pools (127.128.0.0/9).
    pool = f"127.{20 + os.getpid() % 100}.0.0/16"
    code = demo_main(["--quick", "--out", str(out), "--cluster", cluster, "--address-pool", pool])
    logs = {p.name: p.read_text()[-3000:] for p in (out / "logs").glob("*.log")}
    assert code == 0, logs
    # Everything the demo started is gone.
    assert not launcher.status(cluster).exists

    for name in ("report.json", "report.md", "throughput_energy.png"):
        assert (out / name).stat().st_size > 0, name
    document = json.loads((out / "report.json").read_text())
    baseline, packed = document["baseline"], document["packed"]
    assert baseline["prediction"]["mode"] == "Exclusive"
    assert packed["prediction"]["mode"] != "Exclusive"
    for result in (baseline, packed):
        measured = result["measurement"]
        assert measured["tokens_per_second_per_gpu"] > 0
        assert measured["loadgen_tokens_per_second_per_gpu"] > 0
        assert measured["power_watts_per_gpu"] > 0
        assert measured["tokens_per_joule"] > 0
        assert measured["gpus_measured"] == 1
        assert measured["engines_measured"] == result["prediction"]["replicas_per_gpu"]
        assert measured["completed"] > 0
    assert (
        packed["measurement"]["tokens_per_second_per_gpu"]
        > baseline["measurement"]["tokens_per_second_per_gpu"]
    )
    assert document["ratios"]["throughput_per_gpu"] > 1.0
