"""How planner flags become a vLLM CPU server's command line, and where its build is cached."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from slmpack.dataplane.vllm_cpu import (
    DEFAULT_KV_CACHE_BYTES,
    MODEL_OVERRIDE_ENV,
    PIN_KEYS,
    PYTHON_OVERRIDE_ENV,
    SERVER_MODULE,
    UnsupportedFlagError,
    VllmCpuError,
    VllmCpuInstall,
    cache_key,
    cpu_engine_args,
    install_paths,
    locate_install,
    server_argv,
    server_env,
)
from slmpack.devcluster.binaries import load_versions, repo_root
from slmpack.planner.flags import VllmLaunch, vllm_launch
from slmpack.planner.types import EngineSettings, SharingMode
from slmpack.units import MIB

from .planner_fixtures import GIB, candidate

VERSIONS = {key: f"v-{key.lower()}" for key in PIN_KEYS} | {"VLLM_CPU_VERSION": "0.32.0"}
INSTALL = VllmCpuInstall(Path("/c/venv/bin/python"), Path("/c/model"), Path("/c/vllm-cache"))


def _arg(args: tuple[str, ...], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_the_build_script_and_this_module_agree_on_the_cache_paths(tmp_path: Path) -> None:
    root = repo_root()
    env = {**os.environ, "SLMPACK_CACHE": str(tmp_path), "PYTHON": sys.executable}
    printed = subprocess.run(
        ["bash", str(root / "hack" / "build-vllm-cpu.sh"), "--print"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    script = dict(line.split("=", 1) for line in printed.splitlines())

    paths = install_paths(
        load_versions(root),
        f"{sys.version_info.major}.{sys.version_info.minor}",
        (root / "hack" / "make_tiny_model.py").read_bytes(),
        tmp_path,
    )

    assert Path(script["venv"]) / "bin" / "python" == paths.python
    assert Path(script["model"]) == paths.model_dir


def test_every_pin_and_the_python_version_change_the_key() -> None:
    base = cache_key(VERSIONS, "3.11")
    assert base.startswith("0.32.0-torch")
    assert "-py3.11-" in base
    keys = {cache_key(VERSIONS | {pin: "other"}, "3.11") for pin in PIN_KEYS}
    keys.add(cache_key(VERSIONS, "3.12"))
    assert base not in keys
    assert len(keys) == len(PIN_KEYS) + 1


def test_a_missing_pin_is_named() -> None:
    versions = {k: v for k, v in VERSIONS.items() if k != "TORCH_VERSION"}
    with pytest.raises(VllmCpuError, match="TORCH_VERSION"):
        cache_key(versions, "3.11")


def test_the_model_follows_its_generator_and_the_venv() -> None:
    a = install_paths(VERSIONS, "3.11", b"script", Path("/c"))
    assert install_paths(VERSIONS, "3.11", b"script", Path("/c")) == a
    assert install_paths(VERSIONS, "3.11", b"edited", Path("/c")).model_dir != a.model_dir
    assert install_paths(VERSIONS, "3.12", b"script", Path("/c")).model_dir != a.model_dir


def test_exclusive_plan_keeps_engine_limits_and_drops_the_memory_share() -> None:
    launch = vllm_launch(candidate(10_000, 400, seqs=32, kv_bytes=128 * MIB), 80 * GIB)

    cpu = cpu_engine_args(launch)

    assert _arg(cpu.args, "--max-num-seqs") == "32"
    assert _arg(cpu.args, "--max-model-len") == "2048"
    assert _arg(cpu.args, "--max-num-batched-tokens") == "2048"
    assert _arg(cpu.args, "--dtype") == "bfloat16"
    assert _arg(cpu.args, "--kv-cache-memory-bytes") == str(128 * MIB)
    assert "--gpu-memory-utilization" not in cpu.args
    assert [flag.name for flag in cpu.dropped] == ["--gpu-memory-utilization"]


def test_a_gpu_sized_kv_cache_is_capped() -> None:
    launch = vllm_launch(candidate(10_000, 400, kv_bytes=20 * GIB), 80 * GIB)
    assert _arg(cpu_engine_args(launch).args, "--kv-cache-memory-bytes") == str(512 * MIB)
    capped = cpu_engine_args(launch, kv_cache_limit_bytes=64 * MIB).args
    assert _arg(capped, "--kv-cache-memory-bytes") == str(64 * MIB)


def test_fp8_weights_fall_back_to_the_dtype_but_fp8_kv_stays() -> None:
    c = candidate(10_000, 400)
    fp8 = replace(c, engine=EngineSettings(max_num_seqs=64, weight_dtype="fp8", kv_dtype="fp8"))

    cpu = cpu_engine_args(vllm_launch(fp8, 80 * GIB))

    assert "--quantization" not in cpu.args
    assert _arg(cpu.args, "--dtype") == "bfloat16"
    assert _arg(cpu.args, "--kv-cache-dtype") == "fp8"
    assert ("--quantization", "fp8") in {(f.name, f.value) for f in cpu.dropped}


def test_mps_environment_is_dropped() -> None:
    mps = candidate(10_000, 400, replicas=4, mode=SharingMode.MPS)

    cpu = cpu_engine_args(vllm_launch(mps, 80 * GIB))

    dropped = {flag.name for flag in cpu.dropped}
    assert {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"} <= dropped
    assert not any("MPS" in arg for arg in cpu.args)


def test_unknown_flags_and_variables_need_a_rule() -> None:
    with pytest.raises(UnsupportedFlagError, match="--enable-lora"):
        cpu_engine_args(VllmLaunch(("--enable-lora",), ()))
    with pytest.raises(UnsupportedFlagError, match="CUDA_VISIBLE_DEVICES"):
        cpu_engine_args(VllmLaunch((), (("CUDA_VISIBLE_DEVICES", "0"),)))
    with pytest.raises(UnsupportedFlagError, match="stray"):
        cpu_engine_args(VllmLaunch(("stray",), ()))


def test_flag_equals_value_form_is_read() -> None:
    cpu = cpu_engine_args(VllmLaunch(("--max-model-len=512", "--gpu-memory-utilization=0.5"), ()))
    assert cpu.args == ("--max-model-len", "512")
    assert cpu.dropped[0].value == "0.5"


def test_server_argv_serves_the_tiny_model_with_dummy_weights() -> None:
    argv = server_argv(INSTALL, host="127.0.0.1", port=8123, engine_args=("--max-model-len", "512"))

    assert argv[:3] == (str(INSTALL.python), "-m", SERVER_MODULE)
    assert _arg(argv, "--model") == "/c/model"
    assert _arg(argv, "--load-format") == "dummy"
    assert _arg(argv, "--port") == "8123"
    assert "--enforce-eager" in argv
    assert _arg(argv, "--kv-cache-memory-bytes") == str(DEFAULT_KV_CACHE_BYTES)
    assert argv[-2:] == ("--max-model-len", "512")


def test_server_argv_keeps_an_explicit_kv_size_and_can_compile() -> None:
    argv = server_argv(
        INSTALL,
        host="127.0.0.1",
        port=1,
        engine_args=("--kv-cache-memory-bytes", "1024"),
        enforce_eager=False,
    )
    assert argv.count("--kv-cache-memory-bytes") == 1
    assert "--enforce-eager" not in argv


def test_server_env_is_offline_quiet_and_drops_the_kv_override() -> None:
    env = server_env(INSTALL, {"PATH": "/bin", "VLLM_CPU_KVCACHE_SPACE": "4"}, omp_cpus="1")

    assert env["PATH"] == "/bin"
    assert "VLLM_CPU_KVCACHE_SPACE" not in env
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "1"
    assert env["VLLM_CACHE_ROOT"] == "/c/vllm-cache"


def test_locate_install_names_the_make_target_when_nothing_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLMPACK_CACHE", str(tmp_path))
    with pytest.raises(VllmCpuError, match="make vllm-cpu"):
        locate_install({})


def test_locate_install_takes_overrides(tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.write_text("")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")

    install = locate_install({PYTHON_OVERRIDE_ENV: str(python), MODEL_OVERRIDE_ENV: str(model)})

    assert install.python == python
    assert install.model_dir == model
