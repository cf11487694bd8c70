"""Step pricing and co-location slowdown, and the property that the sim and the planner agree."""

import itertools

import pytest

from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog
from slmpack.planner.perf import (
    Device,
    PackingShape,
    colocated_cycle,
    default_perf_params,
    engine_step,
    predict,
)
from slmpack.planner.types import EngineSettings, SharingMode, Workload
from slmpack.sim.offline import closed_loop_throughput
from slmpack.sim.timing import StepCostModel

PARAMS = default_perf_params()
H100 = default_gpu_catalog().get("NVIDIA-H100-80GB-HBM3")
DEVICE = Device.whole(H100)
OPT = default_model_catalog().get("opt-1.3b")
#: Large enough that the KV cache never binds in these runs.
PLENTY_OF_BLOCKS = 200_000


def cost_model(seqs: int, mode: SharingMode = SharingMode.EXCLUSIVE) -> StepCostModel:
    return StepCostModel(OPT, EngineSettings(max_num_seqs=seqs), DEVICE, PARAMS, mode)


def test_a_steady_state_batch_costs_what_engine_step_says() -> None:
    # engine_step: 64 sequences at context 100 + 200 // 2, plus 64 * 100 / 200 = 32 prompt
    # tokens priced at position 100 // 2. The sim prices the same batch from its parts.
    workload = Workload(mean_input_tokens=100, mean_output_tokens=200)
    engine = EngineSettings(max_num_seqs=64)
    planner = engine_step(OPT, engine, workload, DEVICE, PARAMS, running_seqs=64)
    sim = StepCostModel(OPT, engine, DEVICE, PARAMS, SharingMode.EXCLUSIVE).step(
        scheduled_seqs=64,
        decode_seqs=64,
        decode_context_tokens=64 * 200,
        prefill_chunks=[(50 - 16, 32)],
    )
    assert sim.bytes_moved == planner.bytes_moved
    assert sim.flops == pytest.approx(planner.flops, rel=1e-12)
    assert sim.gpu_s == pytest.approx(planner.gpu_s, rel=1e-12)
    assert sim.cpu_s == pytest.approx(planner.cpu_s, rel=1e-12)


def test_bigger_batches_take_longer_steps() -> None:
    model = cost_model(256)
    small = model.step(8, 8, 8 * 300, [])
    large = model.step(256, 256, 256 * 300, [])
    assert large.gpu_s > small.gpu_s
    assert large.cpu_s > small.cpu_s


def test_no_busy_neighbour_means_no_slowdown() -> None:
    model = cost_model(64, SharingMode.MPS)
    step = model.step(64, 64, 64 * 250, [])
    assert model.slowdown(step, []) == 1.0
    assert model.slowdown(step, [0.0, 0.0]) == 1.0


def test_an_identical_neighbour_slows_like_colocated_cycle() -> None:
    for mode in (SharingMode.MPS, SharingMode.TIME_SLICING):
        model = cost_model(64, mode)
        step = model.step(64, 64, 64 * 250, [])
        pair = colocated_cycle(step, 2, mode, DEVICE, PARAMS)
        expected = pair.gpu_phase_s / step.gpu_s
        assert model.slowdown(step, [model.duty(step)]) == pytest.approx(expected)
        assert expected > 1.0


def test_a_lightly_loaded_neighbour_slows_less_than_a_busy_one() -> None:
    model = cost_model(64, SharingMode.TIME_SLICING)
    step = model.step(64, 64, 64 * 250, [])
    duty = model.duty(step)
    light = model.slowdown(step, [duty * 0.3])
    busy = model.slowdown(step, [duty])
    assert 1.0 < light < busy


def _sim_vs_planner(seqs: int, engines: int, mode: SharingMode) -> tuple[float, float]:
    engine = EngineSettings(max_num_seqs=seqs, max_model_len=2048, max_num_batched_tokens=2048)
    sim = closed_loop_throughput(
        OPT,
        engine,
        DEVICE,
        PARAMS,
        num_blocks=PLENTY_OF_BLOCKS,
        prompt_tokens=111,
        output_tokens=292,
        output_spread_ratio=0.5,
        engines=engines,
        mode=mode,
        horizon_s=25.0,
    )
    shape = PackingShape(mode, engines, 1, DEVICE)
    planned = predict(OPT, H100, shape, engine, Workload(111, 292, 111), 1e12, PARAMS)
    return sim.output_tokens_per_s, planned.output_tokens_per_s


@pytest.mark.parametrize(
    ("seqs", "engines", "mode"),
    [
        (8, 1, SharingMode.EXCLUSIVE),
        (64, 1, SharingMode.EXCLUSIVE),
        (256, 1, SharingMode.EXCLUSIVE),
        (128, 2, SharingMode.MPS),
        (128, 2, SharingMode.TIME_SLICING),
        (64, 4, SharingMode.PACKED),
    ],
)
def test_sim_throughput_agrees_with_the_planner(seqs: int, engines: int, mode: SharingMode) -> None:
    sim, planned = _sim_vs_planner(seqs, engines, mode)
    assert sim == pytest.approx(planned, rel=0.10)


@pytest.mark.parametrize(
    ("output_tokens", "seqs", "engines", "mode"),
    [
        (8, 512, 1, SharingMode.EXCLUSIVE),  # the token budget binds: ~138 running
        (32, 512, 1, SharingMode.EXCLUSIVE),  # it binds just: ~458 running
        (32, 256, 4, SharingMode.PACKED),
    ],
)
def test_short_outputs_agree_on_throughput_and_step(
    output_tokens: int, seqs: int, engines: int, mode: SharingMode
) -> None:
    # With short outputs every step also prefills many new prompts (chunked, within
    # max_num_batched_tokens); the planner's steady state must price them as the sim does.
    engine = EngineSettings(max_num_seqs=seqs, max_model_len=2048, max_num_batched_tokens=2048)
    sim = closed_loop_throughput(
        OPT,
        engine,
        DEVICE,
        PARAMS,
        num_blocks=PLENTY_OF_BLOCKS,
        prompt_tokens=111,
        output_tokens=output_tokens,
        output_spread_ratio=0.5,
        engines=engines,
        mode=mode,
        horizon_s=8.0,
        warmup_s=2.0,
    )
    shape = PackingShape(mode, engines, 1, DEVICE)
    planned = predict(OPT, H100, shape, engine, Workload(111, output_tokens, 111), 1e12, PARAMS)
    assert sim.output_tokens_per_s == pytest.approx(planned.output_tokens_per_s, rel=0.05)
    assert sim.mean_step_s == pytest.approx(planned.step_s, rel=0.05)


def test_throughput_rises_with_batch_as_the_planner_predicts() -> None:
    points = [_sim_vs_planner(seqs, 1, SharingMode.EXCLUSIVE) for seqs in (8, 32, 128)]
    sims = [s for s, _ in points]
    plans = [p for _, p in points]
    assert sims == sorted(sims)
    for (s0, p0), (s1, p1) in itertools.pairwise(points):
        assert s1 / s0 == pytest.approx(p1 / p0, rel=0.05)
    assert sims[-1] / sims[0] > 3  # memory-bound decode: batching pays
    assert plans[-1] > plans[0]


def test_a_small_kv_cache_preempts_and_caps_throughput() -> None:
    engine = EngineSettings(max_num_seqs=256, max_model_len=2048, max_num_batched_tokens=2048)
    kwargs = {"prompt_tokens": 111, "output_tokens": 292, "horizon_s": 15.0}
    roomy = closed_loop_throughput(
        OPT, engine, DEVICE, PARAMS, num_blocks=PLENTY_OF_BLOCKS, **kwargs
    )
    # 600 blocks hold 9,600 tokens: 23.8 whole requests of 403 tokens.
    tight = closed_loop_throughput(OPT, engine, DEVICE, PARAMS, num_blocks=600, **kwargs)
    shape = PackingShape(SharingMode.EXCLUSIVE, 1, 1, DEVICE)
    planned = predict(OPT, H100, shape, engine, Workload(111, 292, 111), 9_600, PARAMS)
    assert roomy.preemptions == 0
    assert tight.preemptions > 0
    assert tight.output_tokens_per_s < 0.6 * roomy.output_tokens_per_s
    # The planner counts whole requests per cache; running requests hold their tokens so far,
    # so more of them fit and the sim does somewhat better.
    assert planned.output_tokens_per_s < tight.output_tokens_per_s
    assert tight.output_tokens_per_s < 1.5 * planned.output_tokens_per_s
