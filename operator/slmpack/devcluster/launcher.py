"""Start and stop a local control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and the kwok controller, as plain processes on 127.0.0.1.

Everything of a cluster lives in `$SLMPACK_CACHE/cluster/<name>/`: certificates, etcd data,
one log and one pid file per component, `cluster.json` (ports and binaries) and the admin
`kubeconfig`. Several clusters with different names can run side by side; each gets free
ports at start.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slmpack.devcluster import binaries, certs, kubeconfig, kwok_stages, processes
from slmpack.devcluster.errors import DevClusterError

#: Start order. Stop order is the reverse, so kube-apiserver always stops before etcd: with
#: etcd gone first, the apiserver keeps retrying it and ignores SIGTERM for over 40 s.
COMPONENTS: tuple[str, ...] = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
)
#: Annotation that hands a Node to the kwok controller (see `gpu_nodes`).
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_ANNOTATION_VALUE = "fake"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
FIRST_SERVICE_IP = "10.96.0.1"
POD_CIDR = "10.244.0.0/16"
#: Address kwok reports as every fake node's InternalIP (a documentation range, never routed).
FAKE_NODE_IP = "192.0.2.1"
#: Seconds a fake node's Lease lasts; kwok renews it well before it runs out.
NODE_LEASE_DURATION_SECONDS = 40
DEFAULT_CLUSTER_NAME = "dev"
DEFAULT_READY_TIMEOUT_SECONDS = 90.0
DEFAULT_STOP_GRACE_SECONDS = 10.0
#: Lines of each component log quoted in an error.
LOG_TAIL_LINES = 25
#: A process started beside the cluster (the runner, Prometheus) records itself in
#: `<state dir>/<its folder>/addon.json`, so that `down` stops it before the control plane.
ADDON_FILE = "addon.json"
#: Add-ons get longer than components: the runner first stops the processes of its pods.
ADDON_STOP_GRACE_SECONDS = 45.0

Reporter = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class Ports:
    """TCP ports on 127.0.0.1, one per listening endpoint."""

    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int


@dataclass(frozen=True)
class ClusterState:
    """What `cluster.json` records about a started cluster."""

    name: str
    state_dir: str
    server_url: str
    kubeconfig: str
    ports: Ports
    binaries: dict[str, str]
    started_at: str
    pids: dict[str, int] = field(default_factory=dict)

    def refs(self) -> list[processes.ProcessRef]:
        return [
            processes.ProcessRef(name, pid, Path(self.binaries[name]), Path(self.state_dir))
            for name, pid in self.pids.items()
        ]


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    running: bool
    rss_bytes: int
    peak_rss_bytes: int
    detail: str


@dataclass(frozen=True)
class ClusterStatus:
    name: str
    state_dir: Path
    state: ClusterState | None
    components: tuple[ComponentStatus, ...]

    @property
    def exists(self) -> bool:
        return self.state is not None or any(c.pid is not None for c in self.components)

    @property
    def all_running(self) -> bool:
        return bool(self.components) and all(c.running for c in self.components)

    @property
    def none_running(self) -> bool:
        return not any(c.running for c in self.components)

    @property
    def peak_rss_bytes(self) -> int:
        return sum(c.peak_rss_bytes for c in self.components)

    @property
    def rss_bytes(self) -> int:
        return sum(c.rss_bytes for c in self.components)


@dataclass(frozen=True)
class Layout:
    """Paths inside one cluster's state directory."""

    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "cluster.json"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def etcd_data_dir(self) -> Path:
        return self.root / "etcd-data"

    @property
    def kwok_home(self) -> Path:
        return self.root / "kwok-home"

    @property
    def kwok_config(self) -> Path:
        return self.root / "kwok.yaml"

    def log(self, component: str) -> Path:
        return self.root / "logs" / f"{component}.log"

    def pid_file(self, component: str) -> Path:
        return self.root / "pids" / f"{component}.pid"

    def component_kubeconfig(self, component: str) -> Path:
        return self.root / "kubeconfigs" / f"{component}.kubeconfig"


def cluster_dir(name: str) -> Path:
    if not name or not all(ch.isalnum() or ch in "-_" for ch in name):
        raise DevClusterError(
            f"Cluster name {name!r} is not valid: use letters, digits, '-' or '_'."
        )
    return binaries.cache_dir() / "cluster" / name


def free_port() -> int:
    """A port the kernel just reported free on 127.0.0.1 (another program could still take it
    before our component binds it; the component then exits and its log says so)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def allocate_ports(apiserver_port: int = 0) -> Ports:
    """Free ports for every endpoint; `apiserver_port` > 0 pins the apiserver's."""
    if apiserver_port and port_in_use(apiserver_port):
        raise DevClusterError(
            f"Port {apiserver_port} on 127.0.0.1 is already in use: stop what listens there "
            "(`ss -ltnp` shows it) or pick another with --apiserver-port (0 = any free port)."
        )
    chosen: set[int] = {apiserver_port} if apiserver_port else set()
    picked: list[int] = []
    while len(picked) < 6:
        port = free_port()
        if port not in chosen:
            chosen.add(port)
            picked.append(port)
    return Ports(
        etcd_client=picked[0],
        etcd_peer=picked[1],
        apiserver=apiserver_port or picked[2],
        controller_manager=picked[3],
        scheduler=picked[4],
        kwok=picked[5],
    )


def component_argv(
    component: str, binary: Path, layout: Layout, ports: Ports, pki: certs.PkiFiles, name: str
) -> list[str]:
    """The command line of one component (pure: paths and ports in, argv out)."""
    kubeconfig_path = str(layout.component_kubeconfig(component))
    if component == "etcd":
        peer_url = f"http://127.0.0.1:{ports.etcd_peer}"
        client_url = f"http://127.0.0.1:{ports.etcd_client}"
        return [
            str(binary),
            "--name=default",
            f"--data-dir={layout.etcd_data_dir}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            # A throwaway dev store: durability is not worth an fsync per write.
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]
    if component == "kube-apiserver":
        return [
            str(binary),
            f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports.apiserver}",
            f"--tls-cert-file={pki.apiserver_cert}",
            f"--tls-private-key-file={pki.apiserver_key}",
            f"--client-ca-file={pki.ca_cert}",
            "--authorization-mode=Node,RBAC",
            # Added to the defaults, as kubeadm does: kubelets may only touch their own Node.
            "--enable-admission-plugins=NodeRestriction",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.service_account_public_key}",
            f"--service-account-signing-key-file={pki.service_account_private_key}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            # Loopback addresses may not back the `kubernetes` Service, and nothing in a
            # cluster of fake nodes dials it, so its endpoints are not maintained.
            "--endpoint-reconciler-type=none",
            f"--requestheader-client-ca-file={pki.front_proxy_ca_cert}",
            f"--requestheader-allowed-names={certs.FRONT_PROXY_CLIENT_NAME}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.front_proxy_client_cert}",
            f"--proxy-client-key-file={pki.front_proxy_client_key}",
            "--allow-privileged=true",
            "--profiling=false",
            # Stop right away on SIGTERM instead of draining for a load balancer.
            "--shutdown-delay-duration=0s",
            "--shutdown-watch-termination-grace-period=0s",
        ]
    if component in ("kube-controller-manager", "kube-scheduler"):
        is_kcm = component == "kube-controller-manager"
        port = ports.controller_manager if is_kcm else ports.scheduler
        argv = [
            str(binary),
            f"--kubeconfig={kubeconfig_path}",
            f"--authentication-kubeconfig={kubeconfig_path}",
            f"--authorization-kubeconfig={kubeconfig_path}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            # One instance per cluster: nothing to elect, and no Lease to wait for at start.
            "--leader-elect=false",
            "--profiling=false",
        ]
        if is_kcm:
            argv += [
                f"--cluster-name={name}",
                f"--root-ca-file={pki.ca_cert}",
                f"--service-account-private-key-file={pki.service_account_private_key}",
                # Each controller acts as its own ServiceAccount with the bootstrap RBAC
                # roles, as kubeadm sets it up.
                "--use-service-account-credentials=true",
                f"--cert-dir={layout.root / 'kcm-certs'}",
                # kwok renews hundreds of node leases from one process; on a starved 2-core
                # machine a renewal can come late, and the default 40 s grace would mark the
                # node's pods NotReady for good (kwok does not restore pod readiness).
                "--node-monitor-grace-period=180s",
            ]
        else:
            argv += [f"--cert-dir={layout.root / 'scheduler-certs'}"]
        return argv
    if component == "kwok":
        return [
            str(binary),
            f"--kubeconfig={kubeconfig_path}",
            f"--config={layout.kwok_config}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector="
            f"{KWOK_NODE_ANNOTATION}={KWOK_NODE_ANNOTATION_VALUE}",
            f"--node-ip={FAKE_NODE_IP}",
            f"--cidr={POD_CIDR}",
            f"--node-lease-duration-seconds={NODE_LEASE_DURATION_SECONDS}",
            f"--server-address=127.0.0.1:{ports.kwok}",
        ]
    raise ValueError(f"unknown component {component!r}")


def health_url(component: str, ports: Ports) -> str:
    return {
        "etcd": f"http://127.0.0.1:{ports.etcd_client}/health",
        "kube-apiserver": f"https://127.0.0.1:{ports.apiserver}/readyz",
        "kube-controller-manager": f"https://127.0.0.1:{ports.controller_manager}/healthz",
        "kube-scheduler": f"https://127.0.0.1:{ports.scheduler}/healthz",
        "kwok": f"http://127.0.0.1:{ports.kwok}/healthz",
    }[component]


def _probe(url: str, ssl_context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=ssl_context) as response:
            body = response.read(200)
            return response.status == 200 and b"false" not in body
    except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError, OSError):
        return False


def _admin_ssl_context(layout: Layout) -> ssl.SSLContext:
    """Trusts the cluster CA and presents the admin client cert (so /readyz is authorized)."""
    context = ssl.create_default_context(cafile=str(layout.pki_dir / "ca.crt"))
    context.load_cert_chain(layout.pki_dir / "admin.crt", layout.pki_dir / "admin.key")
    return context


def _self_signed_ok_context() -> ssl.SSLContext:
    # kube-controller-manager and kube-scheduler serve /healthz with a self-signed cert they
    # generate at start; only reachability is checked, on loopback.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def log_tails(layout: Layout, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of every component log, for error messages."""
    parts: list[str] = []
    for component in COMPONENTS:
        path = layout.log(component)
        if not path.exists():
            continue
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"----- {path} (last {len(tail)} lines) -----\n" + "\n".join(tail))
    return "\n".join(parts) if parts else f"(no component logs under {layout.root / 'logs'})"


def write_addon(path: Path, ref: processes.ProcessRef) -> None:
    """Record a process started beside a cluster (see ADDON_FILE)."""
    record = {
        "component": ref.component,
        "pid": ref.pid,
        "binary": str(ref.binary),
        "state_dir": str(ref.state_dir),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)


def addon_refs(root: Path) -> list[processes.ProcessRef]:
    """The add-on processes recorded under a cluster's state directory."""
    refs: list[processes.ProcessRef] = []
    for path in sorted(root.glob(f"*/{ADDON_FILE}")):
        try:
            raw = json.loads(path.read_text())
            refs.append(
                processes.ProcessRef(
                    str(raw["component"]),
                    int(raw["pid"]),
                    Path(raw["binary"]),
                    Path(raw["state_dir"]),
                )
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return refs


def _read_state(layout: Layout) -> ClusterState | None:
    if not layout.state_file.exists():
        return None
    try:
        raw = json.loads(layout.state_file.read_text())
        raw["ports"] = Ports(**raw["ports"])
        return ClusterState(**raw)
    except (ValueError, TypeError, KeyError) as exc:
        raise DevClusterError(
            f"{layout.state_file} is unreadable ({exc}); stop leftover processes with "
            f"`slmpack dev-cluster down --name {layout.root.name}`, which also removes it."
        ) from exc


def _write_state(layout: Layout, state: ClusterState) -> None:
    tmp = layout.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(layout.state_file)


def _pids_from_files(layout: Layout) -> dict[str, int]:
    pids: dict[str, int] = {}
    for component in COMPONENTS:
        path = layout.pid_file(component)
        if path.exists():
            text = path.read_text().strip()
            if text.isdigit():
                pids[component] = int(text)
    return pids


def status(name: str = DEFAULT_CLUSTER_NAME) -> ClusterStatus:
    """Which components of cluster `name` run, from its pid files and /proc."""
    layout = Layout(cluster_dir(name))
    state = _read_state(layout)
    pids = _pids_from_files(layout)
    components: list[ComponentStatus] = []
    for component in COMPONENTS:
        pid = pids.get(component)
        if pid is None:
            components.append(ComponentStatus(component, None, False, 0, 0, "no pid file"))
            continue
        binary = Path(state.binaries[component]) if state else Path("?")
        ref = processes.ProcessRef(component, pid, binary, layout.root)
        if processes.is_ours(ref):
            rss, peak = processes.rss_bytes(pid)
            components.append(ComponentStatus(component, pid, True, rss, peak, "running"))
        else:
            owner = processes.pid_owner_description(pid)
            detail = (
                "exited (stale pid file)"
                if owner == "no process"
                else f"stale pid file: pid {pid} now belongs to another program ({owner})"
            )
            components.append(ComponentStatus(component, pid, False, 0, 0, detail))
    return ClusterStatus(name, layout.root, state, tuple(components))


def _wait_healthy(
    components: Sequence[str],
    layout: Layout,
    state: ClusterState,
    deadline: float,
) -> None:
    admin_context = _admin_ssl_context(layout)
    insecure_context = _self_signed_ok_context()
    refs = {ref.component: ref for ref in state.refs()}
    waiting = list(components)
    while waiting:
        for component in list(waiting):
            if not processes.is_ours(refs[component]):
                raise DevClusterError(
                    f"{component} exited during start-up; see its log "
                    f"{layout.log(component)}.\n{log_tails(layout)}"
                )
            context = admin_context if component == "kube-apiserver" else insecure_context
            if _probe(health_url(component, state.ports), context):
                waiting.remove(component)
        if waiting and time.monotonic() > deadline:
            raise DevClusterError(
                f"Timed out waiting for {', '.join(waiting)} to report healthy; a slow machine "
                f"may need a longer --timeout.\n{log_tails(layout)}"
            )
        if waiting:
            time.sleep(0.1)


def _prepare_files(layout: Layout, name: str, ports: Ports) -> certs.PkiFiles:
    now = datetime.datetime.now(datetime.UTC)
    pki = certs.new_cluster_pki(now, service_ip=FIRST_SERVICE_IP)
    pki_files = certs.write_pki(pki, layout.pki_dir)
    server_url = f"https://127.0.0.1:{ports.apiserver}"
    users = {
        "kube-controller-manager": (pki.controller_manager, "system:kube-controller-manager"),
        "kube-scheduler": (pki.scheduler, "system:kube-scheduler"),
        "kwok": (pki.kwok, "kwok-controller"),
    }
    for component, (pair, user) in users.items():
        document = kubeconfig.build_kubeconfig(name, server_url, pki.ca.cert_pem, pair, user)
        kubeconfig.write_kubeconfig(document, layout.component_kubeconfig(component))
    admin = kubeconfig.build_kubeconfig(
        name, server_url, pki.ca.cert_pem, pki.admin, "slmpack-admin"
    )
    kubeconfig.write_kubeconfig(admin, layout.kubeconfig)
    layout.kwok_config.write_text(kwok_stages.render_kwok_config())
    # kwok also reads ~/.kwok/kwok.yaml when it exists; an empty home keeps it out.
    layout.kwok_home.mkdir(parents=True, exist_ok=True)
    layout.etcd_data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return pki_files


@dataclass(frozen=True)
class UpResult:
    state: ClusterState
    reused: bool
    ready_seconds: float


def up(
    name: str = DEFAULT_CLUSTER_NAME,
    *,
    apiserver_port: int = 0,
    timeout_seconds: float = DEFAULT_READY_TIMEOUT_SECONDS,
    build: bool = False,
    report: Reporter = _quiet,
) -> UpResult:
    """Start cluster `name` and wait until every component reports healthy.

    A cluster that is already fully up is reused. A partly running one is refused (its
    state is unclear); one whose processes are all gone is cleaned up and started afresh.
    """
    started = time.monotonic()
    current = status(name)
    if current.exists:
        if current.all_running and current.state is not None:
            report(f"Cluster {name!r} is already up (since {current.state.started_at}); reusing it")
            return UpResult(current.state, reused=True, ready_seconds=0.0)
        if not current.none_running:
            listing = "; ".join(f"{c.name}: {c.detail}" for c in current.components)
            raise DevClusterError(
                f"Cluster {name!r} is only partly running ({listing}). Stop it with "
                f"`slmpack dev-cluster down --name {name}` and start it again."
            )
        report(f"Removing stale state of cluster {name!r} (its processes are gone)")
        shutil.rmtree(current.state_dir)

    tools = binaries.resolve_tools()
    if build:
        binaries.build_missing(tools)
    binaries.require_built(tools)

    layout = Layout(cluster_dir(name))
    layout.root.mkdir(parents=True, exist_ok=True)
    ports = allocate_ports(apiserver_port)
    pki_files = _prepare_files(layout, name, ports)
    state = ClusterState(
        name=name,
        state_dir=str(layout.root),
        server_url=f"https://127.0.0.1:{ports.apiserver}",
        kubeconfig=str(layout.kubeconfig),
        ports=ports,
        binaries={component: str(tools[component].path) for component in COMPONENTS},
        started_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    deadline = started + timeout_seconds
    try:
        # etcd and the apiserver first: kube-controller-manager gives up if the apiserver is
        # not healthy within a few seconds of its own start.
        state = _start(("etcd", "kube-apiserver"), layout, state, pki_files)
        _wait_healthy(("etcd", "kube-apiserver"), layout, state, deadline)
        report(f"kube-apiserver ready at {state.server_url} ({time.monotonic() - started:.1f} s)")
        later = ("kube-controller-manager", "kube-scheduler", "kwok")
        state = _start(later, layout, state, pki_files)
        _wait_healthy(later, layout, state, deadline)
    except BaseException:
        processes.stop(list(reversed(state.refs())), grace_seconds=DEFAULT_STOP_GRACE_SECONDS)
        for component in COMPONENTS:
            layout.pid_file(component).unlink(missing_ok=True)
        raise
    ready_seconds = time.monotonic() - started
    report(f"Control plane ready in {ready_seconds:.1f} s (logs: {layout.root / 'logs'})")
    return UpResult(state, reused=False, ready_seconds=ready_seconds)


def _start(
    components: Sequence[str], layout: Layout, state: ClusterState, pki_files: certs.PkiFiles
) -> ClusterState:
    pids = dict(state.pids)
    env = dict(os.environ)
    for component in components:
        argv = component_argv(
            component, Path(state.binaries[component]), layout, state.ports, pki_files, state.name
        )
        component_env = {**env, "HOME": str(layout.kwok_home)} if component == "kwok" else env
        ref = processes.spawn(component, argv, layout.log(component), layout.root, component_env)
        pid_file = layout.pid_file(component)
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{ref.pid}\n")
        pids[component] = ref.pid
        state = dataclasses.replace(state, pids=dict(pids))
        _write_state(layout, state)
    return state


def stop_component(name: str, component: str) -> None:
    """Stop one component of a running cluster (to test how clients ride out an outage)."""
    current = status(name)
    if current.state is None or component not in current.state.pids:
        raise DevClusterError(f"Cluster {name!r} has no running {component}")
    ref = next(r for r in current.state.refs() if r.component == component)
    processes.stop([ref], grace_seconds=DEFAULT_STOP_GRACE_SECONDS)


def start_component(
    name: str, component: str, timeout_seconds: float = DEFAULT_READY_TIMEOUT_SECONDS
) -> None:
    """Start again a component that `stop_component` stopped, with the same flags and files."""
    current = status(name)
    if current.state is None:
        raise DevClusterError(f"Cluster {name!r} is not running")
    layout = Layout(current.state_dir)
    state = _start((component,), layout, current.state, certs.pki_file_paths(layout.pki_dir))
    _wait_healthy((component,), layout, state, time.monotonic() + timeout_seconds)


def down(
    name: str = DEFAULT_CLUSTER_NAME,
    *,
    grace_seconds: float = DEFAULT_STOP_GRACE_SECONDS,
    keep_state: bool = False,
    report: Reporter = _quiet,
) -> bool:
    """Stop the processes cluster `name` started, newest first, and remove its state.

    Only pids whose command line still matches what was launched are signalled. Returns
    False when there was nothing to stop or remove.
    """
    current = status(name)
    if not current.state_dir.exists():
        report(f"Cluster {name!r} is not running (no state under {current.state_dir})")
        return False
    state = current.state
    binaries_by_component = state.binaries if state else {}
    refs = {
        c.name: processes.ProcessRef(
            c.name, c.pid, Path(binaries_by_component.get(c.name, "?")), current.state_dir
        )
        for c in current.components
        if c.pid is not None
    }
    for c in current.components:
        if c.pid is not None and not c.running:
            report(f"{c.name}: {c.detail}; not signalling pid {c.pid}")
    addons = addon_refs(current.state_dir)
    for component, outcome in processes.stop(addons, ADDON_STOP_GRACE_SECONDS).items():
        report(f"{component}: {outcome}")
    # Everything that talks to the apiserver goes first, together; then the apiserver; then
    # etcd, which the apiserver needs in order to shut down promptly.
    groups = (("kwok", "kube-scheduler", "kube-controller-manager"), ("kube-apiserver",), ("etcd",))
    for group in groups:
        group_refs = [refs[c] for c in group if c in refs]
        for component, outcome in processes.stop(group_refs, grace_seconds).items():
            report(f"{component}: {outcome}")
    if keep_state:
        for component in COMPONENTS:
            Layout(current.state_dir).pid_file(component).unlink(missing_ok=True)
    else:
        shutil.rmtree(current.state_dir, ignore_errors=True)
        report(f"Removed {current.state_dir}")
    return True
