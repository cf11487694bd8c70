"""vLLM arguments and environment that realise a plan, per sharing mode.

Two facts shape these flags:

- `--gpu-memory-utilization` is the share of the *device's total* memory one engine may use, not
  of what is free. Several engines on one GPU must therefore each get their own share, and their
  shares must add up to at most the usable memory. Under MPS with a pinned-memory limit the
  device still reports the whole GPU as its total, so the share is taken of the whole GPU; on a
  MIG instance the device is the instance.
- Engines that start together on one GPU each profile the memory the others are still taking and
  mis-size their KV cache (or fail with "No available memory for the cache blocks").
  `--kv-cache-memory-bytes` (vLLM >= 0.11) fixes the KV size and skips that profiling, so we
  always pass it; the memory-utilisation share remains as the engine's own cap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from slmpack.catalog.types import WeightDtype
from slmpack.planner.types import Candidate, SharingMode
from slmpack.units import MIB

# Pre-quantized checkpoints (int8, AWQ, GPTQ) carry their quantization config and vLLM picks the
# fastest kernel for them; naming "awq" explicitly would force the slower non-Marlin kernel.
# FP8 is the one format vLLM applies on the fly to a 16-bit checkpoint.
_DTYPE_FLAG: dict[WeightDtype, tuple[str, ...]] = {
    "bf16": ("--dtype", "bfloat16"),
    "fp16": ("--dtype", "float16"),
    "fp32": ("--dtype", "float32"),
    "fp8": ("--dtype", "bfloat16", "--quantization", "fp8"),
    "int8": ("--dtype", "auto"),
    "int4-awq": ("--dtype", "auto"),
    "int4-gptq": ("--dtype", "auto"),
}

#: MPS clients get this multiple of their fair SM share: decode is bandwidth-bound, and a client
#: held to exactly 1/N of the SMs cannot pull its share of DRAM bandwidth while neighbours sit in
#: their CPU phase.
MPS_THREAD_OVERSUBSCRIPTION = 2
#: Extra room above the planned footprint in the MPS pinned-memory limit (allocator rounding).
MPS_MEMORY_MARGIN_BYTES = 256 * MIB


@dataclass(frozen=True)
class VllmLaunch:
    """Arguments and environment of one vLLM engine."""

    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]

    def as_command_line(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in self.env)
        return " ".join(p for p in (env, "vllm serve <model>", " ".join(self.args)) if p)


def memory_utilisation(footprint_bytes: int, device_memory_bytes: int) -> float:
    """The engine's share of the device, rounded down so shares never add past the device."""
    return math.floor(footprint_bytes / device_memory_bytes * 10_000) / 10_000


def vllm_launch(candidate: Candidate, device_memory_bytes: int) -> VllmLaunch:
    """Flags for one replica of `candidate` on a device (GPU or MIG instance) of that size."""
    engine = candidate.engine
    memory = candidate.memory
    args: list[str] = [
        "--max-num-seqs",
        str(engine.max_num_seqs),
        "--max-model-len",
        str(engine.max_model_len),
        "--max-num-batched-tokens",
        str(engine.max_num_batched_tokens),
        "--gpu-memory-utilization",
        f"{memory_utilisation(memory.total_bytes, device_memory_bytes):.4f}",
        "--kv-cache-memory-bytes",
        str(memory.kv_cache_bytes),
        *_DTYPE_FLAG[engine.weight_dtype],
    ]
    if engine.kv_dtype == "fp8":
        args += ["--kv-cache-dtype", "fp8"]
    env: list[tuple[str, str]] = []
    if candidate.mode is SharingMode.MPS:
        share = min(100, math.ceil(100 * MPS_THREAD_OVERSUBSCRIPTION / candidate.replicas_per_gpu))
        limit_mib = math.ceil((memory.total_bytes + MPS_MEMORY_MARGIN_BYTES) / MIB)
        env += [
            ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", str(share)),
            ("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", f"0={limit_mib}M"),
        ]
    return VllmLaunch(tuple(args), tuple(env))
