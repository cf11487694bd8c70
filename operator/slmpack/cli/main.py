"""Entry point of the `slmpack` console script."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="slmpack",
    help="Pack several vLLM replicas of a small language model onto one GPU.",
    no_args_is_help=True,
    add_completion=False,
)


def _mount_subcommands() -> None:
    # Each command owns its module; main only wires them.
    from slmpack.cli.dev_cluster import dev_cluster_app
    from slmpack.cli.pack import pack_command
    from slmpack.cli.plan import plan_command

    app.command(name="plan")(plan_command)
    app.command(name="pack")(pack_command)
    app.add_typer(dev_cluster_app, name="dev-cluster")


_mount_subcommands()
