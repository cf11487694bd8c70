"""Fleet packing: hand-computed cases and property tests for the invariants of a placement."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmpack.errors import InvalidSpecError
from slmpack.planner.binpack import (
    GpuPool,
    ModelDemand,
    PackingProblem,
    PackingResult,
    ReplicaOption,
    pack_heuristic,
    pack_milp,
)

GB = 10**9
A100_LAYOUTS = (
    ("7g.80gb",),
    ("3g.40gb", "3g.40gb"),
    ("3g.40gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb"),
    ("1g.10gb",) * 7,
)
Solver = Callable[[PackingProblem], PackingResult]
SOLVERS = [pytest.param(pack_heuristic, id="heuristic"), pytest.param(pack_milp, id="milp")]


def whole(name: str, count: int, memory_gb: int = 80, idle: float = 60.0) -> GpuPool:
    return GpuPool(name, f"{name}-product", count, memory_gb * GB, idle)


def opt(
    model: str,
    pool: str,
    memory_gb: float,
    share: float,
    tokens: float,
    watts: float = 100.0,
    profile: str | None = None,
) -> ReplicaOption:
    return ReplicaOption(
        model, f"{pool}-product", int(memory_gb * GB), share, tokens, watts, profile
    )


def problem(
    pools: list[GpuPool], options: list[ReplicaOption], demands: dict[str, float]
) -> PackingProblem:
    return PackingProblem(
        tuple(pools), tuple(options), tuple(ModelDemand(m, d) for m, d in demands.items())
    )


def check_placement(problem: PackingProblem, result: PackingResult) -> None:
    """Every invariant of a result, recomputed from the problem (independent of the solver)."""
    pools = {p.name: p for p in problem.pools}
    gpus: dict[tuple[str, int], list[tuple[ReplicaOption, int]]] = defaultdict(list)
    for pl in result.placements:
        option = problem.options[pl.option_index]
        assert pl.replicas > 0
        assert pl.model == option.model
        assert pl.mig_profile == option.mig_profile
        pool = pools[pl.pool]
        assert option.product == pool.product
        assert 0 <= pl.gpu_index < pool.count
        gpus[(pl.pool, pl.gpu_index)].append((option, pl.replicas))
    for (name, index), content in gpus.items():
        pool = pools[name]
        if pool.mig_layouts:
            layout = result.mig_layouts[(name, index)]
            assert layout in pool.mig_layouts
            used: Counter[str] = Counter()
            for o, n in content:
                assert o.mig_profile is not None
                used[o.mig_profile] += n
            free = Counter(layout)
            assert all(used[q] <= free[q] for q in used), (layout, used)
        else:
            assert (name, index) not in result.mig_layouts
            assert all(o.mig_profile is None for o, _ in content)
            assert sum(o.memory_bytes * n for o, n in content) <= pool.memory_bytes
            assert sum(o.compute_share * n for o, n in content) <= 1.0 + 1e-9
    assert result.gpus_used == len(gpus)
    assert result.gpus_used_by_pool == {
        p.name: sum(1 for key in gpus if key[0] == p.name) for p in problem.pools
    }
    energy = sum(pools[name].idle_watts for name, _ in gpus)
    energy += sum(o.watts * n for content in gpus.values() for o, n in content)
    assert result.energy_watts == pytest.approx(energy)
    supply: dict[str, float] = defaultdict(float)
    for content in gpus.values():
        for o, n in content:
            supply[o.model] += o.tokens_per_s * n
    for demand in problem.demands:
        served = supply[demand.model]
        if demand.model in result.unmet:
            assert result.unmet[demand.model] == pytest.approx(demand.tokens_per_s - served)
            assert result.unmet[demand.model] > 0
        else:
            assert served >= demand.tokens_per_s * (1 - 1e-9)
    assert result.feasible == (not result.unmet)


# -- hand-computed cases ----------------------------------------------------------------------


@pytest.mark.parametrize("solve", SOLVERS)
def test_three_30gb_replicas_need_two_80gb_gpus(solve: Solver) -> None:
    prob = problem([whole("h100", 4)], [opt("a", "h100", 30, 0.2, 100.0)], {"a": 300.0})
    result = solve(prob)
    check_placement(prob, result)
    assert result.gpus_used == 2
    assert sorted(p.replicas for p in result.placements) == [1, 2]
    assert result.energy_watts == pytest.approx(2 * 60.0 + 3 * 100.0)


@pytest.mark.parametrize("solve", SOLVERS)
def test_compute_share_binds_before_memory(solve: Solver) -> None:
    # 10 GB replicas would fit 8 per GPU by memory, but 0.4 compute each allows only 2.
    prob = problem([whole("h100", 5)], [opt("a", "h100", 10, 0.4, 50.0)], {"a": 250.0})
    result = solve(prob)
    check_placement(prob, result)
    assert result.gpus_used == 3


@pytest.mark.parametrize("solve", SOLVERS)
def test_two_models_share_gpus(solve: Solver) -> None:
    # Alone each model needs 2 GPUs (a: 50 GB, b: 0.6 compute); paired a+b fill a GPU exactly.
    options = [opt("a", "h100", 50, 0.4, 100.0), opt("b", "h100", 30, 0.6, 100.0)]
    prob = problem([whole("h100", 4)], options, {"a": 200.0, "b": 200.0})
    result = solve(prob)
    check_placement(prob, result)
    assert result.gpus_used == 2
    per_gpu = defaultdict(set)
    for p in result.placements:
        per_gpu[p.gpu_index].add(p.model)
    assert all(models == {"a", "b"} for models in per_gpu.values())


@pytest.mark.parametrize("solve", SOLVERS)
def test_bigger_option_saves_a_gpu(solve: Solver) -> None:
    # Two small replicas (0.6 compute each) need 2 GPUs; one big replica serves 180 alone.
    options = [opt("a", "h100", 20, 0.6, 100.0, 150.0), opt("a", "h100", 40, 0.9, 180.0, 250.0)]
    prob = problem([whole("h100", 4)], options, {"a": 180.0})
    result = solve(prob)
    check_placement(prob, result)
    assert result.gpus_used == 1
    assert [p.option_index for p in result.placements] == [1]


@pytest.mark.parametrize("solve", SOLVERS)
def test_mig_layout_matches_the_demanded_profiles(solve: Solver) -> None:
    mig = GpuPool("a100", "A100", 3, 80 * GB, 50.0, A100_LAYOUTS)
    options = [
        ReplicaOption("a", "A100", 30 * GB, 1.0, 100.0, 150.0, "3g.40gb"),
        ReplicaOption("b", "A100", 8 * GB, 1.0, 30.0, 50.0, "1g.10gb"),
    ]
    prob = PackingProblem(
        (mig,), tuple(options), (ModelDemand("a", 100.0), ModelDemand("b", 120.0))
    )
    result = solve(prob)
    check_placement(prob, result)
    assert result.gpus_used == 1
    assert result.mig_layouts == {
        ("a100", 0): ("3g.40gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb")
    }


@pytest.mark.parametrize("solve", SOLVERS)
def test_mig_instances_of_one_profile(solve: Solver) -> None:
    mig = GpuPool("a100", "A100", 4, 80 * GB, 50.0, A100_LAYOUTS)
    option = ReplicaOption("a", "A100", 30 * GB, 1.0, 100.0, 150.0, "3g.40gb")
    prob = PackingProblem((mig,), (option,), (ModelDemand("a", 400.0),))
    result = solve(prob)
    check_placement(prob, result)
    assert result.gpus_used == 2
    assert set(result.mig_layouts.values()) == {("3g.40gb", "3g.40gb")}


@pytest.mark.parametrize("solve", SOLVERS)
def test_whole_gpu_options_stay_off_mig_pools(solve: Solver) -> None:
    pools = (
        GpuPool("a100-mig", "A100", 4, 80 * GB, 10.0, A100_LAYOUTS),
        GpuPool("a100", "A100", 4, 80 * GB, 90.0),
    )
    option = ReplicaOption("a", "A100", 30 * GB, 0.5, 100.0, 150.0)
    prob = PackingProblem(pools, (option,), (ModelDemand("a", 300.0),))
    result = solve(prob)
    check_placement(prob, result)
    assert {p.pool for p in result.placements} == {"a100"}
    assert result.gpus_used == 2


@pytest.mark.parametrize("solve", SOLVERS)
def test_lower_idle_power_wins_a_tie(solve: Solver) -> None:
    pools = [whole("hot", 2, idle=120.0), whole("cool", 2, idle=20.0)]
    options = [opt("a", "hot", 30, 0.5, 100.0), opt("a", "cool", 30, 0.5, 100.0)]
    prob = problem(pools, options, {"a": 200.0})
    result = solve(prob)
    check_placement(prob, result)
    assert result.gpus_used_by_pool == {"hot": 0, "cool": 1}
    assert result.energy_watts == pytest.approx(20.0 + 2 * 100.0)


@pytest.mark.parametrize("solve", SOLVERS)
def test_surplus_replicas_are_not_placed(solve: Solver) -> None:
    # 150 tokens/s from 60-token replicas: 3 replicas, not 4 (the fourth only costs power).
    prob = problem([whole("h100", 2)], [opt("a", "h100", 10, 0.1, 60.0, 80.0)], {"a": 150.0})
    result = solve(prob)
    check_placement(prob, result)
    assert sum(p.replicas for p in result.placements) == 3


@pytest.mark.parametrize("solve", SOLVERS)
def test_undersized_fleet_reports_unmet_demand(solve: Solver) -> None:
    # One GPU holds 2 replicas (200 tokens/s) of the 500 demanded.
    prob = problem([whole("h100", 1)], [opt("a", "h100", 30, 0.5, 100.0)], {"a": 500.0})
    result = solve(prob)
    check_placement(prob, result)
    assert not result.feasible
    assert not result.optimal
    assert result.unmet == pytest.approx({"a": 300.0})
    assert "Demand exceeds the fleet" in result.message
    assert "a short by 300.0 tokens/s" in result.message


@pytest.mark.parametrize("solve", SOLVERS)
def test_zero_demand_places_nothing(solve: Solver) -> None:
    prob = problem([whole("h100", 2)], [opt("a", "h100", 30, 0.5, 100.0)], {"a": 0.0})
    result = solve(prob)
    assert result.placements == ()
    assert result.gpus_used == 0
    assert result.feasible


@pytest.mark.parametrize("solve", SOLVERS)
@pytest.mark.parametrize("tiny", [6e-8, 1e-300])
def test_a_tiny_demand_still_gets_a_replica(solve: Solver, tiny: float) -> None:
    # Tiny next to one replica: float noise must neither drop the replica nor the pattern.
    pools = (whole("h100", 1, idle=70.0), GpuPool("mig", "A100", 4, 80 * GB, 50.0, A100_LAYOUTS))
    options = (
        opt("a", "h100", 26, 0.978, 394.8, 287.1),
        opt("b", "h100", 26, 0.445, 375.3, 65.0),
        ReplicaOption("b", "A100", 5 * GB, 1.0, 322.4, 120.7, "7g.80gb"),
    )
    prob = PackingProblem(pools, options, (ModelDemand("a", 241.8), ModelDemand("b", tiny)))
    result = solve(prob)
    check_placement(prob, result)
    assert result.feasible
    assert result.gpus_used == 2


def test_target_search_finds_the_packing_the_greedy_misses() -> None:
    # Optimum: two GPUs of m2 (2 x 0.5 share) and two of m0 + 2 x m1 (0.4 + 0.3 + 0.3). The
    # greedy fills GPUs with the densest content first and ends on 5; searching for 4 GPUs from
    # scratch finds them. The compute bound is 4 too: 0.8 + 1.2 + 2.0 GPUs of compute share.
    options = [
        opt("m0", "h100", 20, 0.4, 400.0),
        opt("m1", "h100", 10, 0.3, 200.0),
        opt("m1", "h100", 20, 0.2, 100.0),
        opt("m2", "h100", 20, 0.5, 250.0),
        opt("m2", "h100", 30, 1.0, 300.0),
    ]
    prob = problem([whole("h100", 6)], options, {"m0": 800.0, "m1": 800.0, "m2": 1000.0})
    result = pack_heuristic(prob)
    check_placement(prob, result)
    assert result.feasible
    assert result.gpus_used == 4
    assert result.gpus_lower_bound == 4


def test_target_search_serves_a_tight_mig_fleet() -> None:
    # Three MIG GPUs serve everything only as 7g(m2) | 3g(m2) + 4 x 1g(m0) | 3g(m2) + 4 x 1g(m1);
    # the greedy left m1 short. With demand unmet, the search targets the whole fleet.
    layouts = (A100_LAYOUTS[0], A100_LAYOUTS[1], A100_LAYOUTS[2])
    pool = GpuPool("mig", "mig-product", 3, 80 * GB, 50.0, layouts)
    options = [
        opt("m0", "mig", 5, 1.0, 60.0, 10.0, "1g.10gb"),
        opt("m0", "mig", 5, 1.0, 350.0, 70.0, "7g.80gb"),
        opt("m1", "mig", 5, 1.0, 50.0, 10.0, "1g.10gb"),
        opt("m1", "mig", 5, 1.0, 190.0, 30.0, "3g.40gb"),
        opt("m1", "mig", 5, 1.0, 290.0, 70.0, "7g.80gb"),
        opt("m2", "mig", 5, 1.0, 135.0, 30.0, "3g.40gb"),
        opt("m2", "mig", 5, 1.0, 400.0, 70.0, "7g.80gb"),
    ]
    prob = problem([pool], options, {"m0": 200.0, "m1": 200.0, "m2": 600.0})
    result = pack_heuristic(prob)
    check_placement(prob, result)
    assert result.unmet == {}
    assert result.gpus_used == 3


def test_lower_bound_counts_memory_as_well_as_compute() -> None:
    # 3 replicas of 50 GB: compute needs 0.3 GPU, memory 1.9 GPUs (bound 2), packing needs 3.
    prob = problem([whole("h100", 4)], [opt("a", "h100", 50, 0.1, 100.0)], {"a": 300.0})
    result = pack_heuristic(prob)
    assert result.gpus_lower_bound == 2
    assert result.gpus_used == 3


def test_many_tiny_options_skip_the_target_search() -> None:
    # Hundreds of thousands of maximal GPU contents: enumeration gives up, the greedy's
    # placement stands.
    options = [opt(f"m{i}", "h100", 1 + i % 3, 0.02 + 0.005 * i, 20.0 + i) for i in range(8)]
    prob = problem([whole("h100", 40)], options, {f"m{i}": 400.0 for i in range(8)})
    result = pack_heuristic(prob)
    check_placement(prob, result)
    assert result.feasible


def test_milp_reuses_a_given_heuristic_placement() -> None:
    prob = problem([whole("h100", 4)], [opt("a", "h100", 30, 0.2, 100.0)], {"a": 300.0})
    bound = pack_heuristic(prob)
    assert pack_milp(prob, heuristic=bound) == pack_milp(prob)


def test_milp_reports_proven_optimum() -> None:
    prob = problem([whole("h100", 4)], [opt("a", "h100", 30, 0.2, 100.0)], {"a": 300.0})
    result = pack_milp(prob)
    assert result.optimal
    assert result.solver == "milp"
    assert result.gpus_lower_bound == 2


def test_milp_time_limit_is_not_claimed_optimal() -> None:
    # Awkward shares on a dozen GPUs: no proof fits in a millisecond; whatever HiGHS has by
    # then (or the heuristic's placement if nothing) comes back valid but not optimal.
    shares = [0.27, 0.33, 0.41, 0.46, 0.52, 0.61]
    options = [opt(f"m{i}", "h100", 10 + 5 * i, s, 100.0 + 7 * i) for i, s in enumerate(shares)]
    prob = problem([whole("h100", 12)], options, {f"m{i}": 290.0 + 11 * i for i in range(6)})
    result = pack_milp(prob, time_limit_s=0.001)
    check_placement(prob, result)
    assert result.feasible
    assert not result.optimal


def test_heuristic_is_deterministic() -> None:
    options = [opt("a", "h100", 50, 0.4, 100.0), opt("b", "h100", 30, 0.6, 90.0)]
    prob = problem([whole("h100", 8)], options, {"a": 730.0, "b": 410.0})
    assert pack_heuristic(prob) == pack_heuristic(prob)


def test_model_without_any_option_is_an_error() -> None:
    prob = problem(
        [whole("h100", 2), whole("l4", 2, memory_gb=24)],
        [opt("a", "h100", 30, 0.5, 100.0)],
        {"a": 100.0, "ghost": 50.0},
    )
    with pytest.raises(InvalidSpecError, match=r"'ghost'.*h100.*l4"):
        pack_heuristic(prob)


def test_option_bigger_than_every_gpu_is_an_error() -> None:
    prob = problem([whole("l4", 2, memory_gb=24)], [opt("a", "l4", 30, 0.5, 100.0)], {"a": 100.0})
    with pytest.raises(InvalidSpecError, match="'a'"):
        pack_milp(prob)


@pytest.mark.parametrize(
    ("pools", "options", "match"),
    [
        ([whole("h100", 1), whole("h100", 2)], [], "unique"),
        ([whole("h100", 1)], [opt("a", "h100", 30, 0.0, 100.0)], "compute_share"),
        ([whole("h100", 1)], [opt("a", "h100", 30, 0.5, 0.0)], "tokens_per_s"),
        ([whole("h100", -1)], [opt("a", "h100", 30, 0.5, 1.0)], "count"),
    ],
)
def test_malformed_problems_are_rejected(
    pools: list[GpuPool], options: list[ReplicaOption], match: str
) -> None:
    with pytest.raises(InvalidSpecError, match=match):
        pack_heuristic(problem(pools, options, {"a": 10.0}))


# -- property tests ---------------------------------------------------------------------------


@st.composite
def problems(draw: st.DrawFn, max_models: int = 3, max_count: int = 6) -> PackingProblem:
    pools = [
        GpuPool(
            "big",
            "G80",
            draw(st.integers(1, max_count)),
            80 * GB,
            draw(st.sampled_from([40.0, 70.0])),
        )
    ]
    if draw(st.booleans()):
        pools.append(GpuPool("small", "G24", draw(st.integers(1, max_count)), 24 * GB, 15.0))
    if draw(st.booleans()):
        layouts = draw(st.lists(st.sampled_from(A100_LAYOUTS), min_size=1, max_size=3, unique=True))
        pools.append(
            GpuPool("mig", "G80M", draw(st.integers(1, max_count)), 80 * GB, 50.0, tuple(layouts))
        )
    options: list[ReplicaOption] = []
    demands: list[ModelDemand] = []
    for i in range(draw(st.integers(1, max_models))):
        model = f"m{i}"
        for pool in pools:
            for _ in range(draw(st.integers(0, 2))):
                tokens = draw(st.floats(10.0, 400.0))
                watts = draw(st.floats(0.0, 300.0))
                if pool.mig_layouts:
                    offered = sorted({q for layout in pool.mig_layouts for q in layout})
                    profile = draw(st.sampled_from(offered))
                    options.append(
                        ReplicaOption(model, pool.product, 5 * GB, 1.0, tokens, watts, profile)
                    )
                else:
                    memory = draw(st.integers(2, min(40, pool.memory_bytes // GB))) * GB
                    share = draw(st.floats(0.1, 1.0))
                    options.append(ReplicaOption(model, pool.product, memory, share, tokens, watts))
        if not any(o.model == model for o in options):
            options.append(ReplicaOption(model, "G80", 20 * GB, 0.5, 100.0, 100.0))
        demands.append(ModelDemand(model, draw(st.floats(0.0, 900.0))))
    return PackingProblem(tuple(pools), tuple(options), tuple(demands))


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(problems())
def test_heuristic_placements_respect_every_capacity(prob: PackingProblem) -> None:
    result = pack_heuristic(prob)
    check_placement(prob, result)
    assert result.solver == "heuristic"
    assert not result.optimal


@settings(
    max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(problems(max_models=2, max_count=4))
def test_milp_is_never_worse_than_the_heuristic(prob: PackingProblem) -> None:
    heuristic = pack_heuristic(prob)
    exact = pack_milp(prob, time_limit_s=10.0)
    check_placement(prob, exact)
    if heuristic.feasible:
        assert exact.feasible
    if exact.optimal and heuristic.feasible:
        assert exact.gpus_used <= heuristic.gpus_used
        assert exact.gpus_lower_bound == exact.gpus_used
    if exact.feasible:
        # The heuristic's capacity bound holds for every placement, the optimum included.
        assert heuristic.gpus_lower_bound is not None
        assert heuristic.gpus_lower_bound <= exact.gpus_used


@settings(
    max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(problems(max_models=2, max_count=3))
def test_milp_beats_one_replica_per_gpu(prob: PackingProblem) -> None:
    # Pools as large as the trivial placement (each replica alone on a GPU, with the option
    # serving most tokens): then that placement is feasible and bounds the optimum.
    best_tokens = {
        d.model: max(o.tokens_per_s for o in prob.options if o.model == d.model)
        for d in prob.demands
    }
    trivial = sum(
        max(1, math.ceil(d.tokens_per_s / best_tokens[d.model] - 1e-9))
        for d in prob.demands
        if d.tokens_per_s > 0
    )
    pools = tuple(
        GpuPool(p.name, p.product, max(trivial, 1), p.memory_bytes, p.idle_watts, p.mig_layouts)
        for p in prob.pools
    )
    roomy = PackingProblem(pools, prob.options, prob.demands)
    result = pack_milp(roomy, time_limit_s=10.0)
    check_placement(roomy, result)
    assert result.feasible
    assert result.gpus_used <= trivial
