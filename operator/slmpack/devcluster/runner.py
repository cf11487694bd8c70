"""The runner: a kubelet for simulated nodes whose pods really run, as local processes.

kwok only makes pods *look* Running. The runner takes the nodes labelled
`slmpack.io/kubelet=runner` (fleet pools with `kubelet: runner`, which kwok leaves alone as
they lack its annotation) and plays their kubelet:

- node: reports Ready, an InternalIP on loopback and node info, renews the node's Lease in
  `kube-node-lease`, and runs the node's dcgm-exporter stand-in (dcgm-sim) on that address;
- pod: gives each pod bound to one of its nodes a loopback address of its own, the simulated
  GPU devices the device plugin would hand out, and runs its container as a local process
  (`podexec` decides the command: the vLLM simulator, the launcher, or vLLM's CPU build);
  readiness comes from the pod's own httpGet probe; a container that exits is restarted
  with back-off, as `restartPolicy` says;
- deletion: SIGTERM to the process group, at most the grace period (capped by
  `--max-grace-seconds`), SIGKILL to whatever is left, then the pod is removed from the API,
  as the kubelet confirms a deletion;
- Prometheus: the running pods that ask to be scraped and each node's dcgm-sim are written
  as file_sd targets (see `slmpack.devcluster.prometheus`);
- node agent (`node_agent`, off by default): the slmpack node agent of each node, over a
  SIMULATED NVML of the node's GPUs (`slmpack.nodeagent.sim_nvml`), on the node's address,
  port 9402, annotating its node with the GPU inventory; a file_sd target too.

It is level-based: every `poll_interval` it lists its nodes and their pods and moves the local
processes towards them. Nothing is kept but the processes: pod addresses and node subnets are
recovered from the API objects after a restart, and the processes of a previous runner
(found through the marker variables in /proc/<pid>/environ) are stopped at start.

Layout of the state folder (default `$SLMPACK_CACHE/cluster/<name>/runner/`)::

    addon.json             pid of a runner started with `up` (`dev-cluster down` stops it)
    status.json            nodes and pods as of the last pass
    targets/               file_sd files for Prometheus
    nodes/<node>/sim/      the node's simulator state (shared by its sims and dcgm-sim)
    nodes/<node>/dcgm.log
    nodes/<node>/node-agent.log
    pods/<ns>_<pod>_<uid>/<container>.log
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import urllib3
from kubernetes.client.exceptions import ApiException

from slmpack.devcluster import gpu_devices, loopback, node_apply, processes, prometheus
from slmpack.devcluster.errors import DevClusterError
from slmpack.devcluster.gpu_devices import DeviceSlot, NodeGpus
from slmpack.devcluster.gpu_nodes import KUBELET_LABEL
from slmpack.devcluster.kubelet_status import (
    ContainerRun,
    Terminated,
    node_lease,
    node_status_patch,
    pod_status_patch,
)
from slmpack.devcluster.launcher import ADDON_FILE, write_addon
from slmpack.devcluster.podexec import (
    DCGM_PORT,
    RUNNER_DIR_ENV,
    RUNNER_POD_ENV,
    EngineSettings,
    LocalCommand,
    Placement,
    PodView,
    UnsupportedPodError,
    dcgm_command,
    env_references,
    local_command,
    parse_pod,
    resolve_env,
)

log = logging.getLogger("slmpack.runner")

DEFAULT_NODE_SELECTOR = f"{KUBELET_LABEL}=runner"
DEFAULT_POLL_INTERVAL_SECONDS = 0.5
#: The kubelet renews its Lease every 10 s (a quarter of its 40 s duration).
LEASE_RENEW_SECONDS = 10.0
#: Node conditions are refreshed this often (the kubelet: 5 min; liveness rides on the Lease).
NODE_STATUS_SECONDS = 60.0
#: Until a pod is first Ready its probe runs this often, so pods turn Ready promptly whatever
#: their periodSeconds (the kubelet's startupProbe serves that purpose in a real cluster).
STARTING_PROBE_INTERVAL_SECONDS = 0.5
RESTART_BACKOFF_INITIAL_SECONDS = 1.0
RESTART_BACKOFF_MAX_SECONDS = 30.0
#: A container that ran this long before exiting starts its back-off afresh.
BACKOFF_RESET_SECONDS = 60.0
#: How long to wait before trying again a pod that could not start (missing Secret, no free
#: device): the kubelet keeps retrying too.
START_RETRY_SECONDS = 5.0
DEFAULT_MAX_GRACE_SECONDS = 30.0
DCGM_RESTART_SECONDS = 5.0
#: The node agent's port (`slmpack.nodeagent.app.DEFAULT_PORT`, not imported: the agent's
#: module loads its server and NVML bindings, which the runner does not need).
NODE_AGENT_PORT = 9402
NODE_AGENT_MODULE = "slmpack.nodeagent"
#: Seconds between the agent's passes: energy is split per pass, and the tests' windows are
#: seconds long (a real node uses the agent's 10 s).
NODE_AGENT_INTERVAL_SECONDS = 2.0
#: GFD's label with the GPU memory NVML reports (MiB); the simulated NVML reports the same.
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
STRATEGIC_MERGE = "application/strategic-merge-patch+json"
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT_SECONDS = 30


# --- the API -------------------------------------------------------------------------------------


class _Api:
    """JSON in, JSON out: the Python client's models are costly for every pod on every pass.

    The client is synchronous, so calls run in worker threads.
    """

    def __init__(self, kubeconfig: Path) -> None:
        self._client = node_apply.new_api_client(str(kubeconfig))

    def close(self) -> None:
        node_apply.close_api_client(self._client)

    def _call(
        self, method: str, path: str, body: Any = None, content_type: str | None = None
    ) -> tuple[int, dict[str, Any] | None]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        method, url, headers, payload, _ = self._client.param_serialize(
            method=method,
            resource_path=path,
            query_params=[],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._client.call_api(
                method,
                url,
                header_params=headers,
                body=payload,
                _request_timeout=REQUEST_TIMEOUT_SECONDS,
            )
            response.read()  # type: ignore[no-untyped-call]
        except (urllib3.exceptions.HTTPError, OSError, ApiException) as exc:
            # The apiserver is unreachable: status 0, and the next pass tries again.
            return 0, {"message": str(exc)}
        data = response.data
        try:
            document = json.loads(data) if data else None
        except ValueError:
            document = None
        return int(response.status), document

    async def call(
        self, method: str, path: str, body: Any = None, content_type: str | None = None
    ) -> tuple[int, dict[str, Any] | None]:
        return await asyncio.to_thread(self._call, method, path, body, content_type)

    async def items(self, path: str, **query: str) -> list[dict[str, Any]] | None:
        """A list's items, or None when the call failed (the caller keeps what it knew)."""
        url = f"{path}?{urlencode(query)}" if query else path
        status, document = await self.call("GET", url)
        if status != 200 or document is None:
            message = (document or {}).get("message", "")
            log.warning("Listing %s failed: HTTP %d %s", path, status, message)
            return None
        return list(document.get("items") or [])


def _pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}"


# --- /proc ---------------------------------------------------------------------------------------


def marked_pids(state_dir: Path, pod_uid: str | None = None) -> list[int]:
    """Processes started by the runner of `state_dir` (for one pod, or all), from the marker
    variables in their environment. The launcher's engines inherit them too."""
    want_dir = f"{RUNNER_DIR_ENV}={state_dir}".encode()
    want_pod = f"{RUNNER_POD_ENV}={pod_uid}".encode() if pod_uid is not None else None
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            variables = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if want_dir in variables and (want_pod is None or want_pod in variables):
            found.append(int(entry.name))
    return sorted(found)


def _signal(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_marked(state_dir: Path, grace_seconds: float, pod_uid: str | None = None) -> int:
    """SIGTERM the runner's processes (all, or one pod's), SIGKILL what is left after the grace.
    Returns how many there were."""
    pids = marked_pids(state_dir, pod_uid)
    if not pids:
        return 0
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        for pid in pids:
            processes.reap(pid)
        if not marked_pids(state_dir, pod_uid):
            return len(pids)
        time.sleep(0.05)
    _signal(marked_pids(state_dir, pod_uid), signal.SIGKILL)
    for pid in pids:
        processes.reap(pid)
    return len(pids)


# --- runtime state -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunnerConfig:
    kubeconfig: Path
    state_dir: Path
    engine: EngineSettings
    node_selector: str = DEFAULT_NODE_SELECTOR
    address_pool: IPv4Network = loopback.DEFAULT_POOL
    poll_interval_seconds: float = DEFAULT_POLL_INTERVAL_SECONDS
    max_grace_seconds: float = DEFAULT_MAX_GRACE_SECONDS
    #: Readiness probe period once a pod is Ready; None: the pod's own periodSeconds.
    probe_period_seconds: float | None = None
    #: What every process inherits (PATH and the like); see `podexec.base_environment`.
    base_env: Mapping[str, str] = field(default_factory=dict)
    #: Run the slmpack node agent of each node over a simulated NVML (costs a process and a
    #: pass every few seconds per node, so it is opt-in).
    node_agent: bool = False

    @property
    def targets_dir(self) -> Path:
        return self.state_dir / "targets"

    @property
    def pods_dir(self) -> Path:
        return self.state_dir / "pods"

    def node_dir(self, node: str) -> Path:
        return self.state_dir / "nodes" / node


@dataclass
class _Node:
    name: str
    uid: str
    subnet: IPv4Network
    ip: str
    gpus: NodeGpus | None
    ready_since: float
    lease_renewed: float = 0.0
    status_reported: float = 0.0
    dcgm: subprocess.Popen[bytes] | None = None
    dcgm_next_start: float = 0.0
    #: The GPU memory NVML would report (GFD's label), for the simulated NVML; None: catalogue.
    memory_mib: int | None = None
    agent: subprocess.Popen[bytes] | None = None
    agent_next_start: float = 0.0


@dataclass
class _Pod:
    view: PodView
    node: str
    ip: str
    slots: tuple[DeviceSlot, ...]
    directory: Path
    start_time: float
    run: ContainerRun
    ready_changed_at: float
    command: LocalCommand | None = None
    process: subprocess.Popen[bytes] | None = None
    failures: int = 0
    next_start: float = 0.0
    terminating_since: float | None = None
    kill_at: float | None = None
    #: The pod is gone from the API already: stop the process, write nothing back.
    vanished: bool = False
    probe_successes: int = 0
    probe_failures: int = 0
    next_probe: float = 0.0
    probe_task: asyncio.Task[bool] | None = None
    dirty: bool = True

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _bindable(address: str, ports: Iterable[int]) -> bool:
    """True when nothing on this machine listens on `address` at any of `ports` (another
    runner, of another cluster, may share the loopback block)."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError:
                return False
    return True


def _backoff(failures: int) -> float:
    return min(
        RESTART_BACKOFF_MAX_SECONDS, RESTART_BACKOFF_INITIAL_SECONDS * 2.0 ** max(0, failures - 1)
    )


def _node_internal_ip(obj: Mapping[str, Any]) -> str:
    for address in (obj.get("status") or {}).get("addresses") or []:
        if address.get("type") == "InternalIP":
            return str(address.get("address", ""))
    return ""


def _is_ready(obj: Mapping[str, Any]) -> bool:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


class Runner:
    """One runner: its nodes, their pods' processes and the node exporters."""

    def __init__(self, config: RunnerConfig, api: _Api | None = None) -> None:
        self.config = config
        self.api = api or _Api(config.kubeconfig)
        self.nodes: dict[str, _Node] = {}
        self.pods: dict[str, _Pod] = {}
        #: uid -> when to try again a pod that could not start, and why.
        self.blocked: dict[str, tuple[float, str]] = {}
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until `stop` is set, then stop every process."""
        config = self.config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        leftovers = await asyncio.to_thread(stop_marked, config.state_dir, 5.0)
        if leftovers:
            log.info("Stopped %d processes left by a previous runner", leftovers)
        self._session = aiohttp.ClientSession()
        try:
            while not stop.is_set():
                started = time.monotonic()
                self._wake.clear()
                try:
                    await self.pass_once()
                except Exception as exc:
                    # A kubelet outlives whatever one pass runs into (the apiserver restarting,
                    # a pod it cannot parse); the next pass starts from the cluster's state.
                    log.warning("Pass failed, retrying: %s", exc, exc_info=True)
                wait = max(0.0, config.poll_interval_seconds - (time.monotonic() - started))
                await _wait_any((stop, self._wake), wait)
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop every pod process and dcgm-sim; mark the pods not Ready; empty the targets."""
        for pod in self.pods.values():
            if pod.probe_task is not None:
                pod.probe_task.cancel()
            if pod.running and pod.process is not None:
                _signal_group(pod.process.pid, signal.SIGTERM)
        for node in self.nodes.values():
            if node.dcgm is not None and node.dcgm.poll() is None:
                node.dcgm.terminate()
            if node.agent is not None and node.agent.poll() is None:
                node.agent.terminate()
        stopped = await asyncio.to_thread(
            stop_marked, self.config.state_dir, min(10.0, self.config.max_grace_seconds)
        )
        writes = []
        for pod in self.pods.values():
            if pod.vanished or pod.run.terminated is not None:
                continue
            pod.run = replace(
                pod.run,
                ready=False,
                started_at=None,
                pid=None,
                waiting_reason="RunnerStopped",
                waiting_message="the slmpack runner of this node stopped",
            )
            pod.ready_changed_at = time.time()
            writes.append(self._write_status(pod))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), 10)
        self._write_targets()
        if self._session is not None:
            await self._session.close()
        self.api.close()
        log.info("Runner stopped (%d processes)", stopped)

    # -- one pass -----------------------------------------------------------------------------

    async def pass_once(self) -> None:
        now = time.time()
        nodes = await self.api.items("/api/v1/nodes", labelSelector=self.config.node_selector)
        if nodes is not None:
            await self._sync_nodes(nodes, now)
        names = sorted(self.nodes)
        listings = await asyncio.gather(
            *(
                self.api.items(
                    "/api/v1/pods", fieldSelector=f"spec.nodeName={name}", resourceVersion="0"
                )
                for name in names
            )
        )
        listed: dict[str, dict[str, Any]] = {}
        complete = nodes is not None
        for items in listings:
            if items is None:
                complete = False
                continue
            for obj in items:
                uid = (obj.get("metadata") or {}).get("uid")
                if uid:
                    listed[str(uid)] = obj
        for uid, obj in listed.items():
            try:
                await self._sync_pod(uid, obj, now)
            except Exception as exc:
                # One odd pod must not hold back the others; it is tried again next pass.
                log.warning("Handling pod %s failed: %s", uid, exc, exc_info=True)
        if complete:
            for uid, pod in self.pods.items():
                if uid not in listed and not pod.vanished:
                    pod.vanished = True
                    self._begin_termination(pod, now, min(pod.view.grace_seconds, 2))
        await self._step_processes(now)
        self._schedule_probes(now)
        await self._write_statuses()
        self._write_targets()
        self._write_status_file(now)

    # -- nodes --------------------------------------------------------------------------------

    async def _sync_nodes(self, objs: list[dict[str, Any]], now: float) -> None:
        seen: set[str] = set()
        used = {node.subnet for node in self.nodes.values()}
        for obj in objs:
            meta = obj.get("metadata") or {}
            name = str(meta.get("name", ""))
            seen.add(name)
            node = self.nodes.get(name)
            if node is None or node.uid != meta.get("uid"):
                if node is not None:
                    self._drop_node(node)
                node = self._adopt_node(obj, used, now)
                used.add(node.subnet)
                self.nodes[name] = node
            if not _is_ready(obj) or now - node.status_reported >= NODE_STATUS_SECONDS:
                status, _ = await self.api.call(
                    "PATCH",
                    f"/api/v1/nodes/{quote(name)}/status",
                    node_status_patch(name, node.ip, now, node.ready_since),
                    STRATEGIC_MERGE,
                )
                if status == 200:
                    node.status_reported = now
            if now - node.lease_renewed >= LEASE_RENEW_SECONDS and await self._renew_lease(
                node, now
            ):
                node.lease_renewed = now
            self._ensure_dcgm(node, now)
            self._ensure_agent(node, now)
        for name in list(self.nodes):
            if name not in seen:
                log.info(
                    "Node %s is gone (or no longer matches %s)", name, self.config.node_selector
                )
                self._drop_node(self.nodes.pop(name))

    def _adopt_node(self, obj: dict[str, Any], used: set[IPv4Network], now: float) -> _Node:
        pool = self.config.address_pool
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        index = loopback.subnet_index(pool, _node_internal_ip(obj))
        used_indices = {loopback.subnet_index(pool, str(s.network_address)) for s in used}
        if index is None or index in used_indices:
            taken = {i for i in used_indices if i is not None}
            while True:
                index = loopback.free_subnet_index(pool, taken)
                candidate = loopback.node_address(loopback.node_subnet(pool, index))
                if _bindable(str(candidate), (DCGM_PORT,)):
                    break
                taken.add(index)  # another runner (another cluster) uses that subnet
        subnet = loopback.node_subnet(pool, index)
        status = obj.get("status") or {}
        labels = meta.get("labels") or {}
        gpus = gpu_devices.node_gpus(labels, status.get("allocatable") or {})
        memory_text = str(labels.get(GPU_MEMORY_LABEL, ""))
        # Under MIG's single strategy the label holds an instance's memory, not the GPU's.
        whole = "-MIG-" not in str(labels.get("nvidia.com/gpu.product", ""))
        node = _Node(
            name=name,
            uid=str(meta.get("uid", "")),
            subnet=subnet,
            ip=str(loopback.node_address(subnet)),
            gpus=gpus,
            ready_since=now,
            memory_mib=int(memory_text) if whole and memory_text.isdigit() else None,
        )
        described = (
            f"{gpus.gpu_count}x {gpus.product}, {len(gpus.slots)} device slots"
            if gpus
            else "no GPUs"
        )
        log.info("Adopted node %s at %s (%s)", name, node.ip, described)
        return node

    def _drop_node(self, node: _Node) -> None:
        if node.dcgm is not None and node.dcgm.poll() is None:
            node.dcgm.terminate()
        if node.agent is not None and node.agent.poll() is None:
            node.agent.terminate()
        for pod in self.pods.values():
            if pod.node == node.name and pod.terminating_since is None:
                pod.vanished = True
                self._begin_termination(pod, time.time(), 2)

    async def _renew_lease(self, node: _Node, now: float) -> bool:
        lease = node_lease(node.name, node.uid, now)
        base = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        status, _ = await self.api.call(
            "PATCH", f"{base}/{quote(node.name)}", {"spec": lease["spec"]}, MERGE_PATCH
        )
        if status == 404:
            status, _ = await self.api.call("POST", base, lease)
        if status not in (200, 201):
            log.warning("Renewing the Lease of node %s failed: HTTP %d", node.name, status)
            return False
        return True

    def _ensure_dcgm(self, node: _Node, now: float) -> None:
        if node.gpus is None:
            return
        if node.dcgm is not None and node.dcgm.poll() is None:
            return
        if node.dcgm is not None:
            log.warning("dcgm-sim of node %s exited with %s", node.name, node.dcgm.returncode)
            node.dcgm = None
            node.dcgm_next_start = now + DCGM_RESTART_SECONDS
        if now < node.dcgm_next_start:
            return
        sim_dir = self.config.node_dir(node.name) / "sim"
        sim_dir.mkdir(parents=True, exist_ok=True)
        command = dcgm_command(
            node.name,
            node.gpus,
            node.ip,
            sim_dir,
            self.config.engine,
            self.config.base_env,
            self.config.state_dir,
        )
        node.dcgm = self._spawn(command, self.config.node_dir(node.name) / "dcgm.log", sim_dir)

    def _ensure_agent(self, node: _Node, now: float) -> None:
        if not self.config.node_agent or node.gpus is None:
            return
        if node.agent is not None and node.agent.poll() is None:
            return
        if node.agent is not None:
            log.warning("Node agent of node %s exited with %s", node.name, node.agent.returncode)
            node.agent = None
            node.agent_next_start = now + DCGM_RESTART_SECONDS
        if now < node.agent_next_start:
            return
        sim_dir = self.config.node_dir(node.name) / "sim"
        sim_dir.mkdir(parents=True, exist_ok=True)
        command = node_agent_command(
            node.name, node.gpus, node.ip, sim_dir, node.memory_mib, self.config
        )
        log_path = self.config.node_dir(node.name) / "node-agent.log"
        node.agent = self._spawn(command, log_path, sim_dir)

    # -- pods ---------------------------------------------------------------------------------

    async def _sync_pod(self, uid: str, obj: dict[str, Any], now: float) -> None:
        problem = ""
        try:
            view: PodView | None = parse_pod(obj)
        except (UnsupportedPodError, KeyError, ValueError, TypeError) as exc:
            view = None
            problem = str(exc)
        pod = self.pods.get(uid)
        if pod is not None:
            if view is not None:
                pod.view = view
            if view is not None and view.deleting and pod.terminating_since is None:
                self._begin_termination(pod, now, view.grace_seconds)
            return
        deleting = (
            view.deleting
            if view is not None
            else bool((obj.get("metadata") or {}).get("deletionTimestamp"))
        )
        if deleting:
            # Nothing of it runs here: confirm the deletion at once.
            await self._delete_pod(
                str(obj["metadata"]["namespace"]), str(obj["metadata"]["name"]), uid
            )
            self.blocked.pop(uid, None)
            return
        phase = str((obj.get("status") or {}).get("phase", ""))
        if phase in ("Succeeded", "Failed"):
            return
        if now < self.blocked.get(uid, (0.0, ""))[0]:
            return
        if view is None:
            await self._report_blocked(obj, uid, problem, now)
            return
        node = self.nodes.get(view.node_name)
        if node is None:
            return
        try:
            pod = await self._admit(view, node, now)
        except (UnsupportedPodError, gpu_devices.DeviceError, loopback.AddressError) as exc:
            await self._report_blocked(obj, uid, str(exc), now)
            return
        self.blocked.pop(uid, None)
        self.pods[uid] = pod
        self._start(pod, now)

    async def _report_blocked(
        self, obj: dict[str, Any], uid: str, problem: str, now: float
    ) -> None:
        previous = self.blocked.get(uid, (0.0, ""))[1]
        self.blocked[uid] = (now + START_RETRY_SECONDS, problem)
        if problem == previous:
            return
        meta = obj.get("metadata") or {}
        log.warning("Cannot run pod %s/%s: %s", meta.get("namespace"), meta.get("name"), problem)
        patch = {
            "metadata": {"uid": uid},
            "status": {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "RunnerCannotStart",
                        "message": problem,
                    }
                ],
                "containerStatuses": [
                    {
                        "name": c.get("name", ""),
                        "image": c.get("image", ""),
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"waiting": {"reason": "RunnerCannotStart", "message": problem}},
                    }
                    for c in (obj.get("spec") or {}).get("containers") or []
                ],
            },
        }
        await self.api.call(
            "PATCH",
            _pod_path(str(meta.get("namespace")), str(meta.get("name"))) + "/status",
            patch,
            STRATEGIC_MERGE,
        )

    async def _admit(self, view: PodView, node: _Node, now: float) -> _Pod:
        used_ips = {p.ip for p in self.pods.values() if p.node == node.name}
        if (
            view.pod_ip
            and loopback.subnet_index(self.config.address_pool, view.pod_ip)
            == loopback.subnet_index(self.config.address_pool, node.ip)
            and view.pod_ip not in used_ips
            and view.pod_ip != node.ip
        ):
            ip = view.pod_ip  # the address the pod had under a previous runner
        else:
            ports = tuple(view.container.ports.values()) or (8000,)
            while True:
                ip = str(loopback.free_pod_address(node.subnet, used_ips))
                if _bindable(ip, ports):
                    break
                used_ips.add(ip)  # held by something else on this machine
        taken = [s for p in self.pods.values() if p.node == node.name for s in p.slots]
        slots = gpu_devices.assign_devices(
            node.gpus, gpu_devices.gpu_requests(view.container.limits), taken
        )
        lookup = await self._env_lookup(view)
        pod_env = resolve_env(view, ip, node.ip, lookup)
        sim_dir = self.config.node_dir(node.name) / "sim"
        placement = Placement(node.name, ip, node.ip, node.gpus, slots, sim_dir)
        command = local_command(
            view,
            placement,
            self.config.engine,
            pod_env,
            self.config.base_env,
            self.config.state_dir,
        )
        directory = self.config.pods_dir / f"{view.namespace}_{view.name}_{view.uid}"
        directory.mkdir(parents=True, exist_ok=True)
        sim_dir.mkdir(parents=True, exist_ok=True)
        return _Pod(
            view=view,
            node=node.name,
            ip=ip,
            slots=slots,
            directory=directory,
            start_time=now,
            run=ContainerRun(started_at=None, ready=False),
            ready_changed_at=now,
            command=command,
        )

    async def _env_lookup(self, view: PodView) -> dict[tuple[str, str, str], str]:
        import base64

        found: dict[tuple[str, str, str], str] = {}
        for kind, name, key in sorted(env_references(view)):
            plural = "secrets" if kind == "Secret" else "configmaps"
            status, obj = await self.api.call(
                "GET", f"/api/v1/namespaces/{quote(view.namespace)}/{plural}/{quote(name)}"
            )
            if status != 200 or obj is None:
                continue
            data = obj.get("data") or {}
            if key in data:
                value = str(data[key])
                found[(kind, name, key)] = (
                    base64.b64decode(value).decode(errors="replace") if kind == "Secret" else value
                )
        return found

    def _spawn(self, command: LocalCommand, log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as sink:
            # Its own session and process group: a signal to the group reaches the container's
            # children too, and a Ctrl-C aimed at the runner does not.
            return subprocess.Popen(
                list(command.argv),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=dict(command.env),
                cwd=cwd,
                start_new_session=True,
            )

    def _start(self, pod: _Pod, now: float) -> None:
        assert pod.command is not None
        log_path = pod.directory / f"{pod.view.container.name}.log"
        pod.process = self._spawn(pod.command, log_path, pod.directory)
        pod.run = replace(
            pod.run,
            started_at=now,
            ready=False,
            waiting_reason="",
            waiting_message="",
            pid=pod.process.pid,
        )
        pod.probe_successes = pod.probe_failures = 0
        pod.next_probe = now + STARTING_PROBE_INTERVAL_SECONDS
        pod.dirty = True
        slots = (
            ", ".join(
                f"GPU {s.gpu}"
                + (f" MIG {s.mig_profile}#{s.mig_instance}" if s.mig_profile else "")
                + (f" share {s.replica}" if s.replica else "")
                for s in pod.slots
            )
            or "no GPU"
        )
        log.info(
            "Started pod %s on %s: %s at %s (%s, pid %d)",
            pod.view.key,
            pod.node,
            pod.command.what,
            pod.ip,
            slots,
            pod.process.pid,
        )

    def _begin_termination(self, pod: _Pod, now: float, grace_seconds: float) -> None:
        if pod.terminating_since is not None:
            return
        pod.terminating_since = now
        grace = max(0.0, min(float(grace_seconds), self.config.max_grace_seconds))
        pod.kill_at = now + grace
        if pod.probe_task is not None:
            pod.probe_task.cancel()
        if pod.running and pod.process is not None:
            _signal_group(pod.process.pid, signal.SIGTERM)
            log.info("Stopping pod %s (grace %.0f s)", pod.view.key, grace)
        if pod.run.ready:
            pod.run = replace(pod.run, ready=False)
            pod.ready_changed_at = now
            pod.dirty = True

    async def _step_processes(self, now: float) -> None:
        finished: list[str] = []
        for uid, pod in self.pods.items():
            process = pod.process
            exited = process is not None and process.poll() is not None
            if pod.terminating_since is not None:
                if process is None or exited:
                    finished.append(uid)
                elif pod.kill_at is not None and now >= pod.kill_at:
                    log.warning("Pod %s outlived its grace period; killing it", pod.view.key)
                    _signal_group(process.pid, signal.SIGKILL)
                    _signal(marked_pids(self.config.state_dir, uid), signal.SIGKILL)
                    pod.kill_at = now + 5.0
                continue
            if exited and process is not None:
                self._container_exited(pod, process, now)
            elif process is None and pod.run.terminated is None and now >= pod.next_start:
                self._start(pod, now)
        for uid in finished:
            pod = self.pods.pop(uid)
            if pod.probe_task is not None:
                pod.probe_task.cancel()
            # The launcher's engines sit in process groups of their own: catch any survivor.
            await asyncio.to_thread(stop_marked, self.config.state_dir, 1.0, uid)
            if not pod.vanished:
                await self._delete_pod(pod.view.namespace, pod.view.name, uid)
            log.info("Pod %s stopped and removed", pod.view.key)

    def _container_exited(self, pod: _Pod, process: subprocess.Popen[bytes], now: float) -> None:
        code = process.returncode
        started = pod.run.started_at or now
        finished = Terminated(
            exit_code=code if code >= 0 else 128 - code,
            reason="Completed" if code == 0 else "Error",
            started_at=started,
            finished_at=now,
        )
        pod.process = None
        if pod.probe_task is not None:
            pod.probe_task.cancel()
            pod.probe_task = None
        if pod.run.ready:
            pod.ready_changed_at = now
        policy = pod.view.restart_policy
        log.warning(
            "Container of pod %s exited with %d (log: %s)",
            pod.view.key,
            code,
            pod.directory / f"{pod.view.container.name}.log",
        )
        if policy == "Always" or (policy == "OnFailure" and code != 0):
            pod.failures = 1 if now - started >= BACKOFF_RESET_SECONDS else pod.failures + 1
            delay = _backoff(pod.failures)
            pod.next_start = now + delay
            pod.run = replace(
                pod.run,
                started_at=None,
                ready=False,
                pid=None,
                restart_count=pod.run.restart_count + 1,
                waiting_reason="CrashLoopBackOff",
                waiting_message=f"back-off {delay:g}s restarting failed container",
                last_terminated=finished,
            )
        else:
            pod.run = replace(pod.run, ready=False, pid=None, terminated=finished)
            pod.slots = ()
        pod.dirty = True

    async def _delete_pod(self, namespace: str, name: str, uid: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": uid},
        }
        status, _ = await self.api.call("DELETE", _pod_path(namespace, name), body)
        if status not in (200, 202, 404, 409):
            log.warning("Deleting pod %s/%s failed: HTTP %d", namespace, name, status)

    # -- probes -------------------------------------------------------------------------------

    def _schedule_probes(self, now: float) -> None:
        for pod in self.pods.values():
            if pod.terminating_since is not None or not pod.running:
                continue
            task = pod.probe_task
            if task is not None and task.done():
                pod.probe_task = None
                ok = not task.cancelled() and task.exception() is None and task.result()
                self._probe_result(pod, ok, now)
            if pod.probe_task is None and now >= pod.next_probe:
                pod.probe_task = asyncio.get_running_loop().create_task(self._probe(pod))

    async def _probe(self, pod: _Pod) -> bool:
        probe = pod.view.container.readiness
        if probe is None:
            return True
        assert self._session is not None
        url = f"http://{pod.ip}:{probe.port}{probe.path}"
        try:
            timeout = aiohttp.ClientTimeout(total=probe.timeout_seconds)
            async with self._session.get(url, timeout=timeout) as response:
                ok = 200 <= response.status < 400
        except (aiohttp.ClientError, TimeoutError, OSError):
            ok = False
        self._wake.set()
        return ok

    def _probe_result(self, pod: _Pod, ok: bool, now: float) -> None:
        probe = pod.view.container.readiness
        threshold_ok = probe.success_threshold if probe else 1
        threshold_fail = probe.failure_threshold if probe else 1
        if ok:
            pod.probe_successes += 1
            pod.probe_failures = 0
        else:
            pod.probe_failures += 1
            pod.probe_successes = 0
        ready = pod.run.ready
        if not ready and pod.probe_successes >= threshold_ok:
            ready = True
        elif ready and pod.probe_failures >= threshold_fail:
            ready = False
        if ready != pod.run.ready:
            pod.run = replace(pod.run, ready=ready)
            pod.ready_changed_at = now
            pod.dirty = True
            log.info("Pod %s is %s", pod.view.key, "Ready" if ready else "not Ready")
        if ready:
            period = self.config.probe_period_seconds or (probe.period_seconds if probe else 10.0)
        else:
            period = STARTING_PROBE_INTERVAL_SECONDS
        pod.next_probe = now + period

    # -- outputs ------------------------------------------------------------------------------

    async def _write_status(self, pod: _Pod) -> None:
        node = self.nodes.get(pod.node)
        patch = pod_status_patch(
            pod.view,
            pod.run,
            pod_ip=pod.ip,
            host_ip=node.ip if node else "",
            start_time=pod.start_time,
            ready_changed_at=pod.ready_changed_at,
        )
        status, body = await self.api.call(
            "PATCH",
            _pod_path(pod.view.namespace, pod.view.name) + "/status",
            patch,
            STRATEGIC_MERGE,
        )
        if status == 200:
            pod.dirty = False
        elif status in (404, 409):
            pod.dirty = False  # gone, or a new pod under that name: the next list tells
        else:
            message = (body or {}).get("message", "")
            log.warning("Status of pod %s not written: HTTP %d %s", pod.view.key, status, message)

    async def _write_statuses(self) -> None:
        dirty = [p for p in self.pods.values() if p.dirty and not p.vanished]
        if dirty:
            await asyncio.gather(*(self._write_status(p) for p in dirty))

    def _write_targets(self) -> None:
        targets = []
        for pod in self.pods.values():
            if pod.terminating_since is not None or not pod.running:
                continue
            container = pod.view.container
            target = prometheus.pod_target(
                pod.ip,
                pod.view.namespace,
                pod.view.name,
                pod.node,
                pod.view.labels,
                pod.view.annotations,
                container.name,
                sorted(container.ports.values()),
            )
            if target is not None:
                targets.append(target)
        exporters = {
            node.name: f"{node.ip}:{DCGM_PORT}"
            for node in self.nodes.values()
            if node.dcgm is not None and node.dcgm.poll() is None
        }
        agents = {
            node.name: f"{node.ip}:{NODE_AGENT_PORT}"
            for node in self.nodes.values()
            if node.agent is not None and node.agent.poll() is None
        }
        directory = self.config.targets_dir
        prometheus.write_targets(
            directory / prometheus.POD_TARGETS_FILE, prometheus.pod_targets_document(targets)
        )
        prometheus.write_targets(
            directory / prometheus.DCGM_TARGETS_FILE, prometheus.node_targets_document(exporters)
        )
        prometheus.write_targets(
            directory / prometheus.NODE_AGENT_TARGETS_FILE,
            prometheus.node_targets_document(agents),
        )

    def _write_status_file(self, now: float) -> None:
        document = {
            "pid": os.getpid(),
            "updated_unix": now,
            "nodes": {
                n.name: {"ip": n.ip, "dcgm": n.dcgm is not None, "node_agent": n.agent is not None}
                for n in self.nodes.values()
            },
            "pods": {
                p.view.key: {
                    "ip": p.ip,
                    "node": p.node,
                    "pid": p.process.pid if p.process else None,
                    "ready": p.run.ready,
                    "restarts": p.run.restart_count,
                }
                for p in self.pods.values()
            },
            "blocked": {uid: reason for uid, (_, reason) in self.blocked.items()},
        }
        path = self.config.state_dir / "status.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(document, indent=1))
        tmp.replace(path)


def node_agent_command(
    node_name: str,
    gpus: NodeGpus,
    host_ip: str,
    sim_state_dir: Path,
    memory_mib: int | None,
    config: RunnerConfig,
) -> LocalCommand:
    """The node's slmpack node agent over its simulated GPUs (pure), on the node's address.

    It gets the runner's kubeconfig, as a node component with its own credentials would,
    to list the node's pods and annotate the node; the pods never see it.
    """
    argv = [
        config.engine.python,
        "-m",
        NODE_AGENT_MODULE,
        "--node-name",
        node_name,
        "--host",
        host_ip,
        "--port",
        str(NODE_AGENT_PORT),
        "--interval",
        f"{NODE_AGENT_INTERVAL_SECONDS:g}",
        "--kubeconfig",
        str(config.kubeconfig),
        "--nvml-sim",
        str(sim_state_dir),
        "--sim-gpu",
        gpus.product,
        "--sim-gpu-count",
        str(max(1, gpus.gpu_count)),
        "--sim-speedup",
        f"{config.engine.sim_speedup:g}",
    ]
    if memory_mib is not None:
        argv += ["--sim-memory-mib", str(memory_mib)]
    mig = sorted(
        {(s.gpu, s.mig_profile, s.mig_instance) for s in gpus.slots if s.mig_profile is not None}
    )
    for gpu, profile, instance in mig:
        argv += ["--sim-mig-device", f"{gpu}:{profile}:{instance}"]
    env = {
        **config.base_env,
        RUNNER_DIR_ENV: str(config.state_dir),
        RUNNER_POD_ENV: f"node:{node_name}",
    }
    return LocalCommand(tuple(argv), env, "node-agent")


async def _wait_any(events: Sequence[asyncio.Event], timeout_seconds: float) -> None:
    """Return when one of the events is set or the timeout passes."""
    if timeout_seconds <= 0 or any(e.is_set() for e in events):
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout_seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def run_forever(config: RunnerConfig) -> None:
    """Run until SIGINT or SIGTERM (the `dev-cluster runner run` command)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runner = Runner(config)
        log.info(
            "Runner started: nodes %s, engine %s, state in %s",
            config.node_selector,
            config.engine.kind.value,
            config.state_dir,
        )
        await runner.run(stop)

    asyncio.run(main())


# --- a runner in the background ------------------------------------------------------------------


@dataclass(frozen=True)
class RunnerHandle:
    """A runner process started by `up`."""

    pid: int
    binary: str
    state_dir: str

    def ref(self) -> processes.ProcessRef:
        return processes.ProcessRef("runner", self.pid, Path(self.binary), Path(self.state_dir))


def _handle_path(state_dir: Path) -> Path:
    return state_dir / ADDON_FILE


def read_handle(state_dir: Path) -> RunnerHandle | None:
    try:
        raw = json.loads(_handle_path(state_dir).read_text())
        return RunnerHandle(int(raw["pid"]), str(raw["binary"]), str(raw["state_dir"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def read_status(state_dir: Path) -> dict[str, Any]:
    """The runner's `status.json` ({} before its first pass)."""
    try:
        document: dict[str, Any] = json.loads((state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return document


def log_tail(state_dir: Path, lines: int = 60) -> str:
    path = state_dir / "runner.log"
    if not path.exists():
        return f"(no runner log at {path})"
    tail = path.read_text(errors="replace").splitlines()[-lines:]
    return f"----- {path} (last {len(tail)} lines) -----\n" + "\n".join(tail)


def up(
    argv: Sequence[str],
    state_dir: Path,
    timeout_seconds: float = 30.0,
    report: Callable[[str], None] = lambda _: None,
) -> RunnerHandle:
    """Start `slmpack dev-cluster runner run <argv>` in the background (log: runner.log) and
    wait for its first pass. `argv` must name `--state-dir state_dir`."""
    current = read_handle(state_dir)
    if current is not None and processes.is_ours(current.ref()):
        report(f"A runner already runs from {state_dir} (pid {current.pid})")
        return current
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "status.json").unlink(missing_ok=True)
    command = [sys.executable, "-m", "slmpack", "dev-cluster", "runner", "run", *argv]
    ref = processes.spawn("runner", command, state_dir / "runner.log", state_dir)
    handle = RunnerHandle(ref.pid, sys.executable, str(state_dir))
    write_addon(_handle_path(state_dir), ref)
    deadline = time.monotonic() + timeout_seconds
    while read_status(state_dir).get("pid") != ref.pid:
        if not processes.is_ours(ref):
            raise DevClusterError(f"The runner exited during start-up.\n{log_tail(state_dir)}")
        if time.monotonic() > deadline:
            down(state_dir)
            raise DevClusterError(
                f"The runner made no pass within {timeout_seconds:g} s.\n{log_tail(state_dir)}"
            )
        time.sleep(0.1)
    report(f"Runner running (pid {ref.pid}, log {state_dir / 'runner.log'})")
    return handle


def down(state_dir: Path, grace_seconds: float = DEFAULT_MAX_GRACE_SECONDS + 15) -> bool:
    """Stop the runner started by `up` (it stops its pods' processes first), then anything it
    left behind. False when none ran."""
    handle = read_handle(state_dir)
    outcome = processes.stop([handle.ref()], grace_seconds) if handle is not None else {}
    _handle_path(state_dir).unlink(missing_ok=True)
    leftovers = stop_marked(state_dir, 5.0)
    return outcome.get("runner", "not running") != "not running" or leftovers > 0
