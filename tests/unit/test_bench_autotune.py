"""Smoke test of bench/autotune.py: one tiny case end to end, and the world's pieces."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from slmpack.autotune.model import build_prior
from slmpack.autotune.policy import Observation, RunningConfig
from slmpack.autotune.signals import DeploymentRef
from slmpack.autotune.world import Deployment, Perturbation, histogram_quantile, snapshot_of
from slmpack.planner.types import Slo

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench() -> ModuleType:
    sys.path.insert(0, str(BENCH))  # the bench imports its sibling benchinfo
    try:
        spec = importlib.util.spec_from_file_location("bench_autotune", BENCH / "autotune.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


bench = _bench()
TINY = bench.Settings(minutes=24.0, max_num_seqs=(32, 64), max_replicas_per_gpu=2)
CASE = bench.Case("opt-1.3b", bench.L4, Perturbation(0.85, 1.2, 1.0, 1.1), 11, Slo(2.5, 0.2))


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    out: dict[str, Any] = bench.run_case(CASE, TINY)
    return out


def test_brute_force_is_at_least_as_good_as_every_fixed_strategy(result: dict[str, Any]) -> None:
    sweep = {s["packing"]: s for s in result["sweep"]}
    best = sweep[result["optimum"]]
    assert best["meets_slo"]
    assert best["score_ratio"] == 1.0
    for name in ("one_per_gpu_packing", "fixed_4_packing", "plan_recommendation"):
        assert sweep[result[name]]["score_ratio"] <= 1.0
    assert all(s["score_ratio"] <= 1.0 for s in result["sweep"])


def test_every_strategy_serves_the_trace(result: dict[str, Any]) -> None:
    names = [s["strategy"] for s in result["strategies"]]
    assert names == [
        "one-per-GPU", "fixed-4-per-GPU", "KEDA-waiting", "slmpack autotune",
        "brute-force optimum",
    ]  # fmt: skip
    for s in result["strategies"]:
        assert s["served_ratio"] > 0.9
        assert s["tokens_per_joule"] > 0


def test_autotune_never_explores_into_an_slo_violation(result: dict[str, Any]) -> None:
    assert result["autotune"]["exploration_slo_violations"] == 0


def test_a_slower_truth_serves_less() -> None:
    request = bench.request_for(CASE, TINY)
    prior = build_prior(request)
    packing = prior.points[0].packing
    served = []
    for speed in (1.0, 0.7):
        world = bench.world_for(bench.replace(CASE, perturbation=Perturbation(speed)), prior)
        rate = 2 * prior.points[0].output_capacity_tokens_per_s / world.mean_output_tokens
        deployment = Deployment(world, packing, packing.replicas_per_gpu, random.Random(1), 0.0)
        deployment.run(20.0, rate)
        served.append(deployment.run(40.0, rate).generated_tokens)
    assert served[1] / served[0] == pytest.approx(0.7, abs=0.08)


def test_a_window_becomes_an_observation_with_every_required_signal() -> None:
    request = bench.request_for(CASE, TINY)
    prior = build_prior(request)
    world = bench.world_for(CASE, prior)
    packing = prior.points[0].packing
    deployment = Deployment(world, packing, 2, random.Random(2), 0.0)
    stats = deployment.run(60.0, 5.0)
    snapshot = snapshot_of(stats, DeploymentRef("ns", "d"), random.Random(3))
    assert snapshot.missing_required == ()
    obs = Observation.from_snapshot(snapshot, RunningConfig(packing, 2, 2))
    assert obs.missing_required() == ()
    assert obs.generation_tokens_per_s == pytest.approx(stats.generated_tokens / 60, rel=0.2)
    assert obs.attributed_watts is not None
    assert obs.attributed_watts > 2 * world.gpu.idle_watts * 0.9


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    # 100 samples: 50 in (0, 1], 50 in (1, 2]; p99 is 98% of the way into the second bucket.
    assert histogram_quantile(0.99, (1.0, 2.0), (50, 50, 0)) == pytest.approx(1.98)
    assert histogram_quantile(0.99, (1.0, 2.0), (0, 0, 10)) == 2.0  # past the last bound
    assert histogram_quantile(0.99, (1.0, 2.0), (0, 0, 0)) is None


def _loaded(replicas: int) -> tuple[Deployment, float]:
    """A deployment of the first MPS packing, run hot for a minute; and its rate."""
    request = bench.request_for(CASE, TINY)
    prior = build_prior(request)
    world = bench.world_for(CASE, prior)
    point = next(p for p in prior.points if p.packing.replicas_per_gpu == 2)
    rate = 0.7 * replicas / 2 * point.output_capacity_tokens_per_s / world.mean_output_tokens
    deployment = Deployment(world, point.packing, replicas, random.Random(5), 0.0)
    deployment.run(60.0, rate)
    return deployment, rate


def test_a_scale_out_leaves_running_replicas_alone() -> None:
    deployment, rate = _loaded(4)
    before = [(g.sim, len(g.sim.outstanding())) for g in deployment.groups]
    assert before[0][1] > 0
    deployment.reconfigure(deployment.packing, 8, 60.0)
    kept = deployment.groups[0]
    assert kept.sim is before[0][0]  # same engine, same requests: nothing recomputes
    assert len(kept.sim.outstanding()) == before[0][1]
    assert [g.gpus for g in deployment.groups] == [2, 2]
    assert deployment.groups[1].sim.outstanding() == []  # the new GPUs start empty
    stats = deployment.run(120.0, 2 * rate)
    assert stats.gpus == 4
    assert stats.replicas == 8
    assert stats.waiting_mean < 1.0  # no queue of requests to recompute


def test_a_scale_in_drains_the_removed_replicas_for_one_window() -> None:
    deployment, rate = _loaded(8)
    deployment.reconfigure(deployment.packing, 4, 60.0)
    draining = [g for g in deployment.groups if g.draining]
    assert [g.gpus for g in draining] == [2]
    in_flight = len(draining[0].sim.outstanding())
    assert in_flight > 0
    stats = deployment.run(120.0, rate / 2)
    assert stats.gpus == 2  # draining GPUs are charged energy, not held
    assert all(not g.draining for g in deployment.groups)  # gone after the window
    assert draining[0].sim.outstanding() == []  # finished what they held
    assert stats.finished > 0
    alone, _ = _loaded(4)
    idle = alone.run(120.0, rate / 2)
    assert stats.energy_joules > idle.energy_joules  # the drain's work cost energy


def test_groups_of_one_fill_merge_at_the_next_change() -> None:
    deployment, rate = _loaded(4)
    deployment.reconfigure(deployment.packing, 6, 60.0)
    deployment.run(120.0, rate)
    assert [g.gpus for g in deployment.groups] == [2, 1]
    deployment.reconfigure(deployment.packing, 7, 120.0)
    assert sorted((g.replicas_per_gpu, g.gpus) for g in deployment.groups) == [(1, 1), (2, 3)]


def test_a_repack_drains_every_old_replica_and_starts_the_new_ones_empty() -> None:
    deployment, rate = _loaded(4)
    old = [g.sim for g in deployment.groups]
    held = sum(len(sim.outstanding()) for sim in old)
    assert held > 0
    request = bench.request_for(CASE, TINY)
    other = next(p.packing for p in build_prior(request).points if p.packing.replicas_per_gpu == 1)
    deployment.reconfigure(other, 4, 60.0)
    serving = [g for g in deployment.groups if not g.draining]
    assert [g.sim for g in deployment.groups if g.draining] == old
    assert all(g.sim.outstanding() == [] for g in serving)  # nothing moved over to recompute
    stats = deployment.run(120.0, rate)
    assert all(sim.outstanding() == [] for sim in old)
    assert stats.packing == other
    assert stats.gpus == 4
    assert stats.waiting_mean < 1.0
