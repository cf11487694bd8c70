"""dcgm-sim: dcgm-exporter's /metrics for the simulated GPUs of one node.

    python -m slmpack.sim.dcgm --sim-gpu NVIDIA-H100-80GB-HBM3 --sim-gpu-count 2 \\
        --sim-state-dir /tmp/sim/node-a --port 9400 --hostname node-a

It reads the activity the simulated engines publish under the state directory (see
`slmpack.sim.registry`), turns it into DCGM readings and power with the planner's model
(`slmpack.sim.gpu_readings`), and integrates power into the energy counter. Time runs
`--sim-speedup` times faster than the wall clock, like the engines'.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.errors import SlmpackError
from slmpack.planner.perf import PerfParams, default_perf_params
from slmpack.sim.engine import SimClock
from slmpack.sim.gpu_readings import (
    EnergyCounter,
    GpuIdentity,
    GpuReading,
    PodAttribution,
    read_gpu,
    render,
)
from slmpack.sim.registry import GpuState, check_product

logger = logging.getLogger("slmpack.sim.dcgm")

#: dcgm-exporter's default port.
DEFAULT_PORT = 9400
#: How often power is sampled into the energy counter (wall seconds).
DEFAULT_SAMPLE_INTERVAL_S = 0.1


@dataclass(frozen=True)
class DcgmSimConfig:
    state_dir: Path
    gpu: str = "NVIDIA-H100-80GB-HBM3"
    gpu_count: int = 1
    hostname: str = ""  # "" = this host's name
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    speedup: float = 1.0
    sample_interval_s: float = DEFAULT_SAMPLE_INTERVAL_S
    pod_attribution: PodAttribution = PodAttribution.FIRST


class DcgmSim:
    """Readings, energy counters and the HTTP endpoint for the GPUs of one node."""

    def __init__(
        self, config: DcgmSimConfig, params: PerfParams | None = None, clock: SimClock | None = None
    ) -> None:
        """`clock` defaults to the wall clock at `config.speedup`; energy integrates over it."""
        if config.gpu_count < 1:
            raise SlmpackError("--sim-gpu-count must be at least 1")
        self.config = config
        self.params = params or default_perf_params()
        self.gpu = default_gpu_catalog().get(config.gpu)
        hostname = config.hostname or socket.gethostname()
        self.clock = clock or SimClock(config.speedup)
        self.states = [GpuState(config.state_dir, str(i)) for i in range(config.gpu_count)]
        self.identities = [
            GpuIdentity.simulated(self.gpu, hostname, i) for i in range(config.gpu_count)
        ]
        self.energy = [EnergyCounter(self.clock.now(), self.gpu.idle_watts) for _ in self.states]
        self.port = config.port
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host
        return f"http://{host}:{self.port}"

    def sample(self) -> list[GpuReading]:
        """Read every GPU now and advance its energy counter."""
        now_unix = time.time()
        now_s = self.clock.now()
        readings = []
        for state, energy in zip(self.states, self.energy, strict=True):
            reading = read_gpu(self.gpu, state.records(), self.params, now_unix)
            energy.advance(now_s, reading.power_watts)
            readings.append(reading)
        return readings

    def exposition(self) -> str:
        readings = self.sample()
        rows = [
            (identity, reading, energy.millijoules)
            for identity, reading, energy in zip(
                self.identities, readings, self.energy, strict=True
            )
        ]
        return render(rows, self.config.pod_attribution)

    async def start(self) -> None:
        for state in self.states:
            check_product(state.ensure(self.gpu.product), self.gpu.product, state.device_id)
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        for address in self._runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                self.port = int(address[1])
                break
        self._sampler = asyncio.get_running_loop().create_task(self._sample_loop())
        logger.info(
            "Started simulated dcgm-exporter on %s for %d x %s",
            self.url,
            self.config.gpu_count,
            self.gpu.product,
        )

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _sample_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.sample_interval_s)
            try:
                self.sample()
            except (OSError, SlmpackError) as err:
                logger.warning("Could not read the simulated GPU state: %s", err)

    async def _metrics(self, _: web.Request) -> web.Response:
        response = web.Response(body=self.exposition().encode())
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response

    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(status=200)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m slmpack.sim.dcgm",
        description="Simulated dcgm-exporter for the simulated GPUs of one node.",
        allow_abbrev=False,
    )
    p.add_argument("--sim-state-dir", type=Path, required=True, help="the node's state directory")
    p.add_argument("--sim-gpu", default="NVIDIA-H100-80GB-HBM3", help="GFD product name")
    p.add_argument("--sim-gpu-count", type=int, default=1)
    p.add_argument("--sim-speedup", type=float, default=1.0)
    p.add_argument("--sim-sample-interval", type=float, default=DEFAULT_SAMPLE_INTERVAL_S)
    p.add_argument("--hostname", default="", help="Hostname label (default: this host)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument(
        "--pod-attribution",
        choices=[a.value for a in PodAttribution],
        default=PodAttribution.FIRST.value,
        help="pod labels on a shared GPU: first pod (dcgm-exporter default), one copy per pod "
        "(--kubernetes-virtual-gpus), or none",
    )
    return p


def parse_args(argv: Sequence[str]) -> DcgmSimConfig:
    args = _parser().parse_args(list(argv))
    return DcgmSimConfig(
        state_dir=args.sim_state_dir,
        gpu=args.sim_gpu,
        gpu_count=args.sim_gpu_count,
        hostname=args.hostname,
        host=args.host,
        port=args.port,
        speedup=args.sim_speedup,
        sample_interval_s=args.sim_sample_interval,
        pod_attribution=PodAttribution(args.pod_attribution),
    )


async def _serve(config: DcgmSimConfig) -> None:
    sim = DcgmSim(config)
    await sim.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def dcgm_sim_main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; exit code 1 on a configuration error."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        asyncio.run(_serve(config))
    except SlmpackError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"ERROR: cannot serve on {config.host}:{config.port}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(dcgm_sim_main())
