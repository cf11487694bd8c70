"""Dress the workers of a kind cluster as simulated GPU nodes.

    python hack/kind/dress_nodes.py --kubeconfig PATH [--fleet hack/fleets/default.yaml]

Worker N (sorted by name) gets the labels, taints and `nvidia.com/*` resources of the first
node of pool N of the fleet; extra workers stay plain. The real scheduler then places GPU
pods on them; the pods run for real (the tests use the pause image).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kubernetes import client

from slmpack.devcluster import gpu_nodes, node_apply

REPO_ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--fleet", default=str(REPO_ROOT / "hack" / "fleets" / "default.yaml"))
    args = parser.parse_args()

    fleet = gpu_nodes.parse_fleet_yaml(Path(args.fleet).read_text(encoding="utf-8"), args.fleet)
    api_client = node_apply.new_api_client(args.kubeconfig)
    try:
        nodes = client.CoreV1Api(api_client).list_node().items
        workers = sorted(
            node.metadata.name
            for node in nodes
            if "node-role.kubernetes.io/control-plane" not in (node.metadata.labels or {})
        )
        for worker, pool in zip(workers, fleet.pools, strict=False):
            node_apply.dress_node(api_client, worker, gpu_nodes.build_node(pool, 0))
            print(f"Dressed node {worker} as pool {pool.name}")
    finally:
        node_apply.close_api_client(api_client)


if __name__ == "__main__":
    main()
