"""The node agent's command line: ``python -m slmpack.nodeagent`` (or ``slmpack node-agent``).

    python -m slmpack.nodeagent --node-name gpu-node-1 --port 9402 --interval 10

On a machine without a GPU, ``--nvml-fake tests/unit/data/nvml/h100-80gb.json`` serves a
device file instead of NVML (a FAKE: nothing is measured), and ``--passes 2``
prints the metrics of two passes and exits. In the local world the runner starts the agent
with ``--nvml-sim STATE_DIR``: the SIMULATED GPUs of one runner node (`sim_nvml`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from slmpack.nodeagent.agent import (
    AgentConfig,
    AnnotationPublisher,
    AnnotationWriter,
    Backoff,
    CgroupReader,
    ContainerLocator,
    Health,
    NodeAgent,
)
from slmpack.nodeagent.cgroups import read_proc_cgroup
from slmpack.nodeagent.fake_nvml import FakeNvml
from slmpack.nodeagent.metrics import SnapshotCollector
from slmpack.nodeagent.nvml import GpuBackend, PynvmlBackend
from slmpack.nodeagent.pods import PodResolver, PodSource, StaticPodSource
from slmpack.nodeagent.server import start_server

if TYPE_CHECKING:
    from slmpack.nodeagent.sim_nvml import SimNvmlConfig

logger = logging.getLogger("slmpack.nodeagent")

#: Not dcgm-exporter's 9400 (it often runs on the same nodes) nor 9401.
DEFAULT_PORT = 9402
DEFAULT_INTERVAL_SECONDS = 10.0
#: /healthz turns unhealthy after this many intervals without a pass.
STALE_INTERVALS = 3
NODE_NAME_ENV = "NODE_NAME"


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slmpack node-agent",
        description="Per-GPU and per-replica GPU memory, utilisation and energy from NVML, as "
        "Prometheus metrics, and the node's GPU inventory as an annotation.",
    )
    parser.add_argument(
        "--node-name",
        default=os.environ.get(NODE_NAME_ENV, ""),
        help=f"this node's name (default: ${NODE_NAME_ENV}, set from spec.nodeName by the chart)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address of /metrics and /healthz")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port of /metrics and /healthz ({DEFAULT_PORT})",
    )
    parser.add_argument(
        "--interval",
        type=_positive_float,
        default=DEFAULT_INTERVAL_SECONDS,
        help="seconds between sampling passes; energy is attributed per pass (10)",
    )
    parser.add_argument(
        "--annotate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the GPU inventory to this node's slmpack.dev/gpu-inventory annotation",
    )
    parser.add_argument(
        "--kubeconfig",
        default=None,
        help="kubeconfig to use outside a pod (default: in-cluster credentials, else $KUBECONFIG)",
    )
    parser.add_argument(
        "--nvml-fake",
        type=Path,
        default=None,
        metavar="PATH",
        help="FAKE NVML: answer from this device file instead of the GPUs (no GPU needed)",
    )
    sim = parser.add_argument_group(
        "simulation (the local world's runner nodes; nothing is measured)"
    )
    sim.add_argument(
        "--nvml-sim",
        type=Path,
        default=None,
        metavar="STATE_DIR",
        help="SIMULATED NVML: read the simulated GPUs of this runner node's simulator state "
        "folder, as dcgm-sim does; processes are mapped to pods by the runner's marker",
    )
    sim.add_argument("--sim-gpu", default="NVIDIA-H100-80GB-HBM3", help="GFD product name")
    sim.add_argument("--sim-gpu-count", type=int, default=1)
    sim.add_argument("--sim-speedup", type=_positive_float, default=1.0)
    sim.add_argument(
        "--sim-memory-mib",
        type=int,
        default=None,
        help="memory total each simulated GPU reports (default: the catalogue's)",
    )
    sim.add_argument(
        "--sim-mig-device",
        action="append",
        default=[],
        metavar="GPU:PROFILE:INDEX",
        help="a MIG device of the simulated node (repeatable)",
    )
    parser.add_argument(
        "--proc-root", type=Path, default=Path("/proc"), help="where to read /proc/<pid>/cgroup"
    )
    parser.add_argument(
        "--passes",
        type=int,
        default=0,
        help="run this many passes, print the metrics and exit (0: serve until stopped)",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logs")
    return parser


@dataclass(frozen=True)
class _Wiring:
    backend: GpuBackend
    cgroups: CgroupReader
    pod_source: PodSource | None
    annotation_writer: AnnotationWriter | None
    locate: ContainerLocator | None = None


def _sim_config(args: argparse.Namespace) -> SimNvmlConfig:
    from slmpack.nodeagent.sim_nvml import SimMigDevice, SimNvmlConfig

    try:
        mig = tuple(SimMigDevice.parse(text) for text in args.sim_mig_device)
    except ValueError as err:
        raise SystemExit(f"--sim-mig-device takes GPU:PROFILE:INDEX: {err}") from err
    return SimNvmlConfig(
        state_dir=args.nvml_sim,
        gpu=args.sim_gpu,
        gpu_count=args.sim_gpu_count,
        hostname=args.node_name,
        speedup=args.sim_speedup,
        memory_total_mib=args.sim_memory_mib,
        mig_devices=mig,
    )


def _wire(args: argparse.Namespace) -> _Wiring:
    """Backend, cgroup reader and pod source for the arguments (exits on bad combinations)."""
    if args.nvml_fake and args.nvml_sim:
        raise SystemExit("--nvml-fake and --nvml-sim exclude each other")
    fake = FakeNvml.from_file(args.nvml_fake) if args.nvml_fake else None
    locate: ContainerLocator | None = None
    if args.nvml_sim:
        # Imported here: the simulators and the planner's model load only in the local world.
        from slmpack.nodeagent.sim_nvml import SimulatedNvml, runner_pod_locator

        logger.warning(
            "Serving a SIMULATED NVML over %s: its GPUs are simulated; nothing is measured",
            args.nvml_sim,
        )
        proc_root: Path = args.proc_root
        backend: GpuBackend = SimulatedNvml(_sim_config(args))
        cgroups: CgroupReader = lambda pid: read_proc_cgroup(pid, proc_root)  # noqa: E731
        locate = runner_pod_locator(proc_root)
        file_pods = None
    elif fake is not None:
        logger.warning(
            "Serving the FAKE NVML of %s: its GPUs are the file's; nothing is measured",
            args.nvml_fake,
        )
        backend = PynvmlBackend(fake.module())
        cgroups = fake.cgroup_of
        file_pods = fake.pods()
    else:
        proc_root = args.proc_root
        backend = PynvmlBackend()
        cgroups = lambda pid: read_proc_cgroup(pid, proc_root)  # noqa: E731
        file_pods = None
    pod_source: PodSource | None = None
    if file_pods is not None:
        pod_source = StaticPodSource(file_pods)
    needs_api = args.annotate or pod_source is None
    if needs_api and not args.node_name:
        if args.annotate:
            raise SystemExit(f"--node-name (or ${NODE_NAME_ENV}) is required to annotate the node")
        logger.warning("No --node-name: processes are not mapped to pods")
        needs_api = False
    api = None
    if needs_api:
        from slmpack.nodeagent.kube import NodeApi  # the Kubernetes client only when used

        try:
            api = NodeApi.connect(args.node_name, args.kubeconfig)
        except Exception as err:  # no in-cluster config and no kubeconfig
            if args.annotate:
                raise SystemExit(
                    f"cannot reach the API server to annotate the node: {err}"
                ) from err
            logger.warning("No API server (%s): processes are not mapped to pods", err)
    if pod_source is None and api is not None:
        pod_source = api
    return _Wiring(backend, cgroups, pod_source, api if args.annotate else None, locate)


def node_agent_main(argv: Sequence[str] | None = None) -> int:
    """Run the node agent; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    wiring = _wire(args)
    config = AgentConfig(node_name=args.node_name, interval_seconds=args.interval)
    clock = time.monotonic
    collector = SnapshotCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    health = Health(clock, stale_after_seconds=STALE_INTERVALS * args.interval)
    backoff = Backoff(base=args.interval, maximum=config.max_backoff_seconds)
    agent = NodeAgent(
        config,
        wiring.backend,
        wiring.cgroups,
        collector,
        health,
        clock=clock,
        wall_clock=time.time,
        pods=PodResolver(wiring.pod_source, clock) if wiring.pod_source is not None else None,
        publisher=(
            AnnotationPublisher(wiring.annotation_writer, clock, backoff)
            if wiring.annotation_writer is not None
            else None
        ),
        locate=wiring.locate,
    )
    try:
        if args.passes > 0:
            for n in range(args.passes):
                agent.run_once()
                if n + 1 < args.passes:
                    time.sleep(args.interval)
            sys.stdout.write(generate_latest(registry).decode())
            return 0
        return _serve(agent, args.host, args.port, registry, health)
    finally:
        wiring.backend.close()


def _serve(
    agent: NodeAgent, host: str, port: int, registry: CollectorRegistry, health: Health
) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("Stopping on signal %d", signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    server = start_server(host, port, registry, health.status)
    logger.info("Serving /metrics and /healthz on %s:%d", host, server.server_address[1])
    try:
        agent.run(stop)
    finally:
        server.shutdown()
        server.server_close()
    return 0
