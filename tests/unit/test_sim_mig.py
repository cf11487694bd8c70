"""Simulated MIG: an instance is a (profile, index) pair, so instances of different profiles
with the same index are separate devices for memory, co-location and dcgm-sim."""

import asyncio
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.planner.perf import default_perf_params
from slmpack.planner.types import SharingMode
from slmpack.sim.errors import SimStartupError
from slmpack.sim.gpu_readings import read_gpu
from slmpack.sim.registry import Activity, EngineRecord, GpuState
from slmpack.sim.vllm import SimServer, VllmSimConfig, start_servers, stop_servers
from slmpack.units import GIB

GPU = "NVIDIA-H100-80GB-HBM3"
H100 = default_gpu_catalog().get(GPU)
PARAMS = default_perf_params()


def mig_engine(state_dir: Path, profile: str, instance: int, **overrides: object) -> VllmSimConfig:
    base = VllmSimConfig(
        model="facebook/opt-1.3b",
        host="127.0.0.1",
        port=0,
        max_num_seqs=16,
        max_model_len=2048,
        max_num_batched_tokens=2048,
        gpu_memory_utilization=0.9,
        sim_gpu=GPU,
        sim_mode=SharingMode.MIG,
        sim_mig_profile=profile,
        sim_mig_instance=instance,
        sim_state_dir=state_dir,
        sim_publish_interval_s=0.02,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def record(engine_id: str, profile: str, instance: int, busy: float, reserved: int) -> EngineRecord:
    now = time.time()
    return EngineRecord(
        engine_id=engine_id,
        pid=os.getpid(),
        host=GpuState(Path("/nonexistent"), "0").host,
        port=0,
        served_model_name="m",
        model="opt-1.3b",
        mode=SharingMode.MIG.value,
        reserved_bytes=reserved,
        mig_profile=profile,
        mig_instance=instance,
        pod=f"pod-{engine_id}",
        started_unix=now,
        updated_unix=now,
        activity=Activity(duty_ratio=busy, busy_ratio=busy),
    )


def test_dcgm_reads_same_index_instances_of_two_profiles_apart() -> None:
    records = [
        record("a", "1g.10gb", 0, busy=0.7, reserved=8 * GIB),
        record("b", "2g.20gb", 0, busy=0.4, reserved=16 * GIB),
    ]
    reading = read_gpu(H100, records, PARAMS, time.time())
    instances = {(i.mig_profile, i.mig_instance): i for i in reading.instances}
    assert set(instances) == {("1g.10gb", 0), ("2g.20gb", 0)}
    assert instances[("1g.10gb", 0)].busy_ratio == pytest.approx(0.7)
    assert instances[("2g.20gb", 0)].fb_used_mib == 16 * 1024
    assert reading.gpu.busy_ratio == pytest.approx(0.7 * 1 / 7 + 0.4 * 2 / 7)


async def test_same_index_instances_of_two_profiles_keep_their_own_memory_and_pace(
    tmp_path: Path,
) -> None:
    small, large = mig_engine(tmp_path, "1g.10gb", 0), mig_engine(tmp_path, "2g.20gb", 0)
    # Each asks for 90% of its own instance: both fit, as they would on separate devices.
    servers = await start_servers([small, large])
    try:
        # A busy engine on 2g.20gb #0 must not slow 1g.10gb #0, nor the other way round.
        state = GpuState(tmp_path, "0")
        state.publish(record("busy", "2g.20gb", 0, busy=0.9, reserved=0))
        await asyncio.sleep(0.2)
        small_runner, large_runner = (s.runner for s in servers)
        assert small_runner is not None
        assert large_runner is not None
        assert small_runner._neighbour_duties == ()
        assert large_runner._neighbour_duties == (0.9,)
        # A second engine on 1g.10gb #0 shares that instance's memory, which is taken.
        with pytest.raises(SimStartupError, match="Free memory on device"):
            await SimServer(mig_engine(tmp_path, "1g.10gb", 0)).start()
    finally:
        await stop_servers(servers)


async def test_instances_beyond_the_gpus_slices_are_refused(tmp_path: Path) -> None:
    # Two 3g.40gb instances take all 8 memory slices; a 1g.10gb does not fit beside them.
    halves = [mig_engine(tmp_path, "3g.40gb", i, gpu_memory_utilization=0.3) for i in (0, 1)]
    servers = await start_servers(halves)
    try:
        with pytest.raises(SimStartupError, match="9 of 8 memory slices"):
            await SimServer(mig_engine(tmp_path, "1g.10gb", 0, gpu_memory_utilization=0.5)).start()
    finally:
        await stop_servers(servers)
