"""Deployment, Service and PodDisruptionBudget for one SLMDeployment's decision.

Pure: the same decision renders the same manifests byte for byte (no clock, no randomness), so
the controller can compare them with what the cluster holds and skip no-op writes. The
manifests hold only the fields slmpack owns, as server-side apply wants.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from slmpack.api.v1alpha1 import API_VERSION, KIND, SLMDeploymentSpec
from slmpack.controller.decide import Decision
from slmpack.planner.types import SharingMode

#: Port of the OpenAI-compatible endpoint in every pod (vLLM itself, or the Packed router).
SERVING_PORT = 8000
#: First port of the engines behind the Packed router (engine i listens on this + i).
FIRST_ENGINE_PORT = 8001
MODEL_MOUNT_PATH = "/models"
DEPLOYMENT_LABEL = "slmpack.dev/deployment"
MODE_LABEL = "slmpack.dev/mode"
MANAGED_BY = "slmpack"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
#: Kinds `children` renders (the controller watches these).
CHILD_KINDS = ("Deployment", "Service", "PodDisruptionBudget")
#: vLLM's OpenAI server module; `python3 -m` works in the upstream image and in the CPU wheel,
#: whose `vllm` console script is broken.
VLLM_SERVER = ("python3", "-m", "vllm.entrypoints.openai.api_server")
LAUNCHER = ("python3", "-m", "slmpack.launcher")
PORT_PLACEHOLDER = "{port}"
#: Loading weights (and downloading them on first start) can take many minutes; the startup
#: probe holds the liveness probe off until then.
STARTUP_PROBE_FAILURES = 180
STARTUP_PROBE_PERIOD_SECONDS = 10
#: A Kubernetes quantity: number, then a binary or decimal suffix or an exponent.
_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>[KMGTPE]i|[eE][+-]?[0-9]+|[numkMGTPE])?$"
)


@dataclass(frozen=True)
class RenderDefaults:
    """Images used when the spec names none (the operator's pinned versions)."""

    vllm_image: str
    launcher_image: str


@dataclass(frozen=True)
class Owner:
    """The SLMDeployment the children belong to."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def selector_labels(name: str) -> dict[str, str]:
    """The small, stable label set that selects an SLMDeployment's pods (immutable in a
    Deployment, so nothing that can change goes here)."""
    return {DEPLOYMENT_LABEL: name}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def common_labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "inference-server",
        "app.kubernetes.io/part-of": "slmpack",
        MANAGED_BY_LABEL: MANAGED_BY,
        **selector_labels(name),
    }


def service_endpoint(owner: Owner) -> str:
    return f"http://{owner.name}.{owner.namespace}.svc:{SERVING_PORT}/v1"


def _metadata(owner: Owner, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": common_labels(owner.name),
        "ownerReferences": [owner.reference()],
    }


def model_arguments(spec: SLMDeploymentSpec) -> list[str]:
    """--model and what its URI scheme needs."""
    model = spec.model
    if model.scheme == "hf":
        return ["--model", model.location]
    if model.scheme == "pvc":
        _, path = model.location.split("/", 1)
        return ["--model", f"{MODEL_MOUNT_PATH}/{path}"]
    # vLLM streams object storage through the Run:ai model streamer.
    return ["--model", model.uri, "--load-format", "runai_streamer"]


def engine_arguments(spec: SLMDeploymentSpec, decision: Decision, port: str) -> list[str]:
    """The full vLLM argument list of one engine: model, identity, the plan's flags, extras."""
    return [
        *model_arguments(spec),
        "--served-model-name",
        spec.model.effective_served_name,
        "--port",
        port,
        *decision.launch.args,
        *spec.engine.args,
    ]


def _env(spec: SLMDeploymentSpec, decision: Decision) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in decision.launch.env]
    secret = spec.engine.hf_token_secret_ref
    if secret is not None:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}},
            }
        )
    for var in spec.engine.env:
        item: dict[str, Any] = {"name": var.name}
        if var.value is not None:
            item["value"] = var.value
        if var.value_from is not None:
            item["valueFrom"] = var.value_from
        env.append(item)
    return env


def _scaled(quantity: int | str, factor: int) -> int | str:
    """A resource quantity times `factor`, in the quantity's own suffix (exact decimals)."""
    if factor == 1:
        return quantity
    match = _QUANTITY.match(str(quantity).strip())
    if match is None:
        return quantity  # the CRD's pattern lets nothing else through
    number, suffix = match["number"], match["suffix"] or ""
    if suffix[:1] in ("e", "E") and len(suffix) > 1:  # an exponent, not the exa suffix
        number, suffix = f"{number}{suffix}", ""
    value = Decimal(number) * factor
    if value == value.to_integral_value():
        whole = int(value)
        return f"{whole}{suffix}" if suffix else whole
    return f"{format(value.normalize(), 'f')}{suffix}"


def _resources(spec: SLMDeploymentSpec, decision: Decision) -> dict[str, Any]:
    engines = decision.engines_per_pod
    requests = {k: _scaled(v, engines) for k, v in spec.engine.resources.requests.items()}
    limits = {k: _scaled(v, engines) for k, v in spec.engine.resources.limits.items()}
    limits[decision.offer.resource] = "1"  # the canonical form the apiserver returns
    out: dict[str, Any] = {"limits": dict(sorted(limits.items()))}
    if requests:
        out["requests"] = dict(sorted(requests.items()))
    return out


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def launcher_config(spec: SLMDeploymentSpec, decision: Decision) -> dict[str, Any]:
    """The Packed router's config: N engines on ports 8001.., each with the plan's flags.

    Every engine carries `--kv-cache-memory-bytes`, so they may start together without
    mis-sizing each other's KV cache.
    """
    argv = [*VLLM_SERVER, "--host", "127.0.0.1", *engine_arguments(spec, decision, "{port}")]
    return {
        "engines": [{"argv": argv} for _ in range(decision.engines_per_pod)],
        "front_port": SERVING_PORT,
        "first_engine_port": FIRST_ENGINE_PORT,
    }


def _container(
    spec: SLMDeploymentSpec, decision: Decision, defaults: RenderDefaults
) -> dict[str, Any]:
    env = _env(spec, decision)
    if decision.mode is SharingMode.PACKED:
        image = spec.engine.launcher_image or defaults.launcher_image
        command = list(LAUNCHER)
        args: list[str] = []
        config = json.dumps(launcher_config(spec, decision), separators=(",", ":"))
        env = [*env, {"name": "SLMPACK_LAUNCHER_CONFIG", "value": config}]
        name = "launcher"
    else:
        image = spec.engine.image or defaults.vllm_image
        command = list(VLLM_SERVER)
        args = engine_arguments(spec, decision, str(SERVING_PORT))
        name = "vllm"
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "command": command,
        "ports": [{"name": "http", "containerPort": SERVING_PORT, "protocol": "TCP"}],
        "resources": _resources(spec, decision),
        "startupProbe": _probe("/health", STARTUP_PROBE_PERIOD_SECONDS, STARTUP_PROBE_FAILURES),
        "readinessProbe": _probe("/health", 5, 3),
        # The router restarts a crashed engine itself; only its own death restarts the pod.
        "livenessProbe": _probe(
            "/live" if decision.mode is SharingMode.PACKED else "/health", 10, 6
        ),
    }
    if args:
        container["args"] = args
    if env:
        container["env"] = env
    if spec.model.scheme == "pvc":
        container["volumeMounts"] = [
            {"name": "model", "mountPath": MODEL_MOUNT_PATH, "readOnly": True}
        ]
    return container


def _affinity(decision: Decision) -> dict[str, Any]:
    expressions = [
        {"key": key, "operator": "In", "values": [value]}
        for key, value in decision.offer.node_selector
    ]
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": expressions}]
            }
        }
    }


def pod_template(
    owner: Owner, spec: SLMDeploymentSpec, decision: Decision, defaults: RenderDefaults
) -> dict[str, Any]:
    labels = {**common_labels(owner.name), MODE_LABEL: decision.mode.value}
    pod_spec: dict[str, Any] = {
        "containers": [_container(spec, decision, defaults)],
        "affinity": _affinity(decision),
        "tolerations": [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            *spec.gpu.tolerations,
        ],
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector_labels(owner.name)},
            }
        ],
        # vLLM finishes in-flight requests on SIGTERM; give long generations time to end.
        "terminationGracePeriodSeconds": 60,
    }
    if spec.gpu.node_selector:
        pod_spec["nodeSelector"] = dict(sorted(spec.gpu.node_selector.items()))
    if spec.model.scheme == "pvc":
        claim = spec.model.location.split("/", 1)[0]
        pod_spec["volumes"] = [
            {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        ]
    return {
        "metadata": {
            "labels": labels,
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(SERVING_PORT),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": pod_spec,
    }


def deployment(
    owner: Owner, spec: SLMDeploymentSpec, decision: Decision, defaults: RenderDefaults
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, owner.name),
        "spec": {
            "replicas": decision.pods,
            "selector": {"matchLabels": selector_labels(owner.name)},
            # GPUs are scarce: replace one pod at a time rather than needing a spare GPU.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
            },
            "progressDeadlineSeconds": 1800,
            "revisionHistoryLimit": 3,
            "template": pod_template(owner, spec, decision, defaults),
        },
    }


def service(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, owner.name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner.name),
            "ports": [
                {"name": "http", "port": SERVING_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def disruption_budget(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, owner.name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(owner.name)}},
    }


def children(
    owner: Owner, spec: SLMDeploymentSpec, decision: Decision, defaults: RenderDefaults
) -> list[dict[str, Any]]:
    """Everything an SLMDeployment owns, in apply order."""
    return [
        deployment(owner, spec, decision, defaults),
        service(owner),
        disruption_budget(owner),
    ]
