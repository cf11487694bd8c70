"""Merging the engines' /metrics: engine labels, one HELP/TYPE per family, intact series."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from slmpack.launcher.metrics_merge import merge_engine_metrics
from slmpack.launcher.telemetry import LauncherMetrics

SAMPLE = (Path(__file__).parent / "data" / "vllm_metrics_sample.txt").read_text()


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def test_every_sample_gets_its_engine_index_overwriting_vllms_own() -> None:
    merged, errors = merge_engine_metrics({0: SAMPLE, 1: SAMPLE, 2: SAMPLE})

    assert errors == {}
    original = _samples(SAMPLE)
    result = _samples(merged)
    assert len(result) == 3 * len(original)
    assert all("engine" in labels for _, labels, _ in result)
    per_engine = Counter(labels["engine"] for _, labels, _ in result)
    assert per_engine == {"0": len(original), "1": len(original), "2": len(original)}
    running = {
        labels["engine"]: value
        for name, labels, value in result
        if name == "vllm:num_requests_running"
    }
    assert running == {"0": 7.0, "1": 7.0, "2": 7.0}


def test_help_and_type_appear_once_per_family() -> None:
    merged, _ = merge_engine_metrics({0: SAMPLE, 1: SAMPLE})

    help_lines = Counter(
        line.split()[2] for line in merged.splitlines() if line.startswith("# HELP")
    )
    type_lines = Counter(
        line.split()[2] for line in merged.splitlines() if line.startswith("# TYPE")
    )
    assert help_lines == type_lines
    assert set(help_lines.values()) == {1}
    assert help_lines == Counter(
        line.split()[2] for line in SAMPLE.splitlines() if line.startswith("# HELP")
    )


def test_histograms_and_counters_keep_their_series_and_values() -> None:
    merged, _ = merge_engine_metrics({0: SAMPLE, 1: SAMPLE})

    def series(text: str, name: str, engine: str) -> list[str]:
        # The sample lines of one engine, labels minus `engine`, for an exact comparison.
        out = []
        for line in text.splitlines():
            if line.startswith(name) and f'engine="{engine}"' in line:
                out.append(re.sub(r'engine="\d+",?', "", line))
        return out

    for name in (
        "vllm:time_to_first_token_seconds_",
        "vllm:inter_token_latency_seconds_",
        "vllm:e2e_request_latency_seconds_",
        "vllm:iteration_tokens_total_",  # a histogram whose name ends in _total
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:request_success_total",
        "vllm:prompt_tokens_created",
    ):
        original = series(SAMPLE, name, "0")
        assert original, name
        assert series(merged, name, "1") == original, name
    ttft = series(merged, "vllm:time_to_first_token_seconds_bucket", "1")
    assert len(ttft) == 23  # 22 vLLM buckets plus +Inf
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in merged
    assert "# TYPE vllm:prompt_tokens_total counter" in merged
    reasons = {
        labels["finished_reason"]
        for name, labels, _ in _samples(merged)
        if name == "vllm:request_success_total"
    }
    assert reasons == {"stop", "length", "abort"}


def test_unlabelled_process_metrics_gain_the_engine_label() -> None:
    merged, _ = merge_engine_metrics({0: SAMPLE, 1: SAMPLE})

    assert re.search(r'^process_resident_memory_bytes\{engine="1"\} ', merged, re.M)


def test_an_unparsable_engine_is_left_out_and_reported() -> None:
    merged, errors = merge_engine_metrics({0: SAMPLE, 1: "vllm:broken{engine= 1\n"})

    assert list(errors) == [1]
    assert {labels["engine"] for _, labels, _ in _samples(merged)} == {"0"}


def test_launcher_metrics_expose_per_engine_series_from_the_start() -> None:
    metrics = LauncherMetrics(engine_count=2)
    metrics.requests_routed.labels("1").inc()
    text = metrics.exposition()

    assert 'slmpack_launcher_requests_routed_total{engine="0"} 0.0' in text
    assert 'slmpack_launcher_requests_routed_total{engine="1"} 1.0' in text
    assert "slmpack_launcher_engines_configured 2.0" in text
    assert "slmpack_launcher_unavailable_responses_total 0.0" in text
    merged, _ = merge_engine_metrics({0: SAMPLE})
    families = {f.name for f in text_string_to_metric_families(merged + text)}
    assert {"vllm:num_requests_running", "slmpack_launcher_engine_restarts"} <= families
