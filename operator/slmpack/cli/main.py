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
    from slmpack.cli.operator_cmd import operator_command
    from slmpack.cli.pack import pack_command
    from slmpack.cli.plan import plan_command

    app.command(name="plan")(plan_command)
    app.command(name="pack")(pack_command)
    app.command(name="operator")(operator_command)
    app.command(
        name="launcher",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
        help="Run the Packed pod's launcher: N vLLM engines behind one router.",
    )(_launcher_command)
    passthrough = {"allow_extra_args": True, "ignore_unknown_options": True}
    app.command(
        name="vllm-sim",
        context_settings=passthrough,
        add_help_option=False,
        help="Serve an OpenAI-compatible vLLM stand-in timed by the GPU performance model.",
    )(_vllm_sim_command)
    app.command(
        name="dcgm-sim",
        context_settings=passthrough,
        add_help_option=False,
        help="Serve dcgm-exporter metrics for the simulated GPUs.",
    )(_dcgm_sim_command)
    app.command(
        name="load",
        context_settings=passthrough,
        add_help_option=False,
        help="Drive open-loop OpenAI load and report throughput, latency and goodput.",
    )(_load_command)
    app.command(
        name="demo",
        context_settings=passthrough,
        add_help_option=False,
        help="Packing vs one replica per GPU on a local cluster, measured.",
    )(_demo_command)
    app.add_typer(dev_cluster_app, name="dev-cluster")


def _launcher_command(ctx: typer.Context) -> None:
    from slmpack.launcher import launcher_main

    raise typer.Exit(launcher_main(ctx.args))


def _vllm_sim_command(ctx: typer.Context) -> None:
    from slmpack.sim.vllm import vllm_sim_main

    raise typer.Exit(vllm_sim_main(ctx.args))


def _dcgm_sim_command(ctx: typer.Context) -> None:
    from slmpack.sim.dcgm import dcgm_sim_main

    raise typer.Exit(dcgm_sim_main(ctx.args))


def _load_command(ctx: typer.Context) -> None:
    from slmpack.loadgen.cli import load_main

    raise typer.Exit(load_main(ctx.args))


def _demo_command(ctx: typer.Context) -> None:
    from slmpack.demo.cli import demo_main

    raise typer.Exit(demo_main(ctx.args))


_mount_subcommands()
