"""Send simulated Node manifests (from `gpu_nodes`) to a cluster and wait for kwok to ready them.

Kept apart from the builders: this is the only part of the fleet code that talks to the API.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from slmpack.devcluster.errors import DevClusterError

FIELD_MANAGER = "slmpack-dev-cluster"
_APPLY = "application/apply-patch+yaml"


def new_api_client(kubeconfig_path: str) -> client.ApiClient:
    """An API client for one kubeconfig, leaving the process-wide default configuration alone."""
    api_client: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig_path
    )
    return api_client


def apply_nodes(api_client: client.ApiClient, nodes: Sequence[dict[str, Any]]) -> list[str]:
    """Create each Node, or bring an existing one to the manifest. Returns the node names.

    A new Node is created with its status in the same request, as a kubelet registers, so
    kwok never sees it without its GPU resources. An existing one is updated with
    server-side apply, on the object and on its status subresource.
    """
    core = client.CoreV1Api(api_client)
    names: list[str] = []
    for node in nodes:
        name = node["metadata"]["name"]
        names.append(name)
        try:
            core.create_node(client.V1Node.model_validate(node), field_manager=FIELD_MANAGER)
            continue
        except ApiException as exc:
            if exc.status != 409:
                raise DevClusterError(
                    f"Creating Node {name} failed: {exc.status} {exc.reason}: {exc.body}"
                ) from exc
        body = {key: node[key] for key in ("apiVersion", "kind", "metadata", "spec")}
        core.patch_node(name, body, field_manager=FIELD_MANAGER, force=True, _content_type=_APPLY)
        status_body = {**body, "status": node["status"]}
        core.patch_node_status(
            name, status_body, field_manager=FIELD_MANAGER, force=True, _content_type=_APPLY
        )
    return names


def ready_node_names(nodes: Sequence[client.V1Node]) -> set[str]:
    """Names of the nodes whose Ready condition is True."""
    names: set[str] = set()
    for node in nodes:
        if node.metadata is None or node.metadata.name is None or node.status is None:
            continue
        conditions = node.status.conditions or []
        if any(c.type == "Ready" and c.status == "True" for c in conditions):
            names.add(node.metadata.name)
    return names


def close_api_client(api_client: client.ApiClient) -> None:
    """Close the client's connection pool (the client's own `close` carries no type hints)."""
    api_client.close()  # type: ignore[no-untyped-call]


def wait_nodes_ready(
    api_client: client.ApiClient, names: Sequence[str], timeout_seconds: float = 60.0
) -> None:
    """Wait until every named Node reports Ready (kwok's node stage sets it)."""
    core = client.CoreV1Api(api_client)
    wanted = set(names)
    deadline = time.monotonic() + timeout_seconds
    while True:
        ready = ready_node_names(core.list_node().items)
        missing = sorted(wanted - ready)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise DevClusterError(
                f"Nodes not Ready after {timeout_seconds:g} s: {', '.join(missing[:10])}. "
                "Is the kwok controller running? Check its log (kwok.log in the cluster's "
                "logs directory)."
            )
        time.sleep(0.2)


def dress_node(api_client: client.ApiClient, node_name: str, manifest: dict[str, Any]) -> None:
    """Make a real node (e.g. a kind worker) look like the simulated `manifest`.

    Copies the GPU and pool labels and the taints, and adds the `nvidia.com/*` extended
    resources to the node's capacity; its kubelet then advertises them as allocatable, as
    when advertising an extended resource by hand. CPU, memory and the host name stay the
    kubelet's.
    """
    core = client.CoreV1Api(api_client)
    labels = {
        key: value
        for key, value in manifest["metadata"]["labels"].items()
        if key != "kubernetes.io/hostname"
    }
    taints = manifest["spec"].get("taints", [])
    core.patch_node(node_name, {"metadata": {"labels": labels}, "spec": {"taints": taints}})
    gpu_capacity = {
        resource: quantity
        for resource, quantity in manifest["status"]["capacity"].items()
        if resource.startswith("nvidia.com/")
    }
    if gpu_capacity:
        core.patch_node_status(node_name, {"status": {"capacity": gpu_capacity}})
