"""The kwok controller's configuration: Stage objects that drive fake nodes and their pods.

The kwok binary (unlike kwokctl) ships no default stages and refuses to start without one, so
the launcher writes this configuration and passes it with `--config`. Stages match objects with
jq-style selectors and patch their status from Go templates; the template functions used
here (`Now`, `Quote`, `YAML`, `NodeConditions`, `NodeIP`, `NodeName`, `NodeIPWith`,
`PodIPWith`, `Version`) are the ones kwok v0.8 provides.

Lifecycle simulated:
- a node becomes Ready at once, keeping the allocatable and capacity it was created with
  (the GPU resources come from `gpu_nodes`), and stays Ready: with
  `--node-lease-duration-seconds` kwok renews its Lease, so the node lifecycle controller
  never marks it NotReady;
- a pod bound to a fake node becomes Running and Ready at once; a Job's pod then Succeeds;
- a pod being deleted is removed at once (there is no kubelet to confirm it).
"""

from __future__ import annotations

from typing import Any

import yaml

_NOT_DELETED = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
_READY_STATUS = '.status.conditions.[] | select( .type == "Ready" ) | .status'

_NODE_READY_TEMPLATE = """\
{{ $now := Now }}
conditions:
{{ range NodeConditions }}
- type: {{ .type | Quote }}
  status: {{ .status | Quote }}
  reason: {{ .reason | Quote }}
  message: {{ .message | Quote }}
  lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $now | Quote }}
{{ end }}
addresses:
- type: InternalIP
  address: {{ NodeIP | Quote }}
- type: Hostname
  address: {{ NodeName | Quote }}
{{ with .status.allocatable }}
allocatable:
{{ YAML . 1 }}
{{ end }}
{{ with .status.capacity }}
capacity:
{{ YAML . 1 }}
{{ end }}
nodeInfo:
  architecture: amd64
  operatingSystem: linux
  kubeletVersion: {{ printf "kwok-%s" Version | Quote }}
  kubeProxyVersion: {{ printf "kwok-%s" Version | Quote }}
  containerRuntimeVersion: {{ printf "kwok-%s" Version | Quote }}
  kernelVersion: {{ printf "kwok-%s" Version | Quote }}
  osImage: "kwok simulated node"
  machineID: ""
  systemUUID: ""
  bootID: ""
phase: Running
"""

# Refreshes the condition timestamps now and then so `kubectl get nodes` shows a live node;
# liveness itself rides on the Lease.
_NODE_HEARTBEAT_TEMPLATE = """\
{{ $now := Now }}
conditions:
{{ range NodeConditions }}
- type: {{ .type | Quote }}
  status: {{ .status | Quote }}
  reason: {{ .reason | Quote }}
  message: {{ .message | Quote }}
  lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $now | Quote }}
{{ end }}
"""

_POD_RUNNING_TEMPLATE = """\
{{ $now := Now }}
conditions:
- type: PodScheduled
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
- type: Initialized
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
- type: ContainersReady
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
- type: Ready
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
{{ range .spec.readinessGates }}
- type: {{ .conditionType | Quote }}
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: true
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
initContainerStatuses:
{{ range .spec.initContainers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: true
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      reason: Completed
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) \
( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""

_POD_SUCCEEDED_TEMPLATE = """\
{{ $now := Now }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: false
  started: false
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      reason: Completed
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
phase: Succeeded
"""

#: Seconds between condition refreshes of a Ready node (kwok adds up to as much jitter).
NODE_HEARTBEAT_INTERVAL_SECONDS = 300


def _stage(
    name: str, kind: str, match: list[dict[str, Any]], nxt: dict[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": kind},
            "selector": {"matchExpressions": match},
            "next": nxt,
        },
    }


def build_stages() -> list[dict[str, Any]]:
    """The Stage documents, in the order kwok should consider them."""
    heartbeat = _stage(
        "slmpack-node-heartbeat",
        "Node",
        [
            {"key": ".status.phase", "operator": "In", "values": ["Running"]},
            {"key": _READY_STATUS, "operator": "In", "values": ["True"]},
        ],
        {"statusTemplate": _NODE_HEARTBEAT_TEMPLATE},
    )
    heartbeat["spec"]["delay"] = {
        "durationMilliseconds": NODE_HEARTBEAT_INTERVAL_SECONDS * 1000,
        "jitterDurationMilliseconds": 2 * NODE_HEARTBEAT_INTERVAL_SECONDS * 1000,
    }
    return [
        _stage(
            "slmpack-node-ready",
            "Node",
            [{"key": _READY_STATUS, "operator": "NotIn", "values": ["True"]}],
            {"statusTemplate": _NODE_READY_TEMPLATE},
        ),
        heartbeat,
        _stage(
            "slmpack-pod-running",
            "Pod",
            [
                _NOT_DELETED,
                {"key": ".status.phase", "operator": "In", "values": ["Pending"]},
                {"key": _READY_STATUS, "operator": "NotIn", "values": ["True"]},
            ],
            {"statusTemplate": _POD_RUNNING_TEMPLATE},
        ),
        _stage(
            "slmpack-pod-job-succeeded",
            "Pod",
            [
                _NOT_DELETED,
                {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                {"key": ".metadata.ownerReferences.[].kind", "operator": "In", "values": ["Job"]},
            ],
            {"statusTemplate": _POD_SUCCEEDED_TEMPLATE},
        ),
        _stage(
            "slmpack-pod-delete",
            "Pod",
            [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}],
            {"delete": True},
        ),
    ]


def render_kwok_config() -> str:
    """The multi-document YAML passed to `kwok --config`."""
    return yaml.safe_dump_all(build_stages(), sort_keys=False)
