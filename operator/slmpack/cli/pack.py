"""`slmpack pack fleet.yaml`: place replicas of many models on a heterogeneous GPU fleet."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.table import Table

from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog
from slmpack.errors import SlmpackError
from slmpack.planner.binpack import PackingResult, Placement, pack_heuristic, pack_milp
from slmpack.planner.flags import VllmLaunch
from slmpack.planner.fleet import (
    DEFAULT_GPUS_PER_NODE,
    FleetModel,
    FleetPool,
    FleetProblem,
    OptionSource,
    build_fleet_problem,
)
from slmpack.planner.types import Slo, Workload
from slmpack.units import GIB, parse_duration_s


class _SloDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttftP99: str | None = None  # noqa: N815 - the same spelling as the SLMDeployment API
    itlP99: str | None = None  # noqa: N815


class _ModelDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    demandTokensPerSecond: float = Field(gt=0)  # noqa: N815
    meanInputTokens: int = Field(default=111, ge=1)  # noqa: N815
    meanOutputTokens: int = Field(default=292, ge=1)  # noqa: N815
    slo: _SloDoc = Field(default_factory=_SloDoc)


class _PoolDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    gpu: str
    count: int = Field(ge=1)
    mig: bool = False
    gpusPerNode: int = Field(default=DEFAULT_GPUS_PER_NODE, ge=1)  # noqa: N815


class _FleetDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pools: list[_PoolDoc] = Field(min_length=1)
    models: list[_ModelDoc] = Field(min_length=1)


def load_fleet(path: Path) -> tuple[list[FleetModel], list[FleetPool]]:
    """Parse a fleet file; every error names the file and the field."""
    try:
        raw: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SlmpackError(f"cannot read fleet file {path}: {exc}") from exc
    try:
        doc = _FleetDoc.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise SlmpackError(f"invalid fleet file {path}: {problems}") from exc
    gpus = default_gpu_catalog()
    catalog = default_model_catalog()
    pools = [FleetPool(p.name, gpus.get(p.gpu), p.count, p.mig, p.gpusPerNode) for p in doc.pools]
    models = [
        FleetModel(
            spec=catalog.get(m.name),
            demand_tokens_per_s=m.demandTokensPerSecond,
            workload=Workload(
                mean_input_tokens=m.meanInputTokens,
                mean_output_tokens=m.meanOutputTokens,
                p99_input_tokens=max(1024, m.meanInputTokens),
            ),
            slo=Slo(
                ttft_p99_s=parse_duration_s(m.slo.ttftP99) if m.slo.ttftP99 else None,
                itl_p99_s=parse_duration_s(m.slo.itlP99) if m.slo.itlP99 else None,
            ),
        )
        for m in doc.models
    ]
    return models, pools


@dataclass(frozen=True)
class _Group:
    """Replicas of one option on one GPU, with the engine they run."""

    placement: Placement
    source: OptionSource
    launch: VllmLaunch


@dataclass(frozen=True)
class _UsedGpu:
    pool: FleetPool
    index: int
    mig_layout: tuple[str, ...] | None
    groups: tuple[_Group, ...]


def used_gpus(result: PackingResult, fleet: FleetProblem, pools: list[FleetPool]) -> list[_UsedGpu]:
    """The result per used GPU, in pool order, each replica group with its vLLM launch."""
    by_name = {p.name: p for p in pools}
    groups: dict[tuple[str, int], list[_Group]] = {}
    for pl in result.placements:
        source = fleet.sources[pl.option_index]
        groups.setdefault((pl.pool, pl.gpu_index), []).append(_Group(pl, source, source.launch()))
    order = {p.name: i for i, p in enumerate(pools)}
    return [
        _UsedGpu(by_name[name], index, result.mig_layouts.get((name, index)), tuple(found))
        for (name, index), found in sorted(
            groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])
        )
    ]


def _group_document(group: _Group) -> dict[str, Any]:
    c = group.source.candidate
    return {
        "model": group.placement.model,
        "mode": c.mode.value,
        "mig_profile": c.mig_profile,
        "replicas": group.placement.replicas,
        # Each replica's share of the GPU's time (whole GPUs): the plan's 1 / replicas per GPU.
        "compute_share": None if c.mig_profile else round(1.0 / c.replicas_per_gpu, 4),
        "max_num_seqs": c.engine.max_num_seqs,
        "memory_per_replica_bytes": c.memory.total_bytes,
        "vllm": {"args": list(group.launch.args), "env": dict(group.launch.env)},
    }


def result_document(
    result: PackingResult, fleet: FleetProblem, pools: list[FleetPool]
) -> dict[str, Any]:
    gpus = used_gpus(result, fleet, pools)
    return {
        "solver": result.solver,
        "optimal": result.optimal,
        "gpus_used": result.gpus_used,
        "gpus_used_by_pool": result.gpus_used_by_pool,
        "power_watts": round(result.energy_watts, 1),
        "unmet_tokens_per_s": result.unmet,
        "message": result.message,
        "placements": [
            {
                "pool": p.pool,
                "gpu": p.gpu_index,
                "model": p.model,
                "replicas": p.replicas,
                "mig_profile": p.mig_profile,
            }
            for p in result.placements
        ],
        "gpus": [
            {
                "pool": gpu.pool.name,
                "product": gpu.pool.gpu.product,
                "gpu": gpu.index,
                "node": gpu.pool.node_of(gpu.index),
                "mig_layout": list(gpu.mig_layout) if gpu.mig_layout is not None else None,
                "replica_groups": [_group_document(g) for g in gpu.groups],
            }
            for gpu in gpus
        ],
    }


def _layout_text(layout: tuple[str, ...] | None) -> str:
    if layout is None:
        return "-"
    return ", ".join(f"{q}×{n}" if n > 1 else q for q, n in Counter(layout).items())


def render_gpus(
    result: PackingResult, fleet: FleetProblem, pools: list[FleetPool], console: Console
) -> None:
    """One table section per used GPU, its replica groups as rows. The vLLM flags of each
    distinct engine follow the table once, by number: GPUs mostly repeat a few engines."""
    table = Table(title=f"GPUs used ({result.solver})")
    for col in ("GPU", "PRODUCT", "NODE", "MIG LAYOUT", "MODEL", "MODE"):
        table.add_column(col)
    for col in ("REPLICAS", "SEQS", "ENGINE"):
        table.add_column(col, justify="right")
    engines: dict[tuple[str, VllmLaunch], tuple[int, _Group]] = {}
    for gpu in used_gpus(result, fleet, pools):
        for i, group in enumerate(gpu.groups):
            key = (group.placement.model, group.launch)
            engine = engines.setdefault(key, (len(engines) + 1, group))[0]
            c = group.source.candidate
            first = i == 0
            table.add_row(
                f"{gpu.pool.name}/{gpu.index}" if first else "",
                gpu.pool.gpu.product if first else "",
                gpu.pool.node_of(gpu.index) if first else "",
                _layout_text(gpu.mig_layout) if first else "",
                group.placement.model,
                c.mode.value + (f" {c.mig_profile}" if c.mig_profile else ""),
                str(group.placement.replicas),
                str(c.engine.max_num_seqs),
                f"#{engine}",
                end_section=i == len(gpu.groups) - 1,
            )
    console.print(table)
    if not engines:
        return
    console.print("vLLM engines (flags of one replica):", style="bold")
    for number, group in engines.values():
        c = group.source.candidate
        shape = c.mig_profile or f"1/{c.replicas_per_gpu} of the GPU"
        console.print(
            f"  #{number} {group.placement.model}, {c.mode.value} ({shape}, "
            f"{c.memory.total_bytes / GIB:.1f} GiB): {group.launch.as_command_line()}",
            markup=False,
            soft_wrap=True,
        )


def render_totals(result: PackingResult, fleet_name: str, console: Console) -> None:
    table = Table(title=f"Packing of {fleet_name} ({result.solver})")
    for col in ("POOL", "MODEL", "MIG PROFILE", "GPUS", "REPLICAS"):
        table.add_column(col)
    gpus: Counter[tuple[str, str, str]] = Counter()
    replicas: Counter[tuple[str, str, str]] = Counter()
    seen: set[tuple[str, int, str, str]] = set()
    for p in result.placements:
        key = (p.pool, p.model, p.mig_profile or "-")
        replicas[key] += p.replicas
        if (p.pool, p.gpu_index, p.model, key[2]) not in seen:
            seen.add((p.pool, p.gpu_index, p.model, key[2]))
            gpus[key] += 1
    for key in sorted(replicas):
        table.add_row(*key, str(gpus[key]), str(replicas[key]))
    console.print(table)
    console.print(
        f"GPUs used: {result.gpus_used} {dict(result.gpus_used_by_pool)}; "
        f"power {result.energy_watts:.0f} W. {result.message}"
    )


def pack_command(
    fleet: Annotated[Path, typer.Argument(help="Fleet YAML: pools of GPUs and models with demand")],
    exact: Annotated[bool, typer.Option(help="Solve the exact MILP (small fleets only)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Place replicas of several models on a GPU fleet, using as few GPUs as possible."""
    err = Console(stderr=True)
    try:
        models, pools = load_fleet(fleet)
        fleet_problem = build_fleet_problem(models, pools)
        problem = fleet_problem.problem
        result = pack_milp(problem) if exact else pack_heuristic(problem)
    except (SlmpackError, ValueError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(result_document(result, fleet_problem, pools), indent=2))
    else:
        # Pipes get the same layout as a wide terminal: the table is the product.
        console = Console(width=None if Console().is_terminal else 140)
        render_gpus(result, fleet_problem, pools, console)
        render_totals(result, fleet.name, console)
    if result.unmet:
        raise typer.Exit(1)
