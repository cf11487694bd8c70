"""Hand-computed memory terms for OPT-1.3B; the total must be the sum of all five terms."""

import pytest

from slmpack.catalog.models import default_model_catalog
from slmpack.planner.memory import (
    GPU_RESERVED_BYTES,
    RUNTIME_OVERHEAD_BYTES,
    activation_peak_bytes,
    cuda_graph_bytes,
    kv_bytes_that_fit,
    kv_cache_bytes,
    replica_memory,
    replicas_that_fit,
)
from slmpack.planner.types import EngineSettings, Workload

GIB = 1024**3
MIB = 1024**2
OPT = default_model_catalog().get("opt-1.3b")  # hidden 2048, ffn 8192, 24 layers, vocab 50272
ENGINE = EngineSettings(max_num_seqs=256, max_model_len=2048, max_num_batched_tokens=2048)
SHAREGPT = Workload(mean_input_tokens=111, mean_output_tokens=292)

# (8192 ffn + 4 x 2048 hidden) x 2 bytes x 2048 tokens + 256 rows x 50272 vocab x 4 bytes
ACTIVATIONS = (8192 + 4 * 2048) * 2 * 2048 + 256 * 50272 * 4
# 32 MiB + 256 captured x 24 layers x 4 buffers x 2048 hidden x 2 bytes
GRAPHS = 32 * MIB + 256 * 24 * 4 * 2048 * 2
# 403 tokens x 1.25 headroom -> 504 -> 512 tokens (32 blocks); 2 x 24 x 2048 x 2 B per token
KV = 256 * 512 * (2 * 24 * 2048 * 2)


def test_activation_peak() -> None:
    assert activation_peak_bytes(OPT, ENGINE) == ACTIVATIONS


def test_gated_mlp_counts_gate_and_up() -> None:
    llama = default_model_catalog().get("llama-3.2-1b")  # hidden 2048, ffn 8192, vocab 128256
    engine = EngineSettings(max_num_seqs=64, max_num_batched_tokens=1024)
    expected = (2 * 8192 + 4 * 2048) * 2 * 1024 + 64 * 128256 * 4
    assert activation_peak_bytes(llama, engine) == expected


def test_cuda_graph_pool() -> None:
    assert cuda_graph_bytes(OPT, ENGINE) == GRAPHS
    # Captured batches stop at 512: 1024 seqs costs the same as 512.
    big = EngineSettings(max_num_seqs=1024)
    assert cuda_graph_bytes(OPT, big) == cuda_graph_bytes(OPT, EngineSettings(max_num_seqs=512))


def test_kv_cache_for_target_concurrency() -> None:
    assert kv_cache_bytes(OPT, ENGINE, SHAREGPT) == KV


def test_kv_cache_never_below_one_full_length_sequence() -> None:
    tiny = EngineSettings(max_num_seqs=1, max_model_len=2048)
    assert kv_cache_bytes(OPT, tiny, SHAREGPT) == 2048 * 2 * 24 * 2048 * 2


def test_footprint_is_the_sum_of_every_term() -> None:
    memory = replica_memory(OPT, ENGINE, SHAREGPT)
    weights = memory.weights_bytes
    assert weights == pytest.approx(OPT.parameter_count * 2, rel=1e-6)
    assert memory.activation_peak_bytes == ACTIVATIONS
    assert memory.cuda_graph_bytes == GRAPHS
    assert memory.runtime_overhead_bytes == RUNTIME_OVERHEAD_BYTES == 650 * MIB
    assert memory.kv_cache_bytes == KV
    assert memory.total_bytes == weights + ACTIVATIONS + GRAPHS + 650 * MIB + KV


def test_quantization_shrinks_only_the_weights() -> None:
    bf16 = replica_memory(OPT, ENGINE, SHAREGPT)
    int4 = replica_memory(
        OPT,
        EngineSettings(max_num_seqs=256, max_model_len=2048, weight_dtype="int4-awq"),
        SHAREGPT,
    )
    assert int4.weights_bytes < bf16.weights_bytes / 2
    assert int4.kv_cache_bytes == bf16.kv_cache_bytes


def test_replicas_that_fit_keep_the_driver_reserve() -> None:
    assert GPU_RESERVED_BYTES == 512 * MIB
    assert replicas_that_fit(80 * GIB, 30 * GIB) == 2
    assert replicas_that_fit(60 * GIB + GPU_RESERVED_BYTES, 30 * GIB) == 2
    assert replicas_that_fit(60 * GIB + GPU_RESERVED_BYTES - 1, 30 * GIB) == 1
    with pytest.raises(ValueError, match="positive"):
        replicas_that_fit(80 * GIB, 0)


def test_kv_bytes_that_fit_split_evenly() -> None:
    assert kv_bytes_that_fit(40 * GIB + GPU_RESERVED_BYTES, 4, 4 * GIB) == 6 * GIB
    assert kv_bytes_that_fit(8 * GIB, 4, 4 * GIB) == 0
