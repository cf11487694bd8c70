"""Duration of one simulated engine step, from the planner's performance model.

The planner's `engine_step` prices a steady-state step from workload means. The simulator knows
the batch it actually scheduled, so it hands that batch's parts to the same pricing function,
`perf.price_step`, with the same fitted constants: the KV of every decoding sequence at the
batch's mean context, and FLOPs for one token per decoding sequence plus every prompt token
admitted this step (each at its chunk's midpoint). On a steady-state batch this equals
`engine_step` exactly (a unit test holds the two together).

Co-located engines stretch the GPU phase. `colocated_cycle` solves that for n identical engines;
here the neighbours are real and differ, so each one counts for the share of our GPU duty it
brings (its duty over ours, at most one), and the slowdown is interpolated between the
neighbouring whole engine counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from slmpack.catalog.models import decode_flops_per_token, kv_bytes_for_sequence, weight_bytes
from slmpack.catalog.types import ModelSpec
from slmpack.planner.perf import Device, EngineStep, PerfParams, colocated_cycle, price_step
from slmpack.planner.types import EngineSettings, SharingMode


class StepCostModel:
    """Prices steps of one engine on one device; holds only constants, so it is shareable."""

    def __init__(
        self,
        model: ModelSpec,
        engine: EngineSettings,
        device: Device,
        params: PerfParams,
        mode: SharingMode,
    ) -> None:
        self.model = model
        self.engine = engine
        self.device = device
        self.params = params
        self.mode = mode
        self._weights_bytes = weight_bytes(model, engine.weight_dtype)

    def step(
        self,
        scheduled_seqs: int,
        decode_seqs: int,
        decode_context_tokens: int,
        prefill_chunks: Sequence[tuple[int, int]],
    ) -> EngineStep:
        """Cost of one step alone on the device.

        decode_context_tokens: sum of the contexts the decoding sequences attend to.
        prefill_chunks: (first position, tokens) of each prompt chunk computed this step.
        """
        model = self.model
        kv_read = 0
        flops = 0.0
        if decode_seqs:
            mean_context = round(decode_context_tokens / decode_seqs)
            kv_read = decode_seqs * kv_bytes_for_sequence(model, mean_context, self.engine.kv_dtype)
            flops = decode_seqs * decode_flops_per_token(model, mean_context)
        prefill = 0
        for start, tokens in prefill_chunks:
            prefill += tokens
            # Each prompt token attends to the positions before it: the chunk's midpoint on average.
            flops += tokens * decode_flops_per_token(model, start + tokens // 2)
        return price_step(
            self.device,
            self.params,
            self._weights_bytes,
            kv_read,
            flops,
            float(scheduled_seqs),
            float(prefill),
        )

    def cycle_s(self, step: EngineStep, slowdown: float = 1.0) -> float:
        """Wall time of the step with its GPU phase stretched by `slowdown`."""
        stretched = step if slowdown == 1.0 else replace(step, gpu_s=step.gpu_s * slowdown)
        return colocated_cycle(stretched, 1, self.mode, self.device, self.params).cycle_s

    def duty(self, step: EngineStep) -> float:
        """Share of a solo cycle spent in the GPU phase."""
        return step.gpu_s / self.cycle_s(step)

    def slowdown(self, step: EngineStep, neighbour_duties: Sequence[float]) -> float:
        """GPU-phase stretch from co-located engines with these duties (1 = unaffected)."""
        own = self.duty(step)
        if own <= 0.0:
            return 1.0
        engines = 1.0 + sum(min(1.0, d / own) for d in neighbour_duties if d > 0.0)
        if engines <= 1.0:
            return 1.0
        low = math.floor(engines)
        frac = engines - low
        low_s = self._stretch(step, low)
        if frac < 1e-9:
            return low_s
        return low_s + frac * (self._stretch(step, low + 1) - low_s)

    def _stretch(self, step: EngineStep, engines: int) -> float:
        cycle = colocated_cycle(step, engines, self.mode, self.device, self.params)
        return cycle.gpu_phase_s / step.gpu_s
