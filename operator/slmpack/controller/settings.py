"""Operator settings, read once from the environment at startup."""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from slmpack.errors import SlmpackError

#: Upstream vLLM OpenAI server image used when an SLMDeployment names none.
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
#: vLLM plus the slmpack launcher, for Packed pods.
DEFAULT_LAUNCHER_IMAGE = "ghcr.io/slmpack/launcher:0.1.0"
#: kube-prometheus-stack's in-cluster Prometheus Service.
DEFAULT_PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"


class SettingsError(SlmpackError):
    """An environment variable holds a value the operator cannot use."""


@dataclass(frozen=True)
class AutotuneSettings:
    """How the autotuner reaches Prometheus and how often it decides."""

    #: Prometheus base URL (SLMPACK_PROMETHEUS_URL); empty turns the autotuner off, and
    #: SLMDeployments that ask for it say so in their Autotuned condition.
    prometheus_url: str = DEFAULT_PROMETHEUS_URL
    #: Bearer token file, re-read on every query (SLMPACK_PROMETHEUS_BEARER_TOKEN_FILE).
    bearer_token_file: Path | None = None
    #: PEM bundle for an https URL (SLMPACK_PROMETHEUS_CA_FILE), or skip verification
    #: (SLMPACK_PROMETHEUS_INSECURE_SKIP_VERIFY=true; test clusters only).
    ca_file: Path | None = None
    insecure_skip_verify: bool = False
    #: Per-query timeout (SLMPACK_PROMETHEUS_TIMEOUT_SECONDS).
    timeout_seconds: float = 10.0
    #: Read the shipped recording rules instead of raw series (SLMPACK_AUTOTUNE_RECORDED_RULES):
    #: a handful of series per SLMDeployment whatever its replica count. Needs the rules
    #: loaded; their window is fixed at 60 s.
    recorded_rules: bool = False
    #: Seconds between passes over one SLMDeployment (SLMPACK_AUTOTUNE_INTERVAL_SECONDS).
    interval_seconds: float = 60.0
    #: Rate and average window of the queries (SLMPACK_AUTOTUNE_WINDOW_SECONDS); also the
    #: policy's window. Several scrape intervals long.
    window_seconds: int = 60
    #: Warm-up after a change before a window counts (SLMPACK_AUTOTUNE_SETTLE_SECONDS).
    settle_seconds: float = 30.0
    #: Stable time before scaling in (SLMPACK_AUTOTUNE_SCALE_DOWN_STABILISATION_SECONDS).
    scale_down_stabilisation_seconds: float = 300.0
    #: Least time between repacks (SLMPACK_AUTOTUNE_REPACK_COOLDOWN_SECONDS).
    repack_cooldown_seconds: float = 600.0
    #: Decisions kept in status.autotune.history (SLMPACK_AUTOTUNE_HISTORY).
    history: int = 10
    #: SLMDeployments tuned at once (SLMPACK_AUTOTUNE_CONCURRENCY).
    concurrency: int = 8


@dataclass(frozen=True)
class Settings:
    #: Namespaces to watch (SLMPACK_NAMESPACES, comma-separated); empty means all.
    namespaces: tuple[str, ...] = ()
    #: Default images (SLMPACK_VLLM_IMAGE, SLMPACK_LAUNCHER_IMAGE).
    vllm_image: str = DEFAULT_VLLM_IMAGE
    launcher_image: str = DEFAULT_LAUNCHER_IMAGE
    #: Concurrent reconciles (SLMPACK_WORKERS). Each spends most of its time waiting on the API.
    workers: int = 16
    #: Port of /metrics (SLMPACK_METRICS_PORT); 0 turns it off.
    metrics_port: int = 8080
    #: Port of the liveness endpoint /healthz (SLMPACK_HEALTH_PORT); 0 turns it off.
    health_port: int = 8081
    #: First and longest retry delay after an API error (SLMPACK_BACKOFF_BASE_SECONDS,
    #: SLMPACK_BACKOFF_MAX_SECONDS).
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 300.0
    #: kopf peering name for running two operator replicas (SLMPACK_PEERING); empty runs
    #: standalone.
    peering: str = ""
    #: This replica's peering priority (SLMPACK_PRIORITY): the highest live one works, the
    #: others stand by. Default: derived from the instance name, so replicas differ.
    priority: int = 0
    #: Seconds a silent peer is still counted as alive (SLMPACK_PEERING_LIFETIME_SECONDS); a
    #: standby takes over at most this long after the active replica dies.
    peering_lifetime_seconds: int = 60
    #: Name of this operator instance in Events (SLMPACK_INSTANCE, defaults to the pod's
    #: hostname).
    instance: str = "slmpack-operator"
    autotune: AutotuneSettings = field(default_factory=AutotuneSettings)


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean; use true or false")


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name, "")
    if not raw:
        return None
    path = Path(raw)
    if not path.is_file():
        raise SettingsError(f"{name}={raw!r} is not a readable file")
    return path


def load_autotune_settings(env: Mapping[str, str]) -> AutotuneSettings:
    url = env.get("SLMPACK_PROMETHEUS_URL", DEFAULT_PROMETHEUS_URL).strip()
    if url and not url.startswith(("http://", "https://")):
        raise SettingsError(
            f"SLMPACK_PROMETHEUS_URL={url!r} must start with http:// or https:// "
            "(or be empty to turn the autotuner off)"
        )
    window = _int(env, "SLMPACK_AUTOTUNE_WINDOW_SECONDS", 60, 5, 3600)
    recorded = _bool(env, "SLMPACK_AUTOTUNE_RECORDED_RULES", False)
    if recorded and window != 60:
        raise SettingsError(
            "SLMPACK_AUTOTUNE_RECORDED_RULES=true reads 60 s recording rules; "
            f"unset SLMPACK_AUTOTUNE_WINDOW_SECONDS (now {window}) or turn the rules off"
        )
    return AutotuneSettings(
        prometheus_url=url,
        bearer_token_file=_path(env, "SLMPACK_PROMETHEUS_BEARER_TOKEN_FILE"),
        ca_file=_path(env, "SLMPACK_PROMETHEUS_CA_FILE"),
        insecure_skip_verify=_bool(env, "SLMPACK_PROMETHEUS_INSECURE_SKIP_VERIFY", False),
        timeout_seconds=_float(env, "SLMPACK_PROMETHEUS_TIMEOUT_SECONDS", 10.0),
        recorded_rules=recorded,
        interval_seconds=_float(env, "SLMPACK_AUTOTUNE_INTERVAL_SECONDS", 60.0),
        window_seconds=window,
        settle_seconds=_float(env, "SLMPACK_AUTOTUNE_SETTLE_SECONDS", 30.0),
        scale_down_stabilisation_seconds=_float(
            env, "SLMPACK_AUTOTUNE_SCALE_DOWN_STABILISATION_SECONDS", 300.0
        ),
        repack_cooldown_seconds=_float(env, "SLMPACK_AUTOTUNE_REPACK_COOLDOWN_SECONDS", 600.0),
        history=_int(env, "SLMPACK_AUTOTUNE_HISTORY", 10, 1, 100),
        concurrency=_int(env, "SLMPACK_AUTOTUNE_CONCURRENCY", 8, 1, 256),
    )


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}={value} is out of range; use {low}..{high}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number of seconds") from None
    # float() also reads "nan" and "inf"; neither is a delay a timer can wait out.
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{name}={raw!r} must be a finite number greater than zero")
    return value


def default_priority(instance: str) -> int:
    """A stable priority per replica name: two replicas of a Deployment get different ones
    (kopf freezes every peer when priorities tie)."""
    return zlib.crc32(instance.encode()) % 1_000_000


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    instance = env.get("SLMPACK_INSTANCE") or env.get("HOSTNAME") or "slmpack-operator"
    namespaces = tuple(n.strip() for n in env.get("SLMPACK_NAMESPACES", "").split(",") if n.strip())
    base = _float(env, "SLMPACK_BACKOFF_BASE_SECONDS", 0.5)
    cap = _float(env, "SLMPACK_BACKOFF_MAX_SECONDS", 300.0)
    if cap < base:
        raise SettingsError(
            "SLMPACK_BACKOFF_MAX_SECONDS must be at least SLMPACK_BACKOFF_BASE_SECONDS"
        )
    return Settings(
        namespaces=namespaces,
        vllm_image=env.get("SLMPACK_VLLM_IMAGE") or DEFAULT_VLLM_IMAGE,
        launcher_image=env.get("SLMPACK_LAUNCHER_IMAGE") or DEFAULT_LAUNCHER_IMAGE,
        workers=_int(env, "SLMPACK_WORKERS", 16, 1, 256),
        metrics_port=_int(env, "SLMPACK_METRICS_PORT", 8080, 0, 65535),
        health_port=_int(env, "SLMPACK_HEALTH_PORT", 8081, 0, 65535),
        backoff_base_seconds=base,
        backoff_max_seconds=cap,
        peering=env.get("SLMPACK_PEERING", ""),
        priority=_int(
            env, "SLMPACK_PRIORITY", zlib.crc32(instance.encode()) % 1_000_000, 0, 2**31 - 1
        ),
        peering_lifetime_seconds=_int(env, "SLMPACK_PEERING_LIFETIME_SECONDS", 60, 5, 3600),
        instance=instance,
        autotune=load_autotune_settings(env),
    )
