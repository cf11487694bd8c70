"""Parsing the launcher config: defaults, placeholders, the startup policy, named errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from slmpack.launcher.app import launcher_main
from slmpack.launcher.config import (
    CONFIG_ENV,
    LauncherConfig,
    LauncherConfigError,
    StartupPolicy,
    load_config,
    parse_config,
)

VLLM = ["vllm", "serve", "Qwen/Qwen2.5-0.5B-Instruct", "--port", "{port}"]


def _config(**fields: Any) -> dict[str, Any]:
    return {"engines": [{"argv": VLLM}, {"argv": VLLM}], **fields}


def test_defaults_put_the_router_on_8000_and_engines_on_8001_up() -> None:
    config = parse_config(json.dumps(_config()), "test")

    assert config.front_port == 8000
    assert [config.engine_port(i) for i in range(2)] == [8001, 8002]
    assert config.engine_argv(1)[-2:] == ["--port", "8002"]


def test_port_placeholder_is_plain_substitution_so_json_arguments_survive() -> None:
    argv = [*VLLM, "--override-generation-config", '{"temperature": 0}']
    config = parse_config(
        json.dumps({"engines": [{"argv": argv, "env": {"ENGINE_URL": "http://x:{port}"}}]}),
        "test",
    )

    assert config.engine_argv(0)[-1] == '{"temperature": 0}'
    env = config.engine_env(0, {"PATH": "/bin", "ENGINE_URL": "overridden"})
    assert env == {"PATH": "/bin", "ENGINE_URL": "http://x:8001"}


@pytest.mark.parametrize(
    ("extra_args", "expected"),
    [
        ([[], []], StartupPolicy.STAGGER),
        ([["--kv-cache-memory-bytes", "4294967296"], []], StartupPolicy.STAGGER),
        ([["--kv-cache-memory-bytes", "1"], ["--kv-cache-memory-bytes=1"]], StartupPolicy.PARALLEL),
    ],
)
def test_auto_startup_is_parallel_only_when_every_engine_fixes_its_kv_cache(
    extra_args: list[list[str]], expected: StartupPolicy
) -> None:
    engines = [{"argv": VLLM + extra} for extra in extra_args]
    config = LauncherConfig.model_validate({"engines": engines})

    assert config.resolved_startup() is expected


def test_explicit_startup_policy_wins_over_auto() -> None:
    config = LauncherConfig.model_validate(_config(startup="Parallel"))

    assert config.resolved_startup() is StartupPolicy.PARALLEL


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ({"engines": []}, "engines"),
        ({"engines": [{"argv": []}]}, "engines.0.argv"),
        ({"engines": [{"argv": VLLM}, {"argv": VLLM, "envv": {}}]}, "engines.1.envv"),
        (_config(front_port=70000), "front_port"),
        (_config(startup="Sometimes"), "startup"),
        (_config(front_port=8002), "front_port 8002 falls inside the engine ports 8001..8002"),
        (_config(first_engine_port=65535), "runs past port 65535"),
        ({}, "engines: Field required"),
    ],
)
def test_errors_name_the_bad_field(raw: dict[str, Any], names: str) -> None:
    with pytest.raises(LauncherConfigError, match="Invalid launcher config in test") as err:
        parse_config(json.dumps(raw), "test")

    assert names in str(err.value)


def test_not_json_says_where() -> None:
    with pytest.raises(LauncherConfigError, match=r"env variable X: not JSON .* line 1"):
        parse_config("{engines:", "env variable X")


def test_load_prefers_the_file_and_falls_back_to_the_env_variable(tmp_path: Path) -> None:
    path = tmp_path / "launcher.json"
    path.write_text(json.dumps(_config(front_port=9000)))
    env = {CONFIG_ENV: json.dumps(_config(front_port=9100))}

    assert load_config(path, env).front_port == 9000
    assert load_config(None, env).front_port == 9100
    with pytest.raises(LauncherConfigError, match=f"set the env variable {CONFIG_ENV}"):
        load_config(None, {})
    with pytest.raises(LauncherConfigError, match="Cannot read launcher config file"):
        load_config(tmp_path / "missing.json", env)
    with pytest.raises(LauncherConfigError, match=f"env variable {CONFIG_ENV}: engines.0.argv"):
        load_config(None, {CONFIG_ENV: '{"engines": [{"argv": "vllm serve"}]}'})


def test_main_exits_2_with_the_field_named_on_a_bad_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(CONFIG_ENV, json.dumps(_config(health_interval_seconds=0)))

    assert launcher_main([]) == 2
    assert "health_interval_seconds: Input should be greater than 0" in capsys.readouterr().err
