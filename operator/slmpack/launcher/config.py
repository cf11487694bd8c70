"""What the launcher runs: the engines of one `Packed` pod, their ports and how they start.

The operator renders this as JSON into a ConfigMap (mounted as a file) or into the env
variable `SLMPACK_LAUNCHER_CONFIG`. Parsing happens once, here; the rest of the launcher works
with the frozen models below.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slmpack.errors import SlmpackError

#: Env variable holding the whole config as JSON, used when no `--config` file is given.
CONFIG_ENV = "SLMPACK_LAUNCHER_CONFIG"
#: Replaced by the engine's port in argv and env values. Plain substitution, not
#: `str.format`, because vLLM arguments may carry JSON with braces of their own.
PORT_PLACEHOLDER = "{port}"
#: The vLLM flag that fixes an engine's KV cache size instead of profiling free memory.
KV_CACHE_BYTES_FLAG = "--kv-cache-memory-bytes"


class LauncherConfigError(SlmpackError):
    """The launcher config is missing or invalid; whoever renders it (the operator) can fix it."""


class StartupPolicy(StrEnum):
    """How the engines of one pod start.

    vLLM sizes its KV cache from the GPU memory it sees free while profiling; co-located
    engines that profile at the same time each count the others' memory as free and
    over-allocate. `--kv-cache-memory-bytes` skips that profiling, so engines carrying it may
    start together.
    """

    #: Parallel when every engine has `--kv-cache-memory-bytes`, else Stagger.
    AUTO = "Auto"
    #: Start all engines at once.
    PARALLEL = "Parallel"
    #: Start engine i+1 only once engine i is healthy (or its startup timed out).
    STAGGER = "Stagger"


class EngineSpec(BaseModel):
    """One vLLM engine (process) in the pod."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Command line, e.g. ["vllm", "serve", "<model>", "--port", "{port}", ...].
    argv: tuple[str, ...] = Field(min_length=1)
    #: Extra environment on top of the launcher's own; values may contain `{port}`.
    env: dict[str, str] = Field(default_factory=dict)

    def has_fixed_kv_cache(self) -> bool:
        return any(
            a == KV_CACHE_BYTES_FLAG or a.startswith(KV_CACHE_BYTES_FLAG + "=") for a in self.argv
        )


class LauncherConfig(BaseModel):
    """The whole launcher config. Engine i listens on `first_engine_port + i`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engines: tuple[EngineSpec, ...] = Field(min_length=1)
    #: Address the router listens on.
    host: str = "0.0.0.0"
    #: Address the router and health probes use to reach the engines (their `--host`).
    engine_host: str = "127.0.0.1"
    #: The router's port: the only port the Service targets.
    front_port: int = Field(default=8000, ge=1, le=65535)
    first_engine_port: int = Field(default=8001, ge=1, le=65535)
    startup: StartupPolicy = StartupPolicy.AUTO
    health_interval_seconds: float = Field(default=2.0, gt=0)
    health_timeout_seconds: float = Field(default=2.0, gt=0)
    #: Longest a Stagger start waits for one engine before starting the next anyway. vLLM may
    #: download weights and compile CUDA graphs first, hence minutes.
    startup_timeout_seconds: float = Field(default=900.0, gt=0)
    restart_backoff_initial_seconds: float = Field(default=1.0, gt=0)
    restart_backoff_max_seconds: float = Field(default=60.0, gt=0)
    #: Time between SIGTERM and SIGKILL at shutdown; keep below the pod's
    #: terminationGracePeriodSeconds so the kubelet's own SIGKILL does not come first.
    shutdown_grace_seconds: float = Field(default=25.0, ge=0)
    #: Limit on opening a connection to an engine; a refused or slow connect is retried on
    #: another engine. Generation itself has no limit (long completions are legitimate).
    connect_timeout_seconds: float = Field(default=2.0, gt=0)
    metrics_timeout_seconds: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _ports_do_not_clash(self) -> LauncherConfig:
        last = self.first_engine_port + len(self.engines) - 1
        if last > 65535:
            raise ValueError(
                f"first_engine_port {self.first_engine_port} + {len(self.engines)} engines "
                "runs past port 65535"
            )
        if self.first_engine_port <= self.front_port <= last:
            raise ValueError(
                f"front_port {self.front_port} falls inside the engine ports "
                f"{self.first_engine_port}..{last}"
            )
        if self.restart_backoff_max_seconds < self.restart_backoff_initial_seconds:
            raise ValueError(
                "restart_backoff_max_seconds must be at least restart_backoff_initial_seconds"
            )
        return self

    def engine_port(self, index: int) -> int:
        return self.first_engine_port + index

    def engine_argv(self, index: int) -> list[str]:
        port = str(self.engine_port(index))
        return [a.replace(PORT_PLACEHOLDER, port) for a in self.engines[index].argv]

    def engine_env(self, index: int, base: Mapping[str, str]) -> dict[str, str]:
        """The engine's full environment: `base` (the launcher's own) plus the engine's env."""
        port = str(self.engine_port(index))
        extra = {k: v.replace(PORT_PLACEHOLDER, port) for k, v in self.engines[index].env.items()}
        return {**base, **extra}

    def resolved_startup(self) -> StartupPolicy:
        """Parallel or Stagger; Auto resolved from the engines' arguments."""
        if self.startup is not StartupPolicy.AUTO:
            return self.startup
        if all(e.has_fixed_kv_cache() for e in self.engines):
            return StartupPolicy.PARALLEL
        return StartupPolicy.STAGGER


def _describe(error: ValidationError, source: str) -> str:
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        problems.append(f"{field}: {item['msg']}")
    return f"Invalid launcher config in {source}: " + "; ".join(problems)


def parse_config(text: str, source: str) -> LauncherConfig:
    """Parse JSON text; `source` names where it came from, for the error message."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LauncherConfigError(
            f"Invalid launcher config in {source}: not JSON ({exc.msg} at line {exc.lineno}, "
            f"column {exc.colno})"
        ) from exc
    try:
        return LauncherConfig.model_validate(raw)
    except ValidationError as exc:
        raise LauncherConfigError(_describe(exc, source)) from exc


def load_config(path: Path | None, environ: Mapping[str, str]) -> LauncherConfig:
    """From `path` when given, else from the env variable `SLMPACK_LAUNCHER_CONFIG`."""
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise LauncherConfigError(
                f"Cannot read launcher config file {path}: {exc.strerror}"
            ) from exc
        return parse_config(text, f"file {path}")
    from_env = environ.get(CONFIG_ENV)
    if from_env is None:
        raise LauncherConfigError(
            f"No launcher config: pass --config <file> or set the env variable {CONFIG_ENV} "
            "to the JSON config"
        )
    return parse_config(from_env, f"env variable {CONFIG_ENV}")
