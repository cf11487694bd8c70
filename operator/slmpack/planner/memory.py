"""Per-replica GPU memory model of a vLLM engine.

footprint = weights + activation peak + CUDA-graph pool + runtime overhead + KV cache

Each term, and where its constant comes from:

- weights: parameter count x bytes per parameter of the dtype/quantization
  (`slmpack.catalog.models.weight_bytes`).
- activation peak: vLLM profiles one forward pass of `max_num_batched_tokens` tokens at start-up
  (`gpu_worker.determine_available_memory`); the live tensors at the peak are the MLP's
  up(+gate) projection output, a few hidden-size buffers (residual, normed input, q/k/v, attention
  output) and the sampler's fp32 logits for `max_num_seqs` rows.
- CUDA-graph pool: vLLM captures decode graphs for batch sizes up to min(max_num_seqs, 512); the
  pool keeps the static per-layer buffers of the largest captured batch. Typical vLLM logs for
  0.1-8 B models report 0.05-0.5 GiB.
- runtime overhead: CUDA context, cuBLAS workspaces and allocator slack of one process. The
  calibration runs (vLLM 0.5.2 on an H100 64 GB) show 0.64-0.65 GiB between "weights loaded"
  and the memory in use after profiling, for OPT-1.3B and OPT-2.7B.
- KV cache: sized for the target concurrency (max_num_seqs sequences of the workload's mean
  length with headroom), never below one max-model-len sequence (vLLM refuses to start then),
  in whole 16-token blocks.
"""

from __future__ import annotations

import math

from slmpack.catalog.models import dtype_bytes, kv_bytes_for_sequence, weight_bytes
from slmpack.catalog.types import ModelSpec
from slmpack.planner.types import EngineSettings, MemoryBreakdown, Workload
from slmpack.units import MIB

#: CUDA context + cuBLAS workspace + allocator slack of one engine process (see module docstring).
RUNTIME_OVERHEAD_BYTES = 650 * MIB
#: vLLM's KV block size in tokens (its default for CUDA attention backends).
KV_BLOCK_TOKENS = 16
#: Largest decode batch vLLM captures as a CUDA graph by default.
MAX_CUDA_GRAPH_BATCH = 512
#: Fixed part of the CUDA-graph pool (graph objects, small static tensors).
CUDA_GRAPH_BASE_BYTES = 32 * MIB
#: Hidden-size buffers a decode graph keeps per layer and sequence (residual, normed, attn out, q).
CUDA_GRAPH_BUFFERS_PER_LAYER = 4
#: Hidden-size activation buffers alive at the profiling peak besides the MLP projection.
ACTIVATION_HIDDEN_BUFFERS = 4
#: Sequences fluctuate around the mean length; size the KV pool for this much above it.
KV_LENGTH_HEADROOM = 1.25
#: Memory the driver and other tenants keep on a GPU, not usable by engines.
GPU_RESERVED_BYTES = 512 * MIB


def activation_peak_bytes(model: ModelSpec, engine: EngineSettings) -> int:
    """Peak activation memory of vLLM's profiling forward pass, in bytes."""
    # Activations stay 16-bit whatever the weight format.
    act_bytes = int(dtype_bytes("bf16"))
    # Gated MLPs (Llama family) materialise gate and up together; OPT has a single fc1.
    mlp_width = 2 * model.intermediate_size if _is_gated_mlp(model) else model.intermediate_size
    per_token = (mlp_width + ACTIVATION_HIDDEN_BUFFERS * model.hidden_size) * act_bytes
    logits = min(engine.max_num_seqs, engine.max_num_batched_tokens) * model.vocab_size * 4
    return engine.max_num_batched_tokens * per_token + logits


def cuda_graph_bytes(model: ModelSpec, engine: EngineSettings) -> int:
    """CUDA-graph memory pool of one engine, in bytes."""
    captured = min(engine.max_num_seqs, MAX_CUDA_GRAPH_BATCH)
    per_layer = CUDA_GRAPH_BUFFERS_PER_LAYER * model.hidden_size * int(dtype_bytes("bf16"))
    return CUDA_GRAPH_BASE_BYTES + captured * model.num_layers * per_layer


def kv_cache_bytes(model: ModelSpec, engine: EngineSettings, workload: Workload) -> int:
    """KV-cache bytes for the target concurrency (sliding-window layers hold at most the window)."""
    per_seq = math.ceil(workload.tokens_per_request * KV_LENGTH_HEADROOM)
    per_seq = min(per_seq, engine.max_model_len)
    seq_tokens = math.ceil(per_seq / KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS
    pool = engine.max_num_seqs * kv_bytes_for_sequence(model, seq_tokens, engine.kv_dtype)
    one_long = kv_bytes_for_sequence(
        model,
        math.ceil(engine.max_model_len / KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS,
        engine.kv_dtype,
    )
    return max(pool, one_long)


def replica_memory(model: ModelSpec, engine: EngineSettings, workload: Workload) -> MemoryBreakdown:
    """Every term of one replica's GPU memory footprint."""
    return MemoryBreakdown(
        weights_bytes=weight_bytes(model, engine.weight_dtype),
        activation_peak_bytes=activation_peak_bytes(model, engine),
        cuda_graph_bytes=cuda_graph_bytes(model, engine),
        runtime_overhead_bytes=RUNTIME_OVERHEAD_BYTES,
        kv_cache_bytes=kv_cache_bytes(model, engine, workload),
    )


def usable_bytes(device_memory_bytes: int) -> int:
    """What engines may use on a device (GPU or MIG instance) after the driver's reserve."""
    return max(0, device_memory_bytes - GPU_RESERVED_BYTES)


def replicas_that_fit(device_memory_bytes: int, per_replica_bytes: int) -> int:
    """How many replicas of this footprint fit one device."""
    if per_replica_bytes <= 0:
        raise ValueError("a replica footprint must be positive")
    return usable_bytes(device_memory_bytes) // per_replica_bytes


def kv_bytes_that_fit(device_memory_bytes: int, replicas: int, non_kv_bytes: int) -> int:
    """KV bytes each of `replicas` engines can get when the device is split evenly."""
    share = usable_bytes(device_memory_bytes) // replicas
    return max(0, share - non_kv_bytes)


def _is_gated_mlp(model: ModelSpec) -> bool:
    return not model.architecture.startswith("OPT")
