"""The controller's only door to the API: server-side apply, status apply, delete, Events.

The Python client is synchronous; calls run in worker threads so the kopf event loop keeps
serving watches. Every write is counted by kind and verb (the `/metrics` write counters, and
the scale benchmark's writes per SLMDeployment, come from here).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
MERGE_CONTENT_TYPE = "application/merge-patch+json"
REQUEST_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class ResourceKind:
    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        parts = [prefix]
        if self.namespaced and namespace:
            parts += ["namespaces", quote(namespace)]
        parts.append(self.plural)
        if name:
            parts.append(quote(name))
        return "/".join(parts)


KINDS: dict[str, ResourceKind] = {
    k.kind: k
    for k in (
        ResourceKind("apps/v1", "Deployment", "deployments"),
        ResourceKind("v1", "Service", "services"),
        ResourceKind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
        ResourceKind("v1", "ConfigMap", "configmaps"),
        ResourceKind("events.k8s.io/v1", "Event", "events"),
        ResourceKind("slmpack.dev/v1alpha1", "SLMDeployment", "slmdeployments"),
        ResourceKind("v1", "Node", "nodes", namespaced=False),
        # Read by the autotuner to follow kopf's peering verdict.
        ResourceKind("kopf.dev/v1", "ClusterKopfPeering", "clusterkopfpeerings", namespaced=False),
        ResourceKind("kopf.dev/v1", "KopfPeering", "kopfpeerings"),
    )
}


#: HTTP connections to the apiserver; at least the number of concurrent reconciles, or
#: workers queue for a connection instead of for the apiserver.
CONNECTION_POOL_SIZE = 64


def load_api_client(kubeconfig: str | None) -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (or $KUBECONFIG)."""
    if kubeconfig is None:
        try:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            configuration.connection_pool_maxsize = CONNECTION_POOL_SIZE
            return client.ApiClient(configuration)
        except config.ConfigException:
            pass
    configuration = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig, client_configuration=configuration
    )
    configuration.connection_pool_maxsize = CONNECTION_POOL_SIZE
    return client.ApiClient(configuration)


def call_json(
    api_client: client.ApiClient,
    method: str,
    path: str,
    query: list[tuple[str, str]] | None = None,
    body: Any = None,
    content_type: str | None = None,
) -> dict[str, Any] | None:
    """One request by path, JSON in and out: the generated clients know no apply patch and no
    custom resources without a round of model classes. Raises ApiException on a non-2xx."""
    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    method, url, headers, payload, _ = api_client.param_serialize(
        method=method,
        resource_path=path,
        query_params=query or [],
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api_client.call_api(
        method,
        url,
        header_params=headers,
        body=payload,
        _request_timeout=REQUEST_TIMEOUT_SECONDS,
    )
    response.read()  # type: ignore[no-untyped-call]
    if not 200 <= response.status < 300:
        raise ApiException(http_resp=response)
    data = response.data
    return json.loads(data) if data else None


def is_temporary(err: ApiException) -> bool:
    """Errors time can fix: conflicts, throttling, timeouts and server-side failures."""
    return err.status in (0, 409, 429) or (err.status or 0) >= 500


WriteHook = Callable[[str, str], None]


class KubeApi:
    """Async wrapper over one API client under one field manager."""

    def __init__(
        self, api_client: client.ApiClient, field_manager: str, on_write: WriteHook | None = None
    ) -> None:
        self._client = api_client
        self.field_manager = field_manager
        self._on_write = on_write or (lambda kind, verb: None)

    def _call(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> dict[str, Any] | None:
        return call_json(self._client, method, path, query, body, content_type)

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await asyncio.to_thread(self._call, "GET", KINDS[kind].path(namespace, name))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    async def list(
        self, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Every object of a kind (one page: nodes and owned objects number in thousands)."""
        resource = KINDS[kind]
        query = [("labelSelector", label_selector)] if label_selector else None
        result = await asyncio.to_thread(self._call, "GET", resource.path(namespace), query)
        items = list((result or {}).get("items") or [])
        for item in items:
            item.setdefault("apiVersion", resource.api_version)
            item.setdefault("kind", resource.kind)
        return items

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Server-side apply under our field manager, forcing ownership of the fields we send
        (we are their authority; another manager's change to them is drift to undo)."""
        meta = obj["metadata"]
        kind = KINDS[obj["kind"]]
        query = [("fieldManager", self.field_manager), ("force", "true")]
        path = kind.path(meta.get("namespace"), meta["name"])
        result = await asyncio.to_thread(self._call, "PATCH", path, query, obj, APPLY_CONTENT_TYPE)
        self._on_write(obj["kind"], "apply")
        return result

    async def apply_status(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        meta = obj["metadata"]
        kind = KINDS[obj["kind"]]
        query = [("fieldManager", self.field_manager), ("force", "true")]
        path = kind.path(meta.get("namespace"), meta["name"]) + "/status"
        result = await asyncio.to_thread(self._call, "PATCH", path, query, obj, APPLY_CONTENT_TYPE)
        self._on_write(obj["kind"], "apply-status")
        return result

    async def delete(self, kind: str, namespace: str | None, name: str) -> None:
        try:
            await asyncio.to_thread(self._call, "DELETE", KINDS[kind].path(namespace, name))
        except ApiException as err:
            if err.status != 404:
                raise
        self._on_write(kind, "delete")

    async def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        meta = obj["metadata"]
        path = KINDS[obj["kind"]].path(meta.get("namespace"))
        result = await asyncio.to_thread(self._call, "POST", path, None, obj, None)
        self._on_write(obj["kind"], "create")
        return result
