"""Install CRD files into a cluster and wait until they are served (tests, benchmarks)."""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from kubernetes import client

from slmpack.devcluster.errors import DevClusterError

FIELD_MANAGER = "slmpack-dev-cluster"


def apply_crd_file(
    api_client: client.ApiClient, path: Path, timeout_seconds: float = 60.0
) -> list[str]:
    """Server-side apply every CRD in `path`, then wait for each to be Established."""
    ext = client.ApiextensionsV1Api(api_client)
    names: list[str] = []
    for body in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if not body:
            continue
        name = body["metadata"]["name"]
        ext.patch_custom_resource_definition(
            name,
            body,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
        )
        names.append(name)
    deadline = time.monotonic() + timeout_seconds
    for name in names:
        while not _established(ext, name):
            if time.monotonic() > deadline:
                raise DevClusterError(f"CRD {name} from {path} was not Established in time")
            time.sleep(0.2)
    return names


def _established(ext: client.ApiextensionsV1Api, name: str) -> bool:
    crd = ext.read_custom_resource_definition(name)
    conditions = crd.status.conditions if crd.status else None
    return any(c.type == "Established" and c.status == "True" for c in conditions or [])
