"""Kubeconfig documents for the dev cluster (pure builders and a writer)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from slmpack.devcluster.certs import CertKey


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def build_kubeconfig(
    cluster_name: str, server_url: str, ca_cert_pem: bytes, client: CertKey, user_name: str
) -> dict[str, Any]:
    """A self-contained kubeconfig (credentials embedded) with one context named after the
    cluster, so it stays valid if copied elsewhere on the machine."""
    context = f"slmpack-{cluster_name}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": context,
                "cluster": {
                    "server": server_url,
                    "certificate-authority-data": _b64(ca_cert_pem),
                },
            }
        ],
        "users": [
            {
                "name": user_name,
                "user": {
                    "client-certificate-data": _b64(client.cert_pem),
                    "client-key-data": _b64(client.key_pem),
                },
            }
        ],
        "contexts": [{"name": context, "context": {"cluster": context, "user": user_name}}],
        "current-context": context,
        "preferences": {},
    }


def write_kubeconfig(document: dict[str, Any], path: Path) -> Path:
    """Write a kubeconfig readable by the owner only (it holds a private key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    path.chmod(0o600)
    return path
