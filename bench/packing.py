"""Fleet-packing benchmark: heuristic quality against the exact MILP, and heuristic speed.

Writes bench/results/packing.json (schema_version, git SHA, hardware, parameters, results) and
bench/results/packing.md. It never passes or fails; goals are reported next to the numbers.

    .venv/bin/python bench/packing.py            # full run, a few minutes on 2 cores
    .venv/bin/python bench/packing.py --quick    # smoke run

1. Quality: seeded random small fleets (a whole-GPU H100 pool, an L4 pool and a MIG-partitioned
   A100 pool) with 3-6 models whose replica options have realistic sizes (2-40 GB, compute
   share 0.1-1.0). Heuristic GPU count / MILP optimum per instance: mean and worst.
2. Speed: the heuristic on 2,000 GPUs and about 10,000 replicas, median of several runs,
   against a naive baseline (first fit of individual replicas, each model on its best option)
   measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchinfo import git_sha, hardware
from slmpack.planner.binpack import (
    COMPUTE_SHARE_TOLERANCE,
    GpuPool,
    ModelDemand,
    PackingProblem,
    PackingResult,
    ReplicaOption,
    pack_heuristic,
    pack_milp,
)

SCHEMA_VERSION = 1
LARGE_SEED = 12345
RESULTS_DIR = Path(__file__).resolve().parent / "results"
GB = 10**9

# A100-80GB MIG layouts (NVIDIA MIG user guide, "A100 MIG profiles" table): a mix an operator
# might allow, from one big instance down to seven small ones.
A100_LAYOUTS: tuple[tuple[str, ...], ...] = (
    ("7g.80gb",),
    ("4g.40gb", "3g.40gb"),
    ("3g.40gb", "3g.40gb"),
    ("3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"),
    ("2g.20gb", "2g.20gb", "2g.20gb", "1g.10gb"),
    ("1g.10gb",) * 7,
)
MIG_PROFILE_BYTES = {
    "1g.10gb": 10 * GB,
    "2g.20gb": 20 * GB,
    "3g.40gb": 40 * GB,
    "4g.40gb": 40 * GB,
    "7g.80gb": 80 * GB,
}


@dataclass(frozen=True)
class Product:
    """Rough datasheet ratios; only their relations matter for packing."""

    name: str
    memory_bytes: int
    idle_watts: float
    busy_watts: float
    speed_ratio: float  # decode throughput relative to H100 (memory bandwidth ratio)


H100 = Product("NVIDIA-H100-80GB-HBM3", 80 * GB, 70.0, 700.0, 1.0)
L4 = Product("NVIDIA-L4", 24 * GB, 16.0, 72.0, 0.09)
A100 = Product("NVIDIA-A100-SXM4-80GB", 80 * GB, 50.0, 400.0, 0.6)


def model_options(
    rng: random.Random, name: str, weights_bytes: int, products: Sequence[Product]
) -> list[ReplicaOption]:
    """Two to three engine configurations per product (small/medium/large KV cache).

    Bigger KV caches allow bigger batches: more tokens/s within the SLO, more compute share.
    """
    options: list[ReplicaOption] = []
    base_tokens_per_s = 2.0e12 / max(weights_bytes, 1)  # decode is bandwidth-bound: ~1/size
    for product in products:
        for kv_level in rng.sample((1, 2, 4), k=rng.choice((2, 3))):
            kv_bytes = int(weights_bytes * 0.25 * kv_level) + 1 * GB
            memory_bytes = weights_bytes + kv_bytes
            if memory_bytes > product.memory_bytes or memory_bytes > 40 * GB:
                continue
            share = min(1.0, round(0.1 + 0.12 * kv_level + weights_bytes / (60 * GB), 3))
            tokens = base_tokens_per_s * product.speed_ratio * share**0.7 * rng.uniform(0.9, 1.1)
            watts = (product.busy_watts - product.idle_watts) * share
            options.append(
                ReplicaOption(name, product.name, memory_bytes, share, tokens, round(watts, 1))
            )
    return options


def mig_options(rng: random.Random, name: str, weights_bytes: int) -> list[ReplicaOption]:
    """One option per A100 MIG profile the replica fits, tokens/s ∝ compute slices."""
    options: list[ReplicaOption] = []
    base_tokens_per_s = 2.0e12 / max(weights_bytes, 1) * A100.speed_ratio
    for profile, profile_bytes in MIG_PROFILE_BYTES.items():
        memory_bytes = weights_bytes + 1 * GB
        if memory_bytes > profile_bytes:
            continue
        slices = int(profile.split("g.")[0])
        # A slice gets its own bandwidth share; small instances lose a bit to fixed overhead.
        tokens = base_tokens_per_s * (slices / 7) ** 0.9 * rng.uniform(0.9, 1.1)
        watts = (A100.busy_watts - A100.idle_watts) * slices / 7
        options.append(
            ReplicaOption(name, A100.name, memory_bytes, 1.0, tokens, round(watts, 1), profile)
        )
    return options


def small_instance(seed: int) -> PackingProblem:
    """A MILP-sized fleet: optimum typically 4-14 GPUs."""
    rng = random.Random(seed)
    pools = (
        GpuPool("h100", H100.name, rng.randint(6, 14), H100.memory_bytes, H100.idle_watts),
        GpuPool("l4", L4.name, rng.randint(4, 10), L4.memory_bytes, L4.idle_watts),
        GpuPool(
            "a100-mig",
            A100.name,
            rng.randint(3, 8),
            A100.memory_bytes,
            A100.idle_watts,
            A100_LAYOUTS,
        ),
    )
    options: list[ReplicaOption] = []
    demands: list[ModelDemand] = []
    for i in range(rng.randint(3, 6)):
        name = f"m{i}"
        weights_bytes = int(rng.uniform(1.0, 28.0) * GB)
        products = [p for p in (H100, L4) if rng.random() < 0.8] or [H100]
        opts = model_options(rng, name, weights_bytes, products)
        if rng.random() < 0.6:
            opts += mig_options(rng, name, weights_bytes)
        if not opts:
            continue
        options += opts
        best = max(o.tokens_per_s for o in opts)
        demands.append(ModelDemand(name, round(best * rng.uniform(0.5, 4.0), 1)))
    return PackingProblem(pools, tuple(options), tuple(demands))


def large_instance(seed: int, gpus: int = 2000, models: int = 100) -> PackingProblem:
    """`gpus` GPUs in four pools and `models` small models (1-8 GB of weights) with light
    options (compute share 0.08-0.5). Demand is 75 % of what the H100s and the MIG A100s
    serve at their best rates: about 10,000 replicas on about half of the 2,000 GPUs."""
    rng = random.Random(seed)
    h100_a, h100_b, l4 = (gpus * 3) // 10, gpus // 5, gpus // 4
    pools = (
        GpuPool("h100-a", H100.name, h100_a, H100.memory_bytes, H100.idle_watts),
        GpuPool("h100-b", H100.name, h100_b, H100.memory_bytes, H100.idle_watts),
        GpuPool("l4", L4.name, l4, L4.memory_bytes, L4.idle_watts),
        GpuPool(
            "a100-mig",
            A100.name,
            gpus - h100_a - h100_b - l4,
            A100.memory_bytes,
            50.0,
            A100_LAYOUTS,
        ),
    )
    options: list[ReplicaOption] = []
    draws: list[tuple[str, float, float]] = []  # model, best H100 tokens/s per GPU, weight
    for i in range(models):
        name = f"m{i}"
        weights_bytes = int(rng.uniform(1.0, 8.0) * GB)
        base_tokens_per_s = 2.0e12 / weights_bytes
        opts: list[ReplicaOption] = []
        for product, share_scale in ((H100, 1.0), (L4, 2.0)):
            for kv_gb, share in ((2, 0.08), (4, 0.15), (8, 0.25)):
                share = min(1.0, round(share * share_scale * (1 + weights_bytes / (16 * GB)), 3))
                memory_bytes = weights_bytes + kv_gb * GB
                if memory_bytes > product.memory_bytes:
                    continue
                tokens = base_tokens_per_s * product.speed_ratio * share**0.7
                watts = round((product.busy_watts - product.idle_watts) * share, 1)
                opts.append(ReplicaOption(name, product.name, memory_bytes, share, tokens, watts))
        opts += mig_options(rng, name, weights_bytes)
        options += opts
        best = max(
            o.tokens_per_s / max(o.memory_bytes / (80 * GB), o.compute_share)
            for o in opts
            if o.product == H100.name
        )
        draws.append((name, best, rng.uniform(0.5, 1.5)))
    # Demand in H100 equivalents: 75 % of the H100s plus the MIG A100s at their speed ratio.
    h100_equivalents = 0.75 * (h100_a + h100_b + A100.speed_ratio * (gpus - h100_a - h100_b - l4))
    total_weight = sum(w for _, _, w in draws)
    demands = [
        ModelDemand(name, round(best * h100_equivalents * w / total_weight, 1))
        for name, best, w in draws
    ]
    return PackingProblem(pools, tuple(options), tuple(demands))


def naive_first_fit(problem: PackingProblem) -> tuple[int, float]:
    """Baseline: each model on its best whole-GPU option (tokens per GPU fraction), replicas
    one by one in demand order, first fit over the open GPUs of that product, a new GPU when
    none fits and the product's pools have one left. MIG pools unused.

    Returns (GPUs used, unmet tokens/s).
    """
    pools = [p for p in problem.pools if not p.mig_layouts]
    memory = {p.product: p.memory_bytes for p in pools}
    left = {p.product: 0 for p in pools}
    for p in pools:
        left[p.product] += p.count
    best: dict[str, tuple[float, ReplicaOption]] = {}
    for opt in problem.options:
        if opt.mig_profile is not None or opt.memory_bytes > memory.get(opt.product, -1):
            continue
        size = max(opt.memory_bytes / memory[opt.product], opt.compute_share)
        rate = opt.tokens_per_s / size
        if opt.model not in best or rate > best[opt.model][0]:
            best[opt.model] = (rate, opt)
    gpus: list[list[Any]] = []  # [product, memory free, compute free]
    unmet = 0.0
    for demand in problem.demands:
        opt = best[demand.model][1]
        for _ in range(math.ceil(demand.tokens_per_s / opt.tokens_per_s)):
            for gpu in gpus:
                if (
                    gpu[0] == opt.product
                    and gpu[1] >= opt.memory_bytes
                    and gpu[2] + COMPUTE_SHARE_TOLERANCE >= opt.compute_share
                ):
                    gpu[1] -= opt.memory_bytes
                    gpu[2] -= opt.compute_share
                    break
            else:
                if left[opt.product] == 0:
                    unmet += opt.tokens_per_s
                    continue
                left[opt.product] -= 1
                gpus.append(
                    [opt.product, memory[opt.product] - opt.memory_bytes, 1.0 - opt.compute_share]
                )
    return len(gpus), unmet


def replicas(result: PackingResult) -> int:
    return sum(p.replicas for p in result.placements)


def quality_case(seed: int, time_limit_s: float) -> dict[str, Any]:
    problem = small_instance(seed)
    started = time.perf_counter()
    cpu_started = time.process_time()
    heuristic = pack_heuristic(problem)
    heuristic_s = time.perf_counter() - started
    # CPU time too: wall time swells when other work shares the cores.
    heuristic_cpu_s = time.process_time() - cpu_started
    started = time.perf_counter()
    # The MILP bounds its model with the heuristic's placement; reuse the one just timed.
    exact = pack_milp(problem, time_limit_s=time_limit_s, heuristic=heuristic)
    milp_s = time.perf_counter() - started
    return {
        "seed": seed,
        "models": len(problem.demands),
        "options": len(problem.options),
        "fleet_gpus": sum(p.count for p in problem.pools),
        "heuristic_gpus": heuristic.gpus_used,
        "heuristic_energy_watts": round(heuristic.energy_watts, 1),
        "heuristic_feasible": heuristic.feasible,
        "heuristic_s": round(heuristic_s, 4),
        "heuristic_cpu_s": round(heuristic_cpu_s, 4),
        "heuristic_gpus_lower_bound": heuristic.gpus_lower_bound,
        "milp_gpus": exact.gpus_used,
        "milp_energy_watts": round(exact.energy_watts, 1),
        "milp_feasible": exact.feasible,
        "milp_optimal": exact.optimal,
        "milp_gpus_lower_bound": exact.gpus_lower_bound,
        "milp_s": round(milp_s, 3),
    }


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--milp-time-limit-s", type=float, default=20.0)
    parser.add_argument("--timing-runs", type=int, default=7)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="20 instances, 3 timing runs")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.quick:
        args.instances, args.timing_runs = 20, 3

    started = time.perf_counter()
    seeds = list(range(args.instances))
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        cases = list(pool.map(quality_case, seeds, [args.milp_time_limit_s] * len(seeds)))
    quality_s = time.perf_counter() - started

    # Compared: instances the MILP solved to proven optimality with all demand served.
    solved = [c for c in cases if c["milp_optimal"]]
    comparable = [c for c in solved if c["heuristic_feasible"]]
    ratios = [c["heuristic_gpus"] / c["milp_gpus"] for c in comparable]
    energy_ratios = [
        c["heuristic_energy_watts"] / c["milp_energy_watts"]
        for c in comparable
        if c["heuristic_gpus"] == c["milp_gpus"]
    ]
    quality = {
        "instances": len(cases),
        "milp_optimal": len(solved),
        "milp_feasible": sum(c["milp_feasible"] for c in cases),
        "milp_time_limit_hit": sum(c["milp_feasible"] and not c["milp_optimal"] for c in cases),
        "heuristic_unmet_where_milp_feasible": sum(
            c["milp_feasible"] and not c["heuristic_feasible"] for c in cases
        ),
        "compared": len(comparable),
        "heuristic_matches_optimum": sum(r == 1.0 for r in ratios),
        "gpu_ratio_mean": round(statistics.fmean(ratios), 4) if ratios else None,
        "gpu_ratio_worst": round(max(ratios), 4) if ratios else None,
        "energy_ratio_mean_when_gpus_equal": (
            round(statistics.fmean(energy_ratios), 4) if energy_ratios else None
        ),
        "optimum_gpus_mean": (
            round(statistics.fmean(c["milp_gpus"] for c in comparable), 2) if comparable else None
        ),
        "heuristic_s_mean": round(statistics.fmean(c["heuristic_s"] for c in cases), 4),
        "heuristic_s_max": max(c["heuristic_s"] for c in cases),
        "heuristic_cpu_s_mean": round(statistics.fmean(c["heuristic_cpu_s"] for c in cases), 4),
        "heuristic_cpu_s_max": max(c["heuristic_cpu_s"] for c in cases),
        "heuristic_at_lower_bound": sum(
            c["heuristic_feasible"] and c["heuristic_gpus"] == c["heuristic_gpus_lower_bound"]
            for c in cases
        ),
        "milp_s_mean": round(statistics.fmean(c["milp_s"] for c in cases), 3),
        "wall_s": round(quality_s, 1),
        "goal_mean_ratio": 1.02,
        "goal_worst_ratio": 1.10,
        "cases": cases,
    }

    large = large_instance(seed=LARGE_SEED)
    heuristic_runs = [timed(pack_heuristic, large) for _ in range(args.timing_runs)]
    result: PackingResult = heuristic_runs[-1][1]
    heuristic_s = statistics.median(t for t, _ in heuristic_runs)
    baseline_runs = [timed(naive_first_fit, large) for _ in range(args.timing_runs)]
    baseline_s = statistics.median(t for t, _ in baseline_runs)
    baseline_gpus, baseline_unmet = baseline_runs[-1][1]
    # A tenth of the fleet: small enough for the heuristic's thorough mode (more seeds, two
    # fill strategies, ruin and recreate), which 2,000-GPU fleets skip.
    tenth = large_instance(seed=LARGE_SEED, gpus=200, models=10)
    tenth_runs = [timed(pack_heuristic, tenth) for _ in range(args.timing_runs)]
    tenth_baseline = [timed(naive_first_fit, tenth) for _ in range(args.timing_runs)]
    speed = {
        "fleet_gpus": sum(p.count for p in large.pools),
        "models": len(large.demands),
        "options": len(large.options),
        "replicas_placed": replicas(result),
        "gpus_used": result.gpus_used,
        "gpus_used_by_pool": result.gpus_used_by_pool,
        "unmet_tokens_per_s": round(sum(result.unmet.values()), 1),
        "heuristic_median_s": round(heuristic_s, 4),
        "heuristic_runs_s": [round(t, 4) for t, _ in heuristic_runs],
        "baseline": "first fit of single replicas, best whole-GPU option per model, no MIG",
        "baseline_median_s": round(baseline_s, 4),
        "baseline_gpus_used": baseline_gpus,
        "baseline_unmet_tokens_per_s": round(baseline_unmet, 1),
        "heuristic_to_baseline_time_ratio": round(heuristic_s / baseline_s, 2),
        "tenth_size": {
            "fleet_gpus": sum(p.count for p in tenth.pools),
            "models": len(tenth.demands),
            "replicas_placed": replicas(tenth_runs[-1][1]),
            "gpus_used": tenth_runs[-1][1].gpus_used,
            "heuristic_median_s": round(statistics.median(t for t, _ in tenth_runs), 4),
            "baseline_median_s": round(statistics.median(t for t, _ in tenth_baseline), 4),
            "baseline_gpus_used": tenth_baseline[-1][1][0],
            "baseline_unmet_tokens_per_s": round(tenth_baseline[-1][1][1], 1),
        },
        "goal_s": 1.0,
    }
    document = {
        "schema_version": SCHEMA_VERSION,
        "benchmark": "packing",
        "git_sha": git_sha(),
        "hardware": hardware(),
        "parameters": {
            "instances": args.instances,
            "milp_time_limit_s": args.milp_time_limit_s,
            "timing_runs": args.timing_runs,
            "workers": args.workers,
            "small_instance": "pools h100 x6-14, l4 x4-10, a100-mig x3-8 (6 layouts); 3-6 models",
            "large_instance": "pools h100-a x600, h100-b x400, l4 x500, a100-mig x500; "
            "100 models, demand at 75 % of the H100s + MIG A100s",
            "large_instance_seed": LARGE_SEED,
            "command": " ".join(["python", *sys.argv]),
        },
        "results": {"quality": quality, "speed": speed},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "packing.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / "packing.md").write_text(summary(document))
    print(summary(document))


def summary(doc: dict[str, Any]) -> str:
    q = doc["results"]["quality"]
    s = doc["results"]["speed"]
    t = s["tenth_size"]
    hw = doc["hardware"]

    def goal(value: float | None, limit: float) -> str:
        return "n/a" if value is None else ("met" if value <= limit else "not met")

    return "\n".join(
        [
            "# Fleet packing benchmark",
            "",
            f"git `{doc['git_sha']}`; {hw['cpu_count']} × {hw['cpu_model']}; "
            f"Python {hw['python']}. Produced by `{doc['parameters']['command']}` "
            f"in {doc['wall_s']} s. Full data: `packing.json`.",
            "",
            "## Heuristic GPUs against the MILP optimum",
            "",
            f"{q['instances']} seeded small fleets ({doc['parameters']['small_instance']}); "
            f"the MILP proved the optimum on {q['milp_optimal']}, hit the "
            f"{doc['parameters']['milp_time_limit_s']:g} s limit with a solution on "
            f"{q['milp_time_limit_hit']}, and found the fleet too small on "
            f"{q['instances'] - q['milp_feasible']}.",
            "",
            "| measure | value | goal |",
            "|---|---|---|",
            f"| GPUs / optimum, mean ({q['compared']} instances, optimum "
            f"{q['optimum_gpus_mean']} GPUs on average) | {q['gpu_ratio_mean']} | "
            f"≤ {q['goal_mean_ratio']} ({goal(q['gpu_ratio_mean'], q['goal_mean_ratio'])}) |",
            f"| GPUs / optimum, worst | {q['gpu_ratio_worst']} | ≤ {q['goal_worst_ratio']} "
            f"({goal(q['gpu_ratio_worst'], q['goal_worst_ratio'])}) |",
            f"| heuristic finds the optimum | {q['heuristic_matches_optimum']} of "
            f"{q['compared']} | |",
            f"| heuristic leaves demand unmet where the MILP serves it | "
            f"{q['heuristic_unmet_where_milp_feasible']} | 0 |",
            f"| power / MILP power where GPU counts are equal, mean | "
            f"{q['energy_ratio_mean_when_gpus_equal']} | |",
            f"| heuristic time per instance, mean / max: wall | {q['heuristic_s_mean']} s / "
            f"{q['heuristic_s_max']} s | |",
            f"| heuristic time per instance, mean / max: CPU | {q['heuristic_cpu_s_mean']} s / "
            f"{q['heuristic_cpu_s_max']} s | |",
            f"| heuristic GPU count equals its own lower bound (optimal count proven) | "
            f"{q['heuristic_at_lower_bound']} of {q['instances']} | |",
            "",
            "## Heuristic speed",
            "",
            f"{s['fleet_gpus']} GPUs in four pools, {s['models']} models ({s['options']} replica "
            f"options); median of {len(s['heuristic_runs_s'])} runs. Baseline: {s['baseline']}.",
            "",
            "| instance | heuristic | baseline | heuristic / baseline time |",
            "|---|---|---|---|",
            f"| {s['fleet_gpus']} GPUs | {s['heuristic_median_s']} s (goal < {s['goal_s']} s, "
            f"{goal(s['heuristic_median_s'], s['goal_s'])}); {s['replicas_placed']} replicas on "
            f"{s['gpus_used']} GPUs, unmet {s['unmet_tokens_per_s']} tokens/s | "
            f"{s['baseline_median_s']} s; {s['baseline_gpus_used']} GPUs, unmet "
            f"{s['baseline_unmet_tokens_per_s']} tokens/s | "
            f"{s['heuristic_to_baseline_time_ratio']} |",
            f"| {t['fleet_gpus']} GPUs (thorough mode) | {t['heuristic_median_s']} s; "
            f"{t['replicas_placed']} replicas on {t['gpus_used']} GPUs | "
            f"{t['baseline_median_s']} s; {t['baseline_gpus_used']} GPUs, unmet "
            f"{t['baseline_unmet_tokens_per_s']} tokens/s | "
            f"{round(t['heuristic_median_s'] / t['baseline_median_s'], 1)} |",
            "",
        ]
    )


if __name__ == "__main__":
    main()
