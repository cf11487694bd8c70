"""The node agent over the local world's SIMULATED NVML: readings from the simulated engines'
records (as dcgm-sim reads them), and processes mapped to pods by the runner's marker."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.devcluster.podexec import RUNNER_POD_ENV
from slmpack.nodeagent.agent import AgentConfig, Health, NodeAgent
from slmpack.nodeagent.app import build_parser
from slmpack.nodeagent.attribution import Method
from slmpack.nodeagent.cgroups import ContainerRef
from slmpack.nodeagent.inventory import inventory_from_reading
from slmpack.nodeagent.metrics import SnapshotCollector
from slmpack.nodeagent.pods import PodResolver, StaticPodSource
from slmpack.nodeagent.readings import MigMode
from slmpack.nodeagent.sim_nvml import (
    SimMigDevice,
    SimNvmlConfig,
    SimulatedNvml,
    pod_uid_from_environ,
    runner_pod_locator,
)
from slmpack.sim.engine import SimClock
from slmpack.sim.gpu_readings import GpuIdentity
from slmpack.sim.registry import Activity, EngineRecord, GpuState

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-40GB"
GIB = 1024**3
MIB = 1024**2
#: A record counts while its pid lives: this test process stands in for the engines.
PID = os.getpid()


class Wall:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _record(
    engine: str, pid: int, reserved: int, busy: float, now: float, **fields: Any
) -> EngineRecord:
    return EngineRecord(
        engine_id=engine,
        pid=pid,
        host=GpuState(Path("."), "0").host,
        port=8000,
        served_model_name="opt",
        model="opt-1.3b",
        mode="Packed",
        reserved_bytes=reserved,
        started_unix=now,
        updated_unix=now,
        activity=Activity(
            duty_ratio=busy, busy_ratio=busy, dram_bytes_per_s=busy * 1e12, flops_per_s=busy * 1e14
        ),
        **fields,
    )


def _backend(
    tmp_path: Path, wall: Wall, product: str = H100, **fields: Any
) -> tuple[SimulatedNvml, Wall]:
    clock = SimClock(10.0, wall=wall)
    config = SimNvmlConfig(tmp_path, gpu=product, hostname="node-a", speedup=10.0, **fields)
    return SimulatedNvml(config, clock=clock, wall_clock=wall), wall


def test_a_pass_reads_the_engines_as_nvml_would(tmp_path: Path) -> None:
    wall = Wall()
    state = GpuState(tmp_path, "0")
    state.ensure(H100)
    # Records live while their pid does: this process stands in for both engines.
    state.publish(_record("a", PID, 20 * GIB, 0.6, wall.now))
    state.publish(_record("b", PID, 10 * GIB, 0.0, wall.now))
    backend, _ = _backend(tmp_path, wall)

    first = backend.read()
    wall.now += 2.0
    (gpu,) = backend.read().gpus

    spec = default_gpu_catalog().get(H100)
    assert first.driver_version
    assert first.cuda_driver_version == "12.4"
    assert gpu.uuid == GpuIdentity.simulated(spec, "node-a", 0).uuid  # joins dcgm-sim's
    assert inventory_from_reading(first).gpus[0].product == H100
    assert gpu.memory_total_bytes == spec.memory_bytes
    assert gpu.memory_used_bytes == 30 * GIB + 512 * MIB
    assert gpu.mig_mode is MigMode.DISABLED
    assert [(p.pid, p.used_memory_bytes) for p in gpu.processes] == [
        (PID, 20 * GIB),
        (PID, 10 * GIB),
    ]
    # Only the busy engine has a sample: NVML gives none for processes that did not run.
    assert gpu.utilization_samples is not None
    assert [(s.pid, s.sm_percent) for s in gpu.utilization_samples] == [(PID, 60)]
    assert gpu.sm_utilization_percent == 60
    # 2 wall seconds at 10x: 20 simulated seconds of the power read at the first pass.
    before = first.gpus[0]
    assert before.energy_mj is not None
    assert gpu.energy_mj is not None
    assert before.power_mw is not None
    assert gpu.energy_mj - before.energy_mj == pytest.approx(20 * before.power_mw, rel=1e-3)
    assert gpu.power_mw is not None
    assert gpu.power_mw > spec.idle_watts * 1000
    assert gpu.power_limit_mw == round(spec.tdp_watts * 1000)


def test_the_reported_total_may_be_below_the_catalogues(tmp_path: Path) -> None:
    backend, _ = _backend(tmp_path, Wall(), memory_total_mib=80_000)

    (gpu,) = backend.read().gpus

    assert gpu.memory_total_bytes == 80_000 * MIB
    assert inventory_from_reading(backend.read()).gpus[0].memory_bytes == 80_000 * MIB


def test_mig_devices_hold_their_engines_without_samples(tmp_path: Path) -> None:
    wall = Wall()
    state = GpuState(tmp_path, "0")
    state.ensure(A100)
    state.publish(_record("m", PID, 3 * GIB, 0.5, wall.now, mig_profile="1g.5gb", mig_instance=1))
    devices = tuple(SimMigDevice.parse(f"0:1g.5gb:{i}") for i in range(2))
    backend, _ = _backend(tmp_path, wall, A100, mig_devices=devices)

    (gpu,) = backend.read().gpus

    assert gpu.mig_mode is MigMode.ENABLED
    assert gpu.utilization_samples is None
    assert [(d.gpu_instance_id, d.profile) for d in gpu.mig_devices] == [
        (1, "1g.5gb"),
        (2, "1g.5gb"),
    ]
    held = {d.gpu_instance_id: d.memory_used_bytes for d in gpu.mig_devices}
    assert held == {1: 0, 2: 3 * GIB}
    assert [(p.pid, p.gpu_instance_id) for p in gpu.processes] == [(PID, 2)]
    profile = default_gpu_catalog().get(A100).mig_profile("1g.5gb")
    assert inventory_from_reading(backend.read()).gpus[0].mig_devices[0].memory_bytes == (
        profile.memory_bytes
    )


def test_the_runner_marker_names_the_pod_and_only_the_pod(tmp_path: Path) -> None:
    uid = "0b6f3a2e-4c1d-4e8f-9a7b-2c3d4e5f6a7b"
    assert pod_uid_from_environ({RUNNER_POD_ENV: uid}) == ContainerRef(uid, None)
    assert pod_uid_from_environ({RUNNER_POD_ENV: "node:node-a"}) is None  # dcgm-sim, agent
    assert pod_uid_from_environ({"PATH": "/bin"}) is None

    proc = tmp_path / "proc"
    (proc / "41").mkdir(parents=True)
    (proc / "41" / "environ").write_bytes(f"PATH=/bin\0{RUNNER_POD_ENV}={uid}\0".encode())
    locate = runner_pod_locator(proc)
    assert locate(41) == ContainerRef(uid, None)
    assert locate(42) is None  # gone


def _pod(uid: str, name: str) -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "namespace": "team-a", "name": name},
        "spec": {"containers": [{"name": "launcher"}]},
    }


def test_the_agent_attributes_a_packed_pods_engines_to_the_pod(tmp_path: Path) -> None:
    """Two engines of one Packed pod and one of another pod share GPU 0; the agent's energy
    goes to the pods by their SM samples, through the runner's marker and the pod list."""
    wall = Wall()
    state = GpuState(tmp_path / "sim", "0")
    state.ensure(H100)
    # Three engine pids that do not exist, so the registry would drop their records: the
    # backend is handed the records directly, and a fake /proc carries their markers.
    pids = {101: "uid-packed", 102: "uid-packed", 103: "uid-other"}
    proc = tmp_path / "proc"
    for pid, uid in pids.items():
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "environ").write_bytes(f"{RUNNER_POD_ENV}={uid}\0".encode())
    backend, _ = _backend(tmp_path / "sim", wall)
    busy = {101: 0.3, 102: 0.3, 103: 0.6}
    original = backend._read_gpu

    def read_gpu(index: int, records: list[EngineRecord], now_unix: float, now_s: float) -> Any:
        fake = [_record(f"e{p}", p, 5 * GIB, b, now_unix) for p, b in busy.items()]
        return original(index, fake, now_unix, now_s)

    backend._read_gpu = read_gpu  # type: ignore[method-assign]
    collector = SnapshotCollector()
    agent = NodeAgent(
        AgentConfig(node_name="node-a", interval_seconds=1.0),
        backend,
        cgroups=lambda pid: None,
        collector=collector,
        health=Health(time.monotonic, 30.0),
        clock=wall,
        wall_clock=wall,
        pods=PodResolver(
            StaticPodSource([_pod("uid-packed", "packed-0"), _pod("uid-other", "other-0")]), wall
        ),
        locate=runner_pod_locator(proc),
    )

    agent.run_once()
    wall.now += 1.0
    agent.run_once()

    snapshot = collector._snapshot
    energy = {slot.workload.pod: joules for _, slot, _, joules in snapshot.replica_energy}
    methods = {method for _, _, method, _ in snapshot.replica_energy}
    assert set(energy) == {"packed-0", "other-0"}
    assert methods == {Method.SM_UTILIZATION}
    # Equal SM time: the Packed pod's two engines together weigh as much as the other pod.
    assert energy["packed-0"] == pytest.approx(energy["other-0"], rel=1e-6)
    memory = {s.slot.workload.pod: s.memory_bytes for s in snapshot.replicas}
    assert memory == {"packed-0": 10 * GIB, "other-0": 5 * GIB}
    assert {s.slot.workload.container for s in snapshot.replicas} == {"launcher"}


def test_the_command_line_selects_the_simulation(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "--nvml-sim",
            str(tmp_path),
            "--sim-gpu",
            A100,
            "--sim-gpu-count",
            "2",
            "--sim-memory-mib",
            "40000",
            "--sim-mig-device",
            "1:3g.20gb:0",
        ]
    )
    assert (args.nvml_sim, args.sim_gpu, args.sim_gpu_count) == (tmp_path, A100, 2)
    assert (args.sim_memory_mib, args.sim_mig_device) == (40000, ["1:3g.20gb:0"])
    assert SimMigDevice.parse("1:3g.20gb:0") == SimMigDevice(1, "3g.20gb", 0)
