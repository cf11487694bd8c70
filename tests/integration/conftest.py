"""Fixtures for tests against a real control plane with simulated GPU nodes.

By default a dedicated cluster (its own name, state directory and free ports, so it never
clashes with `make cluster-up`) is built if needed, started once per session with the default
fleet of hack/fleets/default.yaml, and stopped at the end. `SLMPACK_TEST_KUBECONFIG=<path>`
points the same tests at an existing cluster instead; nothing is then started or stopped.

A cluster that cannot start fails the tests, with the tail of every component log.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from slmpack.devcluster import binaries, gpu_nodes, launcher, node_apply
from slmpack.devcluster.errors import DevClusterError

from .kube_helpers import wait_for_default_service_account

TEST_CLUSTER_PREFIX = "pytest-"
#: Generous: a cold 2-core CI machine starts the control plane in well under this.
START_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class LiveCluster:
    """A reachable cluster: its admin kubeconfig and an API client built from it."""

    kubeconfig: Path
    api_client: client.ApiClient
    #: Fleet the tests may rely on (the default fleet when the session started the cluster).
    fleet: gpu_nodes.Fleet
    #: Name of the cluster this session started; None for an external cluster, whose
    #: control-plane processes the tests cannot stop.
    local_name: str | None = None


def _default_fleet() -> gpu_nodes.Fleet:
    path = binaries.repo_root() / "hack" / "fleets" / "default.yaml"
    return gpu_nodes.parse_fleet_yaml(path.read_text(encoding="utf-8"), str(path))


def _remove_stale_test_clusters() -> None:
    """Clean up after test sessions that were killed before their teardown ran."""
    root = binaries.cache_dir() / "cluster"
    if not root.is_dir():
        return
    for state_dir in root.glob(f"{TEST_CLUSTER_PREFIX}*"):
        owner_pid = state_dir.name.removeprefix(TEST_CLUSTER_PREFIX)
        if owner_pid.isdigit() and Path(f"/proc/{owner_pid}").exists():
            continue  # its pytest session still runs
        launcher.down(state_dir.name)
        shutil.rmtree(state_dir, ignore_errors=True)


def _start_session_cluster(name: str, fleet: gpu_nodes.Fleet) -> launcher.UpResult:
    binaries.build_missing(binaries.resolve_tools())
    result = launcher.up(name, timeout_seconds=START_TIMEOUT_SECONDS)
    api_client = node_apply.new_api_client(result.state.kubeconfig)
    try:
        names = node_apply.apply_nodes(api_client, gpu_nodes.build_fleet_nodes(fleet))
        node_apply.wait_nodes_ready(api_client, names, timeout_seconds=60.0)
    finally:
        node_apply.close_api_client(api_client)
    return result


@pytest.fixture(scope="session")
def live_cluster() -> Iterator[LiveCluster]:
    external = os.environ.get("SLMPACK_TEST_KUBECONFIG", "")
    if external:
        api_client = node_apply.new_api_client(external)
        yield LiveCluster(Path(external), api_client, _default_fleet())
        node_apply.close_api_client(api_client)
        return

    name = f"{TEST_CLUSTER_PREFIX}{os.getpid()}"
    layout = launcher.Layout(launcher.cluster_dir(name))
    fleet = _default_fleet()
    _remove_stale_test_clusters()
    try:
        result = _start_session_cluster(name, fleet)
    except DevClusterError as exc:
        logs = launcher.log_tails(layout)
        launcher.down(name, keep_state=True)
        pytest.fail(
            f"The test cluster did not start: {exc}\n\nComponent logs (kept in {layout.root}):\n"
            f"{logs}",
            pytrace=False,
        )
    api_client = node_apply.new_api_client(result.state.kubeconfig)
    try:
        yield LiveCluster(Path(result.state.kubeconfig), api_client, fleet, local_name=name)
    finally:
        node_apply.close_api_client(api_client)
        launcher.down(name)


@pytest.fixture(scope="session")
def kubeconfig_path(live_cluster: LiveCluster) -> Path:
    return live_cluster.kubeconfig


@pytest.fixture(scope="session")
def api_client(live_cluster: LiveCluster) -> client.ApiClient:
    return live_cluster.api_client


@pytest.fixture
def namespace(api_client: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test (with its default ServiceAccount), deleted afterwards."""
    core = client.CoreV1Api(api_client)
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})

    wait_for_default_service_account(core, name)
    yield name
    core.delete_namespace(name)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test item, so fixtures can print logs on failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
