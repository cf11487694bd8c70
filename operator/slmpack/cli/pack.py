"""`slmpack pack fleet.yaml`: place replicas of many models on a heterogeneous GPU fleet."""

from __future__ import annotations

import json
from collections import Counter
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
from slmpack.planner.binpack import PackingResult, pack_heuristic, pack_milp
from slmpack.planner.fleet import FleetModel, FleetPool, build_problem
from slmpack.planner.types import Slo, Workload
from slmpack.units import parse_duration_s


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
    pools = [FleetPool(p.name, gpus.get(p.gpu), p.count, p.mig) for p in doc.pools]
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


def result_document(result: PackingResult) -> dict[str, Any]:
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
    }


def pack_command(
    fleet: Annotated[Path, typer.Argument(help="Fleet YAML: pools of GPUs and models with demand")],
    exact: Annotated[bool, typer.Option(help="Solve the exact MILP (small fleets only)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Place replicas of several models on a GPU fleet, using as few GPUs as possible."""
    err = Console(stderr=True)
    try:
        models, pools = load_fleet(fleet)
        problem = build_problem(models, pools)
        result = pack_milp(problem) if exact else pack_heuristic(problem)
    except (SlmpackError, ValueError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(result_document(result), indent=2))
    else:
        console = Console(width=None if Console().is_terminal else 120)
        table = Table(title=f"Packing of {fleet.name} ({result.solver})")
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
    if result.unmet:
        raise typer.Exit(1)
