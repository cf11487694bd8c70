"""From a pod UID and container ID to namespace, pod and container names.

The source is the API server's list of this node's pods (``fieldSelector=spec.nodeName``),
not the kubelet's ``/pods``: the kubelet endpoint needs ``nodes/proxy``, which also opens exec
into every pod of the node, while listing pods is read-only. The list is refreshed when a
UID or container ID is not in it (a new pod, a restarted container), at most once per
``min_refresh_seconds``, so a process outside any known pod costs no request per sample.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from slmpack.nodeagent.cgroups import ContainerRef

logger = logging.getLogger("slmpack.nodeagent")

#: Shortest time between two pod list requests caused by lookups that missed.
DEFAULT_MIN_REFRESH_SECONDS = 30.0


@dataclass(frozen=True, order=True)
class Workload:
    """The container a GPU process belongs to."""

    namespace: str
    pod: str
    container: str  # "" when the cgroup does not name the container and the pod has several


@dataclass(frozen=True)
class _PodEntry:
    namespace: str
    name: str
    containers: Mapping[str, str]  # container ID (hex) -> container name
    names: tuple[str, ...]  # spec.containers names


def _container_id(raw: str) -> str:
    """ "containerd://abc" -> "abc"."""
    return raw.split("://", 1)[-1]


class PodIndex:
    """Pods by UID, built from Pod objects as the API returns them (pure)."""

    def __init__(self, pods: Iterable[Mapping[str, Any]] = ()) -> None:
        self._by_uid: dict[str, _PodEntry] = {}
        for pod in pods:
            meta = pod.get("metadata") or {}
            uid = meta.get("uid")
            if not uid:
                continue
            status = pod.get("status") or {}
            containers: dict[str, str] = {}
            for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
                for cs in status.get(key) or []:
                    if cs.get("containerID") and cs.get("name"):
                        containers[_container_id(cs["containerID"])] = cs["name"]
            names = tuple(
                c.get("name", "") for c in (pod.get("spec") or {}).get("containers") or []
            )
            self._by_uid[str(uid)] = _PodEntry(
                namespace=str(meta.get("namespace", "")),
                name=str(meta.get("name", "")),
                containers=containers,
                names=names,
            )

    def __len__(self) -> int:
        return len(self._by_uid)

    def knows(self, ref: ContainerRef) -> bool:
        """True when both the pod and (if named) the container are in the index."""
        entry = self._by_uid.get(ref.pod_uid)
        if entry is None:
            return False
        return ref.container_id is None or ref.container_id in entry.containers

    def lookup(self, ref: ContainerRef) -> Workload | None:
        entry = self._by_uid.get(ref.pod_uid)
        if entry is None:
            return None
        container = entry.containers.get(ref.container_id or "", "")
        if not container and len(entry.names) == 1:
            container = entry.names[0]  # one container: no doubt which
        return Workload(namespace=entry.namespace, pod=entry.name, container=container)


class PodSource(Protocol):
    """This node's pods, as Pod objects (dicts) from the API."""

    def list_pods(self) -> Sequence[Mapping[str, Any]]: ...


class StaticPodSource:
    """A fixed list of pods (tests, and the device-file fake of the local world)."""

    def __init__(self, pods: Iterable[Mapping[str, Any]]) -> None:
        self._pods = list(pods)

    def list_pods(self) -> Sequence[Mapping[str, Any]]:
        return list(self._pods)


class PodResolver:
    """Lookups through a cached PodIndex, refreshed from a PodSource on a miss."""

    def __init__(
        self,
        source: PodSource,
        clock: Callable[[], float],
        min_refresh_seconds: float = DEFAULT_MIN_REFRESH_SECONDS,
    ) -> None:
        self._source = source
        self._clock = clock
        self._min_refresh_seconds = min_refresh_seconds
        self._index = PodIndex()
        self._refreshed_at: float | None = None
        self.failures = 0  # failed list requests, for slmpack_node_agent_api_errors_total

    def refresh(self) -> bool:
        """Reload the pod list now; keeps the old index (and returns False) on failure."""
        self._refreshed_at = self._clock()
        try:
            pods = self._source.list_pods()
        except Exception as err:  # the API client raises many kinds; all mean "not now"
            logger.warning("Could not list this node's pods: %s", err)
            self.failures += 1
            return False
        self._index = PodIndex(pods)
        return True

    def resolve(self, ref: ContainerRef) -> Workload | None:
        if not self._index.knows(ref) and self._may_refresh():
            self.refresh()
        return self._index.lookup(ref)

    def _may_refresh(self) -> bool:
        return (
            self._refreshed_at is None
            or self._clock() - self._refreshed_at >= self._min_refresh_seconds
        )
