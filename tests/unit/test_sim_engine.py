"""The engine loop's accounting in simulated time, which the server tests measure with."""

import asyncio
import time

import pytest

from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog
from slmpack.planner.perf import Device, default_perf_params
from slmpack.planner.types import EngineSettings, SharingMode
from slmpack.sim.engine import ActivityMeter, EngineRunner, SimClock
from slmpack.sim.scheduler import Scheduler, SimRequest
from slmpack.sim.timing import StepCostModel

PARAMS = default_perf_params()
DEVICE = Device.whole(default_gpu_catalog().get("NVIDIA-H100-80GB-HBM3"))
OPT = default_model_catalog().get("opt-1.3b")
SPEEDUP = 100.0


async def serve_one(runner: EngineRunner, prompt_tokens: int, output_tokens: int) -> SimRequest:
    request = SimRequest("r", prompt_tokens, output_tokens, runner.clock.now())
    runner.start()
    runner.submit(request)
    try:
        async with asyncio.timeout(60):
            await runner.wait_progress(request, output_tokens - 1)
    finally:
        await runner.stop()
    assert request.finished
    return request


def new_runner() -> tuple[EngineRunner, StepCostModel]:
    cost = StepCostModel(OPT, EngineSettings(max_num_seqs=8), DEVICE, PARAMS, SharingMode.MPS)
    return EngineRunner(Scheduler(8, 2048, 1000), cost, SimClock(SPEEDUP)), cost


async def test_totals_charge_exactly_the_priced_steps() -> None:
    runner, cost = new_runner()
    started = time.monotonic()
    request = await serve_one(runner, prompt_tokens=100, output_tokens=5)
    elapsed = time.monotonic() - started
    # The prompt step yields the first token; the four decodes attend to 101..104 tokens.
    steps = [cost.step(1, 0, 0, [(0, 100)])] + [cost.step(1, 1, c, []) for c in range(101, 105)]
    charged = sum(cost.cycle_s(step) for step in steps)
    totals = runner.totals()
    assert (totals.steps, totals.scheduled_seqs, totals.generated_tokens) == (5, 5, 5)
    assert totals.busy_s == pytest.approx(charged, rel=1e-12)
    assert totals.solo_busy_s == totals.busy_s
    assert totals.slowdown == 1.0
    assert totals.clock_s == request.finished_s
    assert request.finished_s is not None
    assert request.finished_s - request.arrival_s >= totals.busy_s
    # A busy host only delays steps: the engine never runs ahead of the wall clock.
    assert elapsed >= totals.busy_s / SPEEDUP


async def test_totals_show_the_stretch_a_busy_neighbour_causes() -> None:
    runner, cost = new_runner()
    step = cost.step(1, 0, 0, [(0, 100)])
    runner.set_neighbour_duties((cost.duty(step),))
    await serve_one(runner, prompt_tokens=100, output_tokens=5)
    totals = runner.totals()
    assert totals.slowdown == pytest.approx(cost.slowdown(step, [cost.duty(step)]))
    assert totals.slowdown > 1.0
    assert totals.busy_s > totals.solo_busy_s


def test_time_skipped_behind_a_slow_host_does_not_count_as_idle() -> None:
    def activity(skipped_s: float, idle_s: float) -> tuple[float, float]:
        meter = ActivityMeter(start_s=0.0)
        # One second of steps, each spending half its time in the GPU phase.
        meter.add_step(0.5, 1.0, 0.5, 1.0, bytes_moved=1e12, flops=1e15)
        meter.add_skip(skipped_s)
        reading = meter.roll(now_s=1.0 + skipped_s + idle_s)
        return reading.duty_ratio, reading.busy_ratio

    assert activity(skipped_s=0.0, idle_s=0.0) == (0.5, 0.5)
    assert activity(skipped_s=3.0, idle_s=0.0) == (0.5, 0.5)
    assert activity(skipped_s=0.0, idle_s=1.0) == (0.25, 0.25)
    assert activity(skipped_s=3.0, idle_s=1.0) == (0.25, 0.25)
