"""Prometheus' config and the file_sd targets the runner writes (pure, plus one file write)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from slmpack.devcluster import binaries, prometheus
from slmpack.devcluster.prometheus import PodTarget, PrometheusError

ANNOTATED = {"prometheus.io/scrape": "true", "prometheus.io/port": "8000"}


def test_every_job_reads_its_file_at_the_chosen_interval(tmp_path: Path) -> None:
    config = prometheus.build_config(tmp_path / "targets", tmp_path / "operator.json", 5)

    assert config["global"]["scrape_interval"] == "5s"
    assert config["global"]["scrape_timeout"] == "4s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"vllm", "dcgm", "slmpack-node-agent", "slmpack-operator", "prometheus"}
    assert jobs["vllm"]["file_sd_configs"][0]["files"] == [str(tmp_path / "targets" / "pods.json")]
    assert jobs["dcgm"]["file_sd_configs"][0]["files"] == [str(tmp_path / "targets" / "dcgm.json")]
    assert jobs["slmpack-operator"]["file_sd_configs"][0]["files"] == [
        str(tmp_path / "operator.json")
    ]


def test_short_intervals_keep_the_timeout_below_the_interval(tmp_path: Path) -> None:
    config = prometheus.build_config(tmp_path, tmp_path / "o.json", 1.5)

    assert config["global"]["scrape_interval"] == "1500ms"
    assert config["global"]["scrape_timeout"] == "1200ms"
    with pytest.raises(PrometheusError, match="positive"):
        prometheus.build_config(tmp_path, tmp_path / "o.json", 0)


def test_rendered_yaml_scrapes_prometheus_on_its_own_port(tmp_path: Path) -> None:
    config = prometheus.build_config(tmp_path, tmp_path / "o.json")
    document = yaml.safe_load(prometheus.render_config(config, 41234))

    job = next(j for j in document["scrape_configs"] if j["job_name"] == "prometheus")
    assert job["static_configs"] == [{"targets": ["127.0.0.1:41234"]}]
    assert config["scrape_configs"][-1]["static_configs"] == [{"targets": ["localhost:9090"]}]


def test_only_annotated_pods_become_targets_labelled_for_queries() -> None:
    labels = {"slmpack.dev/deployment": "chat"}
    target = prometheus.pod_target(
        "127.64.0.2", "ns", "chat-0", "run-0", labels, ANNOTATED, "launcher", [8000]
    )
    assert target == PodTarget(
        "127.64.0.2", 8000, "/metrics", "ns", "chat-0", "run-0", "chat", "launcher"
    )
    assert prometheus.pod_target("127.64.0.3", "ns", "x", "n", {}, {}, "c", [8000]) is None
    custom = {"prometheus.io/scrape": "true", "prometheus.io/path": "/stats"}
    other = prometheus.pod_target("127.64.0.4", "ns", "y", "n", {}, custom, "c", [9000])
    assert other is not None
    assert (other.port, other.path) == (9000, "/stats")

    (group,) = prometheus.pod_targets_document([target])
    assert group["targets"] == ["127.64.0.2:8000"]
    assert group["labels"] == {
        "namespace": "ns",
        "pod": "chat-0",
        "node": "run-0",
        "container": "launcher",
        "slmpack_dev_deployment": "chat",
        "__metrics_path__": "/metrics",
    }


def test_node_and_static_target_documents() -> None:
    assert prometheus.node_targets_document({"b": "127.64.1.1:9400", "a": "127.64.0.1:9400"}) == [
        {"targets": ["127.64.0.1:9400"], "labels": {"node": "a"}},
        {"targets": ["127.64.1.1:9400"], "labels": {"node": "b"}},
    ]
    assert prometheus.static_targets_document([]) == []
    assert prometheus.static_targets_document(["127.0.0.1:8080"]) == [
        {"targets": ["127.0.0.1:8080"], "labels": {}}
    ]


def test_targets_are_rewritten_only_when_they_change(tmp_path: Path) -> None:
    path = tmp_path / "t" / "pods.json"
    document = prometheus.node_targets_document({"a": "127.64.0.1:9400"})

    assert prometheus.write_targets(path, document) is True
    assert prometheus.write_targets(path, document) is False
    assert json.loads(path.read_text()) == document
    assert not list(path.parent.glob(".*.tmp"))


def test_the_binary_is_cached_by_its_pinned_version() -> None:
    versions = binaries.load_versions()

    assert prometheus.VERSION_KEY in versions
    expected = binaries.cache_dir() / f"prometheus-{versions['PROMETHEUS_VERSION']}" / "prometheus"
    assert prometheus.pinned_binary() == expected


def test_the_node_agents_are_scraped_keeping_their_replica_labels(tmp_path: Path) -> None:
    config = prometheus.build_config(tmp_path / "targets", tmp_path / "operator.json")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}

    agent = jobs[prometheus.NODE_AGENT_JOB]
    assert agent["file_sd_configs"][0]["files"] == [
        str(tmp_path / "targets" / prometheus.NODE_AGENT_TARGETS_FILE)
    ]
    # The replica series carry the vLLM pod's namespace and pod: not renamed exported_*.
    assert agent["honor_labels"] is True
    assert "honor_labels" not in jobs["vllm"]
