"""vLLM's start-up memory checks on a simulated GPU, and the per-GPU registry behind them."""

import os
import time
from pathlib import Path

import pytest

from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog, kv_bytes_per_token
from slmpack.planner.memory import GPU_RESERVED_BYTES
from slmpack.planner.types import EngineSettings
from slmpack.sim.errors import SimStartupError
from slmpack.sim.memory_grant import grant_memory, non_kv_bytes
from slmpack.sim.registry import Activity, EngineRecord, GpuState
from slmpack.units import GIB

H100 = default_gpu_catalog().get("NVIDIA-H100-80GB-HBM3")
OPT = default_model_catalog().get("opt-1.3b")
ENGINE = EngineSettings(max_num_seqs=256, max_model_len=2048)


def test_without_kv_bytes_the_cache_fills_the_requested_share() -> None:
    grant = grant_memory(OPT, ENGINE, H100.memory_bytes, 0, 0.45, None)
    requested = -(-H100.memory_bytes * 45 // 100)
    assert grant.reserved_bytes == requested
    assert grant.kv_cache_bytes == requested - non_kv_bytes(OPT, ENGINE)
    assert grant.num_blocks == grant.kv_cache_bytes // (16 * kv_bytes_per_token(OPT))


def test_with_kv_bytes_the_engine_holds_only_what_it_needs() -> None:
    kv = 8 * GIB
    grant = grant_memory(OPT, ENGINE, H100.memory_bytes, 0, 0.3, kv)
    assert grant.kv_cache_bytes == kv
    assert grant.reserved_bytes == non_kv_bytes(OPT, ENGINE) + kv


def test_a_third_engine_does_not_fit_and_the_message_names_the_numbers() -> None:
    first = grant_memory(OPT, ENGINE, H100.memory_bytes, 0, 0.45, None)
    second = grant_memory(OPT, ENGINE, H100.memory_bytes, first.reserved_bytes, 0.45, None)
    taken = first.reserved_bytes + second.reserved_bytes
    with pytest.raises(SimStartupError) as err:
        grant_memory(OPT, ENGINE, H100.memory_bytes, taken, 0.45, None)
    message = str(err.value)
    free = H100.memory_bytes - GPU_RESERVED_BYTES - taken
    assert "is less than desired GPU memory utilization (0.45, 35.84 GiB)" in message
    assert f"({round(free / GIB, 2)}/79.65 GiB)" in message
    assert "71.68 GiB are reserved by co-located engines" in message


def test_kv_bytes_beyond_the_free_memory_is_an_out_of_memory_error() -> None:
    with pytest.raises(SimStartupError, match=r"CUDA out of memory\. Tried to allocate 80\.0 GiB"):
        grant_memory(OPT, ENGINE, H100.memory_bytes, 0, 0.1, 80 * GIB)


def test_a_share_below_the_weights_leaves_no_cache_blocks() -> None:
    llama = default_model_catalog().get("llama-3.1-8b")
    engine = EngineSettings(max_num_seqs=64, max_model_len=4096)
    with pytest.raises(SimStartupError, match="No available memory for the cache blocks"):
        grant_memory(llama, engine, H100.memory_bytes, 0, 0.15, None)


def test_a_cache_smaller_than_one_max_len_sequence_is_refused_with_an_estimate() -> None:
    engine = EngineSettings(max_num_seqs=64, max_model_len=2048)
    per_block = 16 * kv_bytes_per_token(OPT)
    with pytest.raises(SimStartupError) as err:
        grant_memory(OPT, engine, H100.memory_bytes, 0, 0.5, 10 * per_block)
    message = str(err.value)
    assert "max seq len (2048)" in message
    assert "the estimated maximum model length is 160" in message


def record(engine_id: str, reserved: int, host: str, *, pid: int | None = None) -> EngineRecord:
    now = time.time()
    return EngineRecord(
        engine_id=engine_id,
        pid=pid if pid is not None else os.getpid(),
        host=host,
        port=0,
        served_model_name="m",
        model="opt-1.3b",
        mode="MPS",
        reserved_bytes=reserved,
        started_unix=now,
        updated_unix=now,
        activity=Activity(duty_ratio=0.5, busy_ratio=0.4),
    )


def test_registry_keeps_live_records_and_drops_dead_processes(tmp_path: Path) -> None:
    state = GpuState(tmp_path, "0")
    state.ensure(H100.product)
    state.reserve(lambda records: record("alive", 1, state.host))
    dead_pid = 2**22 + 12345  # above Linux's largest pid_max: no such process
    state.publish(record("dead", 2, state.host, pid=dead_pid))
    ids = [r.engine_id for r in state.records()]
    assert ids == ["alive"]
    assert not (state.path / "engine-dead.json").exists()
    assert state.records(exclude="alive") == []


def test_reservations_see_earlier_ones_under_the_lock(tmp_path: Path) -> None:
    state = GpuState(tmp_path, "0")
    seen: list[int] = []
    for i in range(3):

        def admit(records: list[EngineRecord], i: int = i) -> EngineRecord:
            seen.append(sum(r.reserved_bytes for r in records))
            return record(f"e{i}", 10, state.host)

        state.reserve(admit)
    assert seen == [0, 10, 20]


def test_the_first_simulator_fixes_the_gpu_product(tmp_path: Path) -> None:
    state = GpuState(tmp_path, "3")
    assert state.ensure("NVIDIA-L4") == "NVIDIA-L4"
    assert GpuState(tmp_path, "3").ensure("NVIDIA-H100-80GB-HBM3") == "NVIDIA-L4"
