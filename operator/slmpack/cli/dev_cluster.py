"""`slmpack dev-cluster`: a local control plane with simulated GPU nodes.

`up` prints `export KUBECONFIG=<path>` as its last line, so `eval "$(slmpack dev-cluster up |
tail -n 1)"` points a shell at the cluster.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from slmpack.devcluster import binaries, gpu_nodes, launcher, node_apply
from slmpack.devcluster.errors import DevClusterError

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


def _apply_fleet(kubeconfig_path: str, fleet: gpu_nodes.Fleet, timeout_seconds: float) -> int:
    api_client = node_apply.new_api_client(kubeconfig_path)
    try:
        names = node_apply.apply_nodes(api_client, gpu_nodes.build_fleet_nodes(fleet))
        node_apply.wait_nodes_ready(api_client, names, timeout_seconds)
    finally:
        node_apply.close_api_client(api_client)
    return len(names)


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
            count = _apply_fleet(result.state.kubeconfig, fleet_model, timeout)
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
        count = _apply_fleet(current.state.kubeconfig, fleet_model, timeout)
    except DevClusterError as exc:
        raise _fail(exc) from exc
    typer.echo(f"{count} simulated nodes Ready in cluster {name!r}")
