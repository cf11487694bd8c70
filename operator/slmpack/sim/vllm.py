"""vllm-sim: a stand-in for a vLLM engine on a GPU we don't have.

    python -m slmpack.sim.vllm --model facebook/opt-1.3b --port 8001 \\
        --max-num-seqs 256 --gpu-memory-utilization 0.45 \\
        --sim-gpu NVIDIA-H100-80GB-HBM3 --sim-mode MPS --sim-state-dir /tmp/sim/node-a

It takes vLLM's flags (unknown vLLM flags are accepted with a warning) plus ``--sim-*`` flags
for the simulated GPU. It refuses to start, with vLLM's message and exit code 1, when the engine
does not fit what co-located simulators left of the GPU's memory. See docs/sim.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from aiohttp import web

from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog
from slmpack.catalog.types import GPUSpec, KvDtype, ModelSpec, WeightDtype
from slmpack.errors import SlmpackError
from slmpack.planner.perf import Device, PerfParams, default_perf_params
from slmpack.planner.types import EngineSettings, SharingMode
from slmpack.sim.engine import EngineRunner, SimClock
from slmpack.sim.engine_metrics import EngineMetrics
from slmpack.sim.errors import SimStartupError
from slmpack.sim.memory_grant import MemoryGrant, grant_memory
from slmpack.sim.openai_api import OpenAiApi
from slmpack.sim.registry import EngineRecord, GpuState, check_product, with_activity
from slmpack.sim.scheduler import BLOCK_TOKENS, Scheduler
from slmpack.sim.timing import StepCostModel
from slmpack.units import GIB

logger = logging.getLogger("slmpack.sim.vllm")

#: How often an engine publishes its activity and reads its neighbours' (wall seconds).
DEFAULT_PUBLISH_INTERVAL_S = 0.1
#: vLLM's default --gpu-memory-utilization (CacheConfig, 0.32).
DEFAULT_GPU_MEMORY_UTILIZATION = 0.92
#: Listen backlog: a load test may open a thousand connections at once.
LISTEN_BACKLOG = 4096

_engine_ids = itertools.count()


@dataclass(frozen=True)
class VllmSimConfig:
    """One simulated engine: vLLM's settings plus the simulated hardware."""

    model: str
    served_model_name: str | None = None
    host: str = "0.0.0.0"
    port: int = 8000
    max_num_seqs: int | None = None  # None: vLLM's default for the simulated device
    max_model_len: int | None = None  # None: the model's context length
    max_num_batched_tokens: int | None = None  # None: vLLM's default for the device
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    kv_cache_memory_bytes: int | None = None
    dtype: str = "auto"
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    block_size: int = BLOCK_TOKENS
    sim_gpu: str = "NVIDIA-H100-80GB-HBM3"
    sim_model: str | None = None  # catalogue name or config.json; None: from --model
    sim_mode: SharingMode = SharingMode.EXCLUSIVE
    sim_device_id: str = "0"
    sim_mig_profile: str | None = None
    sim_mig_instance: int = 0
    sim_state_dir: Path | None = None  # None: no co-location, the engine is alone
    sim_speedup: float = 1.0
    sim_weight_dtype: WeightDtype | None = None  # None: from --dtype/--quantization
    sim_publish_interval_s: float = DEFAULT_PUBLISH_INTERVAL_S
    sim_pod_name: str = ""
    sim_pod_namespace: str = ""
    sim_container_name: str = ""
    sim_seed: int = 0
    ignored_flags: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return self.served_model_name or self.model


@dataclass(frozen=True)
class ResolvedEngine:
    """The config turned into catalogue records and engine settings."""

    model: ModelSpec
    gpu: GPUSpec
    device: Device
    device_memory_bytes: int
    engine: EngineSettings


def _weight_dtype(config: VllmSimConfig, model: ModelSpec) -> WeightDtype:
    if config.sim_weight_dtype is not None:
        return config.sim_weight_dtype
    quant = (config.quantization or "").lower()
    if quant == "fp8":
        return "fp8"
    if quant.startswith("awq"):
        return "int4-awq"
    if quant.startswith("gptq"):
        return "int4-gptq"
    if quant:
        raise SimStartupError(
            f"quantization {config.quantization!r} is not simulated; pass --sim-weight-dtype"
        )
    dtype = config.dtype.lower()
    if dtype in ("float32", "fp32"):
        return "fp32"
    if dtype in ("float16", "half", "fp16"):
        return "fp16"
    if dtype in ("bfloat16", "bf16"):
        return "bf16"
    if dtype == "auto":
        return "fp16" if model.torch_dtype == "float16" else "bf16"
    raise SimStartupError(f"--dtype {config.dtype!r} is not a vLLM dtype")


def _kv_dtype(value: str) -> KvDtype:
    value = value.lower()
    if value == "auto":
        return "auto"
    if value.startswith("fp8"):
        return "fp8"
    if value in ("bfloat16", "bf16"):
        return "bf16"
    if value in ("float16", "fp16", "half"):
        return "fp16"
    raise SimStartupError(f"--kv-cache-dtype {value!r} is not simulated (auto, fp8, bf16, fp16)")


def resolve(config: VllmSimConfig) -> ResolvedEngine:
    """Catalogue look-ups and vLLM's defaults; CatalogError/SimStartupError name the flag."""
    if config.block_size != BLOCK_TOKENS:
        raise SimStartupError(f"--block-size {config.block_size}: the simulator models 16 only")
    model = default_model_catalog().get(config.sim_model or config.model)
    gpu = default_gpu_catalog().get(config.sim_gpu)
    if config.sim_mode is SharingMode.MIG:
        if not config.sim_mig_profile:
            raise SimStartupError("--sim-mode MIG needs --sim-mig-profile (e.g. 1g.10gb)")
        profile = gpu.mig_profile(config.sim_mig_profile)
        if not 0 <= config.sim_mig_instance < profile.max_instances:
            raise SimStartupError(
                f"--sim-mig-instance {config.sim_mig_instance} is out of range: {gpu.product} "
                f"holds {profile.max_instances} {profile.name} instances"
            )
        device = Device.mig(gpu, profile)
    else:
        device = Device.whole(gpu)
    memory = device.memory_bytes
    # vLLM 0.32 arg_utils: bigger defaults on >= 70 GiB devices other than A100.
    if memory >= 160 * GIB:
        seqs, batched = 1024, 16384
    elif memory >= 70 * GIB and "a100" not in gpu.product.lower():
        seqs, batched = 1024, 8192
    else:
        seqs, batched = 256, 2048
    max_model_len = config.max_model_len or model.max_position_embeddings
    if max_model_len > model.max_position_embeddings:
        raise SimStartupError(
            f"--max-model-len {max_model_len} exceeds {model.name}'s "
            f"max_position_embeddings ({model.max_position_embeddings})"
        )
    engine = EngineSettings(
        max_num_seqs=config.max_num_seqs or seqs,
        max_model_len=max_model_len,
        max_num_batched_tokens=config.max_num_batched_tokens or batched,
        weight_dtype=_weight_dtype(config, model),
        kv_dtype=_kv_dtype(config.kv_cache_dtype),
    )
    return ResolvedEngine(model, gpu, device, memory, engine)


class SimServer:
    """One simulated vLLM engine and its HTTP server, in the running event loop."""

    def __init__(self, config: VllmSimConfig, params: PerfParams | None = None) -> None:
        self.config = config
        self.params = params or default_perf_params()
        self.resolved = resolve(config)
        self.engine_id = f"{os.getpid()}-{next(_engine_ids)}"
        self.state = (
            GpuState(config.sim_state_dir, config.sim_device_id)
            if config.sim_state_dir is not None
            else None
        )
        self.grant: MemoryGrant | None = None
        self.runner: EngineRunner | None = None
        self.port = config.port
        self._record: EngineRecord | None = None
        self._site_runner: web.AppRunner | None = None
        self._publisher: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Reserve memory on the simulated GPU, then serve. Raises SimStartupError if it can't."""
        config, resolved = self.config, self.resolved
        self.grant = self._reserve()
        grant = self.grant
        try:
            scheduler = Scheduler(
                resolved.engine.max_num_seqs,
                resolved.engine.max_num_batched_tokens,
                grant.num_blocks,
            )
            cost = StepCostModel(
                resolved.model, resolved.engine, resolved.device, self.params, config.sim_mode
            )
            cache_info = {
                "block_size": str(BLOCK_TOKENS),
                "cache_dtype": config.kv_cache_dtype,
                "enable_prefix_caching": "True",
                "gpu_memory_utilization": str(config.gpu_memory_utilization),
                "kv_cache_memory_bytes": str(config.kv_cache_memory_bytes),
                "num_cpu_blocks": "None",
                "num_gpu_blocks": str(grant.num_blocks),
            }
            metrics = EngineMetrics(config.name, resolved.engine.max_model_len, cache_info)
            self.runner = EngineRunner(scheduler, cost, SimClock(config.sim_speedup), metrics)
            api = OpenAiApi(
                self.runner,
                metrics,
                config.name,
                config.model,
                resolved.engine.max_model_len,
                config.sim_seed,
            )
            app = web.Application(client_max_size=64 * 1024 * 1024)
            api.routes(app)
            self._site_runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await self._site_runner.setup()
            site = web.TCPSite(self._site_runner, config.host, config.port, backlog=LISTEN_BACKLOG)
            await site.start()
            self.port = _bound_port(self._site_runner, config.port)
            self.runner.start()
            if self.state is not None and self._record is not None:
                self._record = replace(self._record, port=self.port)
                self.state.publish(self._record)
                self._publisher = asyncio.get_running_loop().create_task(self._publish_loop())
        except BaseException:
            await self.stop()
            raise
        logger.info(
            "Started simulated engine %s on %s: %s on %s (%s), %d KV blocks, %.2f GiB reserved",
            config.name,
            self.url,
            resolved.model.name,
            resolved.gpu.product,
            config.sim_mode.value,
            grant.num_blocks,
            grant.reserved_bytes / GIB,
        )

    async def stop(self) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
            self._publisher = None
        if self.runner is not None:
            await self.runner.stop()
        if self._site_runner is not None:
            await self._site_runner.cleanup()
            self._site_runner = None
        if self.state is not None:
            self.state.release(self.engine_id)

    def _reserve(self) -> MemoryGrant:
        config, resolved = self.config, self.resolved
        mig = config.sim_mode is SharingMode.MIG
        device_name = f"cuda:0 (simulated GPU {config.sim_device_id}"
        device_name += f", MIG {config.sim_mig_profile} #{config.sim_mig_instance})" if mig else ")"

        def grant(taken: int) -> MemoryGrant:
            return grant_memory(
                resolved.model,
                resolved.engine,
                resolved.device_memory_bytes,
                taken,
                config.gpu_memory_utilization,
                config.kv_cache_memory_bytes,
                device_name,
            )

        if self.state is None:
            return grant(0)
        check_product(
            self.state.ensure(resolved.gpu.product), resolved.gpu.product, config.sim_device_id
        )
        granted: list[MemoryGrant] = []

        own_device = (config.sim_mig_profile or "", config.sim_mig_instance) if mig else None

        def admit(records: list[EngineRecord]) -> EngineRecord:
            sharing = []
            for record in records:
                if (record.mode == SharingMode.MIG.value) != mig:
                    raise SimStartupError(
                        f"simulated GPU {config.sim_device_id} already runs "
                        f"{'MIG' if not mig else 'non-MIG'} engines ({record.served_model_name}); "
                        "MIG and whole-GPU engines cannot share a GPU"
                    )
                # Engines on the same device share its memory; other MIG instances have their own.
                if record.mig_device == own_device:
                    sharing.append(record)
            if mig:
                _check_mig_layout(resolved.gpu, config, records)
            granted.append(grant(sum(r.reserved_bytes for r in sharing)))
            return self._new_record(granted[0].reserved_bytes)

        self._record = self.state.reserve(admit)
        return granted[0]

    def _new_record(self, reserved_bytes: int) -> EngineRecord:
        config = self.config
        now = time.time()
        mig = config.sim_mode is SharingMode.MIG
        return EngineRecord(
            engine_id=self.engine_id,
            pid=os.getpid(),
            host=self.state.host if self.state is not None else "",
            port=self.port,
            served_model_name=config.name,
            model=self.resolved.model.name,
            mode=config.sim_mode.value,
            reserved_bytes=reserved_bytes,
            mig_profile=config.sim_mig_profile if mig else None,
            mig_instance=config.sim_mig_instance if mig else None,
            pod=config.sim_pod_name,
            namespace=config.sim_pod_namespace,
            container=config.sim_container_name,
            started_unix=now,
            updated_unix=now,
        )

    async def _publish_loop(self) -> None:
        assert self.state is not None
        assert self.runner is not None
        state, runner = self.state, self.runner
        mig_device = self._record.mig_device if self._record else None
        while True:
            await asyncio.sleep(self.config.sim_publish_interval_s)
            try:
                assert self._record is not None
                self._record = with_activity(self._record, runner.activity())
                state.publish(self._record)
                now = time.time()
                duties = tuple(
                    r.fresh_activity(now).duty_ratio
                    for r in state.records(exclude=self.engine_id)
                    if r.mig_device == mig_device
                )
                runner.set_neighbour_duties(tuple(d for d in duties if d > 0.0))
            except OSError as err:
                logger.warning("Could not update the simulated GPU state: %s", err)


def _check_mig_layout(gpu: GPUSpec, config: VllmSimConfig, records: list[EngineRecord]) -> None:
    """Refuse an instance that the GPU's slices cannot hold beside those already in use."""
    devices = {r.mig_device for r in records if r.mig_device is not None}
    devices.add((config.sim_mig_profile or "", config.sim_mig_instance))
    profiles = [gpu.mig_profile(name) for name, _ in devices]
    compute = sum(p.compute_slices for p in profiles)
    memory = sum(p.memory_slices for p in profiles)
    if compute > 7 or memory > 8:
        layout = ", ".join(f"{name} #{index}" for name, index in sorted(devices))
        raise SimStartupError(
            f"simulated GPU {config.sim_device_id} cannot hold MIG instances {layout}: they need "
            f"{compute} of 7 compute and {memory} of 8 memory slices"
        )


def _bound_port(runner: web.AppRunner, wanted: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return wanted


async def start_servers(
    configs: Sequence[VllmSimConfig], params: PerfParams | None = None
) -> list[SimServer]:
    """Start several simulated engines in the running event loop (scale tests).

    Engines start one after the other, so co-located ones reserve memory in order; if one
    refuses, those already started are stopped and the SimStartupError propagates.
    """
    servers: list[SimServer] = []
    try:
        for config in configs:
            server = SimServer(config, params)
            await server.start()
            servers.append(server)
    except BaseException:
        for server in servers:
            await server.stop()
        raise
    return servers


async def stop_servers(servers: Sequence[SimServer]) -> None:
    for server in servers:
        await server.stop()


# --- command line ------------------------------------------------------------------------------

_SUFFIX = re.compile(r"(\d+(?:\.\d+)?)([kKmMgGtT])")


def human_readable_int(value: str) -> int:
    """vLLM's integer syntax: 1k = 1000, 1K = 1024, 25.6k = 25600, and plain integers."""
    value = value.strip()
    match = _SUFFIX.fullmatch(value)
    if not match:
        return int(value)
    number, suffix = match.groups()
    if suffix.islower():
        decimal: int = 1000 ** ("kmgt".index(suffix) + 1)
        return int(float(number) * decimal)
    binary: int = 1024 ** ("KMGT".index(suffix) + 1)
    return int(number) * binary


def _sharing_mode(value: str) -> SharingMode:
    key = value.lower().replace("-", "").replace("_", "")
    for mode in SharingMode:
        if key == mode.value.lower():
            return mode
    raise argparse.ArgumentTypeError(
        f"unknown sharing mode {value!r}; one of {', '.join(m.value for m in SharingMode)}"
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m slmpack.sim.vllm",
        description="Simulated vLLM engine on a simulated GPU (timing from slmpack's model).",
        allow_abbrev=False,
    )
    vllm = p.add_argument_group("vLLM flags")
    vllm.add_argument("--model", default=None, help="model name or catalogue alias")
    vllm.add_argument("--served-model-name", nargs="+", default=None)
    vllm.add_argument("--host", default="0.0.0.0")
    vllm.add_argument("--port", type=int, default=8000)
    vllm.add_argument("--max-num-seqs", type=human_readable_int, default=None)
    vllm.add_argument("--max-model-len", type=human_readable_int, default=None)
    vllm.add_argument("--max-num-batched-tokens", type=human_readable_int, default=None)
    vllm.add_argument(
        "--gpu-memory-utilization", type=float, default=DEFAULT_GPU_MEMORY_UTILIZATION
    )
    vllm.add_argument("--kv-cache-memory-bytes", type=human_readable_int, default=None)
    vllm.add_argument("--dtype", default="auto")
    vllm.add_argument("--quantization", "-q", default=None)
    vllm.add_argument("--kv-cache-dtype", default="auto")
    vllm.add_argument("--block-size", type=int, default=BLOCK_TOKENS)
    vllm.add_argument("--seed", type=int, default=0)
    sim = p.add_argument_group("simulator flags")
    sim.add_argument("--sim-gpu", default="NVIDIA-H100-80GB-HBM3", help="GFD product name")
    sim.add_argument("--sim-model", default=None, help="catalogue model (default: --model)")
    sim.add_argument("--sim-mode", type=_sharing_mode, default=SharingMode.EXCLUSIVE)
    sim.add_argument("--sim-device-id", default="0", help="simulated GPU index on the node")
    sim.add_argument("--sim-mig-profile", default=None)
    sim.add_argument("--sim-mig-instance", type=int, default=0)
    sim.add_argument(
        "--sim-state-dir", type=Path, default=None, help="per-node co-location state directory"
    )
    sim.add_argument("--sim-speedup", type=float, default=1.0, help="simulated s per wall s")
    sim.add_argument("--sim-weight-dtype", default=None, help="override the weight format")
    sim.add_argument("--sim-publish-interval", type=float, default=DEFAULT_PUBLISH_INTERVAL_S)
    sim.add_argument("--sim-pod-name", default=os.environ.get("POD_NAME", ""))
    sim.add_argument("--sim-pod-namespace", default=os.environ.get("POD_NAMESPACE", ""))
    sim.add_argument("--sim-container-name", default=os.environ.get("CONTAINER_NAME", ""))
    return p


def _normalise(argv: Sequence[str]) -> list[str]:
    """vLLM accepts --snake_case spellings and `vllm serve MODEL` puts the model first."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            arg = name.replace("_", "-") + eq + value
        elif i == 0 and not arg.startswith("-"):
            out += ["--model", arg]
            continue
        out.append(arg)
    return out


def parse_args(argv: Sequence[str]) -> VllmSimConfig:
    parser = _parser()
    args, unknown = parser.parse_known_args(_normalise(argv))
    if args.model is None:
        parser.error("--model is required")
    weight = args.sim_weight_dtype
    valid: tuple[WeightDtype, ...] = (
        "bf16",
        "fp16",
        "fp32",
        "fp8",
        "int8",
        "int4-awq",
        "int4-gptq",
    )
    if weight is not None and weight not in valid:
        parser.error(f"--sim-weight-dtype must be one of {', '.join(valid)}")
    return VllmSimConfig(
        model=args.model,
        served_model_name=args.served_model_name[0] if args.served_model_name else None,
        host=args.host,
        port=args.port,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        max_num_batched_tokens=args.max_num_batched_tokens,
        gpu_memory_utilization=args.gpu_memory_utilization,
        kv_cache_memory_bytes=args.kv_cache_memory_bytes,
        dtype=args.dtype,
        quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype,
        block_size=args.block_size,
        sim_gpu=args.sim_gpu,
        sim_model=args.sim_model,
        sim_mode=args.sim_mode,
        sim_device_id=args.sim_device_id,
        sim_mig_profile=args.sim_mig_profile,
        sim_mig_instance=args.sim_mig_instance,
        sim_state_dir=args.sim_state_dir,
        sim_speedup=args.sim_speedup,
        sim_weight_dtype=weight,
        sim_publish_interval_s=args.sim_publish_interval,
        sim_pod_name=args.sim_pod_name,
        sim_pod_namespace=args.sim_pod_namespace,
        sim_container_name=args.sim_container_name,
        sim_seed=args.seed,
        ignored_flags=tuple(unknown),
    )


async def _serve(config: VllmSimConfig) -> None:
    server = SimServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def vllm_sim_main(argv: Sequence[str] | None = None) -> int:
    """Run one simulated engine until SIGINT/SIGTERM. Exit code 1 when it cannot start."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = parse_args(sys.argv[1:] if argv is None else argv)
    if config.ignored_flags:
        logger.warning(
            "Ignored vLLM flags the simulator does not model: %s", " ".join(config.ignored_flags)
        )
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
    sys.exit(vllm_sim_main())
