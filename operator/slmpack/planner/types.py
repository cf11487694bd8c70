"""Frozen records shared by the planner modules. Units are in the field names."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from slmpack.catalog.types import KvDtype, WeightDtype


class SharingMode(StrEnum):
    """How co-located replicas share one physical GPU."""

    EXCLUSIVE = "Exclusive"  # one replica owns the GPU
    TIME_SLICING = "TimeSlicing"  # device-plugin time-slicing: processes take turns on all SMs
    MPS = "MPS"  # CUDA MPS: kernels of several processes run concurrently
    MIG = "MIG"  # one replica per MIG instance: bandwidth and SMs partitioned in hardware
    PACKED = "Packed"  # N engines in one pod that owns a whole GPU (stock device plugin)


class Objective(StrEnum):
    THROUGHPUT = "Throughput"
    ENERGY = "Energy"
    BALANCED = "Balanced"


@dataclass(frozen=True)
class Workload:
    """Request length mix. Defaults: the calibration paper's ShareGPT run (111 in / 292 out)."""

    mean_input_tokens: int = 111
    mean_output_tokens: int = 292
    p99_input_tokens: int = 1024

    def __post_init__(self) -> None:
        if self.mean_input_tokens < 1 or self.mean_output_tokens < 1:
            raise ValueError("mean input and output lengths must be at least 1 token")
        if self.p99_input_tokens < self.mean_input_tokens:
            raise ValueError("p99 input length must be at least the mean input length")

    @property
    def tokens_per_request(self) -> int:
        return self.mean_input_tokens + self.mean_output_tokens


@dataclass(frozen=True)
class Slo:
    """Latency targets; None means no bound."""

    ttft_p99_s: float | None = None
    itl_p99_s: float | None = None


@dataclass(frozen=True)
class EngineSettings:
    """The vLLM engine knobs the planner chooses or takes from the user."""

    max_num_seqs: int
    max_model_len: int = 2048
    max_num_batched_tokens: int = 2048
    weight_dtype: WeightDtype = "bf16"
    kv_dtype: KvDtype = "auto"


@dataclass(frozen=True)
class MemoryBreakdown:
    """GPU memory of one replica, by term (bytes)."""

    weights_bytes: int
    activation_peak_bytes: int
    cuda_graph_bytes: int
    runtime_overhead_bytes: int
    kv_cache_bytes: int

    @property
    def non_kv_bytes(self) -> int:
        return (
            self.weights_bytes
            + self.activation_peak_bytes
            + self.cuda_graph_bytes
            + self.runtime_overhead_bytes
        )

    @property
    def total_bytes(self) -> int:
        return self.non_kv_bytes + self.kv_cache_bytes


@dataclass(frozen=True)
class PerfPoint:
    """Predicted behaviour of one GPU (or MIG instance set) running a packing at saturation.

    Throughputs are per physical GPU; latencies are per request, seen by a client.
    """

    total_tokens_per_s: float  # input + output tokens, the paper's "total token throughput"
    output_tokens_per_s: float
    effective_batch_per_replica: float  # running sequences, capped by KV capacity
    step_s: float  # mean decode step (= mean ITL) of one replica
    itl_p99_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    gpu_busy_ratio: float  # share of time any kernel runs (nvidia-smi "utilization")
    dram_active_ratio: float  # achieved DRAM bandwidth / peak (DCGM_FI_PROF_DRAM_ACTIVE)
    tensor_active_ratio: float  # achieved / peak dense FLOP/s (DCGM_FI_PROF_PIPE_TENSOR_ACTIVE)
    power_watts: float

    @property
    def tokens_per_joule(self) -> float:
        return self.total_tokens_per_s / self.power_watts if self.power_watts > 0 else 0.0


@dataclass(frozen=True)
class Candidate:
    """One point of the design space: how to pack one model on one GPU product."""

    mode: SharingMode
    replicas_per_gpu: int
    engine: EngineSettings
    memory: MemoryBreakdown  # per replica
    perf: PerfPoint
    mig_profile: str | None = None
    meets_slo: bool = True
    slo_violations: tuple[str, ...] = field(default=())

    @property
    def key(self) -> str:
        profile = f"/{self.mig_profile}" if self.mig_profile else ""
        return (
            f"{self.mode.value}{profile} x{self.replicas_per_gpu} seqs={self.engine.max_num_seqs}"
        )
