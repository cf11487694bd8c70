"""The demo's pure pieces: window rates, manifests, the report and its plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmpack.demo import manifests, measure
from slmpack.demo.plot import write_plot
from slmpack.demo.report import (
    DemoReport,
    DeploymentResult,
    LoadSettings,
    Measurement,
    Prediction,
    rows,
    to_markdown,
)


def test_counter_rate_uses_sample_timestamps_and_sums_series() -> None:
    matrix = [
        {"values": [[100.0, "10"], [101.0, "30"], [104.0, "70"]]},  # 60 over 4 s
        {"values": [[100.5, "5"], [102.5, "25"]]},  # 20 over 2 s
        {"values": [[103.0, "1"]]},  # one sample: no rate
    ]
    rate = measure.counter_rate(matrix)
    assert rate.per_wall_second == pytest.approx(15 + 10)
    assert rate.series == 2


def test_counter_rate_counts_a_reset_from_zero() -> None:
    rate = measure.counter_rate([{"values": [[0, "90"], [1, "100"], [2, "5"]]}])
    assert rate.per_wall_second == pytest.approx((10 + 5) / 2)


def test_range_query_ends_at_the_window() -> None:
    query = measure.range_query("m", 'a="b"', 12.4, 1000.5)
    assert query == 'm{a="b"}[12s] @ 1000.500'


def test_deployments_differ_only_in_sharing_and_replicas() -> None:
    workload = manifests.Workload()
    base = manifests.slm_deployment("a", "hf://facebook/opt-1.3b", "Exclusive", workload, 2)
    packed = manifests.slm_deployment("b", "hf://facebook/opt-1.3b", "Auto", workload)
    assert base["spec"]["gpu"]["sharing"] == "Exclusive"
    assert base["spec"]["replicas"] == 2
    assert "replicas" not in packed["spec"]
    assert base["spec"]["workload"] == packed["spec"]["workload"]
    assert workload.output_len == "uniform:16:48"
    fleet = manifests.demo_fleet(2, 1)
    assert [pool.kubelet for pool in fleet.pools] == ["runner"]


def _report() -> DemoReport:
    def result(name: str, mode: str, per_gpu: int, tps: float, watts: float) -> DeploymentResult:
        return DeploymentResult(
            name,
            name,
            Prediction(mode, per_gpu, 2, tps * 1.1, tps * 1.1 / watts, watts),
            Measurement(tps, tps * 0.9, watts, 2, 2 * per_gpu, 100, 90, 10, 0.02),
        )

    load = LoadSettings("facebook/opt-1.3b", "H100", "sim", 0.05, 500, 3, 1.8, 111, 32, 0)
    return DemoReport(
        load,
        result("one-per-gpu", "Exclusive", 1, 10_000, 250),
        result("packed", "Packed", 4, 20_000, 400),
        wall_seconds=123,
    )


def test_report_ratios_and_files(tmp_path: Path) -> None:
    report = _report()
    assert report.throughput_ratio == pytest.approx(2.0)
    assert report.tokens_per_joule_ratio == pytest.approx(50 / 40)
    assert report.predicted_throughput_ratio == pytest.approx(2.0)
    document = json.loads(json.dumps(report.to_dict()))
    assert document["packed"]["measurement"]["tokens_per_joule"] == pytest.approx(50)
    assert all(len(row) == 6 for row in rows(report))
    markdown = to_markdown(report, "plot.png")
    assert "x2.00 measured" in markdown
    assert "![throughput and energy](plot.png)" in markdown
    path = tmp_path / "plot.png"
    write_plot(report, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_zero_power_gives_zero_tokens_per_joule() -> None:
    assert Measurement(1.0, 1.0, 0.0, 0, 1, 1, 1, 0, 0.0).tokens_per_joule == 0.0
