"""Builders of planner records for tests that need no catalogue."""

from __future__ import annotations

from slmpack.planner.types import (
    Candidate,
    EngineSettings,
    MemoryBreakdown,
    PerfPoint,
    SharingMode,
)

GIB = 1024**3


def perf_point(tps: float, watts: float, itl_s: float = 0.03, ttft_s: float = 0.2) -> PerfPoint:
    return PerfPoint(
        total_tokens_per_s=tps,
        output_tokens_per_s=tps * 0.7,
        effective_batch_per_replica=64,
        step_s=itl_s * 0.8,
        itl_p99_s=itl_s,
        ttft_p50_s=ttft_s / 2,
        ttft_p99_s=ttft_s,
        gpu_busy_ratio=0.8,
        dram_active_ratio=0.6,
        tensor_active_ratio=0.1,
        power_watts=watts,
    )


def candidate(
    tps: float,
    watts: float,
    itl_s: float = 0.03,
    *,
    replicas: int = 1,
    seqs: int = 64,
    mode: SharingMode = SharingMode.EXCLUSIVE,
    meets_slo: bool = True,
    kv_bytes: int = 10 * GIB,
) -> Candidate:
    return Candidate(
        mode=mode,
        replicas_per_gpu=replicas,
        engine=EngineSettings(max_num_seqs=seqs),
        memory=MemoryBreakdown(
            weights_bytes=3 * GIB,
            activation_peak_bytes=GIB // 8,
            cuda_graph_bytes=GIB // 8,
            runtime_overhead_bytes=GIB // 2,
            kv_cache_bytes=kv_bytes,
        ),
        perf=perf_point(tps, watts, itl_s),
        meets_slo=meets_slo,
    )
