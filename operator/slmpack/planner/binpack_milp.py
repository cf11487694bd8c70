"""Exact fleet packing as a MILP (scipy.optimize.milp, i.e. HiGHS): the reference the heuristic
is measured against. Only for small instances: the model has one variable per (option, GPU).

Formulation, per pool p and GPU k (GPUs of a pool are interchangeable):

* y[p,k] ∈ {0,1}: GPU used; y[p,k] ≥ y[p,k+1] breaks the symmetry between identical GPUs.
* x[p,k,o] ∈ ℕ: replicas of option o on that GPU.
* Whole GPU: Σ_o mem_o·x ≤ mem_p·y and Σ_o share_o·x ≤ y.
* MIG GPU: z[p,k,l] ∈ {0,1} picks layout l, Σ_l z = y; for every profile q,
  Σ_{o on q} x ≤ Σ_l count_l(q)·z.
* x ≤ alone_capacity·y for every option: implied, but it tightens the LP relaxation.
* Demand: Σ tokens_o·x ≥ demand_m for every model, in units of the model's largest replica,
  and Σ x ≥ 1 (HiGHS's feasibility tolerance would otherwise accept no replica for a tiny
  demand).

Objective: Σ y + ε·(idle power of used GPUs + Σ replica power), ε chosen so that the power term
of any minimal solution stays below 0.5: GPUs come strictly first, and an absolute MIP gap below
0.5 already proves the GPU count. When the fleet is too small, a second solve adds a slack per
model (its unmet demand) weighted above every GPU, so the result shows how much is unmet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from slmpack.planner.binpack import (
    COMPUTE_SHARE_TOLERANCE,
    DEMAND_TOLERANCE_RATIO,
    AssignedGpu,
    IndexedProblem,
    PackingProblem,
    PackingResult,
    build_result,
    index_problem,
    pack_heuristic,
)

#: HiGHS stops at this relative gap. Objectives are O(GPU count) and the GPU count is proven
#: once the absolute gap is below 0.5, so this only limits how exactly power is minimised.
MIP_RELATIVE_GAP = 1e-4
_OPTIMAL = 0  # scipy.optimize.milp status codes
_INFEASIBLE = 2


@dataclass
class _Columns:
    """Column bookkeeping while the model is built."""

    cost: list[float]
    upper: list[float]
    integer: list[int]

    def add(self, cost: float, upper: float, integer: bool = True) -> int:
        self.cost.append(cost)
        self.upper.append(upper)
        self.integer.append(1 if integer else 0)
        return len(self.cost) - 1


@dataclass
class _Rows:
    row: list[int]
    col: list[int]
    val: list[float]
    lower: list[float]
    upper: list[float]

    def add(self, terms: list[tuple[int, float]], lower: float, upper: float) -> None:
        r = len(self.lower)
        for c, v in terms:
            self.row.append(r)
            self.col.append(c)
            self.val.append(v)
        self.lower.append(lower)
        self.upper.append(upper)


@dataclass
class _Model:
    columns: _Columns
    rows: _Rows
    used: list[tuple[int, int]]  # (pool, y column) per GPU
    layouts: dict[int, list[int]]  # y column -> its z columns (MIG GPUs)
    replicas: dict[int, list[tuple[int, int]]]  # y column -> [(option, x column)]


def _options_of(ix: IndexedProblem, model: str) -> list[int]:
    return [o for o in range(len(ix.problem.options)) if ix.problem.options[o].model == model]


def _energy_weight(ix: IndexedProblem, gpu_limits: list[int]) -> float:
    """ε such that the power term of any solution without superfluous replicas is < 0.5.

    Without superfluous replicas a model m runs fewer than (demand + max tokens) / min tokens
    replicas (dropping its weakest one would leave demand unmet).
    """
    problem = ix.problem
    upper_watts = sum(
        pool.idle_watts * k for pool, k in zip(problem.pools, gpu_limits, strict=True)
    )
    for m, demand in ix.demand_tokens_per_s.items():
        opts = [o for o in problem.options if o.model == m]
        most = math.ceil(
            (demand + max(o.tokens_per_s for o in opts)) / min(o.tokens_per_s for o in opts)
        )
        upper_watts += most * max(o.watts for o in opts)
    return 0.5 / (upper_watts + 1.0)


def _build(ix: IndexedProblem, gpu_limits: list[int], with_slack: bool) -> _Model:
    problem = ix.problem
    eps = _energy_weight(ix, gpu_limits)
    columns = _Columns([], [], [])
    rows = _Rows([], [], [], [], [])
    used: list[tuple[int, int]] = []
    layouts: dict[int, list[int]] = {}
    replicas: dict[int, list[tuple[int, int]]] = {}
    supply_terms: dict[str, list[tuple[int, float]]] = {m: [] for m in ix.demand_tokens_per_s}
    total_gpus = sum(gpu_limits)
    for p, pool in enumerate(problem.pools):
        previous: int | None = None
        for _ in range(gpu_limits[p]):
            y = columns.add(1.0 + eps * pool.idle_watts, 1.0)
            used.append((p, y))
            if previous is not None:
                rows.add([(y, 1.0), (previous, -1.0)], -np.inf, 0.0)
            previous = y
            xs: list[tuple[int, int]] = []
            for o in ix.pool_options[p]:
                opt = problem.options[o]
                cap = ix.alone_capacity[(o, p)]
                x = columns.add(eps * opt.watts, float(cap))
                xs.append((o, x))
                rows.add([(x, 1.0), (y, -float(cap))], -np.inf, 0.0)
                supply_terms[opt.model].append((x, opt.tokens_per_s))
            replicas[y] = xs
            if pool.is_mig:
                zs = [columns.add(0.0, 1.0) for _ in pool.mig_layouts]
                layouts[y] = zs
                rows.add([(z, 1.0) for z in zs] + [(y, -1.0)], 0.0, 0.0)
                profiles = sorted({q for layout in pool.mig_layouts for q in layout})
                for q in profiles:
                    terms = [(x, 1.0) for o, x in xs if problem.options[o].mig_profile == q]
                    if not terms:
                        continue
                    terms += [
                        (z, -float(lay.count(q)))
                        for z, lay in zip(zs, pool.mig_layouts, strict=True)
                    ]
                    rows.add(terms, -np.inf, 0.0)
            elif xs:
                # Memory in units of the pool's memory keeps coefficients near 1 for HiGHS.
                mem = [(x, problem.options[o].memory_bytes / pool.memory_bytes) for o, x in xs]
                rows.add([*mem, (y, -1.0)], -np.inf, 0.0)
                share = [(x, problem.options[o].compute_share) for o, x in xs]
                rows.add([*share, (y, -(1.0 + COMPUTE_SHARE_TOLERANCE))], -np.inf, 0.0)
    for m, demand in ix.demand_tokens_per_s.items():
        # In units of the model's largest replica, so tiny and huge demands stay well scaled.
        tokens = [problem.options[o].tokens_per_s for o in _options_of(ix, m)]
        unit = max(tokens)
        need = demand / unit
        terms = [(x, t / unit) for x, t in supply_terms[m]]
        if with_slack:
            # Slack = unmet demand in units; the smallest replica's worth of it must cost more
            # than all GPUs together, so serving demand comes first.
            weight = (total_gpus + 1.0) * unit / min(tokens)
            terms.append((columns.add(weight, need, integer=False), 1.0))
        else:
            # Any positive demand needs a replica; HiGHS's feasibility tolerance would accept
            # none for a demand below it.
            rows.add([(x, 1.0) for x, _ in supply_terms[m]], 1.0, np.inf)
        rows.add(terms, need * (1.0 - DEMAND_TOLERANCE_RATIO), np.inf)
    return _Model(columns, rows, used, layouts, replicas)


def _decode(ix: IndexedProblem, model: _Model, values: np.ndarray) -> list[AssignedGpu]:
    problem = ix.problem
    gpus: list[AssignedGpu] = []
    for p, y in model.used:
        counts = tuple(
            (o, round(float(values[x])))
            for o, x in model.replicas[y]
            if round(float(values[x])) > 0
        )
        if not counts:
            continue
        layout = None
        if y in model.layouts:
            zs = model.layouts[y]
            pick = max(range(len(zs)), key=lambda i: float(values[zs[i]]))
            layout = problem.pools[p].mig_layouts[pick]
        gpus.append(AssignedGpu(p, counts, layout))
    return gpus


def _run(model: _Model, time_limit_s: float) -> Any:
    n_rows = len(model.rows.lower)
    n_cols = len(model.columns.cost)
    matrix = coo_array(
        (model.rows.val, (model.rows.row, model.rows.col)), shape=(n_rows, n_cols)
    ).tocsr()
    return milp(
        c=np.asarray(model.columns.cost),
        integrality=np.asarray(model.columns.integer),
        bounds=Bounds(np.zeros(n_cols), np.asarray(model.columns.upper)),
        constraints=LinearConstraint(
            matrix, np.asarray(model.rows.lower), np.asarray(model.rows.upper)
        ),
        options={"time_limit": time_limit_s, "mip_rel_gap": MIP_RELATIVE_GAP, "presolve": True},
    )


def solve_milp(
    problem: PackingProblem,
    time_limit_s: float = 60.0,
    heuristic: PackingResult | None = None,
) -> PackingResult:
    """Minimise GPUs, then power, exactly (within `time_limit_s` per HiGHS solve).

    The heuristic runs first (unless its result for this problem is passed in): its GPU count
    bounds how many GPUs of each pool the model needs (an optimum never uses more GPUs in one
    pool than a known solution uses in all), which keeps the model small. `optimal` is True only
    when HiGHS proved optimality; on a time limit the best solution found is returned with
    `optimal=False` and `gpus_lower_bound` from the dual bound.
    """
    ix = index_problem(problem)
    if not ix.demand_tokens_per_s:
        return build_result(ix, [], "milp", True, gpus_lower_bound=0)
    bound = heuristic if heuristic is not None else pack_heuristic(problem)
    limits = [pool.count for pool in problem.pools]
    if bound.feasible:
        limits = [min(k, bound.gpus_used) for k in limits]
    with_slack = False
    model = _build(ix, limits, with_slack)
    res = _run(model, time_limit_s)
    status = int(res.status)
    if status == _INFEASIBLE:
        with_slack = True
        model = _build(ix, limits, with_slack)
        res = _run(model, time_limit_s)
        status = int(res.status)
    values = res.x
    if values is None:
        note = f"MILP found no solution within {time_limit_s:g} s; heuristic placement returned"
        return build_result(ix, _heuristic_gpus(bound, ix), "milp", False, note)
    dual = res.get("mip_dual_bound")
    lower = None
    if not with_slack and dual is not None and math.isfinite(float(dual)):
        # objective = GPUs + a power term in [0, 0.5) for minimal solutions.
        lower = max(0, math.ceil(float(dual) - 0.5 - 1e-7))
    note = (
        ""
        if status == _OPTIMAL
        else f"MILP stopped unproven (limit {time_limit_s:g} s): {res.message}"
    )
    result = build_result(
        ix, _decode(ix, model, np.asarray(values)), "milp", status == _OPTIMAL, note, lower
    )
    if status == _OPTIMAL and result.feasible:
        return replace(result, gpus_lower_bound=result.gpus_used)
    return result


def _heuristic_gpus(result: PackingResult, ix: IndexedProblem) -> list[AssignedGpu]:
    """Rebuild solver-neutral GPU contents from a result (to re-label it as the MILP's)."""
    pools = {pool.name: p for p, pool in enumerate(ix.problem.pools)}
    contents: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for pl in result.placements:
        contents.setdefault((pl.pool, pl.gpu_index), []).append((pl.option_index, pl.replicas))
    return [
        AssignedGpu(pools[key[0]], tuple(counts), result.mig_layouts.get(key))
        for key, counts in contents.items()
    ]
