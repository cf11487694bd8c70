from slmpack.planner.pareto import dominates, latency_score, pareto_front, pick
from slmpack.planner.types import Objective, SharingMode, Slo

from .planner_fixtures import candidate


def test_dominated_point_leaves_the_front() -> None:
    strong = candidate(10_000, 400, 0.03)
    weak = candidate(9_000, 400, 0.04)  # worse on throughput and latency, equal on energy
    assert dominates(strong, weak, Slo())
    assert pareto_front([strong, weak], Slo()) == (strong,)


def test_trade_offs_stay_on_the_front_sorted_by_throughput() -> None:
    fast = candidate(14_000, 450, 0.045, replicas=2)  # 31.1 tok/J
    frugal = candidate(10_000, 300, 0.030)  # 33.3 tok/J, lower latency
    front = pareto_front([frugal, fast], Slo())
    assert front == (fast, frugal)


def test_latency_score_is_the_worst_slo_ratio() -> None:
    c = candidate(10_000, 400, itl_s=0.040)  # ttft 0.2
    assert latency_score(c, Slo(itl_p99_s=0.050, ttft_p99_s=0.100)) == 2.0
    assert latency_score(c, Slo(itl_p99_s=0.020)) == 2.0
    assert latency_score(c, Slo()) == 0.040


def test_pick_per_objective() -> None:
    fast = candidate(14_000, 450, replicas=2, mode=SharingMode.MPS)  # 31.1 tok/J
    frugal = candidate(10_000, 300)  # 33.3 tok/J
    middle = candidate(12_500, 390, replicas=2, mode=SharingMode.MPS)  # 32.1 tok/J
    pool = [fast, frugal, middle]
    assert pick(pool, Objective.THROUGHPUT) is fast
    assert pick(pool, Objective.ENERGY) is frugal
    # Balanced maximises (tps/best_tps) * (tpj/best_tpj): fast 0.933, frugal 0.714, middle 0.860.
    assert pick(pool, Objective.BALANCED) is fast


def test_pick_ignores_slo_violators_and_returns_none_when_all_miss() -> None:
    violator = candidate(20_000, 400, meets_slo=False)
    ok = candidate(10_000, 400)
    assert pick([violator, ok], Objective.THROUGHPUT) is ok
    assert pick([violator], Objective.THROUGHPUT) is None


def test_ties_prefer_fewer_replicas_then_smaller_batches() -> None:
    two = candidate(10_000, 400, replicas=2, seqs=64)
    one_big = candidate(10_000, 400, replicas=1, seqs=256)
    one_small = candidate(10_000, 400, replicas=1, seqs=128)
    assert pick([two, one_big, one_small], Objective.THROUGHPUT) is one_small
