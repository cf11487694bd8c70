"""The demo's pure pieces: window rates, manifests, the report and its plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmpack.demo import manifests, measure
from slmpack.demo.plot import write_plot
from slmpack.demo.prediction import deployed_packing
from slmpack.demo.report import (
    DemoReport,
    DeploymentResult,
    LoadSettings,
    Measurement,
    Prediction,
    rows,
    to_markdown,
)
from slmpack.planner.perf import default_perf_params

PARAMS = default_perf_params()


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
    assert workload.for_planner().mean_output_tokens == workload.mean_output_tokens
    fleet = manifests.demo_fleet(2, 1)
    assert [pool.kubelet for pool in fleet.pools] == ["runner"]


def _report() -> DemoReport:
    def result(
        name: str, mode: str, per_gpu: int, gpus: int, tps: float, watts: float
    ) -> DeploymentResult:
        return DeploymentResult(
            name,
            name,
            Prediction(
                mode, per_gpu, gpus, tps * 1.25, tps * 1.1, 0.8, watts, tps * 1.1 / watts, 0.03
            ),
            Measurement(
                tps, tps, tps * 0.9, watts, gpus, gpus * per_gpu, 100, 99, 1, 0.02, 0.5, 0.4, 0.01
            ),
        )

    load = LoadSettings(
        "facebook/opt-1.3b", "H100", "sim", 0.2, 20_000, 0.8, 625, 15, 11.25, 111, 32, 0
    )
    return DemoReport(
        load,
        result("one-per-gpu", "Exclusive", 1, 2, 10_000, 250),
        result("packed", "Packed", 4, 1, 20_000, 400),
        wall_seconds=123,
    )


def test_report_ratios_and_files(tmp_path: Path) -> None:
    report = _report()
    assert report.throughput_ratio == pytest.approx(2.0)
    assert report.tokens_per_joule_ratio == pytest.approx(50 / 40)
    assert report.predicted_throughput_ratio == pytest.approx(2.0)
    assert report.packed.throughput_error_ratio == pytest.approx(1 / 1.1 - 1)
    document = json.loads(json.dumps(report.to_dict()))
    assert document["packed"]["measurement"]["tokens_per_joule"] == pytest.approx(50)
    assert document["packed"]["measurement"]["completed_ratio"] == pytest.approx(0.99)
    assert document["baseline"]["measured_vs_predicted"]["power"] == pytest.approx(0.0)
    assert all(len(row) == 6 for row in rows(report))
    markdown = to_markdown(report, "plot.png")
    assert "x2.00 measured" in markdown
    assert "![throughput and energy](plot.png)" in markdown
    path = tmp_path / "plot.png"
    write_plot(report, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_zero_power_gives_zero_tokens_per_joule() -> None:
    assert (
        Measurement(1.0, 1.0, 1.0, 0.0, 0, 1, 1, 1, 0, 0.0, 0.0, 0.0, 0.0).tokens_per_joule == 0.0
    )


def test_host_cpu_busy_ratio_from_proc_stat() -> None:
    before = measure.cpu_times("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8\n")
    after = measure.cpu_times("cpu  250 0 100 1000 50 0 0 0 0 0\n")
    assert (before.busy, before.total) == (150, 1000)
    stat = "1234 (python -m x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0"
    assert measure.process_cpu_ticks(stat) == 300
    assert measure.host_cpu_busy_ratio(before, after) == pytest.approx(200 / 400)


def test_sent_load_counts_actual_sends_in_the_window() -> None:
    # (planned, sent, output tokens): the third was planned before the window, sent inside it.
    sends = [(0.0, 0.0, 10), (1.0, 1.5, 20), (1.8, 2.1, 30), (2.5, 2.5, 40), (4.0, 4.0, 50)]
    sent = measure.sent_load(sends, 2.0, 4.0)
    assert (sent.requests, sent.output_tokens) == (2, 70)
    assert sent.lag_p99_s == pytest.approx(0.5)


def test_prediction_prices_the_deployed_flags() -> None:
    workload = manifests.Workload().for_planner()
    plan = {
        "product": manifests.H100,
        "mode": "Packed",
        "replicasPerGPU": 6,
        "vllmArgs": [
            "--max-num-seqs", "256", "--max-model-len", "2048",
            "--max-num-batched-tokens", "2048", "--gpu-memory-utilization", "0.1500",
            "--kv-cache-memory-bytes", "9000000000", "--dtype", "bfloat16",
        ],
    }  # fmt: skip
    packing = deployed_packing(plan, "facebook/opt-1.3b", workload)
    assert packing.engine.max_num_seqs == 256
    assert packing.engine.weight_dtype == "bf16"
    assert packing.shape.engines_per_device == 6
    capacity = packing.capacity_tokens_per_s(PARAMS)
    loaded = packing.at_load(0.75 * capacity, PARAMS)
    assert loaded.load_ratio == pytest.approx(0.75)
    assert loaded.batch_per_replica < packing.engine.max_num_seqs
    assert 0 < loaded.power_watts <= 700
