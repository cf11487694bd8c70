"""The demo's comparison: its numbers, the rich table, and the JSON and Markdown files (pure).

Rates are per second of server time: simulated seconds for the simulator (wall seconds ×
`--sim-speedup`), wall seconds for vLLM's CPU build.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rich.table import Table

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Prediction:
    """The operator's plan as `status.plan` reports it (None where it says nothing)."""

    mode: str
    replicas_per_gpu: int
    gpus: int
    tokens_per_second_per_gpu: float | None
    tokens_per_joule: float | None
    power_watts: float | None


@dataclass(frozen=True)
class Measurement:
    """What one deployment did under the load, over the measurement window."""

    tokens_per_second_per_gpu: float  # vllm:generation_tokens_total, from Prometheus
    loadgen_tokens_per_second_per_gpu: float  # completed output tokens over the whole run
    power_watts_per_gpu: float  # DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION's increase
    gpus_measured: int  # GPUs whose energy counter the pods' labels picked
    engines_measured: int  # engines whose token counter Prometheus scraped
    requests: int
    completed: int
    failed: int
    itl_p50_seconds: float

    @property
    def tokens_per_joule(self) -> float:
        return (
            self.tokens_per_second_per_gpu / self.power_watts_per_gpu
            if self.power_watts_per_gpu > 0
            else 0.0
        )


@dataclass(frozen=True)
class DeploymentResult:
    name: str
    title: str
    prediction: Prediction
    measurement: Measurement


@dataclass(frozen=True)
class LoadSettings:
    """The load both deployments got: the same seed, so the same requests at the same times."""

    model: str
    gpu_product: str
    engine: str  # "sim" or "vllm-cpu"
    sim_speedup: float
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
            "wall_seconds": self.wall_seconds,
        }


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def _optional_ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"x{value:.2f}"


def rows(report: DemoReport) -> list[tuple[str, str, str, str, str, str]]:
    """(metric, baseline measured, baseline predicted, packed measured, packed predicted,
    packed / baseline measured (predicted)) for the table and the Markdown file."""
    b, p = report.baseline, report.packed
    bm, pm = b.measurement, p.measurement
    return [
        ("sharing", b.prediction.mode, "", p.prediction.mode, "", ""),
        (
            "replicas per GPU x GPUs",
            f"{b.prediction.replicas_per_gpu} x {b.prediction.gpus}",
            "",
            f"{p.prediction.replicas_per_gpu} x {p.prediction.gpus}",
            "",
            "",
        ),
        (
            "output tokens/s per GPU",
            _num(bm.tokens_per_second_per_gpu),
            _num(b.prediction.tokens_per_second_per_gpu),
            _num(pm.tokens_per_second_per_gpu),
            _num(p.prediction.tokens_per_second_per_gpu),
            f"{_times(report.throughput_ratio)} ({_times(report.predicted_throughput_ratio)})",
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
            _num(b.prediction.power_watts),
            _num(pm.power_watts_per_gpu),
            _num(p.prediction.power_watts),
            "",
        ),
        (
            "output tokens per joule",
            _num(bm.tokens_per_joule, 1),
            _num(b.prediction.tokens_per_joule, 1),
            _num(pm.tokens_per_joule, 1),
            _num(p.prediction.tokens_per_joule, 1),
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
            "",
            _num(pm.itl_p50_seconds * 1e3, 1),
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
    return (
        f"{load.model} on {load.gpu_product} ({load.engine}): {load.request_rate_per_s:,.0f} "
        f"requests/s for {load.duration_s:g} s, {load.mean_input_tokens} tokens in, "
        f"{load.mean_output_tokens} out on average; measured over the last {load.window_s:g} s "
        f"({clock})"
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
    return "\n".join(lines)
