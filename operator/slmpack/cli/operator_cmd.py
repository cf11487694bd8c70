"""`slmpack operator`: run the controller against the current cluster."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from slmpack.controller.settings import SettingsError, load_settings


def operator_command(
    kubeconfig: Annotated[
        str | None,
        typer.Option(help="Kubeconfig to use; default: in-cluster, then $KUBECONFIG."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs.")] = False,
) -> None:
    """Run the slmpack operator. Settings come from SLMPACK_* environment variables."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kopf logs every handled event at INFO; ours say what changed.
    logging.getLogger("kopf").setLevel(logging.DEBUG if verbose else logging.WARNING)
    try:
        settings = load_settings()
    except SettingsError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    from slmpack.controller.runner import run_operator

    run_operator(settings, kubeconfig)
