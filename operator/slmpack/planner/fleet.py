"""Fleet packing from catalogue names: the planner turns each (model, GPU pool) pair into replica
options, and the packer places replicas on the pools to meet every model's demand."""

from __future__ import annotations

from dataclasses import dataclass, field

from slmpack.catalog.gpus import mig_layouts
from slmpack.catalog.types import GPUSpec, ModelSpec, WeightDtype
from slmpack.planner.binpack import GpuPool, ModelDemand, PackingProblem, ReplicaOption
from slmpack.planner.memory import replica_memory
from slmpack.planner.plan import PlanRequest, enumerate_candidates
from slmpack.planner.types import Candidate, Objective, SharingMode, Slo, Workload


@dataclass(frozen=True)
class FleetModel:
    spec: ModelSpec
    demand_tokens_per_s: float
    workload: Workload = field(default_factory=Workload)
    slo: Slo = field(default_factory=Slo)
    weight_dtype: WeightDtype = "bf16"


@dataclass(frozen=True)
class FleetPool:
    name: str
    gpu: GPUSpec
    count: int
    mig: bool = False


def _best_per_shape(candidates: tuple[Candidate, ...]) -> list[Candidate]:
    """The highest-throughput SLO-meeting candidate for each (mode, replicas, MIG profile)."""
    best: dict[tuple[SharingMode, int, str | None], Candidate] = {}
    for c in candidates:
        if not c.meets_slo:
            continue
        key = (c.mode, c.replicas_per_gpu, c.mig_profile)
        if key not in best or c.perf.total_tokens_per_s > best[key].perf.total_tokens_per_s:
            best[key] = c
    return sorted(best.values(), key=lambda c: c.key)


def replica_options(model: FleetModel, pool: FleetPool) -> list[ReplicaOption]:
    """Ways to run one replica of `model` on a GPU of `pool`, with its share of the GPU.

    A candidate of n replicas per GPU gives each replica 1/n of the GPU's time and the memory
    its target concurrency needs (not the whole 1/n share), so replicas of different models can
    fill a GPU together.
    """
    modes = (SharingMode.MIG,) if pool.mig else (SharingMode.EXCLUSIVE, SharingMode.PACKED)
    request = PlanRequest(
        model.spec,
        pool.gpu,
        modes=modes,
        objective=Objective.THROUGHPUT,
        slo=model.slo,
        workload=model.workload,
        weight_dtype=model.weight_dtype,
    )
    options: list[ReplicaOption] = []
    for c in _best_per_shape(enumerate_candidates(request)):
        need = replica_memory(model.spec, c.engine, model.workload)
        dynamic_watts = max(0.0, c.perf.power_watts - pool.gpu.idle_watts)
        options.append(
            ReplicaOption(
                model=model.spec.name,
                product=pool.gpu.product,
                memory_bytes=need.total_bytes,
                compute_share=1.0 / c.replicas_per_gpu if not c.mig_profile else 1.0,
                tokens_per_s=c.perf.total_tokens_per_s / c.replicas_per_gpu,
                watts=dynamic_watts / c.replicas_per_gpu,
                mig_profile=c.mig_profile,
            )
        )
    return options


def build_problem(models: list[FleetModel], pools: list[FleetPool]) -> PackingProblem:
    options: list[ReplicaOption] = []
    for pool in pools:
        for model in models:
            options.extend(replica_options(model, pool))
    return PackingProblem(
        pools=tuple(
            GpuPool(
                name=p.name,
                product=p.gpu.product,
                count=p.count,
                memory_bytes=p.gpu.memory_bytes,
                idle_watts=p.gpu.idle_watts,
                mig_layouts=mig_layouts(p.gpu) if p.mig else (),
            )
            for p in pools
        ),
        options=tuple(options),
        demands=tuple(ModelDemand(m.spec.name, m.demand_tokens_per_s) for m in models),
    )
