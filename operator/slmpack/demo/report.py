"""The demo's comparison: its numbers, the rich table, and the JSON and Markdown files (pure).

Rates are per second of server time: simulated seconds for the simulator (wall seconds ×
`--sim-speedup`), wall seconds for vLLM's CPU build.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from slmpack.demo.autotune_act import STAGES, ActResult

SCHEMA_VERSION = 2


@dataclass(frozen=True)
class Prediction:
    """The planner's numbers for the flags the operator deployed (None where it has none).

    Per GPU, output tokens only. Capacity is the saturated rate; the rest is at the demo's
    load (see `slmpack.demo.prediction`).
    """

    mode: str
    replicas_per_gpu: int
    gpus: int
    capacity_tokens_per_second_per_gpu: float | None
    tokens_per_second_per_gpu: float | None  # the offered load per GPU, if below capacity
    load_ratio: float | None  # of capacity
    power_watts: float | None
    tokens_per_joule: float | None
    itl_seconds: float | None  # mean step at the load


@dataclass(frozen=True)
class Measurement:
    """What one deployment did under the load, over the measurement window."""

    tokens_per_second_per_gpu: float  # vllm:generation_tokens_total, from Prometheus
    offered_tokens_per_second_per_gpu: float  # output tokens of the requests sent in the window
    loadgen_tokens_per_second_per_gpu: float  # completed output tokens over the whole run
    power_watts_per_gpu: float  # DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION's increase
    gpus_measured: int  # GPUs whose energy counter the pods' labels picked
    engines_measured: int  # engines whose token counter Prometheus scraped
    requests: int
    completed: int
    failed: int
    itl_p50_seconds: float
    host_cpu_busy_ratio: float  # of all the host's cores, over the load, whoever used them
    demo_cpu_cores: float  # CPU-seconds per second of the demo's own processes over the load
    send_lag_p99_seconds: float  # wall seconds the load generator sent late (its host's lag)

    @property
    def tokens_per_joule(self) -> float:
        return (
            self.tokens_per_second_per_gpu / self.power_watts_per_gpu
            if self.power_watts_per_gpu > 0
            else 0.0
        )

    @property
    def completed_ratio(self) -> float:
        return self.completed / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class DeploymentResult:
    name: str
    title: str
    prediction: Prediction
    measurement: Measurement

    @property
    def throughput_error_ratio(self) -> float | None:
        """Measured over predicted output tokens/s per GPU, minus 1."""
        return _error(
            self.measurement.tokens_per_second_per_gpu, self.prediction.tokens_per_second_per_gpu
        )

    @property
    def power_error_ratio(self) -> float | None:
        return _error(self.measurement.power_watts_per_gpu, self.prediction.power_watts)

    @property
    def tokens_per_joule_error_ratio(self) -> float | None:
        return _error(self.measurement.tokens_per_joule, self.prediction.tokens_per_joule)


@dataclass(frozen=True)
class LoadSettings:
    """The load both deployments got: the same seed, so the same requests at the same times."""

    model: str
    gpu_product: str
    engine: str  # "sim" or "vllm-cpu"
    sim_speedup: float
    demand_tokens_per_s: float  # offered output tokens/s, server time
    load_factor: float  # demand over one-per-GPU's predicted capacity on its GPUs
    request_rate_per_s: float  # server time
    duration_s: float  # server time
    window_s: float  # server time, the end of the run
    mean_input_tokens: int
    mean_output_tokens: int
    seed: int


@dataclass(frozen=True)
class DemoReport:
    load: LoadSettings
    baseline: DeploymentResult
    packed: DeploymentResult
    wall_seconds: float
    #: The last act: the autotuner's moves under a load step (None when skipped).
    autotune: ActResult | None = None

    @property
    def throughput_ratio(self) -> float:
        return _ratio(
            self.packed.measurement.tokens_per_second_per_gpu,
            self.baseline.measurement.tokens_per_second_per_gpu,
        )

    @property
    def tokens_per_joule_ratio(self) -> float:
        return _ratio(
            self.packed.measurement.tokens_per_joule, self.baseline.measurement.tokens_per_joule
        )

    @property
    def predicted_throughput_ratio(self) -> float | None:
        return _optional_ratio(
            self.packed.prediction.tokens_per_second_per_gpu,
            self.baseline.prediction.tokens_per_second_per_gpu,
        )

    @property
    def predicted_capacity_ratio(self) -> float | None:
        return _optional_ratio(
            self.packed.prediction.capacity_tokens_per_second_per_gpu,
            self.baseline.prediction.capacity_tokens_per_second_per_gpu,
        )

    @property
    def predicted_tokens_per_joule_ratio(self) -> float | None:
        return _optional_ratio(
            self.packed.prediction.tokens_per_joule, self.baseline.prediction.tokens_per_joule
        )

    def to_dict(self) -> dict[str, Any]:
        def result(r: DeploymentResult) -> dict[str, Any]:
            return {
                "name": r.name,
                "title": r.title,
                "prediction": dataclasses.asdict(r.prediction),
                "measurement": {
                    **dataclasses.asdict(r.measurement),
                    "tokens_per_joule": r.measurement.tokens_per_joule,
                    "completed_ratio": r.measurement.completed_ratio,
                },
                "measured_vs_predicted": {
                    "throughput": r.throughput_error_ratio,
                    "power": r.power_error_ratio,
                    "tokens_per_joule": r.tokens_per_joule_error_ratio,
                },
            }

        return {
            "schema_version": SCHEMA_VERSION,
            "tool": "slmpack demo",
            "load": dataclasses.asdict(self.load),
            "baseline": result(self.baseline),
            "packed": result(self.packed),
            "ratios": {
                "throughput_per_gpu": self.throughput_ratio,
                "tokens_per_joule": self.tokens_per_joule_ratio,
                "predicted_throughput_per_gpu": self.predicted_throughput_ratio,
                "predicted_tokens_per_joule": self.predicted_tokens_per_joule_ratio,
            },
            "autotune": self.autotune.as_dict() if self.autotune is not None else None,
            "wall_seconds": self.wall_seconds,
        }


def _error(measured: float, predicted: float | None) -> float | None:
    return None if predicted is None or predicted <= 0 else measured / predicted - 1.0


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def _optional_ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"x{value:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def rows(report: DemoReport) -> list[tuple[str, str, str, str, str, str]]:
    """(metric, baseline measured, baseline predicted, packed measured, packed predicted,
    packed / baseline measured (predicted)) for the table and the Markdown file."""
    b, p = report.baseline, report.packed
    bm, pm = b.measurement, p.measurement
    bp, pp = b.prediction, p.prediction
    return [
        ("sharing", bp.mode, "", pp.mode, "", ""),
        (
            "replicas per GPU x GPUs",
            f"{bp.replicas_per_gpu} x {bp.gpus}",
            "",
            f"{pp.replicas_per_gpu} x {pp.gpus}",
            "",
            f"{pp.gpus} vs {bp.gpus} GPUs",
        ),
        (
            "capacity, output tokens/s per GPU",
            "",
            _num(bp.capacity_tokens_per_second_per_gpu),
            "",
            _num(pp.capacity_tokens_per_second_per_gpu),
            f"({_times(report.predicted_capacity_ratio)})",
        ),
        ("load / capacity", "", _pct(bp.load_ratio), "", _pct(pp.load_ratio), ""),
        (
            "output tokens/s per GPU",
            _num(bm.tokens_per_second_per_gpu),
            _num(bp.tokens_per_second_per_gpu),
            _num(pm.tokens_per_second_per_gpu),
            _num(pp.tokens_per_second_per_gpu),
            f"{_times(report.throughput_ratio)} ({_times(report.predicted_throughput_ratio)})",
        ),
        (
            "  offered in the window, as sent",
            _num(bm.offered_tokens_per_second_per_gpu),
            "",
            _num(pm.offered_tokens_per_second_per_gpu),
            "",
            "",
        ),
        (
            "  as the load generator saw it",
            _num(bm.loadgen_tokens_per_second_per_gpu),
            "",
            _num(pm.loadgen_tokens_per_second_per_gpu),
            "",
            "",
        ),
        (
            "power per GPU (W)",
            _num(bm.power_watts_per_gpu),
            _num(bp.power_watts),
            _num(pm.power_watts_per_gpu),
            _num(pp.power_watts),
            "",
        ),
        (
            "output tokens per joule",
            _num(bm.tokens_per_joule, 1),
            _num(bp.tokens_per_joule, 1),
            _num(pm.tokens_per_joule, 1),
            _num(pp.tokens_per_joule, 1),
            f"{_times(report.tokens_per_joule_ratio)} "
            f"({_times(report.predicted_tokens_per_joule_ratio)})",
        ),
        (
            "requests completed / sent",
            f"{bm.completed:,} / {bm.requests:,}",
            "",
            f"{pm.completed:,} / {pm.requests:,}",
            "",
            "",
        ),
        (
            "ITL p50 (ms)",
            _num(bm.itl_p50_seconds * 1e3, 1),
            _num(None if bp.itl_seconds is None else bp.itl_seconds * 1e3, 1),
            _num(pm.itl_p50_seconds * 1e3, 1),
            _num(None if pp.itl_seconds is None else pp.itl_seconds * 1e3, 1),
            "",
        ),
        (
            "CPU of the demo's processes (cores)",
            _num(bm.demo_cpu_cores, 2),
            "",
            _num(pm.demo_cpu_cores, 2),
            "",
            "",
        ),
        (
            "host CPU busy, all cores",
            _pct(bm.host_cpu_busy_ratio),
            "",
            _pct(pm.host_cpu_busy_ratio),
            "",
            "",
        ),
        (
            "sends late, p99 (wall ms)",
            _num(bm.send_lag_p99_seconds * 1e3),
            "",
            _num(pm.send_lag_p99_seconds * 1e3),
            "",
            "",
        ),
    ]


HEADERS = (
    "",
    "one per GPU",
    "predicted",
    "slmpack",
    "predicted",
    "slmpack / one per GPU",
)


def _caption(report: DemoReport) -> str:
    load = report.load
    clock = (
        f"simulated seconds, sim at {load.sim_speedup:g}x" if load.engine == "sim" else "seconds"
    )
    baseline_gpus = report.baseline.prediction.gpus
    return (
        f"{load.model} on {load.gpu_product} ({load.engine}). The same demand for both: "
        f"{load.demand_tokens_per_s:,.0f} output tokens/s ({load.request_rate_per_s:,.0f} "
        f"requests/s, {load.mean_input_tokens} tokens in, {load.mean_output_tokens} out on "
        f"average), {load.load_factor:.0%} of one replica per GPU's predicted capacity on "
        f"{baseline_gpus} GPU{'s' if baseline_gpus != 1 else ''}, for {load.duration_s:g} s; "
        f"measured over the last {load.window_s:g} s ({clock}). Predicted: the planner for "
        "the deployed flags at this load"
    )


def table(report: DemoReport) -> Table:
    out = Table(title="slmpack demo: packing vs one replica per GPU", caption=_caption(report))
    for index, header in enumerate(HEADERS):
        out.add_column(header, justify="left" if index == 0 else "right")
    for row in rows(report):
        out.add_row(*row)
    return out


def to_markdown(report: DemoReport, plot_file: str) -> str:
    lines = [
        "# slmpack demo report",
        "",
        _caption(report) + ".",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows(report)]
    lines += [
        "",
        f"Throughput per GPU: x{report.throughput_ratio:.2f} measured"
        + (
            f", x{report.predicted_throughput_ratio:.2f} predicted"
            if report.predicted_throughput_ratio is not None
            else ""
        )
        + f". Tokens per joule: x{report.tokens_per_joule_ratio:.2f} measured"
        + (
            f", x{report.predicted_tokens_per_joule_ratio:.2f} predicted"
            if report.predicted_tokens_per_joule_ratio is not None
            else ""
        )
        + ".",
        "",
        f"![throughput and energy]({plot_file})",
        "",
        f"Wall time of the demo: {report.wall_seconds:.0f} s.",
        "",
    ]
    if report.autotune is not None:
        lines += autotune_markdown(report.autotune)
    return "\n".join(lines)


AUTOTUNE_HEADERS = ("time (s)", "action", "reason", "replicas", "message")


def autotune_rows(act: ActResult) -> list[tuple[str, str, str, str, str]]:
    """The decisions that changed something, and the first steady hold after each."""
    out = []
    last_shown = ""
    for row in act.decisions:
        if row.action == "Hold" and (row.reason != "Steady" or last_shown == "Steady"):
            continue
        last_shown = row.reason if row.action == "Hold" else row.action
        replicas = (
            f"{row.replicas_from} -> {row.replicas_to}"
            if row.replicas_from != row.replicas_to
            else str(row.replicas_to)
        )
        at = f"{row.at_s:.0f}" if row.at_s is not None else "-"
        out.append((at, row.action, row.reason, replicas, row.message))
    return out


def autotune_caption(act: ActResult) -> str:
    stages = ", ".join(f"{s.name} ({s.clients} clients, {s.seconds:.0f} s)" for s in STAGES)
    return (
        f"The autotuner at work: {act.packing} of Llama-3.1-8B on simulated L4s in real time, "
        f"autotune.mode Auto, closed-loop load: {stages}. Replicas peaked at "
        f"{act.peak_replicas} and ended at {act.final_replicas}; {act.completed:,} requests "
        f"served, {act.failed:,} failed (pods being replaced or removed)"
    )


def autotune_table(act: ActResult) -> Table:
    table = Table(title="slmpack demo: the autotuner's decisions", caption=autotune_caption(act))
    for header in AUTOTUNE_HEADERS:
        table.add_column(header, justify="right" if header == "time (s)" else "left")
    for row in autotune_rows(act):
        table.add_row(*row)
    return table


def autotune_markdown(act: ActResult) -> list[str]:
    lines = [
        "## The autotuner at work",
        "",
        autotune_caption(act) + ".",
        "",
        "| " + " | ".join(AUTOTUNE_HEADERS) + " |",
        "|" + "---|" * len(AUTOTUNE_HEADERS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in autotune_rows(act)]
    lines += ["", "![replicas over time](autotune.png)", ""]
    return lines
