"""Operator settings from the environment: defaults, and errors that name the variable."""

from __future__ import annotations

import pytest

from slmpack.controller.settings import (
    DEFAULT_LAUNCHER_IMAGE,
    DEFAULT_VLLM_IMAGE,
    Settings,
    SettingsError,
    default_priority,
    load_settings,
)


def test_empty_environment_gives_the_documented_defaults() -> None:
    settings = load_settings({})

    assert settings == Settings(priority=default_priority("slmpack-operator"))
    assert settings.namespaces == ()
    assert (settings.vllm_image, settings.launcher_image) == (
        DEFAULT_VLLM_IMAGE,
        DEFAULT_LAUNCHER_IMAGE,
    )
    assert (settings.workers, settings.metrics_port, settings.health_port) == (16, 8080, 8081)
    assert (settings.backoff_base_seconds, settings.backoff_max_seconds) == (0.5, 300.0)
    assert (settings.peering, settings.instance) == ("", "slmpack-operator")


def test_empty_values_mean_the_default() -> None:
    env = dict.fromkeys(("SLMPACK_WORKERS", "SLMPACK_VLLM_IMAGE", "SLMPACK_NAMESPACES"), "")
    assert load_settings(env) == Settings(priority=default_priority("slmpack-operator"))


def test_replicas_get_distinct_priorities_unless_pinned() -> None:
    first = load_settings({"HOSTNAME": "slmpack-operator-7d9f-abcde"}).priority
    second = load_settings({"HOSTNAME": "slmpack-operator-7d9f-fghij"}).priority
    assert first != second
    assert load_settings({"HOSTNAME": "x", "SLMPACK_PRIORITY": "42"}).priority == 42
    with pytest.raises(SettingsError, match="SLMPACK_PRIORITY"):
        load_settings({"SLMPACK_PRIORITY": "-1"})


def test_values_are_read() -> None:
    settings = load_settings(
        {
            "SLMPACK_NAMESPACES": " team-a, ,team-b ",
            "SLMPACK_VLLM_IMAGE": "my/vllm:1",
            "SLMPACK_LAUNCHER_IMAGE": "my/launcher:1",
            "SLMPACK_WORKERS": "32",
            "SLMPACK_METRICS_PORT": "0",
            "SLMPACK_HEALTH_PORT": "9000",
            "SLMPACK_BACKOFF_BASE_SECONDS": "0.25",
            "SLMPACK_BACKOFF_MAX_SECONDS": "60",
            "SLMPACK_PEERING": "slmpack",
            "SLMPACK_INSTANCE": "operator-1",
        }
    )

    assert settings.namespaces == ("team-a", "team-b")
    assert (settings.vllm_image, settings.launcher_image) == ("my/vllm:1", "my/launcher:1")
    assert (settings.workers, settings.metrics_port, settings.health_port) == (32, 0, 9000)
    assert (settings.backoff_base_seconds, settings.backoff_max_seconds) == (0.25, 60.0)
    assert (settings.peering, settings.instance) == ("slmpack", "operator-1")


def test_instance_falls_back_to_the_pod_hostname() -> None:
    assert load_settings({"HOSTNAME": "slmpack-7d9f"}).instance == "slmpack-7d9f"
    both = {"HOSTNAME": "slmpack-7d9f", "SLMPACK_INSTANCE": "mine"}
    assert load_settings(both).instance == "mine"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SLMPACK_WORKERS", "eight"),
        ("SLMPACK_WORKERS", "0"),
        ("SLMPACK_WORKERS", "257"),
        ("SLMPACK_WORKERS", "2.5"),
        ("SLMPACK_METRICS_PORT", "-1"),
        ("SLMPACK_METRICS_PORT", "65536"),
        ("SLMPACK_HEALTH_PORT", "http"),
        ("SLMPACK_BACKOFF_BASE_SECONDS", "soon"),
        ("SLMPACK_BACKOFF_BASE_SECONDS", "0"),
        ("SLMPACK_BACKOFF_BASE_SECONDS", "-1"),
        ("SLMPACK_BACKOFF_BASE_SECONDS", "nan"),
        ("SLMPACK_BACKOFF_MAX_SECONDS", "inf"),
        ("SLMPACK_BACKOFF_MAX_SECONDS", "0.1"),  # below the 0.5 s base
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})


def test_bad_value_error_shows_the_value() -> None:
    with pytest.raises(SettingsError, match="'eight'"):
        load_settings({"SLMPACK_WORKERS": "eight"})
