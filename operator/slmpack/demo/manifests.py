"""The demo's fleet and SLMDeployments (pure: same arguments in, same documents out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slmpack.devcluster import gpu_nodes
from slmpack.planner import types as planner_types

GROUP, VERSION, PLURAL = "slmpack.dev", "v1alpha1", "slmdeployments"
NAMESPACE = "slmpack-demo"
POOL = "demo-h100"
H100 = "NVIDIA-H100-80GB-HBM3"
#: Names that no prefix match confuses: dcgm series are picked by `<name>-.*` on the pod.
BASELINE = "one-per-gpu"
PACKED = "packed"


@dataclass(frozen=True)
class Workload:
    """Request lengths in tokens: what the load generator sends and what the planner assumes.

    Outputs are far shorter than the planner's ShareGPT default (292): a request then lives
    under a simulated second, so the engines reach their steady batch within the short
    simulated window a 2-core machine can stream token by token.
    """

    mean_input_tokens: int = 111
    mean_output_tokens: int = 32
    output_spread_tokens: int = 16  # outputs are uniform in mean ± spread

    def for_planner(self) -> planner_types.Workload:
        return planner_types.Workload(self.mean_input_tokens, self.mean_output_tokens)

    @property
    def input_len(self) -> str:
        return str(self.mean_input_tokens)

    @property
    def output_len(self) -> str:
        low = self.mean_output_tokens - self.output_spread_tokens
        high = self.mean_output_tokens + self.output_spread_tokens
        return f"uniform:{low}:{high}"


def demo_fleet(nodes: int, gpus_per_node: int) -> gpu_nodes.Fleet:
    """`nodes` runner nodes of H100s, whole GPUs (Exclusive and Packed pods)."""
    return gpu_nodes.parse_fleet(
        {
            "pools": [
                {
                    "name": POOL,
                    "count": nodes,
                    "profile": "h100-80gb-x8",
                    "gpusPerNode": gpus_per_node,
                    "kubelet": "runner",
                }
            ]
        },
        "demo",
    )


def slm_deployment(
    name: str,
    model_uri: str,
    sharing: str,
    workload: Workload,
    replicas: int | None = None,
    replicas_per_gpu: int | None = None,
) -> dict[str, Any]:
    """One SLMDeployment on the demo's H100 pool, planned for throughput."""
    gpu: dict[str, Any] = {
        "products": [H100],
        "sharing": sharing,
        "nodeSelector": {gpu_nodes.POOL_LABEL: POOL},
    }
    if replicas_per_gpu is not None:
        gpu["replicasPerGPU"] = replicas_per_gpu
    spec: dict[str, Any] = {
        "model": {"uri": model_uri, "maxModelLen": 2048},
        "gpu": gpu,
        "autotune": {"objective": "Throughput"},
        "workload": {
            "meanInputTokens": workload.mean_input_tokens,
            "meanOutputTokens": workload.mean_output_tokens,
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SLMDeployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }
