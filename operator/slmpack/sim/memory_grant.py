"""Whether a simulated engine fits what is left of its simulated GPU, as vLLM 0.32 decides it.

vLLM's start-up (``vllm/v1/worker/utils.py`` ``request_memory`` and
``vllm/v1/core/kv_cache_utils.py`` ``_check_enough_kv_cache_memory``):

1. It asks for ``ceil(total * gpu_memory_utilization)`` and refuses to start when the device
   has less free memory than that.
2. With ``--kv-cache-memory-bytes`` the KV cache has exactly that size; otherwise it gets the
   request minus the engine's own non-KV memory (weights, activation peak, CUDA graphs, runtime).
3. The KV cache must hold at least one ``max_model_len`` sequence.

The non-KV terms are the planner's memory model (`slmpack.planner.memory`). Free memory is the
device's usable memory (total minus the driver's reserve) minus what the engines already on it
reserved: their actual footprint when they fixed the KV size, their whole request otherwise
(vLLM then grows the KV cache to fill it). Messages repeat vLLM's wording.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from slmpack.catalog.models import kv_bytes_per_token, weight_bytes
from slmpack.catalog.types import ModelSpec
from slmpack.planner.memory import (
    RUNTIME_OVERHEAD_BYTES,
    activation_peak_bytes,
    cuda_graph_bytes,
    usable_bytes,
)
from slmpack.planner.types import EngineSettings
from slmpack.sim.errors import SimStartupError
from slmpack.sim.scheduler import BLOCK_TOKENS, blocks_for
from slmpack.units import GIB

_MEMORY_DOC = "https://docs.vllm.ai/en/latest/configuration/conserving_memory/"


@dataclass(frozen=True)
class MemoryGrant:
    """Memory one engine holds on its device, in bytes."""

    non_kv_bytes: int
    kv_cache_bytes: int
    reserved_bytes: int  # what other engines see as taken
    block_bytes: int
    num_blocks: int

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_blocks * BLOCK_TOKENS


def gib(value: float) -> str:
    """vLLM's format_gib: GiB rounded to two decimals."""
    return f"{round(value / GIB, 2)}"


def non_kv_bytes(model: ModelSpec, engine: EngineSettings) -> int:
    return (
        weight_bytes(model, engine.weight_dtype)
        + activation_peak_bytes(model, engine)
        + cuda_graph_bytes(model, engine)
        + RUNTIME_OVERHEAD_BYTES
    )


def block_bytes(model: ModelSpec, engine: EngineSettings) -> int:
    # Sliding-window layers are priced as full attention: the simulator keeps one block pool.
    return BLOCK_TOKENS * kv_bytes_per_token(model, engine.kv_dtype)


def grant_memory(
    model: ModelSpec,
    engine: EngineSettings,
    device_total_bytes: int,
    taken_by_others_bytes: int,
    gpu_memory_utilization: float,
    kv_cache_memory_bytes: int | None,
    device_name: str = "cuda:0",
) -> MemoryGrant:
    """The engine's memory, or SimStartupError with the message vLLM would stop with."""
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise SimStartupError(
            f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}"
        )
    free = max(0, usable_bytes(device_total_bytes) - taken_by_others_bytes)
    requested = math.ceil(device_total_bytes * gpu_memory_utilization)
    if free < requested:
        raise SimStartupError(
            f"Free memory on device {device_name} ({gib(free)}/{gib(device_total_bytes)} GiB) "
            f"on startup is less than desired GPU memory utilization "
            f"({gpu_memory_utilization}, {gib(requested)} GiB). Decrease GPU memory "
            f"utilization or reduce GPU memory used by other processes. "
            f"(Simulated: {gib(taken_by_others_bytes)} GiB are reserved by co-located engines.)"
        )
    own = non_kv_bytes(model, engine)
    per_block = block_bytes(model, engine)
    if kv_cache_memory_bytes is not None:
        kv = kv_cache_memory_bytes
        if own + kv > free:
            raise SimStartupError(
                f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {gib(kv)} GiB "
                f"for the KV cache. Device {device_name} has a total capacity of "
                f"{gib(device_total_bytes)} GiB of which {gib(max(0, free - own))} GiB is free "
                f"after this engine's {gib(own)} GiB of weights and activations; "
                f"{gib(taken_by_others_bytes)} GiB are reserved by co-located engines."
            )
        reserved = own + kv
    else:
        kv = requested - own
        reserved = requested
    if kv <= 0:
        raise SimStartupError(
            "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` "
            f"when initializing the engine. See {_MEMORY_DOC} for more details. "
            f"(Simulated: {gib(requested)} GiB requested, {gib(own)} GiB needed before the "
            "KV cache.)"
        )
    needed = blocks_for(engine.max_model_len) * per_block
    if needed > kv:
        estimate = (kv // per_block) * BLOCK_TOKENS
        hint = (
            f"Based on the available memory, the estimated maximum model length is {estimate}. "
            if estimate > 0
            else ""
        )
        raise SimStartupError(
            f"To serve at least one request with the model's max seq len "
            f"({engine.max_model_len}), ({gib(needed)} GiB KV cache is needed, which is larger "
            f"than the available KV cache memory ({gib(kv)} GiB). {hint}Try increasing "
            f"`gpu_memory_utilization` or decreasing `max_model_len` when initializing the "
            f"engine. See {_MEMORY_DOC} for more details."
        )
    return MemoryGrant(own, kv, reserved, per_block, kv // per_block)
