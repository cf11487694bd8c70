"""The chart's autotuner settings: what reaches the operator's environment, and what is refused."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from slmpack.controller.settings import load_settings

from .test_chart import CHART, REPO, find, helm, kube_version, operator_container, render

SETTINGS_SOURCE = REPO / "operator" / "slmpack" / "controller" / "settings.py"


def _env(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in operator_container(docs)["env"]}


def test_every_slmpack_variable_the_chart_sets_is_one_the_operator_reads() -> None:
    known = set(re.findall(r'"(SLMPACK_[A-Z_]+)"', SETTINGS_SOURCE.read_text()))
    env = _env(render(CHART / "ci" / "04-monitoring-values.yaml"))

    assert {n for n in env if n.startswith("SLMPACK_")} <= known


def test_defaults_reach_the_in_cluster_prometheus_with_raw_queries() -> None:
    env = _env(render())

    assert env["SLMPACK_PROMETHEUS_URL"] == "http://prometheus-operated.monitoring.svc:9090"
    assert env["SLMPACK_AUTOTUNE_RECORDED_RULES"] == "false"
    assert "SLMPACK_PROMETHEUS_CA_FILE" not in env
    settings = load_settings({k: v for k, v in env.items() if "FILE" not in k})
    assert settings.autotune.interval_seconds == 60
    assert settings.autotune.window_seconds == 60


def test_shipped_recording_rules_are_read_when_the_chart_installs_them() -> None:
    env = _env(render(CHART / "ci" / "04-monitoring-values.yaml"))

    assert env["SLMPACK_AUTOTUNE_RECORDED_RULES"] == "true"
    off = _env(
        render(CHART / "ci" / "04-monitoring-values.yaml", **{"autotune.recordedRules": "false"})
    )
    assert off["SLMPACK_AUTOTUNE_RECORDED_RULES"] == "false"


def test_a_ca_secret_is_mounted_and_named_to_the_operator() -> None:
    docs = render(
        **{
            "autotune.prometheus.caSecret.name": "prom-ca",
            "autotune.prometheus.bearerTokenFromServiceAccount": "true",
        }
    )
    env = _env(docs)
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]

    assert env["SLMPACK_PROMETHEUS_CA_FILE"] == "/etc/slmpack/prometheus-ca/ca.crt"
    assert env["SLMPACK_PROMETHEUS_BEARER_TOKEN_FILE"].endswith("serviceaccount/token")
    volume = next(v for v in pod["volumes"] if v["name"] == "prometheus-ca")
    assert volume["secret"]["secretName"] == "prom-ca"
    mount = next(
        m for m in operator_container(docs)["volumeMounts"] if m["name"] == "prometheus-ca"
    )
    assert mount["readOnly"] is True


def test_network_policy_lets_the_autotuner_reach_prometheus_only_when_it_has_one() -> None:
    docs = render(**{"networkPolicy.enabled": "true"})
    ports = [
        p["port"] for rule in find(docs, "NetworkPolicy")["spec"]["egress"] for p in rule["ports"]
    ]
    assert 9090 in ports

    docs = render(**{"networkPolicy.enabled": "true", "autotune.prometheus.url": ""})
    ports = [
        p["port"] for rule in find(docs, "NetworkPolicy")["spec"]["egress"] for p in rule["ports"]
    ]
    assert 9090 not in ports


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"autotune.prometheus.url": "prometheus:9090"}, "url"),
        ({"autotune.intervalSeconds": "0"}, "intervalSeconds"),
        ({"autotune.recordedRules": "sometimes"}, "recordedRules"),
        (
            {"autotune.recordedRules": "true", "autotune.windowSeconds": "30"},
            "windowSeconds must be 60",
        ),
    ],
)
def test_bad_autotune_values_are_refused_with_the_field_named(
    sets: dict[str, str], message: str
) -> None:
    args = ["template", "rel", str(CHART), "--kube-version", kube_version()]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]

    result = helm(*args, check=False)

    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_dashboard_shows_throughput_per_gpu_energy_packing_and_decisions() -> None:
    docs = render(**{"dashboard.enabled": "true"})
    board = json.loads(find(docs, "ConfigMap")["data"]["slmpack-overview.json"])
    exprs = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in board["panels"]}

    assert "slmpack_autotune_measured_tokens_per_second_per_gpu" in exprs["Throughput per GPU"]
    assert "slmpack_autotune_measured_tokens_per_joule" in exprs["Tokens per joule"]
    assert "slmpack_operator_replicas_per_gpu" in exprs["Replicas per GPU and GPUs"]
    assert "slmpack_autotune_decisions_total" in exprs["Autotuner decisions"]
