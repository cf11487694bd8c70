"""Time `plan()` over 50 model x GPU pairs in one process (the CLI's work without start-up).

Wall-clock seconds are the headline; CPU seconds of this process are recorded beside them
because a busy machine inflates the former and barely the latter.
Writes bench/results/planning.json and .md. Never passes or fails.
Usage: .venv/bin/python bench/planning.py
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog
from slmpack.planner.plan import ALL_MODES, PlanRequest, plan
from slmpack.planner.types import SharingMode

MODELS = (
    "opt-125m", "opt-1.3b", "opt-2.7b", "llama-3.2-1b", "llama-3.2-3b",
    "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "smollm2-360m", "phi-3-mini",
)  # fmt: skip
GPUS = (
    "NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-40GB", "NVIDIA-L4", "NVIDIA-L40S", "NVIDIA-H200",
)  # fmt: skip
RESULTS = Path(__file__).parent / "results"


def run_once() -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, packings evaluated) of one pass over every pair."""
    gpus, models = default_gpu_catalog(), default_model_catalog()
    candidates = 0
    start, start_cpu = time.perf_counter(), time.process_time()
    for m in MODELS:
        for g in GPUS:
            gpu = gpus.get(g)
            modes = tuple(x for x in ALL_MODES if x is not SharingMode.MIG or gpu.mig_capable)
            candidates += len(plan(PlanRequest(models.get(m), gpu, modes=modes)).candidates)
    return time.perf_counter() - start, time.process_time() - start_cpu, candidates


def main() -> None:
    runs = [run_once() for _ in range(5)]
    seconds = [s for s, _, _ in runs]
    cpu_seconds = [c for _, c, _ in runs]
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    doc = {
        "schema_version": 1,
        "git_sha": sha,
        "hardware": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "parameters": {"models": list(MODELS), "gpus": list(GPUS), "runs": len(runs)},
        "results": {
            "pairs": len(MODELS) * len(GPUS),
            "candidates_evaluated": runs[0][2],
            "seconds_median": round(statistics.median(seconds), 3),
            "seconds_min": round(min(seconds), 3),
            "seconds_max": round(max(seconds), 3),
            "cpu_seconds_median": round(statistics.median(cpu_seconds), 3),
            "goal_seconds": 2.0,
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "planning.json").write_text(json.dumps(doc, indent=2) + "\n")
    r = doc["results"]
    (RESULTS / "planning.md").write_text(
        "# Planning speed\n\n"
        f"`plan()` on {r['pairs']} model x GPU pairs (Auto modes, {r['candidates_evaluated']} "
        f"packings evaluated), {len(runs)} runs in one process: median {r['seconds_median']} s "
        f"(min {r['seconds_min']}, max {r['seconds_max']}; CPU {r['cpu_seconds_median']} s); "
        f"goal < {r['goal_seconds']} s.\n"
    )
    print(json.dumps(doc["results"]))


if __name__ == "__main__":
    main()
