"""The agent's two API requests: list this node's pods, and server-side apply one
annotation on this node. Nothing else, which is what its ClusterRole allows (pods: list;
nodes: patch; charts/slmpack/templates/nodeagent-rbac.yaml).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from kubernetes import client

from slmpack.controller.kube import APPLY_CONTENT_TYPE, call_json, load_api_client

#: Field manager of the agent's writes (one per component, house rule 7).
FIELD_MANAGER = "slmpack-node-agent"


class NodeApi:
    """This node, through one API client."""

    def __init__(self, api_client: client.ApiClient, node_name: str) -> None:
        self._client = api_client
        self.node_name = node_name

    @classmethod
    def connect(cls, node_name: str, kubeconfig: str | None = None) -> NodeApi:
        """In-cluster credentials in a pod, else the kubeconfig (or $KUBECONFIG)."""
        return cls(load_api_client(kubeconfig), node_name)

    def _call(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        body: Any = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        return call_json(self._client, method, path, query, body, content_type) or {}

    def list_pods(self) -> list[Mapping[str, Any]]:
        """The pods bound to this node, in every namespace."""
        query = [("fieldSelector", f"spec.nodeName={self.node_name}")]
        result = self._call("GET", "/api/v1/pods", query)
        return list(result.get("items") or [])

    def apply_annotation(self, key: str, value: str) -> None:
        """Server-side apply of one annotation: the agent owns that key and no other field,
        and forces it (it is the authority on what the node's GPUs are)."""
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "annotations": {key: value}},
        }
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        path = f"/api/v1/nodes/{quote(self.node_name)}"
        self._call("PATCH", path, query, body, APPLY_CONTENT_TYPE)
