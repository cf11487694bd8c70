"""A real Prometheus for the local world: its config, its targets, and its process.

The binary is Debian 12's `prometheus` package (2.42), fetched by `hack/fetch-prometheus.sh`
into `$SLMPACK_CACHE/prometheus-<PROMETHEUS_VERSION>/` and never installed as a service.

Targets come from files (`file_sd`), not from `kubernetes_sd` against our apiserver:

- the pods that really serve are known to the runner alone: kubernetes_sd would also list
  every kwok pod, whose addresses (10.244.x.y) lead nowhere, and would have to be filtered by
  node with relabelling;
- the dcgm-sim of each node and the operator are processes, not pods, so they need static or
  file targets anyway;
- kubernetes_sd would need client credentials for the apiserver in Prometheus' config.

So the runner writes `pods.json` (one target per running pod whose template asks to be
scraped, labelled `namespace`, `pod`, `node`, `slmdeployment`) and `dcgm.json` (one per
node, labelled `node`) into its targets folder, and `node-agent.json` (each node's slmpack
node agent, when the runner runs them); `operator.json` names the operator's `/metrics`.
Prometheus watches the files and picks up changes within seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from slmpack.autotune.signals import DEPLOYMENT_LABEL
from slmpack.devcluster import binaries, processes
from slmpack.devcluster.errors import DevClusterError
from slmpack.devcluster.launcher import ADDON_FILE, free_port, write_addon

VERSION_KEY = "PROMETHEUS_VERSION"
DEFAULT_SCRAPE_INTERVAL_SECONDS = 5.0
DEFAULT_READY_TIMEOUT_SECONDS = 60.0
DEFAULT_STOP_GRACE_SECONDS = 10.0
#: Pod annotations that opt a pod into scraping, as the common kubernetes_sd recipe reads them.
SCRAPE_ANNOTATION = "prometheus.io/scrape"
PORT_ANNOTATION = "prometheus.io/port"
PATH_ANNOTATION = "prometheus.io/path"
#: The pod label naming an SLMDeployment (`slmpack.render.workload.DEPLOYMENT_LABEL`).
SLMDEPLOYMENT_LABEL = "slmpack.dev/deployment"
POD_TARGETS_FILE = "pods.json"
DCGM_TARGETS_FILE = "dcgm.json"
NODE_AGENT_TARGETS_FILE = "node-agent.json"
#: The job of the node agents; scraped with honor_labels, as the chart's PodMonitor does.
NODE_AGENT_JOB = "slmpack-node-agent"
OPERATOR_TARGETS_FILE = "operator.json"
LOG_TAIL_LINES = 40

Reporter = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


class PrometheusError(DevClusterError):
    """Prometheus is missing, or did not start or answer."""


# --- targets (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PodTarget:
    """One running pod that asked to be scraped."""

    address: str
    port: int
    path: str
    namespace: str
    pod: str
    node: str
    slmdeployment: str
    container: str


def pod_target(
    pod_ip: str,
    namespace: str,
    name: str,
    node: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    container: str,
    ports: Sequence[int],
) -> PodTarget | None:
    """The pod's scrape target, or None when its annotations do not ask for one."""
    if annotations.get(SCRAPE_ANNOTATION) != "true":
        return None
    port_text = annotations.get(PORT_ANNOTATION, "")
    if port_text.isdigit():
        port = int(port_text)
    elif ports:
        port = ports[0]
    else:
        return None
    return PodTarget(
        address=pod_ip,
        port=port,
        path=annotations.get(PATH_ANNOTATION) or "/metrics",
        namespace=namespace,
        pod=name,
        node=node,
        slmdeployment=labels.get(SLMDEPLOYMENT_LABEL, ""),
        container=container,
    )


def pod_targets_document(targets: Sequence[PodTarget]) -> list[dict[str, Any]]:
    """file_sd groups, one per pod (each pod has its own labels), in a stable order."""
    groups: list[dict[str, Any]] = []
    for target in sorted(targets, key=lambda t: (t.namespace, t.pod)):
        labels = {
            "namespace": target.namespace,
            "pod": target.pod,
            "node": target.node,
            "container": target.container,
            "__metrics_path__": target.path,
        }
        if target.slmdeployment:
            # The label the autotuner's queries select by (docs/autotune.md, scrape contract).
            labels[DEPLOYMENT_LABEL] = target.slmdeployment
        groups.append({"targets": [f"{target.address}:{target.port}"], "labels": labels})
    return groups


def node_targets_document(nodes: Mapping[str, str]) -> list[dict[str, Any]]:
    """file_sd groups for node-level exporters: node name -> host:port."""
    return [
        {"targets": [address], "labels": {"node": node}} for node, address in sorted(nodes.items())
    ]


def static_targets_document(targets: Sequence[str]) -> list[dict[str, Any]]:
    return [{"targets": list(targets), "labels": {}}] if targets else []


def write_targets(path: Path, document: list[dict[str, Any]]) -> bool:
    """Write a file_sd file atomically (Prometheus may read it at any moment); False when the
    file already held exactly this."""
    text = json.dumps(document, indent=1, sort_keys=True) + "\n"
    with contextlib.suppress(OSError):
        if path.read_text() == text:
            return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


# --- config (pure) -----------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def build_config(
    targets_dir: Path,
    operator_targets_file: Path,
    scrape_interval_seconds: float = DEFAULT_SCRAPE_INTERVAL_SECONDS,
) -> dict[str, Any]:
    """Prometheus' configuration: the runner's pods, each node's dcgm-sim and node agent, the
    operator and Prometheus itself, all every `scrape_interval_seconds`."""
    if scrape_interval_seconds <= 0:
        raise PrometheusError("The scrape interval must be positive, e.g. 5 (seconds)")
    interval = _duration(scrape_interval_seconds)
    # A scrape must end before the next one starts; leave a little slack on short intervals.
    timeout = _duration(max(0.5, min(10.0, scrape_interval_seconds * 0.8)))

    def file_job(name: str, path: Path) -> dict[str, Any]:
        return {
            "job_name": name,
            "file_sd_configs": [{"files": [str(path)], "refresh_interval": "30s"}],
        }

    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": timeout,
            "evaluation_interval": interval,
        },
        "scrape_configs": [
            file_job("vllm", targets_dir / POD_TARGETS_FILE),
            file_job("dcgm", targets_dir / DCGM_TARGETS_FILE),
            {
                **file_job(NODE_AGENT_JOB, targets_dir / NODE_AGENT_TARGETS_FILE),
                # The replica series name the vLLM pod (namespace, pod): keep them rather than
                # let Prometheus rename them exported_*, or they would not join the vLLM series.
                "honor_labels": True,
            },
            file_job("slmpack-operator", operator_targets_file),
            {"job_name": "prometheus", "static_configs": [{"targets": ["localhost:9090"]}]},
        ],
    }


def render_config(config: Mapping[str, Any], listen_port: int) -> str:
    """The YAML Prometheus reads; its self-scrape points at the port it listens on."""
    document = json.loads(json.dumps(config))
    for job in document["scrape_configs"]:
        if job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{listen_port}"]}]
    return yaml.safe_dump(document, sort_keys=False)


# --- binary --------------------------------------------------------------------------------------


def binary_path(version: str, cache: Path) -> Path:
    return cache / f"prometheus-{version}" / "prometheus"


def pinned_binary() -> Path:
    """Where the pinned version's binary is (fetched or not)."""
    versions = binaries.load_versions()
    if VERSION_KEY not in versions:
        raise PrometheusError(f"hack/versions.env has no {VERSION_KEY}; add the pin.")
    return binary_path(versions[VERSION_KEY], binaries.cache_dir())


def fetch(report: Reporter = _quiet) -> Path:
    """The pinned binary, fetched with hack/fetch-prometheus.sh when missing."""
    path = pinned_binary()
    if path.is_file():
        return path
    script = binaries.repo_root() / "hack" / "fetch-prometheus.sh"
    report(f"Fetching Prometheus with {script}")
    env = {**os.environ, "SLMPACK_CACHE": str(binaries.cache_dir())}
    result = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, check=False
    )
    for line in result.stdout.splitlines():
        report(line)
    if result.returncode != 0 or not path.is_file():
        raise PrometheusError(
            f"{script} failed (exit {result.returncode}), so there is no Prometheus at {path}:\n"
            f"{result.stdout}{result.stderr}".rstrip()
        )
    return path


# --- the server ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrometheusLayout:
    """Files of one Prometheus under its state folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "prometheus.yml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "prometheus.log"

    @property
    def state(self) -> Path:
        return self.root / "prometheus.json"

    @property
    def operator_targets(self) -> Path:
        return self.root / OPERATOR_TARGETS_FILE


@dataclass(frozen=True)
class PrometheusState:
    """What `prometheus.json` records about a started server."""

    pid: int
    port: int
    binary: str
    root: str
    targets_dir: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ref(self) -> processes.ProcessRef:
        return processes.ProcessRef("prometheus", self.pid, Path(self.binary), Path(self.root))


def default_root(cluster_state_dir: Path) -> Path:
    return cluster_state_dir / "prometheus"


def read_state(root: Path) -> PrometheusState | None:
    layout = PrometheusLayout(root)
    try:
        return PrometheusState(**json.loads(layout.state.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def log_tail(root: Path, lines: int = LOG_TAIL_LINES) -> str:
    path = PrometheusLayout(root).log
    if not path.exists():
        return f"(no Prometheus log at {path})"
    tail = path.read_text(errors="replace").splitlines()[-lines:]
    return f"----- {path} (last {len(tail)} lines) -----\n" + "\n".join(tail)


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def is_running(root: Path) -> bool:
    state = read_state(root)
    return state is not None and processes.is_ours(state.ref())


def up(
    root: Path,
    targets_dir: Path,
    *,
    operator_targets: Sequence[str] = (),
    scrape_interval_seconds: float = DEFAULT_SCRAPE_INTERVAL_SECONDS,
    port: int = 0,
    binary: Path | None = None,
    timeout_seconds: float = DEFAULT_READY_TIMEOUT_SECONDS,
    report: Reporter = _quiet,
) -> PrometheusState:
    """Start Prometheus with its data under `root` and wait for /-/ready.

    A server already running from `root` is reused with its config rewritten and reloaded.
    """
    layout = PrometheusLayout(root)
    root.mkdir(parents=True, exist_ok=True)
    targets_dir.mkdir(parents=True, exist_ok=True)
    write_targets(layout.operator_targets, static_targets_document(operator_targets))
    config = build_config(targets_dir, layout.operator_targets, scrape_interval_seconds)
    current = read_state(root)
    if current is not None and processes.is_ours(current.ref()):
        layout.config.write_text(render_config(config, current.port))
        request = urllib.request.Request(f"{current.url}/-/reload", method="POST")
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=5):
            pass
        report(f"Prometheus already runs at {current.url}; reloaded its config")
        return current
    path = binary or fetch(report)
    port = port or free_port()
    layout.config.write_text(render_config(config, port))
    argv = [
        str(path),
        f"--config.file={layout.config}",
        f"--storage.tsdb.path={layout.data}",
        f"--web.listen-address=127.0.0.1:{port}",
        # /-/reload lets `up` apply a new config without losing the data.
        "--web.enable-lifecycle",
        "--storage.tsdb.retention.time=2d",
        # The Debian package's defaults point into /etc and /usr/share, which stay untouched.
        f"--web.console.templates={root / 'consoles'}",
        f"--web.console.libraries={root / 'console_libraries'}",
    ]
    ref = processes.spawn("prometheus", argv, layout.log, root)
    state = PrometheusState(ref.pid, port, str(path), str(root), str(targets_dir))
    tmp = layout.state.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(layout.state)
    write_addon(root / ADDON_FILE, ref)
    deadline = time.monotonic() + timeout_seconds
    while True:
        if not processes.is_ours(ref):
            raise PrometheusError(f"Prometheus exited during start-up.\n{log_tail(root)}")
        status, _ = _get(f"{state.url}/-/ready")
        if status == 200:
            break
        if time.monotonic() > deadline:
            down(root)
            raise PrometheusError(
                f"Prometheus was not ready within {timeout_seconds:g} s.\n{log_tail(root)}"
            )
        time.sleep(0.1)
    report(f"Prometheus ready at {state.url} (data in {layout.data})")
    return state


def down(root: Path, grace_seconds: float = DEFAULT_STOP_GRACE_SECONDS) -> bool:
    """Stop the Prometheus started from `root`; its data stay. False when none ran."""
    state = read_state(root)
    if state is None:
        return False
    outcome = processes.stop([state.ref()], grace_seconds)
    PrometheusLayout(root).state.unlink(missing_ok=True)
    (root / ADDON_FILE).unlink(missing_ok=True)
    return outcome.get("prometheus") != "not running"


def query(url: str, promql: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """An instant query through the HTTP API; the `result` vector."""
    status, body = _get(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout)
    if status != 200:
        raise PrometheusError(f"Query {promql!r} failed: HTTP {status} {body[:300]!r}")
    document = json.loads(body)
    result: list[dict[str, Any]] = document["data"]["result"]
    return result


def active_targets(url: str) -> list[dict[str, Any]]:
    """/api/v1/targets' active targets (job, labels, health, lastError)."""
    status, body = _get(f"{url}/api/v1/targets?state=active")
    if status != 200:
        raise PrometheusError(f"/api/v1/targets failed: HTTP {status}")
    targets: list[dict[str, Any]] = json.loads(body)["data"]["activeTargets"]
    return targets
