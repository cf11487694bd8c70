"""Metric names and their rendering: vLLM's /metrics families and dcgm-exporter's text."""

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from slmpack import metricnames as mn
from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.planner.memory import GPU_RESERVED_BYTES
from slmpack.planner.perf import default_perf_params, power_watts
from slmpack.sim.engine_metrics import EngineMetrics
from slmpack.sim.gpu_readings import (
    EnergyCounter,
    GpuIdentity,
    PodAttribution,
    read_gpu,
    render,
)
from slmpack.sim.registry import Activity, EngineRecord
from slmpack.sim.scheduler import Scheduler, SimRequest
from slmpack.units import GIB, MIB

H100 = default_gpu_catalog().get("NVIDIA-H100-80GB-HBM3")
PARAMS = default_perf_params()


def test_request_token_buckets_are_vllms_1_2_5_series() -> None:
    assert mn.request_tokens_buckets(2048) == (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
    assert mn.request_tokens_buckets(1) == (1,)


def test_series_names_follow_the_exporters_suffixes() -> None:
    assert mn.GENERATION_TOKENS.series == "vllm:generation_tokens_total"
    assert mn.ITERATION_TOKENS.series == "vllm:iteration_tokens_total"
    assert mn.TIME_TO_FIRST_TOKEN.bucket_series == "vllm:time_to_first_token_seconds_bucket"
    assert mn.DCGM_TOTAL_ENERGY_CONSUMPTION.series == "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
    with pytest.raises(ValueError, match="not a histogram"):
        _ = mn.KV_CACHE_USAGE_PERC.bucket_series


def _engine_metrics() -> tuple[EngineMetrics, Scheduler]:
    metrics = EngineMetrics("tiny", 2048, {"block_size": "16", "num_gpu_blocks": "100"})
    scheduler = Scheduler(4, 512, 100)
    metrics.bind_scheduler_state(
        lambda: len(scheduler.running),
        lambda: len(scheduler.waiting),
        lambda: scheduler.kv_usage_ratio,
    )
    return metrics, scheduler


def test_engine_metrics_render_every_vllm_family_with_its_type_and_labels() -> None:
    metrics, scheduler = _engine_metrics()
    request = SimRequest("r", 20, 2, 0.0)
    scheduler.add(request)
    metrics.record_arrival(request)
    for step in range(2):
        batch = scheduler.schedule(float(step))
        metrics.record_step(batch, scheduler.complete(batch, step + 0.5), float(step))
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    for spec in mn.VLLM_DEFAULT_METRICS:
        family = families[spec.name]
        assert family.type == spec.kind.value, spec.name
        sample = family.samples[0]
        assert set(spec.labels) <= set(sample.labels), spec.name
        if spec.kind is not mn.MetricKind.HISTOGRAM:
            continue
        assert spec.buckets is not None
        bounds = sorted(float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket"))
        expected = [*mn.vllm_buckets(spec.buckets, 2048), float("inf")]
        assert bounds == [float(b) for b in expected], spec.name
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    labels = (("engine", "0"), ("model_name", "tiny"))
    assert values[("vllm:generation_tokens_total", labels)] == 2
    assert values[("vllm:prompt_tokens_total", labels)] == 20
    length = (("engine", "0"), ("finished_reason", "length"), ("model_name", "tiny"))
    assert values[("vllm:request_success_total", length)] == 1
    assert values[("vllm:time_to_first_token_seconds_count", labels)] == 1
    assert values[("vllm:inter_token_latency_seconds_count", labels)] == 1
    assert values[("vllm:e2e_request_latency_seconds_sum", labels)] == pytest.approx(1.5)


def test_scheduler_gauges_are_read_at_scrape_time() -> None:
    metrics, scheduler = _engine_metrics()
    for i in range(6):
        scheduler.add(SimRequest(f"r{i}", 40, 5, 0.0))
    scheduler.schedule(0.0)
    text = metrics.render().decode()
    assert 'vllm:num_requests_running{engine="0",model_name="tiny"} 4.0' in text
    assert 'vllm:num_requests_waiting{engine="0",model_name="tiny"} 2.0' in text
    assert 'vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.12' in text


def engine_record(
    engine_id: str, *, busy: float, dram: float, reserved: int, pod: str = "", started: float = 0
) -> EngineRecord:
    return EngineRecord(
        engine_id=engine_id,
        pid=1,
        host="h",
        port=0,
        served_model_name="m",
        model="opt-1.3b",
        mode="TimeSlicing",
        reserved_bytes=reserved,
        pod=pod,
        namespace="ns",
        container="vllm",
        started_unix=started,
        updated_unix=time.time(),
        activity=Activity(duty_ratio=busy, busy_ratio=busy, dram_bytes_per_s=dram),
    )


def test_an_empty_gpu_reads_idle() -> None:
    reading = read_gpu(H100, [], PARAMS, time.time())
    assert reading.power_watts == H100.idle_watts
    assert reading.gpu.busy_ratio == 0.0
    assert reading.gpu.fb_used_mib == 0
    assert reading.gpu.fb_free_mib == (H100.memory_bytes - GPU_RESERVED_BYTES) // MIB


def test_busy_engines_combine_like_the_planner_and_raise_power() -> None:
    records = [
        engine_record("a", busy=0.5, dram=1e12, reserved=30 * GIB),
        engine_record("b", busy=0.5, dram=0.5e12, reserved=20 * GIB),
    ]
    reading = read_gpu(H100, records, PARAMS, time.time())
    dram = 1.5e12 / H100.memory_bandwidth_bytes_per_s
    assert reading.gpu.busy_ratio == pytest.approx(0.75)
    assert reading.gpu.dram_active_ratio == pytest.approx(dram)
    assert reading.power_watts == pytest.approx(power_watts(H100, dram, 0.75, PARAMS))
    assert reading.power_watts > H100.idle_watts
    assert reading.gpu.fb_used_mib == 50 * 1024


def test_stale_activity_counts_as_idle() -> None:
    old = engine_record("a", busy=0.9, dram=1e12, reserved=GIB)
    old = EngineRecord(**{**old.__dict__, "updated_unix": time.time() - 60})
    assert read_gpu(H100, [old], PARAMS, time.time()).power_watts == H100.idle_watts


def test_energy_integrates_power_over_time() -> None:
    energy = EnergyCounter(start_s=0.0, watts=100.0)
    energy.advance(2.0, 300.0)  # 100 W held for 2 s
    energy.advance(3.0, 300.0)  # 300 W for 1 s
    assert energy.millijoules == 500_000


def _parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def test_dcgm_text_carries_dcgm_exporters_names_types_and_labels() -> None:
    records = [
        engine_record("a", busy=0.5, dram=1e12, reserved=30 * GIB, pod="p1", started=1),
        engine_record("b", busy=0.5, dram=1e12, reserved=30 * GIB, pod="p2", started=2),
    ]
    reading = read_gpu(H100, records, PARAMS, time.time())
    identity = GpuIdentity.simulated(H100, "node-a", 0)
    text = render([(identity, reading, 123_456)], PodAttribution.FIRST)
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter" in text
    assert "# TYPE DCGM_FI_DEV_POWER_USAGE gauge" in text
    samples = _parse(text)
    for spec in (
        mn.DCGM_POWER_USAGE,
        mn.DCGM_GPU_UTIL,
        mn.DCGM_SM_ACTIVE,
        mn.DCGM_DRAM_ACTIVE,
        mn.DCGM_GR_ENGINE_ACTIVE,
        mn.DCGM_FB_USED,
        mn.DCGM_FB_FREE,
    ):
        [(labels, _)] = samples[spec.name]
        assert labels["gpu"] == "0"
        assert labels["UUID"].startswith("GPU-")
        assert labels["device"] == "nvidia0"
        assert labels["modelName"] == "NVIDIA H100 80GB HBM3"
        assert labels["Hostname"] == "node-a"
        assert (labels["pod"], labels["namespace"], labels["container"]) == ("p1", "ns", "vllm")
    # The text parser appends _total to a bare counter name; the exposition itself has none.
    [(_, energy)] = samples["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total"]
    assert energy == 123_456
    assert samples["DCGM_FI_DEV_GPU_UTIL"][0][1] == 75
    assert samples["DCGM_FI_DEV_FB_USED"][0][1] == 60 * 1024


def test_pod_attribution_modes() -> None:
    records = [
        engine_record("a", busy=0.5, dram=0, reserved=GIB, pod="p1", started=1),
        engine_record("b", busy=0.5, dram=0, reserved=GIB, pod="p2", started=2),
    ]
    reading = read_gpu(H100, records, PARAMS, time.time())
    identity = GpuIdentity.simulated(H100, "node-a", 0)

    def power_series(mode: PodAttribution) -> list[dict[str, str]]:
        text = render([(identity, reading, 0)], mode)
        return [labels for labels, _ in _parse(text)["DCGM_FI_DEV_POWER_USAGE"]]

    assert [s["pod"] for s in power_series(PodAttribution.FIRST)] == ["p1"]
    per_pod = power_series(PodAttribution.PER_POD)
    assert [(s["pod"], s["vgpu"]) for s in per_pod] == [("p1", "0"), ("p2", "1")]
    assert all("pod" not in s for s in power_series(PodAttribution.NONE))


def test_mig_instances_get_their_own_series_and_no_gpu_util() -> None:
    records = [
        EngineRecord(
            **{
                **engine_record("a", busy=0.6, dram=0, reserved=5 * GIB, pod="p1").__dict__,
                "mode": "MIG",
                "mig_profile": "1g.10gb",
                "mig_instance": 0,
            }
        )
    ]
    reading = read_gpu(H100, records, PARAMS, time.time())
    assert reading.gpu.busy_ratio == pytest.approx(0.6 / 7)
    text = render([(GpuIdentity.simulated(H100, "n", 0), reading, 0)], PodAttribution.FIRST)
    samples = _parse(text)
    assert "DCGM_FI_DEV_GPU_UTIL" not in samples
    instance = [
        labels for labels, _ in samples["DCGM_FI_PROF_GR_ENGINE_ACTIVE"] if "GPU_I_ID" in labels
    ]
    assert instance == [instance[0]]
    assert (instance[0]["GPU_I_ID"], instance[0]["GPU_I_PROFILE"]) == ("0", "1g.10gb")
