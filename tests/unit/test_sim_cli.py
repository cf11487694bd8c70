"""The simulators' command lines: vLLM's flags, refusals and exit codes."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog
from slmpack.planner.types import EngineSettings, SharingMode
from slmpack.sim import dcgm, vllm
from slmpack.sim.gpu_readings import PodAttribution
from slmpack.sim.memory_grant import grant_memory
from slmpack.sim.registry import EngineRecord, GpuState
from slmpack.units import GIB

H100 = default_gpu_catalog().get("NVIDIA-H100-80GB-HBM3")


def test_vllm_flags_and_sim_flags_are_parsed() -> None:
    config = vllm.parse_args(
        [
            "facebook/opt-1.3b",
            "--served-model-name",
            "opt",
            "--max_num_seqs=128",
            "--max-model-len",
            "2k",
            "--kv-cache-memory-bytes",
            "4G",
            "--gpu-memory-utilization",
            "0.45",
            "--sim-mode",
            "time-slicing",
            "--enforce-eager",
            "--swap-space",
            "4",
        ]
    )
    assert config.model == "facebook/opt-1.3b"
    assert config.name == "opt"
    assert config.max_num_seqs == 128
    assert config.max_model_len == 2000
    assert config.kv_cache_memory_bytes == 4 * GIB
    assert config.gpu_memory_utilization == 0.45
    assert config.sim_mode is SharingMode.TIME_SLICING
    assert config.ignored_flags == ("--enforce-eager", "--swap-space", "4")


def test_defaults_follow_vllm_for_the_simulated_device() -> None:
    big = vllm.resolve(vllm.parse_args(["--model", "opt-1.3b"]))
    assert (big.engine.max_num_seqs, big.engine.max_num_batched_tokens) == (1024, 8192)
    assert big.engine.max_model_len == 2048  # the model's context
    small = vllm.resolve(vllm.parse_args(["--model", "opt-1.3b", "--sim-gpu", "NVIDIA-L4"]))
    assert (small.engine.max_num_seqs, small.engine.max_num_batched_tokens) == (256, 2048)
    fp8 = vllm.resolve(vllm.parse_args(["--model", "opt-1.3b", "--quantization", "fp8"]))
    assert fp8.engine.weight_dtype == "fp8"
    mig = vllm.resolve(
        vllm.parse_args(
            ["--model", "opt-1.3b", "--sim-mode", "MIG", "--sim-mig-profile", "1g.10gb"]
        )
    )
    assert mig.device_memory_bytes == H100.mig_profile("1g.10gb").memory_bytes
    assert mig.engine.max_num_seqs == 256


def test_dcgm_flags_are_parsed(tmp_path: Path) -> None:
    config = dcgm.parse_args(
        ["--sim-state-dir", str(tmp_path), "--sim-gpu-count", "2", "--pod-attribution", "per-pod"]
    )
    assert config.gpu_count == 2
    assert config.pod_attribution is PodAttribution.PER_POD


def _occupy(state: GpuState, engine_id: str, share: float) -> None:
    model = default_model_catalog().get("opt-1.3b")
    engine = EngineSettings(max_num_seqs=256, max_model_len=2048)
    taken = sum(r.reserved_bytes for r in state.records())
    grant = grant_memory(model, engine, H100.memory_bytes, taken, share, None)
    now = time.time()
    state.publish(
        EngineRecord(
            engine_id=engine_id,
            pid=os.getpid(),
            host=state.host,
            port=0,
            served_model_name="opt",
            model="opt-1.3b",
            mode="MPS",
            reserved_bytes=grant.reserved_bytes,
            started_unix=now,
            updated_unix=now,
        )
    )


def test_the_main_function_refuses_an_engine_that_does_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = GpuState(tmp_path, "0")
    state.ensure(H100.product)
    _occupy(state, "a", 0.45)
    _occupy(state, "b", 0.45)
    argv = [
        "--model",
        "opt-1.3b",
        "--gpu-memory-utilization",
        "0.45",
        "--sim-mode",
        "MPS",
        "--sim-state-dir",
        str(tmp_path),
        "--port",
        "0",
    ]
    assert vllm.vllm_sim_main(argv) == 1
    err = capsys.readouterr().err
    assert "Free memory on device" in err
    assert "(0.45, 35.84 GiB)" in err
    assert len(state.records()) == 2


def test_python_dash_m_exits_non_zero_when_the_gpu_is_too_small() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "slmpack.sim.vllm",
            "--model",
            "llama-3.1-8b",
            "--max-model-len",
            "4096",
            "--sim-gpu",
            "Tesla-T4",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "No available memory for the cache blocks" in result.stderr
