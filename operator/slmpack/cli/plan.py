"""`slmpack plan`: the Pareto front of packings of one model on one GPU."""

from __future__ import annotations

import json
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog
from slmpack.catalog.types import GPUSpec, ModelSpec, WeightDtype
from slmpack.errors import DoesNotFitError, SlmpackError
from slmpack.planner.memory import replica_memory, usable_bytes
from slmpack.planner.plan import ALL_MODES, Plan, PlanRequest, baseline, plan, resolved_engine
from slmpack.planner.types import Candidate, Objective, SharingMode, Slo, Workload
from slmpack.units import GIB, format_duration, parse_duration_s


class ModeChoice(StrEnum):
    AUTO = "Auto"
    EXCLUSIVE = "Exclusive"
    PACKED = "Packed"
    TIME_SLICING = "TimeSlicing"
    MPS = "MPS"
    MIG = "MIG"


def modes_for(choice: ModeChoice, gpu: GPUSpec) -> tuple[SharingMode, ...]:
    """Auto considers every mode the GPU supports."""
    if choice is ModeChoice.AUTO:
        return tuple(m for m in ALL_MODES if m is not SharingMode.MIG or gpu.mig_capable)
    return (SharingMode(choice.value),)


def _gib(n: int) -> str:
    return f"{n / GIB:.1f}"


def candidate_row(c: Candidate, recommended: bool) -> dict[str, Any]:
    return {
        "recommended": recommended,
        "mode": c.mode.value,
        "mig_profile": c.mig_profile,
        "replicas_per_gpu": c.replicas_per_gpu,
        "max_num_seqs": c.engine.max_num_seqs,
        "tokens_per_s_per_gpu": round(c.perf.total_tokens_per_s, 1),
        "output_tokens_per_s_per_gpu": round(c.perf.output_tokens_per_s, 1),
        "tokens_per_joule": round(c.perf.tokens_per_joule, 3),
        "power_watts": round(c.perf.power_watts, 1),
        "itl_p99_s": round(c.perf.itl_p99_s, 5),
        "ttft_p99_s": round(c.perf.ttft_p99_s, 4),
        "gpu_busy_ratio": round(c.perf.gpu_busy_ratio, 3),
        "dram_active_ratio": round(c.perf.dram_active_ratio, 3),
        "memory_per_replica_bytes": c.memory.total_bytes,
        "memory": asdict(c.memory),
        "meets_slo": c.meets_slo,
        "slo_violations": list(c.slo_violations),
    }


def plan_document(result: Plan) -> dict[str, Any]:
    rec = result.recommended
    base = baseline(result.candidates)
    doc: dict[str, Any] = {
        "model": result.request.model.name,
        "gpu": result.request.gpu.product,
        "objective": result.request.objective.value,
        "feasible": result.feasible,
        "reason": result.reason,
        "front": [candidate_row(c, c is rec) for c in result.front],
        "recommended": candidate_row(rec, True) if rec else None,
        "baseline_exclusive": candidate_row(base, False) if base else None,
    }
    if rec and base:
        doc["gain_vs_exclusive"] = {
            "throughput_ratio": round(
                rec.perf.total_tokens_per_s / base.perf.total_tokens_per_s, 3
            ),
            "tokens_per_joule_ratio": round(
                rec.perf.tokens_per_joule / base.perf.tokens_per_joule, 3
            ),
        }
    if result.launch:
        doc["vllm"] = {"args": list(result.launch.args), "env": dict(result.launch.env)}
    return doc


def render_table(result: Plan, console: Console) -> None:
    req = result.request
    table = Table(
        title=f"Pareto front: {req.model.name} on {req.gpu.product} "
        f"(objective {req.objective.value})"
    )
    for col in ("", "MODE", "PER-GPU", "SEQS", "TOK/S/GPU", "TOK/J", "W", "ITL p99", "TTFT p99"):
        table.add_column(col, justify="right" if col not in ("", "MODE") else "left")
    table.add_column("MEM/REPLICA GiB", justify="right")
    table.add_column("SLO")
    for c in result.front:
        mode = c.mode.value + (f" {c.mig_profile}" if c.mig_profile else "")
        table.add_row(
            "*" if c is result.recommended else "",
            mode,
            str(c.replicas_per_gpu),
            str(c.engine.max_num_seqs),
            f"{c.perf.total_tokens_per_s:,.0f}",
            f"{c.perf.tokens_per_joule:.2f}",
            f"{c.perf.power_watts:.0f}",
            format_duration(c.perf.itl_p99_s),
            format_duration(c.perf.ttft_p99_s),
            _gib(c.memory.total_bytes),
            "ok" if c.meets_slo else "miss",
            style="bold green" if c is result.recommended else None,
        )
    console.print(table)
    rec = result.recommended
    base = baseline(result.candidates)
    if rec is None:
        console.print(f"[bold red]No recommendation:[/] {result.reason}")
        return
    console.print(f"[bold]Recommended[/] (*): {rec.key} — {result.reason}")
    if base:
        console.print(
            f"vs one exclusive replica per GPU ({base.key}): throughput "
            f"x{rec.perf.total_tokens_per_s / base.perf.total_tokens_per_s:.2f}, tokens/J "
            f"x{rec.perf.tokens_per_joule / base.perf.tokens_per_joule:.2f}"
        )
    m = rec.memory
    console.print(
        f"Memory per replica: weights {_gib(m.weights_bytes)} + activations "
        f"{_gib(m.activation_peak_bytes)} + CUDA graphs {_gib(m.cuda_graph_bytes)} + runtime "
        f"{_gib(m.runtime_overhead_bytes)} + KV {_gib(m.kv_cache_bytes)} "
        f"= {_gib(m.total_bytes)} GiB"
    )
    if result.launch:
        console.print("vLLM flags per replica:", style="bold")
        console.print("  " + " ".join(result.launch.args), markup=False, soft_wrap=True)
        for key, value in result.launch.env:
            console.print(f"  env {key}={value}", markup=False)


def plot_front(result: Plan, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    everything = result.candidates
    ax.scatter(
        [c.perf.total_tokens_per_s for c in everything],
        [c.perf.tokens_per_joule for c in everything],
        s=12,
        c="lightgray",
        label="all packings",
    )
    for mode in {c.mode for c in result.front}:
        pts = [c for c in result.front if c.mode is mode]
        ax.scatter(
            [c.perf.total_tokens_per_s for c in pts],
            [c.perf.tokens_per_joule for c in pts],
            s=30,
            label=f"front: {mode.value}",
        )
    if result.recommended:
        r = result.recommended
        ax.scatter(
            [r.perf.total_tokens_per_s],
            [r.perf.tokens_per_joule],
            marker="*",
            s=250,
            c="red",
            label=f"recommended: {r.key}",
        )
    ax.set_xlabel("throughput per GPU (tokens/s)")
    ax.set_ylabel("tokens per joule")
    ax.set_title(f"{result.request.model.name} on {result.request.gpu.product}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fits_elsewhere(model: ModelSpec, request: PlanRequest) -> list[str]:
    """Catalogue GPUs on which one replica at the smallest batch would fit."""
    engine = resolved_engine(request, min(request.max_num_seqs_options))
    need = replica_memory(model, engine, request.workload).total_bytes
    catalog = default_gpu_catalog()
    return [p for p in catalog.products() if usable_bytes(catalog.get(p).memory_bytes) >= need]


def plan_command(
    model: Annotated[
        str, typer.Option(help="Catalogue name (e.g. opt-1.3b) or a config.json path")
    ],
    gpu: Annotated[str, typer.Option(help="GPU product as in nvidia.com/gpu.product")],
    mode: Annotated[
        ModeChoice, typer.Option(help="Sharing mode; Auto tries all")
    ] = ModeChoice.AUTO,
    objective: Annotated[Objective, typer.Option()] = Objective.BALANCED,
    slo_ttft: Annotated[str | None, typer.Option(help="TTFT p99 bound, e.g. 500ms")] = None,
    slo_itl: Annotated[str | None, typer.Option(help="ITL p99 bound, e.g. 50ms")] = None,
    dtype: Annotated[str, typer.Option(help="bf16|fp16|fp8|int8|int4-awq|int4-gptq")] = "bf16",
    max_model_len: Annotated[int | None, typer.Option(help="Context length")] = None,
    input_tokens: Annotated[int, typer.Option(help="Mean prompt length")] = 111,
    output_tokens: Annotated[int, typer.Option(help="Mean output length")] = 292,
    replicas_per_gpu: Annotated[int | None, typer.Option(help="Pin replicas per GPU")] = None,
    mig_profile: Annotated[str | None, typer.Option(help="Pin a MIG profile, e.g. 3g.40gb")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of the front here")] = None,
) -> None:
    """Plan how many vLLM replicas of a model fit one GPU, and at what throughput and energy."""
    # Pipes get the same layout as a wide terminal: the table is the product.
    console = Console(width=None if Console().is_terminal else 140)
    err = Console(stderr=True)
    try:
        model_spec = default_model_catalog().get(model)
        gpu_spec = default_gpu_catalog().get(gpu)
        allowed: tuple[str, ...] = ("bf16", "fp16", "fp32", "fp8", "int8", "int4-awq", "int4-gptq")
        if dtype not in allowed:
            raise SlmpackError(f"unknown dtype {dtype!r}; choose one of {', '.join(allowed)}")
        weight_dtype: WeightDtype = dtype  # type: ignore[assignment]
        request = PlanRequest(
            model=model_spec,
            gpu=gpu_spec,
            modes=modes_for(mode, gpu_spec),
            objective=objective,
            slo=Slo(
                ttft_p99_s=parse_duration_s(slo_ttft) if slo_ttft else None,
                itl_p99_s=parse_duration_s(slo_itl) if slo_itl else None,
            ),
            workload=Workload(
                mean_input_tokens=input_tokens,
                mean_output_tokens=output_tokens,
                p99_input_tokens=max(1024, input_tokens),
            ),
            max_model_len=max_model_len,
            weight_dtype=weight_dtype,
            replicas_per_gpu=replicas_per_gpu,
            mig_profile=mig_profile,
        )
        try:
            result = plan(request)
        except DoesNotFitError as exc:
            bigger = fits_elsewhere(model_spec, request)
            more = f". It fits one of: {', '.join(bigger)}" if bigger else ""
            raise DoesNotFitError(f"{exc}{more}") from exc
    except (SlmpackError, ValueError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(plan_document(result), indent=2))
    else:
        render_table(result, console)
    if plot:
        plot_front(result, plot)
        if not as_json:
            console.print(f"Wrote {plot}")
    if not result.feasible:
        raise typer.Exit(1)
