"""Fleet packing from catalogue names: the planner turns each (model, GPU pool) pair into replica
options, and the packer places replicas on the pools to meet every model's demand."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from slmpack.catalog.gpus import mig_layouts
from slmpack.catalog.types import GPUSpec, ModelSpec, WeightDtype
from slmpack.planner.binpack import GpuPool, ModelDemand, PackingProblem, ReplicaOption
from slmpack.planner.flags import VllmLaunch, vllm_launch
from slmpack.planner.memory import replica_memory
from slmpack.planner.plan import PlanRequest, enumerate_candidates
from slmpack.planner.types import Candidate, Objective, SharingMode, Slo, Workload

#: GPUs per node when a pool does not say: an HGX board (H100, A100) carries 8.
DEFAULT_GPUS_PER_NODE = 8


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
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE

    def node_of(self, gpu_index: int) -> str:
        """The node holding GPU `gpu_index` of the pool: `<pool>-<n>`, GPUs filling nodes in
        order, the names `slmpack dev-cluster` gives a pool's nodes."""
        return f"{self.name}-{gpu_index // self.gpus_per_node}"


@dataclass(frozen=True)
class OptionSource:
    """The engine behind one replica option: the planner's candidate, with the memory the packer
    reserves per replica (not the candidate's share of a GPU), and the device it runs on."""

    candidate: Candidate
    device_memory_bytes: int  # the whole GPU, or the MIG instance

    def launch(self) -> VllmLaunch:
        """vLLM flags of one replica: the KV cache and memory share match what the packer
        reserved, so co-located engines of different models add up to at most the device."""
        return vllm_launch(self.candidate, self.device_memory_bytes)


@dataclass(frozen=True)
class FleetProblem:
    """A packing problem and, aligned with `problem.options`, where each option comes from."""

    problem: PackingProblem
    sources: tuple[OptionSource, ...]


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
    return [option for option, _ in sourced_options(model, pool)]


def sourced_options(model: FleetModel, pool: FleetPool) -> list[tuple[ReplicaOption, OptionSource]]:
    """`replica_options`, each with the engine it stands for."""
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
    options: list[tuple[ReplicaOption, OptionSource]] = []
    for c in _best_per_shape(enumerate_candidates(request)):
        need = replica_memory(model.spec, c.engine, model.workload)
        dynamic_watts = max(0.0, c.perf.power_watts - pool.gpu.idle_watts)
        option = ReplicaOption(
            model=model.spec.name,
            product=pool.gpu.product,
            memory_bytes=need.total_bytes,
            compute_share=1.0 / c.replicas_per_gpu if not c.mig_profile else 1.0,
            tokens_per_s=c.perf.total_tokens_per_s / c.replicas_per_gpu,
            watts=dynamic_watts / c.replicas_per_gpu,
            mig_profile=c.mig_profile,
        )
        device_bytes = (
            pool.gpu.mig_profile(c.mig_profile).memory_bytes
            if c.mig_profile
            else pool.gpu.memory_bytes
        )
        options.append((option, OptionSource(replace(c, memory=need), device_bytes)))
    return options


def build_problem(models: list[FleetModel], pools: list[FleetPool]) -> PackingProblem:
    return build_fleet_problem(models, pools).problem


def build_fleet_problem(models: list[FleetModel], pools: list[FleetPool]) -> FleetProblem:
    """The packing problem of a fleet, with the engine behind every replica option."""
    sourced: list[tuple[ReplicaOption, OptionSource]] = []
    for pool in pools:
        for model in models:
            sourced.extend(sourced_options(model, pool))
    options = [option for option, _ in sourced]
    problem = PackingProblem(
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
    return FleetProblem(problem, tuple(source for _, source in sourced))
