"""The status a kubelet would report for the runner's nodes and pods (pure builders).

Times come in as Unix seconds, so the same inputs give the same documents. Pod and node
status are sent as strategic-merge patches of the status subresource, which merge
`conditions` by type, as the kubelet's own status manager does; a pod patch carries the pod's
UID, so it cannot land on a new pod that reuses the name.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from slmpack.devcluster.podexec import PodView

#: What the nodes report as their kubelet, container runtime and so on.
RUNNER_VERSION = "slmpack-runner"
LEASE_NAMESPACE = "kube-node-lease"
#: As the kubelet: the node counts as alive this long after each renewal.
LEASE_DURATION_SECONDS = 40


def rfc3339(unix_seconds: float) -> str:
    """Kubernetes' Time: whole seconds, UTC."""
    moment = datetime.datetime.fromtimestamp(int(unix_seconds), datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(unix_seconds: float) -> str:
    """Kubernetes' MicroTime (Lease renewTime)."""
    moment = datetime.datetime.fromtimestamp(unix_seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Terminated:
    exit_code: int
    reason: str
    started_at: float
    finished_at: float

    def as_state(self) -> dict[str, Any]:
        return {
            "terminated": {
                "exitCode": self.exit_code,
                "reason": self.reason,
                "startedAt": rfc3339(self.started_at),
                "finishedAt": rfc3339(self.finished_at),
            }
        }


@dataclass(frozen=True)
class ContainerRun:
    """Where one container stands, as the runner saw it last."""

    #: Process start (Unix seconds), None while waiting to (re)start.
    started_at: float | None
    ready: bool
    restart_count: int = 0
    #: Why the container waits (`ContainerCreating`, `CrashLoopBackOff`, ...) and details.
    waiting_reason: str = ""
    waiting_message: str = ""
    last_terminated: Terminated | None = None
    #: Final state of a container that will not run again (restartPolicy Never/OnFailure).
    terminated: Terminated | None = None
    pid: int | None = None


def pod_phase(pod: PodView, run: ContainerRun) -> str:
    if run.terminated is not None:
        return "Succeeded" if run.terminated.exit_code == 0 else "Failed"
    if run.started_at is None and run.restart_count == 0 and run.last_terminated is None:
        return "Pending"
    return "Running"


def pod_status_patch(
    pod: PodView,
    run: ContainerRun,
    *,
    pod_ip: str,
    host_ip: str,
    start_time: float,
    ready_changed_at: float,
) -> dict[str, Any]:
    """Strategic-merge patch of the pod's status subresource."""
    container = pod.container
    if run.terminated is not None:
        state: dict[str, Any] = run.terminated.as_state()
    elif run.started_at is not None:
        state = {"running": {"startedAt": rfc3339(run.started_at)}}
    else:
        waiting: dict[str, Any] = {"reason": run.waiting_reason or "ContainerCreating"}
        if run.waiting_message:
            waiting["message"] = run.waiting_message
        state = {"waiting": waiting}
    container_status: dict[str, Any] = {
        "name": container.name,
        "image": container.image,
        "imageID": "",
        "ready": run.ready,
        "started": run.started_at is not None,
        "restartCount": run.restart_count,
        "state": state,
        "lastState": run.last_terminated.as_state() if run.last_terminated else {},
    }
    if run.pid is not None:
        container_status["containerID"] = f"{RUNNER_VERSION}://{run.pid}"
    ready = "True" if run.ready else "False"
    initialized = rfc3339(start_time)
    changed = rfc3339(ready_changed_at)
    conditions = [
        {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": initialized},
        {"type": "Initialized", "status": "True", "lastTransitionTime": initialized},
        {"type": "ContainersReady", "status": ready, "lastTransitionTime": changed},
        {"type": "Ready", "status": ready, "lastTransitionTime": changed},
    ]
    status: dict[str, Any] = {
        "phase": pod_phase(pod, run),
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": initialized,
        "conditions": conditions,
        "containerStatuses": [container_status],
    }
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    return {"metadata": {"uid": pod.uid}, "status": status}


def node_status_patch(
    node_name: str, node_ip: str, now: float, ready_since: float
) -> dict[str, Any]:
    """Strategic-merge patch of a runner node's status: Ready, addresses, node info."""
    heartbeat = rfc3339(now)
    since = rfc3339(ready_since)

    def condition(type_: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": heartbeat,
            "lastTransitionTime": since,
        }

    return {
        "status": {
            "conditions": [
                condition(
                    "Ready", "True", "KubeletReady", "slmpack runner is posting ready status"
                ),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "simulated"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "simulated"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "simulated"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": node_ip},
                {"type": "Hostname", "address": node_name},
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": RUNNER_VERSION,
                "kubeProxyVersion": RUNNER_VERSION,
                "containerRuntimeVersion": f"{RUNNER_VERSION}://local-processes",
                "kernelVersion": RUNNER_VERSION,
                "osImage": "slmpack runner (local processes)",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
            "phase": "Running",
        }
    }


def node_lease(node_name: str, node_uid: str, now: float) -> dict[str, Any]:
    """The node's Lease in kube-node-lease, owned by the Node (so it goes with it)."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node_name,
            "namespace": LEASE_NAMESPACE,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}
            ],
        },
        "spec": {
            "holderIdentity": node_name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": micro_time(now),
        },
    }
