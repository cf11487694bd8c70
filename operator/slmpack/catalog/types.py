"""Frozen records the planner consumes. Quantities are in base units (bytes, bytes/s, FLOP/s, W)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

WeightDtype = Literal["bf16", "fp16", "fp32", "fp8", "int8", "int4-awq", "int4-gptq"]
KvDtype = Literal["auto", "bf16", "fp16", "fp8"]


@dataclass(frozen=True)
class MigProfile:
    """One MIG GPU-instance profile, as in NVIDIA's MIG user guide."""

    name: str  # e.g. "1g.10gb"
    memory_bytes: int  # usable framebuffer of one instance
    compute_slices: int  # the "Ng" part: GPCs out of 7
    memory_slices: int  # out of 8
    max_instances: int  # on one GPU, this profile alone
    placements: tuple[int, ...]  # valid start indices (memory-slice units)
    sm_count: int  # SMs in one instance

    @property
    def resource_name(self) -> str:
        """Device-plugin resource under the MIG mixed strategy."""
        return f"nvidia.com/mig-{self.name}"


@dataclass(frozen=True)
class GPUSpec:
    """A GPU product keyed by its GPU Feature Discovery `nvidia.com/gpu.product` string."""

    product: str
    aliases: tuple[str, ...]
    family: str  # GFD nvidia.com/gpu.family, e.g. "hopper"
    memory_bytes: int
    memory_bandwidth_bytes_per_s: float
    bf16_dense_flops: float  # dense (no sparsity) BF16/FP16 tensor FLOP/s
    fp8_dense_flops: float  # 0.0 when the GPU has no FP8 tensor cores
    sm_count: int
    tdp_watts: float
    idle_watts: float
    mig_profiles: tuple[MigProfile, ...]
    sources: tuple[str, ...]

    @property
    def mig_capable(self) -> bool:
        return bool(self.mig_profiles)

    def mig_profile(self, name: str) -> MigProfile:
        for profile in self.mig_profiles:
            if profile.name == name:
                return profile
        known = ", ".join(p.name for p in self.mig_profiles) or "none (GPU has no MIG)"
        from slmpack.errors import CatalogError

        raise CatalogError(f"MIG profile {name!r} does not exist on {self.product}; known: {known}")


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a decoder-only transformer, derived from its Hugging Face config.json."""

    name: str  # catalogue key, e.g. "opt-1.3b"
    hf_id: str  # e.g. "facebook/opt-1.3b"
    architecture: str  # config "architectures"[0]
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_kv_heads: int  # == num_attention_heads for MHA, 1 for MQA
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    torch_dtype: str  # native dtype in the config, e.g. "bfloat16"
    parameter_count: int  # all parameters, embeddings included
    embedding_parameter_count: int  # input embeddings (+ untied lm_head, + learned positions)
    # Layers whose attention is limited to a sliding window (Gemma-2 alternates); 0 = none.
    sliding_window: int | None
    sliding_window_layers: int
    # Multi-head latent attention (DeepSeek-V2/V3): the KV cache holds the latent instead.
    kv_lora_rank: int | None
    qk_rope_head_dim: int | None
    # Weights of the decoder layers' linear projections: what AWQ/GPTQ/FP8 quantize.
    # Embeddings, lm_head, norms and biases stay 16-bit. 0 = unknown (then the
    # non-embedding count stands in for it).
    quantizable_parameter_count: int = 0

    @property
    def non_embedding_parameter_count(self) -> int:
        return self.parameter_count - self.embedding_parameter_count
