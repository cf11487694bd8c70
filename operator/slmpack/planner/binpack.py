"""Fleet packing: place replicas of many models on a heterogeneous, partly MIG-partitioned fleet.

The planner folds the SLO and the performance model into the inputs: for every (model, GPU
product) it hands over one or more `ReplicaOption` records, each one way to run one replica with
its memory, its share of the GPU's compute and bandwidth, and the tokens/s it serves within the
SLO. Packing then becomes a pure combinatorial problem: choose options and a GPU for every
replica so that each model's demand is served, minimising the number of GPUs first and the
power draw second.

Rules a placement obeys:

* On a whole (non-MIG) GPU, co-located replicas share it: Σ memory_bytes ≤ the pool's memory
  and Σ compute_share ≤ 1.
* A MIG pool's GPU runs exactly one of the pool's layouts; a replica with a MIG option occupies
  one instance of its profile. Whole-GPU options never go on MIG pools, MIG options never on
  whole GPUs.

`pack_heuristic` is what the operator runs (fast, 2,000 GPUs in well under a second);
`pack_milp` is the exact reference for small instances (scipy/HiGHS, imported lazily so the
operator never pays for it).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from slmpack.errors import InvalidSpecError

#: Σ compute_share may exceed 1 by this much: shares such as 0.1 summed ten times are 1 ± 1 ulp.
COMPUTE_SHARE_TOLERANCE = 1e-9
#: A model counts as served when its supply falls short of demand by at most this fraction.
DEMAND_TOLERANCE_RATIO = 1e-9

_MIG_SLICES = re.compile(r"^(\d+)g\.")


@dataclass(frozen=True)
class GpuPool:
    """`count` identical GPUs of one product, e.g. one node group.

    With `mig_layouts` the pool's GPUs are MIG-partitioned: each used GPU runs exactly one of
    these layouts (a layout lists its instances' profile names, a profile once per instance).
    """

    name: str
    product: str
    count: int
    memory_bytes: int
    idle_watts: float
    mig_layouts: tuple[tuple[str, ...], ...] = ()

    @property
    def is_mig(self) -> bool:
        return bool(self.mig_layouts)


@dataclass(frozen=True)
class ReplicaOption:
    """One way to run one replica of `model` on a GPU of `product`, SLO already applied.

    `compute_share` is the fraction (0, 1] of the GPU's shared capacity (SM time, bandwidth)
    the replica needs; it is ignored for MIG options, which own their instance.
    `tokens_per_s` is what the replica serves within the SLO; `watts` its dynamic power.
    """

    model: str
    product: str
    memory_bytes: int
    compute_share: float
    tokens_per_s: float
    watts: float
    mig_profile: str | None = None


@dataclass(frozen=True)
class ModelDemand:
    """Aggregate demand of one model across the fleet, in generated tokens per second."""

    model: str
    tokens_per_s: float


@dataclass(frozen=True)
class PackingProblem:
    pools: tuple[GpuPool, ...]
    options: tuple[ReplicaOption, ...]
    demands: tuple[ModelDemand, ...]


@dataclass(frozen=True)
class Placement:
    """`replicas` replicas of `model` on GPU `gpu_index` of `pool`.

    `option_index` points into `PackingProblem.options`: it tells which engine configuration
    the replicas run when a model has several options for the same product.
    """

    pool: str
    gpu_index: int
    model: str
    replicas: int
    mig_profile: str | None
    option_index: int


@dataclass(frozen=True)
class PackingResult:
    """A placement and its cost. `unmet` is empty exactly when every demand is served."""

    placements: tuple[Placement, ...]
    gpus_used: int
    gpus_used_by_pool: dict[str, int]
    energy_watts: float  # idle power of the used GPUs + Σ dynamic power of the replicas
    unmet: dict[str, float]  # model -> tokens/s not served
    solver: str
    optimal: bool  # proven optimal (MILP only; the heuristic never claims it)
    message: str
    # (pool, gpu_index) -> the MIG layout that GPU runs; only used MIG GPUs appear.
    mig_layouts: dict[tuple[str, int], tuple[str, ...]] = field(default_factory=dict)
    # A proven lower bound on the GPU count: the MILP's (equals gpus_used when optimal), or the
    # heuristic's capacity bound (see _Packer._lower_bound).
    gpus_lower_bound: int | None = None

    @property
    def feasible(self) -> bool:
        return not self.unmet


@dataclass(frozen=True)
class AssignedGpu:
    """Solver-neutral content of one used GPU: option index -> replicas, plus its MIG layout."""

    pool_index: int
    option_counts: tuple[tuple[int, int], ...]
    mig_layout: tuple[str, ...] | None = None


@dataclass(frozen=True)
class IndexedProblem:
    """A validated problem with the lookups both solvers need.

    `size_ratio[(o, p)]` is the fraction of one GPU of pool p that option o occupies when GPUs
    are full: max(memory share, compute share) on whole GPUs, the instance's compute-slice
    fraction on MIG pools. `best_tokens_per_gpu[m]` is the best tokens/s per such GPU-fraction
    over all of m's options: the heuristic values served demand in "GPU equivalents" with it.
    """

    problem: PackingProblem
    demand_tokens_per_s: dict[str, float]  # positive demands only
    pool_options: tuple[tuple[int, ...], ...]  # per pool: eligible option indices
    size_ratio: dict[tuple[int, int], float]
    best_tokens_per_gpu: dict[str, float]
    alone_capacity: dict[tuple[int, int], int]  # replicas of option o alone on one GPU of p


def index_problem(problem: PackingProblem) -> IndexedProblem:
    """Validate `problem` and build the lookups. Raises InvalidSpecError naming the culprit."""
    _validate(problem)
    demand: dict[str, float] = {}
    for d in problem.demands:
        if d.model in demand:
            raise InvalidSpecError(f"Model {d.model!r} has more than one demand; merge them")
        if d.tokens_per_s > 0:
            demand[d.model] = float(d.tokens_per_s)

    pool_options: list[tuple[int, ...]] = []
    size_ratio: dict[tuple[int, int], float] = {}
    alone: dict[tuple[int, int], int] = {}
    best: dict[str, float] = {}
    for p, pool in enumerate(problem.pools):
        slot_ratio = _mig_slot_ratios(pool)
        eligible: list[int] = []
        for o, opt in enumerate(problem.options):
            if opt.model not in demand or opt.product != pool.product:
                continue
            if pool.is_mig:
                if opt.mig_profile is None or opt.mig_profile not in slot_ratio:
                    continue
                size = slot_ratio[opt.mig_profile]
                cap = max(layout.count(opt.mig_profile) for layout in pool.mig_layouts)
            else:
                if opt.mig_profile is not None or opt.memory_bytes > pool.memory_bytes:
                    continue
                size = max(opt.memory_bytes / pool.memory_bytes, opt.compute_share)
                cap = _fit(pool.memory_bytes, 1.0, opt.memory_bytes, opt.compute_share)
            eligible.append(o)
            size_ratio[(o, p)] = size
            alone[(o, p)] = cap
            best[opt.model] = max(best.get(opt.model, 0.0), opt.tokens_per_s / size)
        pool_options.append(tuple(eligible))

    missing = [m for m in demand if m not in best]
    if missing:
        pools = ", ".join(
            f"{p.name} ({p.product}{', MIG' if p.is_mig else ''})" for p in problem.pools
        )
        raise InvalidSpecError(
            f"Model(s) {', '.join(repr(m) for m in missing)} have no replica option that fits "
            f"any GPU pool (pools: {pools or 'none'}); add an option for one of these products "
            "or a pool of a GPU the model fits"
        )
    return IndexedProblem(
        problem=problem,
        demand_tokens_per_s=demand,
        pool_options=tuple(pool_options),
        size_ratio=size_ratio,
        best_tokens_per_gpu=best,
        alone_capacity=alone,
    )


def _validate(problem: PackingProblem) -> None:
    names = [p.name for p in problem.pools]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidSpecError(f"GPU pool names must be unique; repeated: {', '.join(dupes)}")
    for pool in problem.pools:
        if pool.count < 0 or pool.memory_bytes <= 0 or pool.idle_watts < 0:
            raise InvalidSpecError(
                f"GPU pool {pool.name!r} needs count >= 0, memory_bytes > 0 and idle_watts >= 0"
            )
        if any(not layout for layout in pool.mig_layouts):
            raise InvalidSpecError(f"GPU pool {pool.name!r} has an empty MIG layout")
    for opt in problem.options:
        if not (0.0 < opt.compute_share <= 1.0):
            raise InvalidSpecError(
                f"Replica option of {opt.model!r} on {opt.product}: compute_share must be in "
                f"(0, 1], got {opt.compute_share}"
            )
        if opt.tokens_per_s <= 0 or opt.memory_bytes < 0 or opt.watts < 0:
            raise InvalidSpecError(
                f"Replica option of {opt.model!r} on {opt.product}: tokens_per_s must be > 0, "
                "memory_bytes and watts >= 0"
            )
    for d in problem.demands:
        if not math.isfinite(d.tokens_per_s) or d.tokens_per_s < 0:
            raise InvalidSpecError(f"Demand of {d.model!r} must be finite and >= 0 tokens/s")


def _mig_slot_ratios(pool: GpuPool) -> dict[str, float]:
    """Fraction of one GPU a MIG instance stands for: its compute slices ("3g" -> 3) over the
    most slices any layout of the pool uses (7 on A100/H100). Unparsable names fall back to
    1 / (most instances of that profile in one layout)."""
    profiles = {name for layout in pool.mig_layouts for name in layout}
    if not profiles:
        return {}
    slices = {name: _slices(name) for name in profiles}
    if all(s is not None for s in slices.values()):
        total = max(sum(slices[n] or 0 for n in layout) for layout in pool.mig_layouts)
        return {n: (s or 0) / total for n, s in slices.items()}
    return {n: 1.0 / max(layout.count(n) for layout in pool.mig_layouts) for n in profiles}


def _slices(profile: str) -> int | None:
    match = _MIG_SLICES.match(profile)
    return int(match.group(1)) if match else None


def _fit(mem_free_bytes: int, compute_free: float, mem_bytes: int, compute_share: float) -> int:
    """Replicas of (mem_bytes, compute_share) that fit into the free capacity of one GPU."""
    by_compute = int((compute_free + COMPUTE_SHARE_TOLERANCE) / compute_share)
    if mem_bytes <= 0:
        return max(by_compute, 0)
    return max(min(mem_free_bytes // mem_bytes, by_compute), 0)


def _served(supply: float, demand: float) -> bool:
    return supply >= demand * (1.0 - DEMAND_TOLERANCE_RATIO)


def build_result(
    ix: IndexedProblem,
    gpus: Sequence[AssignedGpu],
    solver: str,
    optimal: bool,
    note: str = "",
    gpus_lower_bound: int | None = None,
) -> PackingResult:
    """Turn solver-neutral GPU contents into a `PackingResult` (placements, cost, unmet).

    Used GPUs are renumbered 0, 1, ... per pool in the order given: GPUs of a pool are
    identical, so only the count matters.
    """
    problem = ix.problem
    next_index = [0] * len(problem.pools)
    placements: list[Placement] = []
    layouts: dict[tuple[str, int], tuple[str, ...]] = {}
    supply: dict[str, float] = {}
    energy = 0.0
    replicas = 0
    for gpu in gpus:
        counts = [(o, n) for o, n in gpu.option_counts if n > 0]
        if not counts:
            continue
        pool = problem.pools[gpu.pool_index]
        index = next_index[gpu.pool_index]
        next_index[gpu.pool_index] += 1
        energy += pool.idle_watts
        if gpu.mig_layout is not None:
            layouts[(pool.name, index)] = gpu.mig_layout
        for o, n in sorted(counts):
            opt = problem.options[o]
            placements.append(Placement(pool.name, index, opt.model, n, opt.mig_profile, o))
            supply[opt.model] = supply.get(opt.model, 0.0) + n * opt.tokens_per_s
            energy += n * opt.watts
            replicas += n
    unmet = {
        m: d - supply.get(m, 0.0)
        for m, d in ix.demand_tokens_per_s.items()
        if not _served(supply.get(m, 0.0), d)
    }
    by_pool = {pool.name: next_index[p] for p, pool in enumerate(problem.pools)}
    used = sum(next_index)
    if unmet:
        short = ", ".join(f"{m} short by {v:.1f} tokens/s" for m, v in unmet.items())
        message = (
            f"Demand exceeds the fleet: {short}; add GPUs to the pools these models can use "
            "or lower the demand"
        )
    else:
        message = f"Placed {replicas} replicas of {len(supply)} models on {used} GPUs"
    if note:
        message = f"{message} ({note})"
    return PackingResult(
        placements=tuple(placements),
        gpus_used=used,
        gpus_used_by_pool=by_pool,
        energy_watts=energy,
        unmet=unmet,
        solver=solver,
        optimal=optimal and not unmet,
        message=message,
        mig_layouts=layouts,
        gpus_lower_bound=gpus_lower_bound,
    )


# ---------------------------------------------------------------------------------------------
# Heuristic
#
# 1. Construction, a set-multicover greedy over GPU "patterns" (close to minimum-bin-slack for
#    bin packing): repeatedly choose, over all pools with free GPUs, the content of one GPU that
#    serves the most remaining demand in GPU equivalents (tokens/s over the model's best tokens/s
#    per GPU fraction). A pattern is a small knapsack, filled greedily from a few seeds. Replicas
#    of a model are identical, so a pattern repeats while it overshoots no model's remaining
#    demand: the loop runs about once per model, not once per GPU or replica.
#    Where a pool is scarce, a quota split (a greedy rounding of the LP relaxation) first caps
#    what each model may take from it, so a model with good alternatives does not take the
#    GPUs another model cannot do without; an unrestricted pass then serves what is left.
# 2. Trim replicas the demand does not need (saves power), then consolidate: try to empty the
#    least-filled GPUs into the free room of the others, switching options and MIG layouts.
# 3. On small fleets only (the effort shrinks with GPUs × options, so 2,000-GPU fleets get
#    step 1 and 2 once): the construction is repeated with other quota settings, then ruin
#    and recreate walks the placements (clear a few GPUs: least filled, one model's, a seeded
#    random subset, or those that keep an unmet or misplaced model out; refill the free room,
#    open GPUs for the rest) and every pair of the least-filled GPUs is tried for a merge.
#    The best placement by (unmet demand, GPUs, power) wins.
# 4. Small fleets, after step 2 and again after step 3 (whose walk also cuts the power of what
#    it finds): a target search tries one GPU fewer than the best placement, from scratch (with
#    demand unmet: the whole fleet). The GPU count per pool is fixed (one GPU less in one pool;
#    a GPU may move to a pool with free GPUs) and every GPU holds one of its pool's maximal
#    contents (patterns, enumerated once). A tabu search changes one GPU's pattern per step,
#    minimising unmet demand weighted per model; when no step helps, the models left unmet gain
#    weight (a breakout), so the search trades one model's supply for another's to leave local
#    optima. A few seeded restarts per target; each success lowers the target; it stops when
#    every pool fails or at the lower bound (the models' demand over their best tokens/s per
#    unit of compute share, or of memory). It starts from empty GPUs on purpose: the greedy's
#    placement sits in a basin that one-GPU moves rarely leave (tight fleets whose optimum
#    mixes models on every GPU).
# ---------------------------------------------------------------------------------------------

#: Seeds per pattern search (each seed is one option placed first, then a greedy fill), on
#: small problems and on big ones.
PATTERN_SEEDS = 6
FAST_PATTERN_SEEDS = 2
#: Ruin-and-recreate rounds at most, and the work budget that scales them down on bigger
#: problems: a round evaluates patterns about once per GPU and per model, each over the
#: options, so it costs about (GPUs + models) × options. Below the minimum rounds the
#: heuristic runs in its fast mode: one construction, fewer seeds, one fill strategy, no ruin
#: and recreate (2,000-GPU fleets).
MAX_IMPROVEMENT_ROUNDS = 150
MIN_IMPROVEMENT_ROUNDS = 10
IMPROVEMENT_WORK_BUDGET = 200_000
#: A pool counts as scarce when the fractional split leaves less than this share of it (+1 GPU)
#: free: packing loses some room to fragmentation, so "nearly full" is full.
SCARCE_POOL_MARGIN_RATIO = 0.15
#: Quota settings the construction tries on small fleets (share of scarce pools handed out).
QUOTA_CAPACITY_RATIOS: tuple[float | None, ...] = (1.0, 0.85, 0.7, None)
#: A pool may turn out to hold more than the rate table says (co-location beats running alone).
MAX_QUOTA_CAPACITY_RATIO = 2.0
#: Constructions whose quota split is recalibrated with the fill each pool really reached.
QUOTA_CALIBRATION_PASSES = 3
#: A replica on a pool where its model reaches less than this share of its best tokens/s per
#: GPU is "misplaced": ruin and recreate tries to move it by displacing flexible models.
MISPLACED_EFFICIENCY_RATIO = 0.5
#: Pair merging after ruin and recreate looks at pairs among this many least-filled GPUs; one
#: candidate more per this many affordable rounds (the pairs grow quadratically).
MERGE_CANDIDATES = 10
MERGE_COST_ROUNDS = 15
#: Constructions (one per quota setting) on small problems: one per this many rounds afforded.
CONSTRUCTION_COST_ROUNDS = 8
#: Consolidation stops after this many least-filled GPUs in a row could not be emptied.
MAX_CONSOLIDATION_FAILURES = 8
#: Relative noise on pattern values in every other recreate round, to leave plateaus.
IMPROVEMENT_NOISE_RATIO = 0.2
_IMPROVEMENT_SEED = 20240611  # fixed: same problem, same placement
#: Target search: tabu steps per attempt (plus one per GPU, to fill the empty GPUs first), the
#: tabu tenure in steps, the weight an unmet model gains (in units of its starting weight) each
#: time no step helps, and attempts (seeded restarts) per GPU count. Tuned on bench/packing.py's
#: small fleets: more steps per attempt found nothing more there, a restart did (an attempt
#: takes 10-30 ms on them).
TARGET_SEARCH_STEPS = 300
TARGET_SEARCH_TABU_TENURE = 3
TARGET_SEARCH_WEIGHT_STEP = 1.0
TARGET_SEARCH_ATTEMPTS = 3
#: Pattern enumeration gives up (and the target search is skipped) past this many depth-first
#: nodes per pool, about 0.1 s: many small options make the maximal contents of a GPU explode.
#: bench/packing.py's small fleets need at most 1,400 in all.
MAX_PATTERN_NODES = 20_000
#: A step evaluates GPUs × patterns × models numbers; GPU counts whose attempts would exceed
#: this many in all are not searched (numpy handles about 10^8 a second here).
TARGET_SEARCH_WORK_BUDGET = 40_000_000


_Cost = tuple[float, int, int, float]
# Quota split setting: capacity ratio per pool (None: no quotas) and the rate table it uses.
_QuotaSetting = tuple[list[float] | None, list[dict[str, float]]]


@dataclass(frozen=True)
class _PatternTable:
    """Maximal contents of one GPU for every pool, as rows of a supply matrix."""

    models: tuple[str, ...]  # the supply matrix's columns
    counts: tuple[tuple[tuple[int, int], ...], ...]  # per pattern: (option, replicas)
    layouts: tuple[tuple[str, ...] | None, ...]  # per pattern: its MIG layout
    pool_of: npt.NDArray[np.int64]  # per pattern
    supply: npt.NDArray[np.float64]  # patterns × models, tokens/s


class _PatternEnumerator:
    """Depth-first enumeration of the maximal contents of one GPU of a pool: contents to which
    no replica can be added, except of models whose whole demand the GPU already serves.

    Options are added in index order (a content is a multiset), so a content that still has
    room for an option earlier in the order is skipped: its extension is enumerated anyway.
    """

    def __init__(self, packer: _Packer, p: int, max_patterns: int) -> None:
        self.packer = packer
        self.max_patterns = max_patterns
        self.pool = packer.pools[p]
        self.options = sorted(packer.ix.pool_options[p])
        self.nodes = 0
        self.found: dict[tuple[tuple[int, int], ...], tuple[str, ...] | None] = {}
        self.picked: list[int] = []
        self.supply: dict[str, float] = dict.fromkeys(packer.demand, 0.0)
        self.mem_free_bytes = 0
        self.compute_free = 0.0
        self.slots: Counter[str] = Counter()
        self.layout: tuple[str, ...] | None = None

    def run(self) -> dict[tuple[tuple[int, int], ...], tuple[str, ...] | None] | None:
        """content -> its MIG layout (the first that holds it); None past the node budget or
        `max_patterns`."""
        layouts: list[tuple[str, ...] | None] = (
            list(self.pool.mig_layouts) if self.pool.is_mig else [None]
        )
        for layout in layouts:
            self.layout = layout
            self.slots = Counter(layout or ())
            self.mem_free_bytes = self.pool.memory_bytes
            self.compute_free = 1.0
            if not self._visit(0):
                return None
        return self.found

    def _wanted(self, o: int) -> bool:
        m = self.packer.model_of[o]
        return self.supply[m] < self.packer.demand[m] - self.packer.tol[m]

    def _fits(self, o: int) -> bool:
        packer = self.packer
        if self.layout is not None:
            return self.slots[packer.profile_of[o]] > 0
        return (
            packer.mem_of[o] <= self.mem_free_bytes
            and packer.share_of[o] <= self.compute_free + COMPUTE_SHARE_TOLERANCE
        )

    def _take(self, o: int, n: int) -> None:
        packer = self.packer
        self.supply[packer.model_of[o]] += n * packer.tokens_of[o]
        if self.layout is not None:
            self.slots[packer.profile_of[o]] -= n
        else:
            self.mem_free_bytes -= n * packer.mem_of[o]
            self.compute_free -= n * packer.share_of[o]

    def _visit(self, start: int) -> bool:
        self.nodes += 1
        if self.nodes > MAX_PATTERN_NODES or len(self.found) > self.max_patterns:
            return False
        grew = False
        for j in range(start, len(self.options)):
            o = self.options[j]
            if not (self._wanted(o) and self._fits(o)):
                continue
            grew = True
            self._take(o, 1)
            self.picked.append(o)
            ok = self._visit(j)
            self.picked.pop()
            self._take(o, -1)
            if not ok:
                return False
        if not grew and not any(self._wanted(o) and self._fits(o) for o in self.options[:start]):
            content = tuple(sorted(Counter(self.picked).items()))
            if content:
                self.found.setdefault(content, self.layout)
        return True


@dataclass
class _Capacity:
    """Free room on one GPU: memory and compute (whole GPU) or free instances (MIG layout)."""

    mem_free_bytes: int
    compute_free: float
    slots: dict[str, int] | None
    layout: tuple[str, ...] | None
    fresh: int | None = None  # an empty GPU: index of its precomputed seed order


@dataclass
class _Pattern:
    counts: dict[int, int]
    supply: dict[str, float]
    value: float
    watts: float  # dynamic power of the replicas added
    layout: tuple[str, ...] | None


@dataclass
class _Gpu:
    pool: int
    counts: dict[int, int]
    mem_free_bytes: int
    compute_free: float
    layout: tuple[str, ...] | None
    used_slots: dict[str, int]  # MIG instances in use, by profile

    def copy(self) -> _Gpu:
        return _Gpu(
            self.pool,
            dict(self.counts),
            self.mem_free_bytes,
            self.compute_free,
            self.layout,
            dict(self.used_slots),
        )


class _Packer:
    def __init__(self, ix: IndexedProblem) -> None:
        self.ix = ix
        self.pools = ix.problem.pools
        self.options = ix.problem.options
        self.demand = ix.demand_tokens_per_s
        self.best = ix.best_tokens_per_gpu
        self.tol = {m: d * DEMAND_TOLERANCE_RATIO for m, d in self.demand.items()}
        # Per pool: options in decreasing value density (1.0 = the model's best option), then
        # larger first (as in first-fit decreasing: big items first, small ones fill the gaps).
        self.order: list[list[int]] = []
        self.by_model: list[dict[str, list[int]]] = []
        for p, eligible in enumerate(ix.pool_options):
            self.order.append(sorted(eligible, key=functools.partial(self._order_key, p=p)))
            groups: dict[str, list[int]] = {}
            for o in eligible:
                groups.setdefault(self.options[o].model, []).append(o)
            self.by_model.append(groups)
        # Best tokens/s per GPU of pool p, per model: the exchange rate between pools.
        self.eff: list[dict[str, float]] = []
        for p, eligible in enumerate(ix.pool_options):
            rates: dict[str, float] = {}
            for o in eligible:
                opt = self.options[o]
                rate = opt.tokens_per_s / ix.size_ratio[(o, p)]
                rates[opt.model] = max(rates.get(opt.model, 0.0), rate)
            self.eff.append(rates)
        # The same per GPU when a GPU runs one model alone: no co-location assumed. Pessimistic
        # where small replicas could fill the gaps, but it sees that a 0.75-share replica
        # wastes a quarter GPU; the quota split is tried with both.
        self.eff_alone: list[dict[str, float]] = []
        for p, eligible in enumerate(ix.pool_options):
            pool = self.pools[p]
            alone: dict[str, float] = {}
            if pool.is_mig:
                for layout in pool.mig_layouts:
                    per_model: dict[str, float] = {}
                    for q, n in Counter(layout).items():
                        best_q: dict[str, float] = {}
                        for o in eligible:
                            opt = self.options[o]
                            if opt.mig_profile == q:
                                best_q[opt.model] = max(
                                    best_q.get(opt.model, 0.0), opt.tokens_per_s
                                )
                        for m, t in best_q.items():
                            per_model[m] = per_model.get(m, 0.0) + n * t
                    for m, t in per_model.items():
                        alone[m] = max(alone.get(m, 0.0), t)
            else:
                for o in eligible:
                    opt = self.options[o]
                    t = ix.alone_capacity[(o, p)] * opt.tokens_per_s
                    alone[opt.model] = max(alone.get(opt.model, 0.0), t)
            self.eff_alone.append(alone)
        # Flat per-option lookups: the pattern search is the hot loop.
        self.model_of = [o.model for o in self.options]
        self.tokens_of = [o.tokens_per_s for o in self.options]
        self.mem_of = [o.memory_bytes for o in self.options]
        self.share_of = [o.compute_share for o in self.options]
        self.profile_of = [o.mig_profile or "" for o in self.options]
        self.min_mem = [min((self.mem_of[o] for o in e), default=0) for e in ix.pool_options]
        self.min_share = [min((self.share_of[o] for o in e), default=1.0) for e in ix.pool_options]
        # Effort: small problems (enough ruin-and-recreate rounds in the work budget) get two
        # fill strategies and more seeds per pattern; big ones run the fast mode.
        gpus_estimate = sum(d / self.best[m] for m, d in self.demand.items())
        self.units = _rounds_for(gpus_estimate, len(self.demand), len(self.options))
        self.thorough = self.units >= MIN_IMPROVEMENT_ROUNDS
        self.pattern_seeds = PATTERN_SEEDS if self.thorough else FAST_PATTERN_SEEDS
        self.layout_slots = [[Counter(lay) for lay in pool.mig_layouts] for pool in self.pools]
        # Per pool and empty-GPU capacity (one, or one per MIG layout): options by the most
        # GPU equivalents they could serve alone there, the bound the seed scan stops on.
        self.seed_order: list[list[list[tuple[float, int]]]] = []
        for p, eligible in enumerate(ix.pool_options):
            if self.pools[p].is_mig:
                fits = [
                    {o: slots[self.profile_of[o]] for o in eligible}
                    for slots in self.layout_slots[p]
                ]
            else:
                fits = [{o: ix.alone_capacity[(o, p)] for o in eligible}]
            self.seed_order.append(
                [
                    sorted(
                        (
                            (n * self.tokens_of[o] / self.best[self.model_of[o]], o)
                            for o, n in fit.items()
                            if n > 0
                        ),
                        key=lambda t: (-t[0], t[1]),
                    )
                    for fit in fits
                ]
            )
        self.gpus: list[_Gpu] = []
        # Share of a scarce pool's free GPUs the quota split may hand out (None: no quotas).
        self.quota_capacity_ratio: list[float] | None = [1.0] * len(self.pools)
        self.quota_rates = self.eff  # tokens/s per GPU table the quota split uses
        # Seeded noise on pattern choice, only during ruin and recreate.
        self.rng = random.Random(_IMPROVEMENT_SEED)
        self.noise = 0.0
        self.lower_bound = self._lower_bound()
        # Target search state: the patterns (built on first use), GPU counts per pool it could
        # not serve the demand with, and its own seeded random stream.
        self.table: _PatternTable | None = None
        self.table_built = False
        self.failed_targets: set[tuple[int, ...]] = set()
        self.search_rng = random.Random(_IMPROVEMENT_SEED)

    def _lower_bound(self) -> int:
        """GPUs no placement can do with: a GPU offers one unit of compute share and one of
        memory, and each model needs at least its demand over its best tokens/s per unit of
        either (on any pool with GPUs). MIG instances count their share of the slices."""
        per_share: dict[str, float] = {}
        per_memory: dict[str, float] = {}
        for p, eligible in enumerate(self.ix.pool_options):
            pool = self.pools[p]
            if pool.count == 0:
                continue
            # Fallback slot ratios (unparsable profile names) may sum above 1 in a layout.
            ratios = _mig_slot_ratios(pool)
            scale = max([1.0] + [sum(ratios[q] for q in lay) for lay in pool.mig_layouts])
            for o in eligible:
                m, tokens = self.model_of[o], self.tokens_of[o]
                if pool.is_mig:
                    share = memory = self.ix.size_ratio[(o, p)] / scale
                else:
                    share = self.share_of[o]
                    memory = self.mem_of[o] / pool.memory_bytes
                per_share[m] = max(per_share.get(m, 0.0), tokens / share)
                per_memory[m] = max(
                    per_memory.get(m, 0.0), tokens / memory if memory > 0 else math.inf
                )
        need_share = sum(d / per_share[m] for m, d in self.demand.items() if m in per_share)
        need_memory = sum(d / per_memory[m] for m, d in self.demand.items() if m in per_memory)
        bound = max(math.ceil(need_share - 1e-9), math.ceil(need_memory - 1e-9))
        return max(bound, 1 if self.demand else 0)

    def _order_key(self, o: int, p: int) -> tuple[float, float, int]:
        size = self.ix.size_ratio[(o, p)]
        opt = self.options[o]
        density = opt.tokens_per_s / size / self.best[opt.model]
        return (-round(density, 9), -size, o)

    # -- state --------------------------------------------------------------------------------

    def remaining(self) -> dict[str, float]:
        supply = self.supply()
        return {m: max(d - supply[m], 0.0) for m, d in self.demand.items()}

    def supply(self) -> dict[str, float]:
        supply: dict[str, float] = dict.fromkeys(self.demand, 0.0)
        for gpu in self.gpus:
            for o, n in gpu.counts.items():
                supply[self.options[o].model] += n * self.options[o].tokens_per_s
        return supply

    def cost(self) -> _Cost:
        """(unmet GPU equivalents, models unmet, GPUs, watts): smaller is better, in this order.
        The count catches demands so small that their GPU equivalents underflow to zero."""
        unmet = {m: r for m, r in self.remaining().items() if r > self.tol[m]}
        watts = sum(self.pools[g.pool].idle_watts for g in self.gpus)
        watts += sum(n * self.options[o].watts for g in self.gpus for o, n in g.counts.items())
        return (sum(r / self.best[m] for m, r in unmet.items()), len(unmet), len(self.gpus), watts)

    def _add(self, gpu: _Gpu, o: int, n: int) -> None:
        opt = self.options[o]
        gpu.counts[o] = gpu.counts.get(o, 0) + n
        if gpu.counts[o] == 0:
            del gpu.counts[o]
        if gpu.layout is not None:
            profile = opt.mig_profile or ""
            gpu.used_slots[profile] = gpu.used_slots.get(profile, 0) + n
        else:
            gpu.mem_free_bytes -= n * opt.memory_bytes
            gpu.compute_free -= n * opt.compute_share

    def _fill_ratio(self, gpu: _Gpu) -> float:
        if gpu.layout is not None:
            return sum(self.ix.size_ratio[(o, gpu.pool)] * n for o, n in gpu.counts.items())
        pool = self.pools[gpu.pool]
        return max(1.0 - gpu.mem_free_bytes / pool.memory_bytes, 1.0 - gpu.compute_free)

    def _compatible_layouts(self, gpu: _Gpu) -> list[int]:
        """Layouts of the GPU's pool that hold every instance the GPU already runs."""
        return [
            i
            for i, slots in enumerate(self.layout_slots[gpu.pool])
            if all(slots[q] >= n for q, n in gpu.used_slots.items())
        ]

    def _capacities(self, p: int, gpu: _Gpu | None) -> list[_Capacity]:
        pool = self.pools[p]
        if not pool.is_mig:
            if gpu is None:
                return [_Capacity(pool.memory_bytes, 1.0, None, None, 0)]
            return [_Capacity(gpu.mem_free_bytes, gpu.compute_free, None, None)]
        if gpu is None:
            return [
                _Capacity(0, 0.0, dict(slots), layout, i)
                for i, (slots, layout) in enumerate(
                    zip(self.layout_slots[p], pool.mig_layouts, strict=True)
                )
            ]
        caps = []
        for i in self._compatible_layouts(gpu):
            slots = {q: n - gpu.used_slots.get(q, 0) for q, n in self.layout_slots[p][i].items()}
            caps.append(_Capacity(0, 0.0, slots, pool.mig_layouts[i]))
        return caps

    # -- pattern search -----------------------------------------------------------------------

    def _pattern(self, p: int, remaining: Mapping[str, float], gpu: _Gpu | None) -> _Pattern | None:
        """Best content found for one GPU of pool p (its free room if `gpu` is given)."""
        tol = self.tol
        model_of = self.model_of
        alive = [o for o in self.order[p] if remaining[model_of[o]] > tol[model_of[o]]]
        if not alive:
            return None
        best: _Pattern | None = None
        for cap in self._capacities(p, gpu):
            starts: list[int | None] = [None, *self._seeds(p, alive, cap, remaining)]
            for seed in starts:
                for by_value in (False, True) if self.thorough else (False,):
                    pattern = self._fill(p, remaining, cap, alive, seed, by_value)
                    if best is None or _pattern_rank(pattern) > _pattern_rank(best):
                        best = pattern
        return best

    def _fits(self, cap: _Capacity, o: int) -> int:
        if cap.slots is not None:
            return cap.slots.get(self.profile_of[o], 0)
        opt = self.options[o]
        return _fit(cap.mem_free_bytes, cap.compute_free, opt.memory_bytes, opt.compute_share)

    def _seeds(
        self, p: int, alive: Sequence[int], cap: _Capacity, remaining: Mapping[str, float]
    ) -> list[int]:
        """Options that serve the most on their own: filling with them first avoids the greedy
        taking a dense option whose leftover room nothing else can use.

        On an empty GPU the scan follows a precomputed order by the most an option could serve
        there and stops once that bound drops below the seeds found (big fleets have thousands
        of options); on a partly used GPU it scans the live options.
        """
        tokens = self.tokens_of
        scored: list[tuple[float, int]] = []
        if cap.fresh is None:
            candidates: Sequence[tuple[float, int]] = [(math.inf, o) for o in alive]
        else:
            candidates = self.seed_order[p][cap.fresh]
        kth = -math.inf
        for bound, o in candidates:
            if bound < kth:
                break
            m = self.model_of[o]
            left = remaining[m]
            if left <= self.tol[m]:
                continue
            n = min(self._fits(cap, o), _replicas_for(left, tokens[o]))
            if n > 0:
                scored.append((-min(n * tokens[o], left) / self.best[m], o))
                if len(scored) >= self.pattern_seeds:
                    scored.sort()
                    del scored[self.pattern_seeds :]
                    kth = -scored[-1][0]
        scored.sort()
        return [o for _, o in scored[: self.pattern_seeds]]

    def _fill(
        self,
        p: int,
        remaining: Mapping[str, float],
        start: _Capacity,
        alive: Sequence[int],
        seed: int | None,
        by_value: bool,
    ) -> _Pattern:
        """Greedy content for the free room `start`: the seed first; then whole replicas the
        remaining demand fully uses, densest first (or, `by_value`, whichever option adds the
        most value to the room left); then demand tails."""
        mig = start.slots is not None
        slots = dict(start.slots) if start.slots is not None else {}
        mem_free = start.mem_free_bytes
        compute_free = start.compute_free
        counts: dict[int, int] = {}
        supply: dict[str, float] = {}
        model_of, tokens_of, profile_of = self.model_of, self.tokens_of, self.profile_of
        mem_of, share_of, tol, best = self.mem_of, self.share_of, self.tol, self.best
        min_mem, min_share = self.min_mem[p], self.min_share[p]

        def fits(o: int) -> int:
            if mig:
                return slots.get(profile_of[o], 0)
            return _fit(mem_free, compute_free, mem_of[o], share_of[o])

        slots_left = sum(slots.values())

        def add(o: int, n: int) -> None:
            nonlocal mem_free, compute_free, slots_left
            if n <= 0:
                return
            m = model_of[o]
            counts[o] = counts.get(o, 0) + n
            supply[m] = supply.get(m, 0.0) + n * tokens_of[o]
            if mig:
                slots[profile_of[o]] -= n
                slots_left -= n
            else:
                mem_free -= n * mem_of[o]
                compute_free -= n * share_of[o]

        def full() -> bool:
            if mig:
                return slots_left <= 0
            return mem_free < min_mem or compute_free + COMPUTE_SHARE_TOLERANCE < min_share

        if seed is not None:
            m = model_of[seed]
            left = remaining[m]
            add(seed, min(fits(seed), _replicas_for(left, tokens_of[seed])))
        if by_value:
            while not full():
                pick: tuple[float, int, int] | None = None
                for o in alive:
                    m = model_of[o]
                    left = remaining[m] - supply.get(m, 0.0)
                    if left <= tol[m]:
                        continue
                    n = min(fits(o), _replicas_for(left, tokens_of[o]))
                    if n > 0:
                        gain = min(n * tokens_of[o], left) / best[m]
                        if pick is None or gain > pick[0]:
                            pick = (gain, o, n)
                if pick is None:
                    break
                add(pick[1], pick[2])
        else:
            for o in alive:
                if full():
                    break
                m = model_of[o]
                left = remaining[m] - supply.get(m, 0.0)
                if left <= tol[m]:
                    continue
                n = min(int(left / tokens_of[o] + DEMAND_TOLERANCE_RATIO), fits(o))
                if n > 0:
                    add(o, n)
            # Tails (less than one replica of the densest option): largest first, each with
            # the option that serves most of it per GPU fraction.
            if not full():
                tails = []
                for m, opts in self.by_model[p].items():
                    left = remaining[m] - supply.get(m, 0.0)
                    if left > tol[m]:
                        tails.append((-left / best[m], m, opts))
                tails.sort()
                for _, m, opts in tails:
                    if full():
                        break
                    left = remaining[m] - supply.get(m, 0.0)
                    choice: tuple[float, int] | None = None
                    for o in opts:
                        if fits(o) <= 0:
                            continue
                        score = min(tokens_of[o], left) / self.ix.size_ratio[(o, p)]
                        if choice is None or score > choice[0]:
                            choice = (score, o)
                    if choice is not None:
                        o = choice[1]
                        add(o, min(_replicas_for(left, tokens_of[o]), fits(o)))
        value = sum(min(v, remaining[m]) / best[m] for m, v in supply.items())
        watts = sum(n * self.options[o].watts for o, n in counts.items())
        return _Pattern(counts, supply, value, watts, start.layout)

    # -- construction -------------------------------------------------------------------------

    def _apply(self, gpu: _Gpu, pattern: _Pattern) -> None:
        if pattern.layout is not None:
            gpu.layout = pattern.layout
        for o, n in pattern.counts.items():
            self._add(gpu, o, n)

    def fill_free_room(self, remaining: dict[str, float]) -> None:
        """Best-fit flavour: the fullest GPUs get their free room filled first."""
        for gpu in sorted(self.gpus, key=lambda g: -self._fill_ratio(g)):
            if not any(r > self.tol[m] for m, r in remaining.items()):
                return
            if not self._has_room(gpu):
                continue
            pattern = self._pattern(gpu.pool, remaining, gpu)
            if pattern is None or not pattern.counts:
                continue
            self._apply(gpu, pattern)
            for m, s in pattern.supply.items():
                remaining[m] = max(remaining[m] - s, 0.0)

    def _has_room(self, gpu: _Gpu) -> bool:
        """Whether any option of the pool could still fit (cheap test before a pattern search)."""
        p = gpu.pool
        if gpu.layout is None:
            return (
                gpu.mem_free_bytes >= self.min_mem[p]
                and gpu.compute_free + COMPUTE_SHARE_TOLERANCE >= self.min_share[p]
            )
        in_use = sum(gpu.used_slots.values())
        return in_use < len(gpu.layout) or len(self._compatible_layouts(gpu)) > 1

    def free_gpus(self) -> list[int]:
        free = [pool.count for pool in self.pools]
        for gpu in self.gpus:
            free[gpu.pool] -= 1
        return free

    def pool_quotas(self, remaining: Mapping[str, float]) -> dict[int, dict[str, float]]:
        """Split demand across pools where GPUs are scarce (a greedy rounding of the LP).

        Serving everything on each model's best pool can exhaust a pool that another model
        needs more, e.g. H100s taken by a model that also runs well on MIG slices while the
        next model only fits H100s or slow L4s. In GPU units (tokens/s over the rate table's
        tokens/s per GPU of the pool), the model whose best pool saves most GPUs of its
        runner-up per GPU used (the rate ratio, the LP relaxation's exchange rate) gets its
        best pool first. Returns tokens/s quotas for the pools this split fills up (less than a
        margin left for packing losses); other pools serve any model. When no pool would be
        over-subscribed with every model on its best pool there is nothing to split.
        """
        if self.quota_capacity_ratio is None:
            return {}
        rates = self.quota_rates
        caps = [n * r for n, r in zip(self.free_gpus(), self.quota_capacity_ratio, strict=True)]
        left = {m: r for m, r in remaining.items() if r > self.tol[m]}
        load = [0.0] * len(self.pools)
        for m, r in left.items():
            p = max((p for p in range(len(self.pools)) if m in rates[p]), key=lambda p: rates[p][m])
            load[p] += r / rates[p][m]
        if not any(0 < load[p] > self._scarce_limit(p, caps[p]) for p in range(len(load))):
            return {}
        quotas: dict[int, dict[str, float]] = {}
        free = list(caps)
        while left:
            pick: tuple[float, str, int] | None = None
            for m in left:
                costs = sorted(
                    (1.0 / rates[p][m], p)
                    for p in range(len(self.pools))
                    if free[p] > 0 and m in rates[p]
                )
                if not costs:
                    continue
                # GPUs of the runner-up saved per GPU of the best pool: the LP's exchange rate.
                regret = costs[1][0] / costs[0][0] if len(costs) > 1 else math.inf
                if pick is None or regret > pick[0]:
                    pick = (regret, m, costs[0][1])
            if pick is None:
                break
            _, m, p = pick
            served = min(left[m], free[p] * rates[p][m])
            quotas.setdefault(p, {})[m] = served
            free[p] -= served / rates[p][m]
            left[m] -= served
            if left[m] <= self.tol[m]:
                del left[m]
        return {
            p: q for p, q in quotas.items() if caps[p] - free[p] > self._scarce_limit(p, caps[p])
        }

    def _scarce_limit(self, p: int, cap: float) -> float:
        """GPUs of pool p a split may use before the pool counts as full."""
        return cap - (SCARCE_POOL_MARGIN_RATIO * self.pools[p].count + 1.0)

    def open_gpus(
        self,
        remaining: dict[str, float],
        quotas: dict[int, dict[str, float]] | None = None,
    ) -> None:
        """Open GPUs pattern by pattern; pools evaluated lazily (a pattern's value only drops as
        demand gets served, so a stale value is an upper bound). With `quotas`, a scarce pool
        serves only up to each model's quota there."""
        free = self.free_gpus()
        version = 0
        cached: dict[int, tuple[int, _Pattern]] = {}
        heap: list[tuple[tuple[float, float, int], int]] = []

        def view(p: int) -> dict[str, float]:
            if quotas is None or p not in quotas:
                return remaining
            return {m: min(r, quotas[p].get(m, 0.0)) for m, r in remaining.items()}

        def evaluate(p: int) -> None:
            pattern = self._pattern(p, view(p), None)
            if pattern is None or not pattern.counts:
                return
            cached[p] = (version, pattern)
            idle = self.pools[p].idle_watts
            # Most GPU equivalents first; ties go to the lower power per equivalent.
            value = pattern.value
            if self.noise:
                value *= 1.0 + self.noise * (self.rng.random() - 0.5)
            watts_per_value = (
                (idle + pattern.watts) / pattern.value if pattern.value > 0 else math.inf
            )
            key = (-round(value, 9), watts_per_value, p)
            heapq.heappush(heap, (key, p))

        for p in range(len(self.pools)):
            if free[p] > 0 and self.order[p]:
                evaluate(p)
        while heap:
            _, p = heapq.heappop(heap)
            seen, pattern = cached[p]
            if seen != version:
                evaluate(p)  # stale: recompute and let the heap order it again
                continue
            wanted = view(p)
            repeat = free[p]
            for m, s in pattern.supply.items():
                repeat = min(repeat, int(wanted[m] / s + DEMAND_TOLERANCE_RATIO))
            repeat = max(repeat, 1)
            for _ in range(repeat):
                pool = self.pools[p]
                gpu = _Gpu(p, {}, pool.memory_bytes, 1.0, None, {})
                self._apply(gpu, pattern)
                self.gpus.append(gpu)
            free[p] -= repeat
            for m, s in pattern.supply.items():
                remaining[m] = max(remaining[m] - repeat * s, 0.0)
                if quotas is not None and p in quotas and m in quotas[p]:
                    quotas[p][m] = max(quotas[p][m] - repeat * s, 0.0)
            version += 1
            if free[p] > 0:
                evaluate(p)

    # -- improvement --------------------------------------------------------------------------

    def _rounds(self) -> int:
        """Ruin-and-recreate rounds this placement affords; 0 outside thorough mode."""
        if not self.thorough:
            return 0
        return _rounds_for(len(self.gpus), len(self.demand), len(self.options))

    def construct(self) -> None:
        """Greedy construction; on small fleets once per quota setting, keeping the best.

        The quota split counts GPUs as if they could be filled as its rate table says, but
        fragmentation makes a scarce pool hold less. So the split is recalibrated with the fill
        each pool really reached (served GPU equivalents per used GPU), for both rate tables;
        fixed tighter settings and no quotas at all are tried too.
        """
        pools = len(self.pools)
        settings: list[tuple[_QuotaSetting, int]] = [
            (([1.0] * pools, self.eff), QUOTA_CALIBRATION_PASSES),
            (([1.0] * pools, self.eff_alone), QUOTA_CALIBRATION_PASSES),
        ]
        settings += [
            ((None if r is None else [r] * pools, self.eff), 0) for r in QUOTA_CAPACITY_RATIOS[1:]
        ]
        best: tuple[_Cost, list[_Gpu], _QuotaSetting] | None = None
        # A construction costs about one ruin-and-recreate round; mid-size problems get fewer.
        budget = max(1, self.units // CONSTRUCTION_COST_ROUNDS) if self.thorough else 1
        while settings and budget > 0:
            budget -= 1
            (ratios, rates), calibrations = settings.pop(0)
            self.gpus = []
            self.quota_capacity_ratio, self.quota_rates = ratios, rates
            self.recreate()
            self.trim()
            self.consolidate()
            self.trim()
            cost = self.cost()
            if best is None or cost < best[0]:
                best = (cost, self.gpus, (ratios, rates))
            if ratios is not None and calibrations > 0:
                settings.insert(0, ((self._calibrated(ratios), rates), calibrations - 1))
        assert best is not None
        _, self.gpus, (self.quota_capacity_ratio, self.quota_rates) = best

    def _calibrated(self, ratios: list[float]) -> list[float]:
        """Per pool: served GPU equivalents (by the quota rate table) per used GPU."""
        served = [0.0] * len(self.pools)
        used = [0] * len(self.pools)
        for gpu in self.gpus:
            used[gpu.pool] += 1
            for o, n in gpu.counts.items():
                m = self.model_of[o]
                served[gpu.pool] += n * self.tokens_of[o] / self.quota_rates[gpu.pool][m]
        return [
            min(MAX_QUOTA_CAPACITY_RATIO, served[p] / used[p]) if used[p] else ratios[p]
            for p in range(len(ratios))
        ]

    def improve(self) -> None:
        """Ruin and recreate on small fleets (see the module notes).

        The walk accepts any state with no more unmet demand and GPUs than the current one, so
        it can drift across placements of equal GPU count (with seeded noise in the greedy)
        until one lets a GPU go; the best state by (unmet, GPUs, power) is kept.
        """
        rounds = self._rounds()
        if rounds < MIN_IMPROVEMENT_ROUNDS or len(self.gpus) <= 1:
            return
        self.rng = random.Random(_IMPROVEMENT_SEED)
        models = sorted(self.demand)
        best_gpus = current = [g.copy() for g in self.gpus]
        best_cost = current_cost = self.cost()
        pools = len(self.pools)
        quota_settings = [self.quota_capacity_ratio]
        quota_settings += [None if r is None else [r] * pools for r in QUOTA_CAPACITY_RATIOS]
        for round_index in range(rounds):
            self.gpus = [g.copy() for g in current]
            self.noise = IMPROVEMENT_NOISE_RATIO if round_index % 2 else 0.0
            # Mostly the construction's quota split; now and then another one.
            self.quota_capacity_ratio = (
                quota_settings[0] if round_index % 3 else self.rng.choice(quota_settings)
            )
            first = self._unmet_models()
            misplaced = self._misplaced_models()
            if first and round_index % 2 == 0:
                self._make_room(first)
            elif misplaced and round_index % 4 == 1:
                first = misplaced
                self._promote(misplaced)
            else:
                self._ruin(round_index, models)
            self.recreate(first=first)
            self.trim()
            self.consolidate()
            self.trim()
            cost = self.cost()
            if cost < best_cost:
                best_cost, best_gpus = cost, [g.copy() for g in self.gpus]
            if cost[:3] <= current_cost[:3]:
                current_cost, current = cost, [g.copy() for g in self.gpus]
        self.noise = 0.0
        self.quota_capacity_ratio = quota_settings[0]
        self.gpus = best_gpus
        self._merge_pairs()

    def _merge_pairs(self) -> None:
        """Clear each pair among the least-filled GPUs and recreate: keep strict improvements.

        Catches the last GPU the random walk misses when two GPUs' content fits one GPU only
        with other options (e.g. one bigger replica instead of two small ones plus a tail).
        """
        improved = True
        while improved:
            improved = False
            order = sorted(range(len(self.gpus)), key=lambda i: self._fill_ratio(self.gpus[i]))
            candidates = order[: min(MERGE_CANDIDATES, self.units // MERGE_COST_ROUNDS)]
            for a, b in itertools.combinations(candidates, 2):
                cost = self.cost()
                before = [g.copy() for g in self.gpus]
                self.gpus = [g for i, g in enumerate(self.gpus) if i not in (a, b)]
                self.recreate()
                self.trim()
                if self.cost() < cost:
                    improved = True
                    break
                self.gpus = before

    # -- target search ------------------------------------------------------------------------

    def squeeze(self) -> None:
        """Target search (see the module notes): keeps any placement that beats the current one.

        With demand unmet, the first target is the whole fleet.
        """
        if not self.thorough or not self._can_improve():
            return
        if not self.table_built:
            self.table, self.table_built = self._pattern_table(), True
        table = self.table
        if table is None:
            return
        best_cost = self.cost()
        while self._can_improve():
            for target in self._targets():
                found = self._cover(table, target)
                if found is None:
                    continue
                before = self.gpus
                self.gpus = found
                self.trim()
                self.consolidate()
                self.trim()
                cost = self.cost()
                if cost < best_cost:
                    best_cost = cost
                    break
                self.gpus = before
            else:
                return

    def _can_improve(self) -> bool:
        return len(self.gpus) > self.lower_bound or bool(self._unmet_models())

    def _targets(self) -> list[tuple[int, ...]]:
        """GPU counts per pool to try next: the whole fleet while demand is unmet, else one GPU
        fewer than now in one pool. Counts that failed once are left out: the search is seeded
        and would fail the same way."""
        if self._unmet_models():
            targets = [tuple(pool.count for pool in self.pools)]
        else:
            mix = [0] * len(self.pools)
            for gpu in self.gpus:
                mix[gpu.pool] += 1
            targets = [
                tuple(n - (q == p) for q, n in enumerate(mix)) for p in self._drop_order(mix)
            ]
        return [t for t in targets if t not in self.failed_targets]

    def _drop_order(self, mix: Sequence[int]) -> list[int]:
        """Pools to take a GPU from, those whose GPUs serve least (GPU equivalents) first."""
        served = [0.0] * len(self.pools)
        for gpu in self.gpus:
            served[gpu.pool] += self._served_ratio(gpu)
        return sorted(
            (p for p, n in enumerate(mix) if n > 0), key=lambda p: (served[p] / mix[p], p)
        )

    def _pattern_table(self) -> _PatternTable | None:
        """Every pool's patterns; None when they are too many for the search's work budget
        with the GPUs used now."""
        models = tuple(sorted(self.demand))
        steps = TARGET_SEARCH_STEPS + len(self.gpus)
        limit = TARGET_SEARCH_WORK_BUDGET // (
            max(len(self.gpus), 1) * len(models) * steps * TARGET_SEARCH_ATTEMPTS
        )
        column = {m: i for i, m in enumerate(models)}
        counts: list[tuple[tuple[int, int], ...]] = []
        layouts: list[tuple[str, ...] | None] = []
        pool_of: list[int] = []
        rows: list[list[float]] = []
        for p, pool in enumerate(self.pools):
            if pool.count == 0 or not self.order[p]:
                continue
            found = _PatternEnumerator(self, p, limit - len(counts)).run()
            if found is None:
                return None
            for content, layout in found.items():
                row = [0.0] * len(models)
                for o, n in content:
                    row[column[self.model_of[o]]] += n * self.tokens_of[o]
                counts.append(content)
                layouts.append(layout)
                pool_of.append(p)
                rows.append(row)
        if not rows:
            return None
        return _PatternTable(
            models,
            tuple(counts),
            tuple(layouts),
            np.array(pool_of, dtype=np.int64),
            np.array(rows, dtype=np.float64),
        )

    def _cover(self, table: _PatternTable, target: tuple[int, ...]) -> list[_Gpu] | None:
        """GPUs, `target[p]` per pool, whose patterns serve every demand; None when no attempt
        finds them (or the attempts would exceed the work budget)."""
        count = sum(target)
        steps = TARGET_SEARCH_STEPS + count
        work = count * len(table.counts) * len(table.models) * steps * TARGET_SEARCH_ATTEMPTS
        if work > TARGET_SEARCH_WORK_BUDGET:
            return None
        for _ in range(TARGET_SEARCH_ATTEMPTS):
            found = self._tabu(table, target, steps)
            if found is not None:
                return found
        self.failed_targets.add(target)
        return None

    def _tabu(self, table: _PatternTable, target: tuple[int, ...], steps: int) -> list[_Gpu] | None:
        """One attempt from empty GPUs. A step gives one GPU the pattern (of its pool, or of a
        pool with free GPUs) that most lowers the weighted unmet demand, near-ties broken at
        random; that GPU is then tabu for a few steps. Weights start at 1 / (best tokens/s per
        GPU), i.e. unmet demand in GPU equivalents."""
        count = sum(target)
        rng = self.search_rng
        gpu_pool = np.array([p for p, n in enumerate(target) for _ in range(n)], dtype=np.int64)
        demand = np.array([self.demand[m] for m in table.models])
        tol = demand * DEMAND_TOLERANCE_RATIO
        base = np.array([1.0 / self.best[m] for m in table.models])
        weight = base.copy()
        free = np.array([pool.count for pool in self.pools]) - np.bincount(
            gpu_pool, minlength=len(self.pools)
        )
        content = np.zeros((count, len(table.models)))
        chosen = [-1] * count
        supply = np.zeros(len(table.models))
        tabu_until = np.zeros(count, dtype=np.int64)
        patterns = table.supply
        for step in range(steps):
            short = demand - supply
            if bool(np.all(short <= tol)):
                return self._gpus_of(table, gpu_pool, chosen)
            # Per GPU: the demand the others leave, the weighted part of it the GPU serves
            # now, and what each pattern would serve instead.
            left = np.maximum(short[None, :] + content, 0.0)
            now = np.minimum(content, left) @ weight
            then = np.minimum(patterns[None, :, :], left[:, None, :]) @ weight
            allowed = (table.pool_of[None, :] == gpu_pool[:, None]) | (free[table.pool_of] > 0)
            allowed &= (tabu_until <= step)[:, None]
            gain = np.where(allowed, then - now[:, None], -np.inf)
            top = float(gain.max())
            if top == -np.inf:
                continue
            ties = np.flatnonzero(gain >= top - 1e-9 * max(1.0, abs(top)))
            g, j = divmod(int(ties[rng.randrange(len(ties))]), len(table.counts))
            new_pool = int(table.pool_of[j])
            free[gpu_pool[g]] += 1
            free[new_pool] -= 1
            gpu_pool[g] = new_pool
            supply += patterns[j] - content[g]
            content[g] = patterns[j]
            chosen[g] = j
            tabu_until[g] = step + 1 + TARGET_SEARCH_TABU_TENURE + rng.randrange(3)
            if top <= 1e-12:
                weight += TARGET_SEARCH_WEIGHT_STEP * base * (demand - supply > tol)
        return None

    def _gpus_of(
        self, table: _PatternTable, gpu_pool: npt.NDArray[np.int64], chosen: Sequence[int]
    ) -> list[_Gpu]:
        gpus: list[_Gpu] = []
        for p, j in zip(gpu_pool.tolist(), chosen, strict=True):
            if j < 0:
                continue
            pool = self.pools[p]
            gpu = _Gpu(p, {}, pool.memory_bytes, 1.0, table.layouts[j], {})
            for o, n in table.counts[j]:
                self._add(gpu, o, n)
            gpus.append(gpu)
        return gpus

    def _unmet_models(self) -> set[str]:
        return {m for m, v in self.remaining().items() if v > self.tol[m]}

    def _make_room(self, unmet: set[str]) -> None:
        """Clear the GPUs, in pools an unmet model can use, that host only other models."""
        pools = {p for p, groups in enumerate(self.by_model) if unmet & groups.keys()}
        self.gpus = [
            g
            for g in self.gpus
            if g.pool not in pools or any(self.options[o].model in unmet for o in g.counts)
        ]

    def _misplaced_models(self) -> set[str]:
        """Models with replicas on a pool where they run far below their best efficiency."""
        return {
            self.options[o].model
            for g in self.gpus
            for o in g.counts
            if self.eff[g.pool][self.options[o].model]
            < MISPLACED_EFFICIENCY_RATIO * self.best[self.options[o].model]
        }

    def _promote(self, misplaced: set[str]) -> None:
        """Clear the GPUs holding misplaced replicas, and, in the pools those models run well
        on, the GPUs whose models all run well elsewhere too: the misplaced models get them."""
        good_pools = {
            p
            for p, rates in enumerate(self.eff)
            for m in misplaced
            if rates.get(m, 0.0) >= MISPLACED_EFFICIENCY_RATIO * self.best[m]
        }

        def flexible(model: str) -> bool:
            good = [rates.get(model, 0.0) for rates in self.eff]
            good = [r for r in good if r >= MISPLACED_EFFICIENCY_RATIO * self.best[model]]
            return len(good) >= 2 and model not in misplaced

        def cleared(g: _Gpu) -> bool:
            models = {self.options[o].model for o in g.counts}
            poor = any(
                self.eff[g.pool][m] < MISPLACED_EFFICIENCY_RATIO * self.best[m] for m in models
            )
            return (poor and bool(models & misplaced)) or (
                g.pool in good_pools and all(flexible(m) for m in models)
            )

        self.gpus = [g for g in self.gpus if not cleared(g)]

    def recreate(self, first: set[str] | None = None) -> None:
        """Serve the remaining demand: models in `first` get the free GPUs before the others,
        then everything goes through a quota-guided and an unrestricted pass."""
        remaining = self.remaining()
        if first:
            head = {m: (v if m in first else 0.0) for m, v in remaining.items()}
            self.fill_free_room(head)
            self.open_gpus(head)
            remaining = self.remaining()
        self.fill_free_room(remaining)
        self.open_gpus(remaining, self.pool_quotas(remaining))
        if any(v > self.tol[m] for m, v in remaining.items()):
            self.fill_free_room(remaining)
            self.open_gpus(remaining)

    def _ruin(self, round_index: int, models: Sequence[str]) -> None:
        """Clear GPUs, by turns: the k least filled, every GPU of one model, a random 2 to
        half of them, the k serving least (GPU equivalents), or every GPU of one pool."""
        kind = round_index % 5
        step = round_index // 5
        count = len(self.gpus)
        if kind == 0:
            k = 1 + step % 3
            victims = sorted(range(count), key=lambda i: self._fill_ratio(self.gpus[i]))[:k]
        elif kind == 1:
            model = models[step % len(models)]
            victims = [
                i
                for i, g in enumerate(self.gpus)
                if any(self.options[o].model == model for o in g.counts)
            ]
        elif kind == 2:
            size = self.rng.randint(min(2, count), max(2, count // 2))
            victims = self.rng.sample(range(count), min(size, count))
        elif kind == 3:
            k = 2 + step % 3
            victims = sorted(range(count), key=lambda i: self._served_ratio(self.gpus[i]))[:k]
        else:
            pool = step % len(self.pools)
            victims = [i for i, g in enumerate(self.gpus) if g.pool == pool]
        drop = set(victims)
        self.gpus = [g for i, g in enumerate(self.gpus) if i not in drop]

    def _served_ratio(self, gpu: _Gpu) -> float:
        """GPU equivalents served: tokens/s over each model's best tokens/s per GPU."""
        return sum(
            n * self.tokens_of[o] / self.best[self.model_of[o]] for o, n in gpu.counts.items()
        )

    def trim(self) -> None:
        """Drop replicas the demand does not need: least-filled GPUs, hungriest options first."""
        supply = self.supply()
        for gpu in sorted(self.gpus, key=self._fill_ratio):
            for o in sorted(gpu.counts, key=lambda o: -self.options[o].watts):
                m, tokens = self.model_of[o], self.tokens_of[o]
                demand = self.demand[m]
                drop = min(gpu.counts[o], int((supply[m] - demand + self.tol[m]) / tokens))
                # Recheck on the sum itself: supply - tokens can round to supply when the
                # demand is tiny next to one replica.
                while drop > 0 and not _served(supply[m] - drop * tokens, demand):
                    drop -= 1
                if drop > 0:
                    self._add(gpu, o, -drop)
                    supply[m] -= drop * tokens
        self.gpus = [g for g in self.gpus if g.counts]

    def consolidate(self) -> None:
        supply = self.supply()
        # Least-filled first; among equally filled GPUs, emptying the one with the higher idle
        # draw saves more power.
        candidates = sorted(
            self.gpus, key=lambda g: (self._fill_ratio(g), -self.pools[g.pool].idle_watts)
        )
        failures = 0
        for gpu in candidates:
            if failures >= MAX_CONSOLIDATION_FAILURES:
                break
            if self._try_empty(gpu, supply):
                self.gpus = [g for g in self.gpus if g is not gpu]
                failures = 0
            else:
                failures += 1

    def _try_empty(self, victim: _Gpu, supply: dict[str, float]) -> bool:
        lost: dict[str, float] = {}
        for o, n in victim.counts.items():
            opt = self.options[o]
            lost[opt.model] = lost.get(opt.model, 0.0) + n * opt.tokens_per_s
        need = {m: self.demand[m] - (supply[m] - v) for m, v in lost.items()}
        # Undo log: (gpu, option, replicas added, layout before).
        log: list[tuple[_Gpu, int, int, tuple[str, ...] | None]] = []
        for m in sorted(need, key=lambda m: -need[m] / self.best[m]):
            if need[m] <= self.tol[m]:
                continue
            need[m] = self._place_elsewhere(m, need[m], victim, log)
            if need[m] > self.tol[m]:
                for gpu, o, n, layout in reversed(log):
                    self._add(gpu, o, -n)
                    gpu.layout = layout
                return False
        for m, v in lost.items():
            supply[m] -= v
        for _, o, n, _ in log:
            supply[self.options[o].model] += n * self.options[o].tokens_per_s
        victim.counts.clear()
        return True

    def _room(self, gpu: _Gpu, o: int) -> tuple[int, tuple[str, ...] | None]:
        """Replicas of option o that still fit on `gpu`, and for a MIG GPU the layout to run
        (one that keeps every instance in use and offers the most free o-instances)."""
        opt = self.options[o]
        if gpu.layout is None:
            fit = _fit(gpu.mem_free_bytes, gpu.compute_free, opt.memory_bytes, opt.compute_share)
            return fit, None
        profile = opt.mig_profile or ""
        used = gpu.used_slots.get(profile, 0)
        best = (Counter(gpu.layout)[profile] - used, gpu.layout)
        if best[0] > 0:
            return best
        for i in self._compatible_layouts(gpu):
            free = self.layout_slots[gpu.pool][i][profile] - used
            if free > best[0]:
                best = (free, self.pools[gpu.pool].mig_layouts[i])
        return best

    def _place_elsewhere(
        self,
        model: str,
        need: float,
        victim: _Gpu,
        log: list[tuple[_Gpu, int, int, tuple[str, ...] | None]],
    ) -> float:
        """Add replicas of `model` to free room on GPUs other than `victim`; returns the demand
        still unmet. Most efficient option (tokens per GPU fraction) first: room is scarce."""
        ranked = sorted(
            (-self.options[o].tokens_per_s / self.ix.size_ratio[(o, p)], o, p)
            for p, groups in enumerate(self.by_model)
            for o in groups.get(model, ())
        )
        for _, o, p in ranked:
            opt = self.options[o]
            for gpu in self.gpus:
                if gpu.pool != p or gpu is victim:
                    continue
                room, layout = self._room(gpu, o)
                if room <= 0:
                    continue
                n = min(room, _replicas_for(need, opt.tokens_per_s))
                log.append((gpu, o, n, gpu.layout))
                gpu.layout = layout
                self._add(gpu, o, n)
                need -= n * opt.tokens_per_s
                if need <= self.tol[model]:
                    return need
        return need

    def assigned(self) -> list[AssignedGpu]:
        return [
            AssignedGpu(g.pool, tuple(sorted(g.counts.items())), g.layout)
            for g in self.gpus
            if g.counts
        ]


def _rounds_for(gpus: float, models: int, options: int) -> int:
    work = (max(gpus, 1.0) + models) * max(options, 1)
    return min(MAX_IMPROVEMENT_ROUNDS, int(IMPROVEMENT_WORK_BUDGET // work))


def _pattern_rank(pattern: _Pattern) -> tuple[float, bool, float]:
    """Most value first (rounded, so that near-ties go to the lower power); a pattern that
    serves something beats an empty one even when a tiny demand rounds its value to zero."""
    return (round(pattern.value, 9), bool(pattern.counts), -pattern.watts)


def _replicas_for(tokens_per_s: float, per_replica_tokens_per_s: float) -> int:
    """Replicas that serve `tokens_per_s` > 0: at least one, then ceil forgiving float noise."""
    if tokens_per_s <= 0:
        return 0
    return max(math.ceil(tokens_per_s / per_replica_tokens_per_s - DEMAND_TOLERANCE_RATIO), 1)


def pack_heuristic(problem: PackingProblem) -> PackingResult:
    """Place replicas fast (see the notes above the heuristic). Deterministic: the same
    problem gives the same placement; never claims optimality.

    Raises InvalidSpecError for a malformed problem or a demanded model that no pool can host.
    An undersized fleet is not an error: the result lists the unmet tokens/s per model.
    """
    ix = index_problem(problem)
    packer = _Packer(ix)
    packer.construct()
    packer.squeeze()
    packer.improve()
    packer.squeeze()
    packer.consolidate()
    packer.trim()
    return build_result(
        ix,
        packer.assigned(),
        solver="heuristic",
        optimal=False,
        gpus_lower_bound=packer.lower_bound,
    )


def pack_milp(
    problem: PackingProblem,
    time_limit_s: float = 60.0,
    heuristic: PackingResult | None = None,
) -> PackingResult:
    """Exact reference (scipy.optimize.milp / HiGHS); for small instances only.

    `heuristic`: `pack_heuristic(problem)` when the caller has it already; it bounds the model.
    Imported lazily: scipy costs a noticeable import time the operator should not pay.
    """
    from slmpack.planner.binpack_milp import solve_milp

    return solve_milp(problem, time_limit_s=time_limit_s, heuristic=heuristic)
