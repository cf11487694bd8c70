"""The NVML backend and the sampling loop against device files.

The `fake_nvml` fixture patches pynvml's own functions with the fake's answers, so the real
backend (`PynvmlBackend()` on the pynvml module) runs unchanged; the device files are in
tests/unit/data/nvml/.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import pynvml
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from slmpack.nodeagent.agent import (
    AgentConfig,
    AnnotationPublisher,
    Backoff,
    Health,
    NodeAgent,
)
from slmpack.nodeagent.fake_nvml import ERROR_CODES, FakeNvml
from slmpack.nodeagent.inventory import ANNOTATION_KEY, parse_inventory_annotation
from slmpack.nodeagent.metrics import SnapshotCollector
from slmpack.nodeagent.nvml import NvmlUnavailableError, PynvmlBackend, nvml_error_name
from slmpack.nodeagent.pods import PodResolver, StaticPodSource
from slmpack.nodeagent.readings import CallError, MigMode

DATA = Path(__file__).parent / "data" / "nvml"
GIB = 1024**3
H100_UUID = "GPU-5f0c2a1e-8d3b-4c7e-9a61-2b8f4d7e1c90"

InstallFake = Callable[[str], FakeNvml]


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> InstallFake:
    """Patch pynvml with a device file; returns the fake, whose ``data`` tests may
    change between passes."""

    def install(name: str) -> FakeNvml:
        fake = FakeNvml.from_file(DATA / name)
        for function, answer in fake.functions().items():
            assert hasattr(pynvml, function), f"pynvml has no {function}"
            monkeypatch.setattr(pynvml, function, answer)
        return fake

    return install


# --- the backend ---------------------------------------------------------------------------------


def test_error_names_are_pynvml_class_names() -> None:
    for name, code in ERROR_CODES.items():
        assert nvml_error_name(pynvml.NVMLError(code)) == name
    assert nvml_error_name(pynvml.NVMLError(9999)) == "Code9999"


def test_h100_reading(fake_nvml: InstallFake) -> None:
    fake_nvml("h100-80gb.json")
    reading = PynvmlBackend().read()
    assert (reading.driver_version, reading.cuda_driver_version) == ("550.90.07", "12.4")
    assert reading.errors == ()
    (gpu,) = reading.gpus
    assert (gpu.index, gpu.uuid, gpu.name) == (0, H100_UUID, "NVIDIA H100 80GB HBM3")
    assert gpu.mig_mode is MigMode.DISABLED
    assert gpu.memory_total_bytes == 85520809984
    assert (gpu.power_mw, gpu.power_limit_mw) == (512345, 700000)
    assert (gpu.sm_utilization_percent, gpu.memory_utilization_percent) == (78, 41)
    assert [p.pid for p in gpu.processes] == [2101, 2102, 2103, 2104, 2199, 2198]
    assert gpu.processes[0].used_memory_bytes == 18 * GIB
    assert gpu.processes[0].gpu_instance_id is None
    assert gpu.utilization_samples is not None
    assert {s.pid: s.sm_percent for s in gpu.utilization_samples}[2101] == 30


def test_utilisation_samples_are_only_those_since_the_last_pass(fake_nvml: InstallFake) -> None:
    fake = fake_nvml("h100-80gb.json")
    backend = PynvmlBackend()
    first = backend.read().gpus[0]
    second = backend.read().gpus[0]
    assert first.utilization_samples
    assert second.utilization_samples
    assert {s.timestamp_us for s in second.utilization_samples} == {20_000_000}
    assert first.energy_mj is not None
    assert second.energy_mj is not None
    assert second.energy_mj - first.energy_mj == 512345 * 10  # 10 s at 512.345 W
    fake.data["devices"][0]["process_utilization"] = []
    assert backend.read().gpus[0].utilization_samples == ()  # NotFound: none, not an error


def test_a100_mig_reading(fake_nvml: InstallFake) -> None:
    fake_nvml("a100-40gb-mig.json")
    reading = PynvmlBackend().read()
    (gpu,) = reading.gpus
    assert gpu.mig_mode is MigMode.ENABLED
    assert [(m.gpu_instance_id, m.profile) for m in gpu.mig_devices] == [
        (2, "3g.20gb"),
        (3, "2g.10gb"),
        (9, "1g.5gb"),
        (10, "1g.5gb+me"),
    ]
    assert gpu.mig_devices[0].memory_total_bytes == 19968 * 1024**2
    assert [(p.pid, p.gpu_instance_id) for p in gpu.processes] == [
        (3101, 2),
        (3102, 3),
        (3103, 10),
    ]
    # NVML gives neither utilisation rates nor per-process samples under MIG.
    assert gpu.sm_utilization_percent is None
    assert gpu.utilization_samples is None
    assert set(reading.errors) == {
        CallError("nvmlDeviceGetUtilizationRates", "NotSupported", "0"),
        CallError("nvmlDeviceGetProcessUtilization", "NotSupported", "0"),
    }


def test_mig_profiles_without_the_right_to_read_gpu_instances(fake_nvml: InstallFake) -> None:
    # Reading GPU instance profiles needs MIG monitoring rights; without, the +me profile is
    # still told apart by its optical-flow engine, and the refusal is not an error.
    fake = fake_nvml("a100-40gb-mig.json")
    fake.data["devices"][0]["errors"]["nvmlDeviceGetGpuInstanceById"] = "NoPermission"
    reading = PynvmlBackend().read()
    profiles = [m.profile for m in reading.gpus[0].mig_devices]
    assert profiles == ["3g.20gb", "2g.10gb", "1g.5gb", "1g.5gb+me"]
    assert not [e for e in reading.errors if e.call == "nvmlDeviceGetGpuInstanceById"]


def test_l4_reading(fake_nvml: InstallFake) -> None:
    fake_nvml("l4.json")
    reading = PynvmlBackend().read()
    (gpu,) = reading.gpus
    assert gpu.name == "NVIDIA L4"
    assert gpu.mig_mode is MigMode.UNSUPPORTED  # NotSupported is the answer, not an error
    assert gpu.utilization_samples == ()
    assert reading.errors == ()


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ("nvmlDeviceGetPowerUsage", "power_mw"),
        ("nvmlDeviceGetEnforcedPowerLimit", "power_limit_mw"),
        ("nvmlDeviceGetTotalEnergyConsumption", "energy_mj"),
        ("nvmlDeviceGetUtilizationRates", "sm_utilization_percent"),
        ("nvmlDeviceGetMemoryInfo", "memory_total_bytes"),
        ("nvmlDeviceGetName", "name"),
        ("nvmlDeviceGetProcessUtilization", "utilization_samples"),
    ],
)
def test_a_call_not_supported_leaves_only_its_value_out(
    fake_nvml: InstallFake, call: str, field: str
) -> None:
    fake = fake_nvml("l4.json")
    fake.data["devices"][0]["errors"] = {call: "NotSupported"}
    reading = PynvmlBackend().read()
    (gpu,) = reading.gpus
    assert getattr(gpu, field) is None
    assert reading.errors == (CallError(call, "NotSupported", "0"),)
    assert gpu.processes  # everything else is still there


def test_a_lost_gpu_is_left_out_and_counted(fake_nvml: InstallFake) -> None:
    fake_nvml("gpu-lost.json")
    reading = PynvmlBackend().read()
    assert [g.index for g in reading.gpus] == [0]
    assert reading.errors == (CallError("nvmlDeviceGetHandleByIndex", "GpuIsLost", "1"),)


def test_a_gpu_lost_after_its_handle_is_left_out(fake_nvml: InstallFake) -> None:
    fake = fake_nvml("gpu-lost.json")
    fake.data["devices"][1]["errors"] = {"nvmlDeviceGetUUID": "GpuIsLost"}
    reading = PynvmlBackend().read()
    assert [g.index for g in reading.gpus] == [0]
    assert reading.errors == (CallError("nvmlDeviceGetUUID", "GpuIsLost", "1"),)


def test_driver_not_loaded_raises_a_clear_error(fake_nvml: InstallFake) -> None:
    fake_nvml("driver-not-loaded.json")
    with pytest.raises(NvmlUnavailableError) as info:
        PynvmlBackend().read()
    assert info.value.call == "nvmlInit"
    assert info.value.error == "DriverNotLoaded"
    assert "is the NVIDIA driver loaded on this node?" in str(info.value)


def test_uninitialized_mid_run_reinitialises_on_the_next_pass(fake_nvml: InstallFake) -> None:
    fake = fake_nvml("h100-80gb.json")
    backend = PynvmlBackend()
    backend.read()
    fake.initialised = False  # NVML was shut down under the agent
    with pytest.raises(NvmlUnavailableError) as info:
        backend.read()
    assert info.value.error == "Uninitialized"
    assert backend.read().gpus  # nvmlInit again, then a normal pass


def test_a_fatal_error_inside_a_gpu_ends_the_pass(fake_nvml: InstallFake) -> None:
    fake = fake_nvml("h100-80gb.json")
    fake.data["devices"][0]["errors"] = {"nvmlDeviceGetPowerUsage": "DriverNotLoaded"}
    with pytest.raises(NvmlUnavailableError, match="nvmlDeviceGetPowerUsage failed"):
        PynvmlBackend().read()


def test_processes_whose_memory_the_driver_withholds(fake_nvml: InstallFake) -> None:
    fake = fake_nvml("l4.json")
    fake.data["devices"][0]["processes"][0]["used_gpu_memory"] = None
    (proc,) = PynvmlBackend().read().gpus[0].processes
    assert proc.used_memory_bytes is None


# --- the sampling loop ---------------------------------------------------------------------------


class FakeWriter:
    def __init__(self) -> None:
        self.writes: list[tuple[str, str]] = []
        self.fail = False

    def apply_annotation(self, key: str, value: str) -> None:
        if self.fail:
            raise ConnectionError("apiserver down")
        self.writes.append((key, value))


class Rig:
    """An agent over a fake with a manual clock."""

    def __init__(self, fake: FakeNvml, annotate: bool = True, with_pods: bool = True) -> None:
        self.fake = fake
        self.now = 0.0
        self.collector = SnapshotCollector()
        self.registry = CollectorRegistry()
        self.registry.register(self.collector)
        self.health = Health(self.clock, stale_after_seconds=30)
        self.writer = FakeWriter()
        pods = fake.pods() or []
        self.agent = NodeAgent(
            AgentConfig(node_name="gpu-node-1", interval_seconds=10, max_backoff_seconds=60),
            PynvmlBackend(),
            fake.cgroup_of,
            self.collector,
            self.health,
            clock=self.clock,
            wall_clock=lambda: 1_700_000_000 + self.now,
            pods=PodResolver(StaticPodSource(pods), self.clock) if with_pods else None,
            publisher=(
                AnnotationPublisher(self.writer, self.clock, Backoff(10, 60)) if annotate else None
            ),
        )

    def clock(self) -> float:
        return self.now

    def step(self) -> float:
        delay = self.agent.run_once()
        self.now += delay
        return delay

    def samples(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        text = generate_latest(self.registry).decode()
        out: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.setdefault(s.name, []).append((dict(s.labels), s.value))
        return out


def by(
    samples: Mapping[str, list[tuple[dict[str, str], float]]], name: str, key: str
) -> dict[str, float]:
    return {labels[key]: value for labels, value in samples.get(name, [])}


def test_h100_energy_is_split_by_sm_share_between_pods(fake_nvml: InstallFake) -> None:
    rig = Rig(fake_nvml("h100-80gb.json"))
    rig.step()
    first = rig.samples()
    assert "slmpack_replica_energy_joules_total" not in first  # one reading is no window yet
    rig.step()
    rig.step()
    s = rig.samples()
    energy = by(s, "slmpack_replica_energy_joules_total", "pod")
    window = 512.345 * 10 * 2  # two windows at the file's power
    sm_total = 30 + 20 + 10 + 15 + 5 + 0
    assert energy == pytest.approx(
        {
            "chat-7d9f8-abcde": window * 30 / sm_total,
            "chat-7d9f8-fghij": window * 20 / sm_total,
            "chat-packed-0": window * 25 / sm_total,  # two engines, one container
        }
    )
    methods = {labels["method"] for labels, _ in s["slmpack_replica_energy_joules_total"]}
    assert methods == {"sm_utilization"}
    # pid 2199 (a host process) and 2198 (a pod the API no longer lists) are unattributed.
    (unattributed,) = s["slmpack_gpu_unattributed_energy_joules_total"]
    assert unattributed[1] == pytest.approx(window * 5 / sm_total)
    assert sum(energy.values()) + unattributed[1] == pytest.approx(window)
    sm = by(s, "slmpack_replica_sm_utilization_ratio", "pod")
    assert sm == pytest.approx(
        {"chat-7d9f8-abcde": 0.3, "chat-7d9f8-fghij": 0.2, "chat-packed-0": 0.25}
    )
    memory = by(s, "slmpack_replica_gpu_memory_bytes", "pod")
    assert memory == {
        "chat-7d9f8-abcde": 18 * GIB,
        "chat-7d9f8-fghij": 18 * GIB,
        "chat-packed-0": 20 * GIB,
    }
    labels = next(
        lbl for lbl, _ in s["slmpack_replica_gpu_memory_bytes"] if lbl["pod"] == "chat-packed-0"
    )
    assert labels == {
        "namespace": "team-b",
        "pod": "chat-packed-0",
        "container": "engines",
        "gpu": "0",
        "UUID": H100_UUID,
        "GPU_I_ID": "",
    }
    # The GPU itself, in base units.
    assert by(s, "slmpack_gpu_power_watts", "gpu") == {"0": 512.345}
    assert by(s, "slmpack_gpu_power_limit_watts", "gpu") == {"0": 700.0}
    assert by(s, "slmpack_gpu_sm_utilization_ratio", "gpu") == {"0": 0.78}
    assert by(s, "slmpack_gpu_memory_utilization_ratio", "gpu") == {"0": 0.41}
    assert by(s, "slmpack_gpu_memory_total_bytes", "gpu") == {"0": 85520809984}
    info = s["slmpack_gpu_info"][0][0]
    assert info["product"] == "NVIDIA-H100-80GB-HBM3"
    assert (info["driver_version"], info["cuda_version"], info["mig_mode"]) == (
        "550.90.07",
        "12.4",
        "disabled",
    )
    assert s["slmpack_node_agent_nvml_up"][0][1] == 1


def test_energy_counters_never_go_down(fake_nvml: InstallFake) -> None:
    rig = Rig(fake_nvml("h100-80gb.json"))
    previous: dict[tuple[tuple[str, str], ...], float] = {}
    for n in range(6):
        if n == 3:  # the replicas go idle: the split falls back to memory
            rig.fake.data["devices"][0]["process_utilization"] = []
        rig.step()
        for labels, value in rig.samples().get("slmpack_replica_energy_joules_total", []):
            key = tuple(sorted(labels.items()))
            assert value >= previous.get(key, 0.0)
            previous[key] = value
    assert {dict(k)["method"] for k in previous} == {"sm_utilization", "memory"}


def test_mig_replicas_are_labelled_by_gpu_instance_and_split_by_memory(
    fake_nvml: InstallFake,
) -> None:
    rig = Rig(fake_nvml("a100-40gb-mig.json"))
    rig.step()
    rig.step()
    s = rig.samples()
    energy = {
        (labels["pod"], labels["GPU_I_ID"], labels["method"]): value
        for labels, value in s["slmpack_replica_energy_joules_total"]
    }
    assert energy == pytest.approx(
        {
            ("mig-large-0", "2", "memory"): 2500 * 8 / 14,
            ("mig-medium-0", "3", "memory"): 2500 * 4 / 14,
            ("mig-small-0", "10", "memory"): 2500 * 2 / 14,
        }
    )
    assert "slmpack_replica_sm_utilization_ratio" not in s  # NVML has no samples under MIG
    assert "slmpack_gpu_sm_utilization_ratio" not in s
    profiles = {
        labels["GPU_I_ID"]: labels["GPU_I_PROFILE"]
        for labels, _ in s["slmpack_gpu_mig_device_info"]
    }
    assert profiles == {"2": "3g.20gb", "3": "2g.10gb", "9": "1g.5gb", "10": "1g.5gb+me"}
    assert by(s, "slmpack_gpu_mig_memory_total_bytes", "GPU_I_ID")["2"] == 19968 * 1024**2
    errors = {
        (lbl["call"], lbl["error"]): v for lbl, v in s["slmpack_node_agent_nvml_errors_total"]
    }
    assert errors == {
        ("nvmlDeviceGetUtilizationRates", "NotSupported"): 2,
        ("nvmlDeviceGetProcessUtilization", "NotSupported"): 2,
    }


def test_l4_idle_replica_gets_the_energy_by_memory(fake_nvml: InstallFake) -> None:
    rig = Rig(fake_nvml("l4.json"))
    rig.step()
    rig.step()
    s = rig.samples()
    ((labels, joules),) = s["slmpack_replica_energy_joules_total"]
    assert (labels["pod"], labels["container"], labels["method"]) == (
        "small-chat-0",
        "vllm",
        "memory",
    )
    assert joules == pytest.approx(16.0 * 10)
    assert by(s, "slmpack_replica_sm_utilization_ratio", "pod") == {"small-chat-0": 0.0}


def test_without_pod_names_everything_is_unattributed(fake_nvml: InstallFake) -> None:
    rig = Rig(fake_nvml("h100-80gb.json"), with_pods=False)
    rig.step()
    rig.step()
    s = rig.samples()
    assert "slmpack_replica_energy_joules_total" not in s
    assert s["slmpack_gpu_unattributed_energy_joules_total"][0][1] == pytest.approx(5123.45)


def test_a_not_supported_call_leaves_its_metric_out_and_counts(fake_nvml: InstallFake) -> None:
    rig = Rig(fake_nvml("l4.json"))
    rig.fake.data["devices"][0]["errors"] = {"nvmlDeviceGetPowerUsage": "NotSupported"}
    rig.step()
    rig.step()
    s = rig.samples()
    assert "slmpack_gpu_power_watts" not in s
    assert "slmpack_gpu_energy_joules_total" in s
    errors = s["slmpack_node_agent_nvml_errors_total"]
    assert errors == [({"call": "nvmlDeviceGetPowerUsage", "error": "NotSupported"}, 2.0)]
    assert rig.health.status() == (True, "ok")


def test_a_lost_gpu_keeps_the_others_reported(fake_nvml: InstallFake) -> None:
    rig = Rig(fake_nvml("gpu-lost.json"))
    rig.step()
    s = rig.samples()
    assert by(s, "slmpack_gpu_memory_total_bytes", "gpu") == {"0": 85520809984}
    assert s["slmpack_node_agent_nvml_errors_total"] == [
        ({"call": "nvmlDeviceGetHandleByIndex", "error": "GpuIsLost"}, 1.0)
    ]
    inventory = parse_inventory_annotation(
        {"metadata": {"annotations": {ANNOTATION_KEY: rig.writer.writes[-1][1]}}}
    )
    assert inventory is not None
    assert [g.index for g in inventory.gpus] == [0]


def test_nvml_unavailable_is_retried_with_backoff_and_reported(fake_nvml: InstallFake) -> None:
    fake = fake_nvml("driver-not-loaded.json")
    rig = Rig(fake)
    delays = [rig.step() for _ in range(4)]
    assert delays == [10, 20, 40, 60]  # doubling from the interval, capped
    ok, message = rig.health.status()
    assert not ok
    assert "nvmlInit failed with DriverNotLoaded" in message
    s = rig.samples()
    assert s["slmpack_node_agent_nvml_up"][0][1] == 0
    assert s["slmpack_node_agent_nvml_errors_total"] == [
        ({"call": "nvmlInit", "error": "DriverNotLoaded"}, 4.0)
    ]
    assert "slmpack_gpu_info" not in s
    assert rig.writer.writes == []
    # The driver comes up: the next pass works and /healthz recovers.
    fake.data = FakeNvml.from_file(DATA / "l4.json").data
    assert rig.step() == 10
    assert rig.health.status() == (True, "ok")
    assert rig.samples()["slmpack_node_agent_nvml_up"][0][1] == 1


def test_health_goes_stale_when_passes_stop(fake_nvml: InstallFake) -> None:
    rig = Rig(fake_nvml("l4.json"))
    assert rig.health.status() == (False, "no sampling pass yet")
    rig.step()
    assert rig.health.status() == (True, "ok")
    rig.now += 60
    ok, message = rig.health.status()
    assert not ok
    assert message.startswith("no sampling pass for")


def test_annotation_is_written_only_when_the_inventory_changes(fake_nvml: InstallFake) -> None:
    rig = Rig(fake_nvml("a100-40gb-mig.json"))
    for _ in range(3):
        rig.step()
    assert len(rig.writer.writes) == 1
    key, value = rig.writer.writes[0]
    assert key == ANNOTATION_KEY
    inventory = parse_inventory_annotation({"metadata": {"annotations": {key: value}}})
    assert inventory is not None
    assert inventory.products == ("NVIDIA-A100-SXM4-40GB",)
    assert [m.profile for m in inventory.gpus[0].mig_devices] == [
        "3g.20gb",
        "2g.10gb",
        "1g.5gb",
        "1g.5gb+me",
    ]
    # A MIG instance goes away: one more write.
    rig.fake.data["devices"][0]["mig_devices"].pop(2)
    rig.step()
    rig.step()
    assert len(rig.writer.writes) == 2
    s = rig.samples()
    assert s["slmpack_node_agent_annotation_writes_total"][0][1] == 2


def test_annotation_write_failures_back_off(fake_nvml: InstallFake) -> None:
    rig = Rig(fake_nvml("l4.json"))
    rig.writer.fail = True
    attempts_at: list[float] = []
    original = rig.writer.apply_annotation

    def counting(key: str, value: str) -> None:
        attempts_at.append(rig.now)
        original(key, value)

    rig.writer.apply_annotation = counting  # type: ignore[method-assign]
    for _ in range(10):
        rig.step()  # a pass every 10 s for 100 s
    assert attempts_at == [0, 10, 30, 70]  # retry after 10, 20, 40 s
    s = rig.samples()
    assert s["slmpack_node_agent_api_errors_total"] == [({"call": "apply_annotation"}, 4.0)]
    rig.writer.fail = False
    for _ in range(6):
        rig.step()
    assert len(rig.writer.writes) == 1
    assert rig.health.status() == (True, "ok")  # API trouble is not NVML trouble


def test_replica_series_end_after_their_pod_is_gone(fake_nvml: InstallFake) -> None:
    rig = Rig(fake_nvml("l4.json"))
    rig.step()
    rig.step()
    assert "slmpack_replica_energy_joules_total" in rig.samples()
    rig.fake.data["devices"][0]["processes"] = []
    for _ in range(95):  # 950 s > the 900 s retention
        rig.step()
    s = rig.samples()
    assert "slmpack_replica_energy_joules_total" not in s
    assert "slmpack_replica_gpu_memory_bytes" not in s


def test_a_pass_that_raises_does_not_stop_the_loop(fake_nvml: InstallFake) -> None:
    rig = Rig(fake_nvml("l4.json"))
    calls: list[int] = []
    stop = threading.Event()

    def broken() -> float:
        calls.append(1)
        if len(calls) == 3:
            stop.set()
        raise RuntimeError("bug")

    rig.agent.run_once = broken  # type: ignore[method-assign]
    rig.agent.config = AgentConfig(node_name="n", interval_seconds=0.001)
    rig.agent.run(stop)
    assert len(calls) == 3
