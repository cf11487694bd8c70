"""The simulator's engines in virtual time, without servers: fast fidelity checks.

`closed_loop_throughput` runs `engines` identical engines on one device, each kept full by a
closed-loop client (a finished request is replaced at once), and returns the output tokens per
second they reach together. This is the quantity `slmpack.planner.perf.predict` calls
`output_tokens_per_s`, so the two can be compared directly: "the sim and the planner agree".
Identical engines see each other at the same duty, so the co-location slowdown is the one the
running servers apply with real neighbours.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from slmpack.catalog.types import ModelSpec
from slmpack.planner.perf import Device, PerfParams
from slmpack.planner.types import EngineSettings, SharingMode
from slmpack.sim.scheduler import Scheduler, SimRequest
from slmpack.sim.timing import StepCostModel


@dataclass(frozen=True)
class ClosedLoopResult:
    output_tokens_per_s: float  # all engines together
    mean_step_s: float
    preemptions: int
    steps: int


def closed_loop_throughput(
    model: ModelSpec,
    engine: EngineSettings,
    device: Device,
    params: PerfParams,
    *,
    num_blocks: int,
    prompt_tokens: int,
    output_tokens: int,
    engines: int = 1,
    mode: SharingMode = SharingMode.EXCLUSIVE,
    output_spread_ratio: float = 0.0,
    horizon_s: float = 30.0,
    warmup_s: float = 5.0,
    seed: int = 0,
) -> ClosedLoopResult:
    """Saturated throughput of `engines` co-located engines (simulated seconds).

    Output lengths are drawn uniformly within `output_spread_ratio` of `output_tokens` (0: all
    equal). Some spread keeps finishing requests from staying in lockstep, which would batch
    their replacements' prefills into the same steps.
    """
    if horizon_s <= warmup_s:
        raise ValueError("horizon_s must exceed warmup_s")
    rng = random.Random(seed)
    low = max(1, round(output_tokens * (1 - output_spread_ratio)))
    high = max(low, round(output_tokens * (1 + output_spread_ratio)))
    cost = StepCostModel(model, engine, device, params, mode)
    scheduler = Scheduler(engine.max_num_seqs, engine.max_num_batched_tokens, num_blocks)
    serial = 0
    for _ in range(engine.max_num_seqs):
        serial += 1
        scheduler.add(SimRequest(str(serial), prompt_tokens, rng.randint(low, high), 0.0))
    now = 0.0
    tokens = 0
    steps = 0
    measured_steps = 0
    while now < horizon_s:
        batch = scheduler.schedule(now)
        step = cost.step(
            batch.scheduled_seqs,
            batch.decode_seqs,
            batch.decode_context_tokens,
            batch.prefill_chunks,
        )
        slowdown = cost.slowdown(step, [cost.duty(step)] * (engines - 1)) if engines > 1 else 1.0
        now += cost.cycle_s(step, slowdown)
        outcome = scheduler.complete(batch, now)
        steps += 1
        if now > warmup_s:
            tokens += outcome.generated_tokens
            measured_steps += 1
        for _ in outcome.finished:
            serial += 1
            scheduler.add(SimRequest(str(serial), prompt_tokens, rng.randint(low, high), now))
    window = horizon_s - warmup_s
    return ClosedLoopResult(
        output_tokens_per_s=engines * tokens / window,
        mean_step_s=window / max(1, measured_steps),
        preemptions=scheduler.preemptions_total,
        steps=steps,
    )
