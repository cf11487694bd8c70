"""Simulated GPU nodes whose pods really run, for the integration tests: a pool of nodes played
by a runner of its own (apart from any other runner on the cluster, by a label and a loopback
block), a real Prometheus scraping what the runner starts, and the logs to print on failure."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slmpack.devcluster import binaries, gpu_nodes, node_apply, prometheus
from slmpack.devcluster import runner as runner_mod
from slmpack.devcluster.operator_process import OperatorProcess

from .conftest import LiveCluster
from .kube_helpers import wait_for

GROUP, VERSION, PLURAL = "slmpack.dev", "v1alpha1", "slmdeployments"
CRD_PATH = binaries.repo_root() / "crds" / "slmpack.dev_slmdeployments.yaml"


def apply_crd(api_client: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api_client)
    body = yaml.safe_load(CRD_PATH.read_text())
    ext.patch_custom_resource_definition(
        body["metadata"]["name"],
        body,
        field_manager="slmpack-tests",
        force=True,
        _content_type="application/apply-patch+yaml",
    )

    def established() -> bool:
        got = ext.read_custom_resource_definition(body["metadata"]["name"])
        conditions = (got.status.conditions if got.status else None) or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for(established, "the SLMDeployment CRD to be established")


@contextlib.contextmanager
def runner_nodes(
    live_cluster: LiveCluster,
    runner_dir: Path,
    *,
    label: str,
    tag: str,
    pools: Sequence[Mapping[str, Any]],
    address_pool: str,
    sim_speedup: float,
    runner_args: Sequence[str] = (),
) -> Iterator[list[str]]:
    """Start a runner for nodes labelled `label=tag`, create `pools` of such nodes (kubelet:
    runner), and remove both afterwards. Yields the node names."""
    fleet = gpu_nodes.parse_fleet(
        {
            "pools": [
                {
                    **pool,
                    "kubelet": "runner",
                    "labels": {label: tag, **dict(pool.get("labels") or {})},
                }
                for pool in pools
            ]
        },
        tag,
    )
    api_client = live_cluster.api_client
    names: list[str] = []
    try:
        runner_mod.up(
            [
                "--kubeconfig",
                str(live_cluster.kubeconfig),
                "--state-dir",
                str(runner_dir),
                "--nodes-selector",
                f"{gpu_nodes.KUBELET_LABEL}=runner,{label}={tag}",
                "--address-pool",
                address_pool,
                "--sim-speedup",
                f"{sim_speedup:g}",
                *runner_args,
            ],
            runner_dir,
        )
        names = node_apply.apply_nodes(api_client, gpu_nodes.build_fleet_nodes(fleet))
        node_apply.wait_nodes_ready(api_client, names, timeout_seconds=30)
        yield names
    finally:
        runner_mod.down(runner_dir)
        core = client.CoreV1Api(api_client)
        for name in names:
            try:
                core.delete_node(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise


def start_prometheus(
    root: Path, runner_dir: Path, scrape_interval_seconds: float, **kwargs: Any
) -> prometheus.PrometheusState:
    """Prometheus scraping the runner's targets; a start-up failure fails the test with its log."""
    try:
        return prometheus.up(
            root, runner_dir / "targets", scrape_interval_seconds=scrape_interval_seconds, **kwargs
        )
    except prometheus.PrometheusError as exc:
        pytest.fail(f"Prometheus could not start: {exc}", pytrace=False)


def print_logs(
    runner_dir: Path,
    prometheus_root: Path | None = None,
    operator: OperatorProcess | None = None,
    operator_lines: int = 120,
) -> None:
    print(runner_mod.log_tail(runner_dir, 60))
    for log in sorted(runner_dir.glob("nodes/*/node-agent.log")):
        print(f"--- {log} ---\n" + "\n".join(log.read_text().splitlines()[-40:]))
    if prometheus_root is not None:
        print(prometheus.log_tail(prometheus_root))
    if operator is not None:
        print(f"--- operator log ---\n{operator.log_tail(operator_lines)}")


def failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "rep_call", None)
    return report is None or bool(report.failed)


def query(url: str, promql: str) -> dict[str, float]:
    """An instant vector as {the series' labels as JSON: value}."""
    return {
        json.dumps(sample["metric"], sort_keys=True): float(sample["value"][1])
        for sample in prometheus.query(url, promql)
    }
