"""Operator settings, read once from the environment at startup."""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from slmpack.errors import SlmpackError

#: Upstream vLLM OpenAI server image used when an SLMDeployment names none.
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
#: vLLM plus the slmpack launcher, for Packed pods.
DEFAULT_LAUNCHER_IMAGE = "ghcr.io/slmpack/launcher:0.1.0"


class SettingsError(SlmpackError):
    """An environment variable holds a value the operator cannot use."""


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
    )
