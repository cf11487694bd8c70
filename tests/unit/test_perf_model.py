"""The performance model's formulas on hand-computed cases."""

import math
import random
from dataclasses import replace
from statistics import NormalDist

import pytest

from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import decode_flops_per_token, default_model_catalog, weight_bytes
from slmpack.planner.perf import (
    _BATCH_CELLS,
    Device,
    EngineStep,
    PackingShape,
    PerfParams,
    _operating_cycle,
    _speedup,
    _step_terms,
    _StepCosts,
    colocated_cycle,
    default_perf_params,
    engine_step,
    erlang_c_wait_probability,
    p99_step_prefill_tokens,
    power_watts,
    predict,
    price_step,
    queue_wait_quantile_s,
    saturated_batch,
)
from slmpack.planner.types import EngineSettings, SharingMode, Workload

PARAMS = default_perf_params()
H100 = default_gpu_catalog().get("NVIDIA-H100-80GB-HBM3")
OPT = default_model_catalog().get("opt-1.3b")
WORKLOAD = Workload(mean_input_tokens=100, mean_output_tokens=200)
ENGINE = EngineSettings(max_num_seqs=64)
DEVICE = Device.whole(H100)


def test_engine_step_roofline_by_hand() -> None:
    step = engine_step(OPT, ENGINE, WORKLOAD, DEVICE, PARAMS, running_seqs=64)
    kv_per_seq = 200 * 2 * 24 * 2048 * 2  # mean context 100 + 200/2 tokens
    weights = weight_bytes(OPT, "bf16")
    assert step.bytes_moved == weights + 64 * kv_per_seq
    memory_s = (
        weights / PARAMS.bandwidth_efficiency
        + 64 * kv_per_seq / PARAMS.attention_bandwidth_efficiency
    ) / H100.memory_bandwidth_bytes_per_s
    prefill = 64 * 100 / 200
    flops = 64 * decode_flops_per_token(OPT, 200) + prefill * decode_flops_per_token(OPT, 50)
    compute_s = flops / (PARAMS.compute_efficiency * H100.bf16_dense_flops)
    assert step.prefill_tokens == prefill
    assert step.flops == pytest.approx(flops)
    assert step.gpu_s == pytest.approx(max(memory_s, compute_s) + PARAMS.gpu_step_overhead_s)
    cpu = (
        PARAMS.cpu_step_base_s
        + PARAMS.cpu_per_seq_s * 64
        + PARAMS.cpu_per_prefill_token_s * prefill
    )
    assert step.cpu_s == pytest.approx(cpu)


def _step(cpu_s: float, gpu_s: float, util: float = 0.5) -> EngineStep:
    bandwidth = DEVICE.bandwidth_bytes_per_s
    return EngineStep(64, 0, util * gpu_s * bandwidth, 0.0, gpu_s, cpu_s)


def test_price_step_by_hand_on_both_sides_of_the_roofline() -> None:
    device = Device(bandwidth_bytes_per_s=1e12, flops_per_s=1e15, memory_bytes=0)
    params = replace(
        PARAMS,
        bandwidth_efficiency=0.5,
        attention_bandwidth_efficiency=0.25,
        compute_efficiency=0.5,
        gpu_step_overhead_s=1e-3,
        cpu_step_base_s=2e-3,
        cpu_per_seq_s=1e-5,
        cpu_per_prefill_token_s=1e-6,
    )
    # Memory-bound: 1 GB of weights at half of 1 TB/s, 0.5 GB of KV at a quarter: 4 ms.
    memory = price_step(device, params, 1e9, 5e8, 1e12, 10.0, 100.0)
    assert memory.gpu_s == pytest.approx(4e-3 + 1e-3)
    assert memory.cpu_s == pytest.approx(2e-3 + 10 * 1e-5 + 100 * 1e-6)
    assert (memory.running_seqs, memory.prefill_tokens) == (10.0, 100.0)
    assert (memory.bytes_moved, memory.flops) == (1.5e9, 1e12)
    # Compute-bound: 5e12 FLOPs at half of 1 PFLOP/s take 10 ms, more than the 4 ms of reads.
    compute = price_step(device, params, 1e9, 5e8, 5e12, 10.0, 100.0)
    assert compute.gpu_s == pytest.approx(10e-3 + 1e-3)
    assert compute.cpu_s == memory.cpu_s


def test_engine_step_is_price_step_on_the_steady_state_batch() -> None:
    step = engine_step(OPT, ENGINE, WORKLOAD, DEVICE, PARAMS, running_seqs=48)
    weights = weight_bytes(OPT, "bf16")
    priced = price_step(
        DEVICE, PARAMS, weights, step.bytes_moved - weights, step.flops, 48, step.prefill_tokens
    )
    assert priced == step


def test_one_engine_cycle_is_cpu_plus_gpu() -> None:
    cycle = colocated_cycle(_step(0.010, 0.020), 1, SharingMode.EXCLUSIVE, DEVICE, PARAMS)
    assert cycle.cycle_s == pytest.approx(0.030)
    assert cycle.contenders == 1.0


def test_time_slicing_without_cpu_gaps_only_adds_switch_cost() -> None:
    params = replace(PARAMS, time_slice_overhead_ratio=0.2)
    cycle = colocated_cycle(_step(0.0, 0.020), 2, SharingMode.TIME_SLICING, DEVICE, params)
    # Both always want the GPU: k = 2, r = 1/1.2, so G = 0.020 * 2 * 1.2.
    assert cycle.cycle_s == pytest.approx(0.048, rel=1e-3)


def test_mps_overlap_is_capped_by_unused_bandwidth() -> None:
    params = replace(PARAMS, concurrent_bandwidth_efficiency=0.9)
    # Solo utilisation 0.6 -> ceiling 1.5; with no CPU phase both contend: G = g * 2 / 1.5.
    cycle = colocated_cycle(_step(0.0, 0.020, util=0.6), 2, SharingMode.MPS, DEVICE, params)
    assert cycle.cycle_s == pytest.approx(0.020 * 2 / 1.5, rel=1e-3)


def test_packing_fills_cpu_gaps() -> None:
    step = _step(0.015, 0.015)
    one = colocated_cycle(step, 1, SharingMode.PACKED, DEVICE, PARAMS)
    two = colocated_cycle(step, 2, SharingMode.PACKED, DEVICE, PARAMS)
    throughput_gain = 2 * one.cycle_s / two.cycle_s
    assert 1.2 < throughput_gain < 2.0


def test_erlang_c_known_values() -> None:
    assert erlang_c_wait_probability(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho
    assert erlang_c_wait_probability(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c_wait_probability(2, 2.0) == 1.0


def test_queue_wait_quantile_mm1() -> None:
    # P(W > t) = rho * exp(-(1 - rho) t / S): p99 = S ln(0.5 / 0.01) / 0.5.
    assert queue_wait_quantile_s(1, 0.5, 1.0, 0.99) == pytest.approx(math.log(50) / 0.5)
    assert queue_wait_quantile_s(1, 0.5, 1.0, 0.4) == 0.0  # 60% never wait
    assert queue_wait_quantile_s(1, 1.0, 1.0, 0.99) == math.inf


def test_power_between_idle_and_tdp() -> None:
    assert power_watts(H100, 0.0, 0.0, PARAMS) == H100.idle_watts
    assert power_watts(H100, 1.0, 1.0, replace(PARAMS, power_busy_weight=5.0)) == H100.tdp_watts
    busy = power_watts(H100, 0.5, 0.5, PARAMS)
    assert H100.idle_watts < busy < H100.tdp_watts


def test_predict_reports_consistent_throughputs() -> None:
    shape = PackingShape(SharingMode.MPS, 2, 1, DEVICE)
    point = predict(OPT, H100, shape, ENGINE, WORKLOAD, 1e9, PARAMS)
    assert point.effective_batch_per_replica == 64
    assert point.total_tokens_per_s == pytest.approx(point.output_tokens_per_s * 300 / 200)
    assert point.output_tokens_per_s == pytest.approx(2 * 64 / point.step_s)
    assert point.ttft_p99_s >= point.ttft_p50_s
    assert point.tokens_per_joule == pytest.approx(point.total_tokens_per_s / point.power_watts)


def test_kv_capacity_caps_the_batch() -> None:
    shape = PackingShape(SharingMode.EXCLUSIVE, 1, 1, DEVICE)
    capped = predict(OPT, H100, shape, ENGINE, WORKLOAD, 10 * 300, PARAMS)
    assert capped.effective_batch_per_replica == 10


def test_token_budget_caps_the_batch_when_outputs_are_short() -> None:
    # 2,048 tokens per step hold B decodes plus B * 111 / 8 prompt tokens: B = 138.2.
    engine = EngineSettings(max_num_seqs=512, max_num_batched_tokens=2048)
    short = Workload(mean_input_tokens=111, mean_output_tokens=8)
    assert saturated_batch(engine, short, 1e12) == pytest.approx(2048 / (1 + 111 / 8))
    shape = PackingShape(SharingMode.EXCLUSIVE, 1, 1, DEVICE)
    point = predict(OPT, H100, shape, engine, short, 1e12, PARAMS)
    assert point.effective_batch_per_replica == pytest.approx(2048 / (1 + 111 / 8))
    step = engine_step(OPT, engine, short, DEVICE, PARAMS, point.effective_batch_per_replica)
    assert step.running_seqs + step.prefill_tokens == pytest.approx(2048)
    # Long outputs leave the budget slack: max_num_seqs binds as before.
    assert saturated_batch(engine, Workload(111, 292), 1e12) == 512


def test_mig_instance_gets_its_slices() -> None:
    a100 = default_gpu_catalog().get("NVIDIA-A100-SXM4-40GB")
    profile = a100.mig_profile("3g.20gb")
    device = Device.mig(a100, profile)
    assert (
        device.bandwidth_bytes_per_s
        == a100.memory_bandwidth_bytes_per_s * profile.memory_slices / 8
    )
    assert device.flops_per_s == a100.bf16_dense_flops * 3 / 7
    assert device.memory_bytes == profile.memory_bytes


def test_load_ratio_must_be_a_fraction() -> None:
    shape = PackingShape(SharingMode.EXCLUSIVE, 1, 1, DEVICE)
    with pytest.raises(ValueError, match="load_ratio"):
        predict(OPT, H100, shape, ENGINE, WORKLOAD, 1e9, PARAMS, load_ratio=1.0)


def _mean_value_iteration(
    step: EngineStep, engines: int, mode: SharingMode, params: PerfParams
) -> float:
    """The co-location fixed point by damped iteration from the solo phase, run to convergence."""
    solo_util = step.utilisation(DEVICE)
    gpu_phase = step.gpu_s
    for _ in range(100_000):
        cycle = max(step.cpu_s, gpu_phase) + (1 - params.cpu_gpu_overlap_ratio) * min(
            step.cpu_s, gpu_phase
        )
        contenders = 1.0 + (engines - 1) * min(1.0, gpu_phase / cycle)
        target = step.gpu_s * contenders / _speedup(mode, contenders, solo_util, params)
        previous, gpu_phase = gpu_phase, 0.5 * gpu_phase + 0.5 * target
        if abs(gpu_phase - previous) <= 1e-13 * gpu_phase:
            break
    return gpu_phase


@pytest.mark.parametrize("mode", [SharingMode.MPS, SharingMode.TIME_SLICING, SharingMode.PACKED])
def test_fixed_point_solver_matches_the_mean_value_iteration(mode: SharingMode) -> None:
    rng = random.Random(7)
    for _ in range(300):
        params = replace(
            PARAMS,
            cpu_gpu_overlap_ratio=rng.choice([0.0, rng.random(), 1.0]),
            time_slice_overhead_ratio=rng.uniform(0.0, 0.5),
            concurrent_bandwidth_efficiency=rng.uniform(0.3, 1.2),
        )
        step = _step(rng.choice([0.0, rng.uniform(1e-4, 0.05)]), rng.uniform(1e-4, 0.05))
        step = replace(step, bytes_moved=step.bytes_moved * rng.uniform(0.1, 2.0))
        engines = rng.randint(2, 8)
        cycle = colocated_cycle(step, engines, mode, DEVICE, params)
        expected = _mean_value_iteration(step, engines, mode, params)
        assert cycle.gpu_phase_s == pytest.approx(expected, rel=1e-8)


def test_operating_batch_is_the_centre_of_the_cell_that_carries_the_load() -> None:
    steps = _StepCosts.of(OPT, ENGINE, WORKLOAD, DEVICE, PARAMS)
    cell = 64 / _BATCH_CELLS
    for mode, engines in [
        (SharingMode.EXCLUSIVE, 1),
        (SharingMode.MPS, 3),
        (SharingMode.PACKED, 4),
    ]:
        shape = PackingShape(mode, engines, 1, DEVICE)
        saturated = colocated_cycle(steps.at(64.0), engines, mode, DEVICE, PARAMS)
        for load_ratio in (0.1, 0.5, 0.8, 0.95):
            load = load_ratio * 64 / saturated.cycle_s
            batch = _operating_cycle(steps, shape, saturated, load).step.running_seqs
            assert (batch / cell) % 1 == pytest.approx(0.5)
            below, above = (
                colocated_cycle(steps.at(b), engines, mode, DEVICE, PARAMS)
                for b in (batch - cell / 2, batch + cell / 2)
            )
            assert (batch - cell / 2) / below.cycle_s <= load <= (batch + cell / 2) / above.cycle_s


def test_cached_step_terms_give_the_uncached_result() -> None:
    shape = PackingShape(SharingMode.PACKED, 3, 1, DEVICE)
    _step_terms.cache_clear()
    cold = predict(OPT, H100, shape, ENGINE, WORKLOAD, 1e6, PARAMS)
    warm = predict(OPT, H100, shape, ENGINE, WORKLOAD, 1e6, PARAMS)
    assert cold == warm
    assert _step_terms.cache_info().hits > 0
    uncached = _step_terms.__wrapped__(OPT, "bf16", "auto", WORKLOAD)
    assert _step_terms(OPT, "bf16", "auto", WORKLOAD) == uncached


def test_p99_step_prefill_is_nothing_when_joins_are_rarer_than_one_step_in_a_hundred() -> None:
    # 1 running sequence, 200 output tokens: a join every 200 steps.
    assert p99_step_prefill_tokens(WORKLOAD, 1.0) == 0.0


def test_p99_step_prefill_is_a_high_prompt_quantile_when_joins_are_occasional() -> None:
    # 40 running / 200 output: 0.2 joins per step, one step in 5.5 holds a prompt; the gap at
    # the 99th percentile holds the prompt at the 1 - 0.01 / 0.18 = 94.5th percentile.
    workload = Workload(mean_input_tokens=100, mean_output_tokens=200, p99_input_tokens=1000)
    sigma = 2.3263 - math.sqrt(2.3263**2 - 2 * math.log(10))
    share = 1 - math.exp(-0.2)
    z = NormalDist().inv_cdf(1 - 0.01 / share)
    one = math.exp(math.log(100) - sigma**2 / 2 + sigma * z)
    assert p99_step_prefill_tokens(workload, 40.0) == pytest.approx(one, rel=1e-6)
    assert 100 < one < 1000


def test_p99_step_prefill_grows_with_the_batch_and_nears_the_mean_sum_when_many_join() -> None:
    workload = Workload(mean_input_tokens=100, mean_output_tokens=100, p99_input_tokens=400)
    values = [p99_step_prefill_tokens(workload, b) for b in (5.0, 20.0, 100.0, 1000.0, 5000.0)]
    assert values == sorted(values)
    # 50 joins per step: the p99 sum is the mean sum plus a few of its (relative) deviations.
    assert 50 * 100 < values[-1] < 1.5 * 50 * 100


def test_itl_p99_adds_only_the_prefill_above_the_steps_mean() -> None:
    shape = PackingShape(SharingMode.EXCLUSIVE, 1, 1, DEVICE)
    point = predict(OPT, H100, shape, ENGINE, WORKLOAD, 1e9, PARAMS)
    assert point.itl_p99_s >= point.step_s
    # Prompts of nearly one length (p99 twice the mean) make the slow steps faster.
    even = replace(WORKLOAD, p99_input_tokens=200)
    assert predict(OPT, H100, shape, ENGINE, even, 1e9, PARAMS).itl_p99_s < point.itl_p99_s
