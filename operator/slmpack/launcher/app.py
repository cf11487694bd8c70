"""Wire the supervisor and the router together, and the process entry point around them."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from slmpack.launcher.config import CONFIG_ENV, LauncherConfig, LauncherConfigError, load_config
from slmpack.launcher.router import Router
from slmpack.launcher.supervisor import LogSink, Supervisor, stdout_sink
from slmpack.launcher.telemetry import LauncherMetrics

log = logging.getLogger(__name__)


class Launcher:
    """The engines of one pod plus the router in front of them, in the current event loop."""

    def __init__(
        self,
        config: LauncherConfig,
        *,
        environ: Mapping[str, str],
        log_sink: LogSink = stdout_sink,
    ) -> None:
        self.config = config
        self.metrics = LauncherMetrics(len(config.engines))
        self.supervisor = Supervisor(config, self.metrics, environ=environ, log_sink=log_sink)
        self._running = False
        self._stopped = False
        self.router = Router(
            config, self.supervisor.engines, self.metrics, is_running=lambda: self._running
        )
        engines = self.supervisor.engines
        self.metrics.engines_healthy.set_function(lambda: sum(e.healthy for e in engines))

    async def start(self) -> None:
        """Bind the front port first (it answers 503 until engines are up), then the engines."""
        await self.router.start()
        self._running = True
        await self.supervisor.start()

    async def stop(self) -> None:
        """Stop the engines, then the router, so streams still open can finish meanwhile."""
        if self._stopped:
            return
        self._stopped = True
        self._running = False
        try:
            await self.supervisor.stop()
        finally:
            await self.router.stop()


async def serve(config: LauncherConfig, environ: Mapping[str, str]) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    launcher = Launcher(config, environ=environ)
    try:
        await launcher.start()
        await stop.wait()
        log.info("Received a stop signal; stopping the engines")
    finally:
        await launcher.stop()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slmpack launcher",
        description="Run the vLLM engines of one Packed pod behind one OpenAI-compatible port.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"JSON config file; without it the config is read from ${CONFIG_ENV}",
    )
    parser.add_argument("--log-level", default="INFO", help="Python logging level")
    return parser


def launcher_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m slmpack.launcher`; returns the process exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(args.config, os.environ)
    except LauncherConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config, os.environ))
    except OSError as exc:  # the front port is taken, or an engine binary is missing
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
