"""From a process to its pod: the kubelet puts every container in a cgroup whose path names
the pod UID and the container ID; ``/proc/<pid>/cgroup`` shows it.

The shapes (cgroup v1 lists one line per hierarchy, v2 one ``0::`` line):

- cgroupfs driver: ``/kubepods/burstable/pod<uid>/<container id>``
  (Guaranteed pods sit directly under ``/kubepods/pod<uid>``);
- systemd driver: ``/kubepods.slice/kubepods-burstable.slice/
  kubepods-burstable-pod<uid with _ for ->.slice/cri-containerd-<id>.scope``
  (``docker-<id>.scope``, ``crio-<id>.scope`` for the other runtimes).

Paths may start with ``/../..`` when the reader sits in its own cgroup namespace, so the
patterns search rather than anchor. Static pods have a 32-hex UID instead of a UUID.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_UUID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
_POD = re.compile(rf"(?:^|[/-])pod(?P<uid>{_UUID}|[0-9a-f]{{32}})(?:\.slice)?(?=/|$)")
# The component right after the pod's: a bare ID (cgroupfs) or a runtime scope (systemd).
# cri-o's "crio-conmon-<id>.scope" is its monitor process, not the container, and is left out.
_CONTAINER = re.compile(
    r"^/(?:(?:cri-containerd|containerd|docker|crio)-)?(?P<id>[0-9a-f]{64})(?:\.scope)?(?=/|$)"
)


@dataclass(frozen=True)
class ContainerRef:
    """Where a process runs: its pod's UID and, when the path shows it, its container ID
    (the hex part of the pod status's ``containerID``, without the ``runtime://``)."""

    pod_uid: str
    container_id: str | None


def parse_cgroup_path(path: str) -> ContainerRef | None:
    """The pod and container of one cgroup path, or None outside kubepods."""
    if "kubepods" not in path:
        return None
    match = _POD.search(path)
    if not match:
        return None
    uid = match.group("uid").replace("_", "-")
    container = _CONTAINER.match(path[match.end() :])
    return ContainerRef(pod_uid=uid, container_id=container.group("id") if container else None)


def parse_proc_cgroup(text: str) -> ContainerRef | None:
    """The pod and container of a ``/proc/<pid>/cgroup`` file (v1 or v2), or None when the
    process is not in a pod's cgroup. Lines naming a container win over pod-only lines."""
    best: ContainerRef | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        ref = parse_cgroup_path(parts[2].strip())
        if ref is None:
            continue
        if ref.container_id:
            return ref
        best = best or ref
    return best


def read_proc_cgroup(pid: int, proc_root: Path = Path("/proc")) -> str | None:
    """The text of ``/proc/<pid>/cgroup``, or None when the process is gone or unreadable."""
    try:
        return (proc_root / str(pid) / "cgroup").read_text()
    except OSError:
        return None
