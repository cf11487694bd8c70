"""The demo's local world: control plane, runner nodes, CRDs, operator and Prometheus.

Everything started here is stopped by `stop()`, each part on its own so one failure does not
leave the others running; `launcher.down` last also stops any add-on (runner, Prometheus)
recorded under the cluster's state folder.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slmpack.demo import manifests
from slmpack.devcluster import (
    binaries,
    crd_apply,
    gpu_nodes,
    launcher,
    node_apply,
    prometheus,
    runner,
)
from slmpack.devcluster.errors import DevClusterError
from slmpack.devcluster.operator_process import OperatorProcess

#: Prometheus scrapes every second: windows are short, and rates come from sample timestamps.
SCRAPE_INTERVAL_SECONDS = 1.0
Reporter = Callable[[str], None]


@dataclass(frozen=True)
class WorldConfig:
    cluster: str
    nodes: int
    gpus_per_node: int
    engine: str  # "sim" or "vllm-cpu"
    sim_speedup: float
    address_pool: str
    logs_dir: Path


@dataclass
class World:
    config: WorldConfig
    kubeconfig: Path | None = None
    api_client: client.ApiClient | None = None
    operator: OperatorProcess | None = None
    prometheus_url: str = ""
    started: list[str] = field(default_factory=list)

    @property
    def cluster_dir(self) -> Path:
        return launcher.cluster_dir(self.config.cluster)

    @property
    def runner_dir(self) -> Path:
        return self.cluster_dir / "runner"

    @property
    def prometheus_root(self) -> Path:
        return prometheus.default_root(self.cluster_dir)

    @property
    def api(self) -> client.ApiClient:
        if self.api_client is None:
            raise DevClusterError("The demo cluster is not up")
        return self.api_client

    # --- start ------------------------------------------------------------------------------

    def start_cluster(self, report: Reporter) -> None:
        """A fresh control plane: a left-over demo cluster is stopped first, so the run never
        meets pods or nodes of an earlier one."""
        binaries.build_missing(binaries.resolve_tools())
        if launcher.status(self.config.cluster).exists:
            report(f"Stopping the earlier {self.config.cluster!r} cluster")
            launcher.down(self.config.cluster)
        self.started.append("cluster")
        result = launcher.up(self.config.cluster, report=report)
        self.kubeconfig = Path(result.state.kubeconfig)
        self.api_client = node_apply.new_api_client(result.state.kubeconfig)

    def start_nodes(self, report: Reporter) -> None:
        assert self.kubeconfig is not None
        argv = [
            "--name",
            self.config.cluster,
            "--state-dir",
            str(self.runner_dir),
            "--engine",
            self.config.engine,
            "--sim-speedup",
            f"{self.config.sim_speedup:g}",
            "--address-pool",
            self.config.address_pool,
            "--probe-period",
            "1",
            # Only the H100 pool: the autotune act's nodes have a runner of their own.
            "--nodes-selector",
            f"{gpu_nodes.KUBELET_LABEL}=runner,{gpu_nodes.POOL_LABEL}={manifests.POOL}",
        ]
        self.started.append("runner")
        runner.up(argv, self.runner_dir, report=report)
        fleet = manifests.demo_fleet(self.config.nodes, self.config.gpus_per_node)
        names = node_apply.apply_nodes(self.api, gpu_nodes.build_fleet_nodes(fleet))
        node_apply.wait_nodes_ready(self.api, names, timeout_seconds=60)

    def start_operator(self) -> None:
        assert self.kubeconfig is not None
        for path in sorted((binaries.repo_root() / "crds").glob("*.yaml")):
            crd_apply.apply_crd_file(self.api, path)
        self._create_namespace()
        self.config.logs_dir.mkdir(parents=True, exist_ok=True)
        log = self.config.logs_dir / "operator.log"
        log.unlink(missing_ok=True)
        self.operator = OperatorProcess(
            self.kubeconfig, log, env={"SLMPACK_NAMESPACES": manifests.NAMESPACE}
        )
        self.started.append("operator")
        self.operator.start()

    def start_prometheus(self, report: Reporter) -> None:
        assert self.operator is not None
        self.started.append("prometheus")
        state = prometheus.up(
            self.prometheus_root,
            self.runner_dir / "targets",
            operator_targets=[f"127.0.0.1:{self.operator.metrics_port}"],
            scrape_interval_seconds=SCRAPE_INTERVAL_SECONDS,
            report=report,
        )
        self.prometheus_url = state.url

    def _create_namespace(self) -> None:
        ensure_namespace(self.api, manifests.NAMESPACE)

    # --- SLMDeployments ---------------------------------------------------------------------

    def apply(self, body: dict[str, Any]) -> None:
        client.CustomObjectsApi(self.api).patch_namespaced_custom_object(
            manifests.GROUP,
            manifests.VERSION,
            manifests.NAMESPACE,
            manifests.PLURAL,
            body["metadata"]["name"],
            body,
            field_manager="slmpack-demo",
            force=True,
            _content_type="application/apply-patch+yaml",
        )

    def get(self, name: str) -> dict[str, Any]:
        return cast(
            dict[str, Any],
            client.CustomObjectsApi(self.api).get_namespaced_custom_object(
                manifests.GROUP, manifests.VERSION, manifests.NAMESPACE, manifests.PLURAL, name
            ),
        )

    def delete(self, name: str) -> None:
        try:
            client.CustomObjectsApi(self.api).delete_namespaced_custom_object(
                manifests.GROUP, manifests.VERSION, manifests.NAMESPACE, manifests.PLURAL, name
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def pods(self, name: str) -> list[client.V1Pod]:
        pods: list[client.V1Pod] = (
            client.CoreV1Api(self.api)
            .list_namespaced_pod(
                manifests.NAMESPACE, label_selector=f"{prometheus.SLMDEPLOYMENT_LABEL}={name}"
            )
            .items
        )
        return pods

    def ready_pod_ips(self, name: str) -> list[str]:
        return ready_pod_ips(
            self.api, manifests.NAMESPACE, f"{prometheus.SLMDEPLOYMENT_LABEL}={name}"
        )

    # --- stop -------------------------------------------------------------------------------

    def stop(self, report: Reporter) -> list[str]:
        """Stop what was started, newest first; returns the errors met (never raises)."""
        errors: list[str] = []
        attempt = stopper(report, errors)
        if "prometheus" in self.started:
            attempt("Prometheus", lambda: prometheus.down(self.prometheus_root))
        if "operator" in self.started and self.operator is not None:
            attempt("the operator", self.operator.stop)
        if "runner" in self.started:
            self._keep_runner_log()
            attempt("the runner and its pods", lambda: runner.down(self.runner_dir))
        if self.api_client is not None:
            node_apply.close_api_client(self.api_client)
            self.api_client = None
        if "cluster" in self.started:
            attempt("the control plane", lambda: launcher.down(self.config.cluster))
        self.started.clear()
        return errors

    def _keep_runner_log(self) -> None:
        """The cluster's state folder goes with `down`; its runner log is worth keeping."""
        source = self.runner_dir / "runner.log"
        if source.is_file():
            self.config.logs_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, self.config.logs_dir / "runner.log")


def ensure_namespace(api: client.ApiClient, name: str) -> None:
    """Create the namespace (or keep it) and wait until pods can be created in it."""
    core = client.CoreV1Api(api)
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    except ApiException as exc:
        if exc.status != 409:
            raise
    # Pods are refused until the controller-manager has made the default ServiceAccount (within
    # a second when idle, over 20 s on a busy 2-core machine).
    deadline = time.monotonic() + 90
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            return
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def ready_pod_ips(api: client.ApiClient, namespace: str, label_selector: str = "") -> list[str]:
    """IPs of the pods that pass their readiness probe and are not being deleted."""
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=label_selector)
    ips: list[str] = []
    for pod in pods.items:
        status = pod.status
        if (
            status is None
            or not status.pod_ip
            or (pod.metadata and pod.metadata.deletion_timestamp)
        ):
            continue
        conditions = status.conditions or []
        if any(c.type == "Ready" and c.status == "True" for c in conditions):
            ips.append(str(status.pod_ip))
    return sorted(ips)


def stopper(report: Reporter, errors: list[str]) -> Callable[[str, Callable[[], object]], None]:
    """`attempt(what, action)`: run one stop step, report it, and keep going on failure (the
    error is added to `errors`), so one part failing to stop leaves none of the others running."""

    def attempt(what: str, action: Callable[[], object]) -> None:
        try:
            action()
            report(f"Stopped {what}")
        except Exception as exc:  # keep stopping the rest
            errors.append(f"{what}: {exc}")

    return attempt
