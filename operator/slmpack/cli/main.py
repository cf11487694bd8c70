"""Entry point of the `slmpack` console script."""

from __future__ import annotations

import importlib

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
    for name, target, help_text in _PASSTHROUGH_COMMANDS:
        _mount_passthrough(name, target, help_text)
    app.add_typer(dev_cluster_app, name="dev-cluster")


#: Commands that parse their own arguments (argparse): name, "module:function", help.
_PASSTHROUGH_COMMANDS = (
    (
        "launcher",
        "slmpack.launcher:launcher_main",
        "Run the Packed pod's launcher: N vLLM engines behind one router.",
    ),
    (
        "vllm-sim",
        "slmpack.sim.vllm:vllm_sim_main",
        "Serve an OpenAI-compatible vLLM stand-in timed by the GPU performance model.",
    ),
    (
        "dcgm-sim",
        "slmpack.sim.dcgm:dcgm_sim_main",
        "Serve dcgm-exporter metrics for the simulated GPUs.",
    ),
    (
        "node-agent",
        "slmpack.nodeagent.app:node_agent_main",
        "Run the GPU node agent: NVML metrics per GPU and replica, and the node's GPU inventory"
        " annotation.",
    ),
    (
        "load",
        "slmpack.loadgen.cli:load_main",
        "Drive open-loop OpenAI load and report throughput, latency and goodput.",
    ),
    (
        "demo",
        "slmpack.demo.cli:demo_main",
        "Packing vs one replica per GPU on a local cluster, measured.",
    ),
)


def _mount_passthrough(name: str, target: str, help_text: str) -> None:
    """Hand every argument, --help included, to `target(argv) -> exit code`, imported only
    when the command runs (the simulators and the launcher pull in aiohttp and more)."""
    module_name, function_name = target.split(":")

    def command(ctx: typer.Context) -> None:
        main = getattr(importlib.import_module(module_name), function_name)
        raise typer.Exit(main(ctx.args))

    app.command(
        name=name,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
        help=help_text,
    )(command)


_mount_subcommands()
