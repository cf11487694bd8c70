"""Fit the performance and power model to the published figures and write perf_params.yaml.

Usage: .venv/bin/python hack/calibrate.py [--write]

Throughput and ITL parameters are fitted together by least squares on log-ratios (so a 10% miss
weighs the same on a small and a large figure); the two power weights are then fitted linearly
on the points that report power. Without --write it only prints the fit.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares, nnls

from slmpack.planner.calibration import load_targets, point_errors, time_slicing_ratio
from slmpack.planner.perf import PerfParams, default_perf_params

PARAMS_FILE = Path(__file__).resolve().parents[1] / "operator/slmpack/planner/perf_params.yaml"
# (name, lower bound, upper bound) of the fitted throughput/latency parameters.
FITTED = (
    ("bandwidth_efficiency", 0.3, 0.95),
    ("attention_bandwidth_efficiency", 0.05, 0.95),
    ("concurrent_bandwidth_efficiency", 0.3, 0.98),
    ("gpu_step_overhead_s", 0.0, 0.005),
    ("cpu_step_base_s", 0.0, 0.01),
    ("cpu_per_seq_s", 0.0, 0.0005),
    ("cpu_per_prefill_token_s", 0.0, 0.0001),
    ("time_slice_overhead_ratio", 0.0, 1.0),
)


def with_vector(base: PerfParams, vector: np.ndarray) -> PerfParams:
    values = {name: float(v) for (name, _, _), v in zip(FITTED, vector, strict=True)}
    return replace(base, **values)


def residuals(vector: np.ndarray, base: PerfParams) -> np.ndarray:
    params = with_vector(base, vector)
    targets = load_targets()
    out: list[float] = []
    for err in point_errors(params, targets):
        out.append(math.log1p(err.throughput_error_ratio))
        out.append(math.log1p(err.itl_error_ratio))
    for ratio in targets.ratios:
        predicted = time_slicing_ratio(params, ratio, targets)
        out.append(math.log(predicted / ratio.time_slicing_over_mps))
    return np.array(out)


def fit_power(params: PerfParams) -> PerfParams:
    """Linear fit of the two power weights on the points that report power."""
    from slmpack.catalog.gpus import default_gpu_catalog

    targets = load_targets()
    gpu = default_gpu_catalog().get(targets.gpu)
    rows, rhs = [], []
    for err in point_errors(params, targets):
        if err.target.power_watts is None:
            continue
        span = gpu.tdp_watts - gpu.idle_watts
        rows.append([err.predicted.dram_active_ratio, err.predicted.gpu_busy_ratio])
        rhs.append((err.target.power_watts - gpu.idle_watts) / span)
    # Non-negative: activity never lowers power.
    solution, _ = nnls(np.array(rows), np.array(rhs))
    w_dram, w_busy = (float(x) for x in solution)
    return replace(params, power_dram_weight=w_dram, power_busy_weight=w_busy)


def report(params: PerfParams) -> str:
    lines = [
        "model        mode       n  seqs   tok/s pred (err)      ITL ms pred (err)   W pred (err)"
    ]
    for err in point_errors(params):
        t, p = err.target, err.predicted
        power = ""
        if err.power_error_ratio is not None:
            power = f"{t.power_watts:5.0f} {p.power_watts:5.0f} ({err.power_error_ratio:+.0%})"
        lines.append(
            f"{t.model:12s} {t.mode.value:9s} {t.replicas:2d} {t.max_num_seqs:5d} "
            f"{t.tokens_per_s:7.0f} {p.total_tokens_per_s:7.0f} "
            f"({err.throughput_error_ratio:+.0%})  "
            f"{t.itl_s * 1e3:6.1f} {p.step_s * 1e3:6.1f} ({err.itl_error_ratio:+.0%})  {power}"
        )
    return "\n".join(lines)


def write(params: PerfParams) -> None:
    body = "\n".join(
        f"  {name}: {getattr(params, name):.6g}" for name in PerfParams.__dataclass_fields__
    )
    PARAMS_FILE.write_text(
        "# Constants of the performance and power model (slmpack.planner.perf).\n"
        "# Fitted by hack/calibrate.py to calibration_targets.yaml (vLLM 0.5.2 on an H100 64 GB,\n"
        "# figures of arXiv 2503.08311 and its public results). compute_efficiency and\n"
        "# cpu_gpu_overlap_ratio are set, not fitted: the reference runs are memory-bound and its\n"
        "# vLLM ran a synchronous engine loop. Recalibrate with measurements from your GPUs.\n"
        "source: hack/calibrate.py against calibration_targets.yaml\n"
        "params:\n" + body + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="write perf_params.yaml")
    args = parser.parse_args()
    base = default_perf_params()
    start = np.array([getattr(base, name) for name, _, _ in FITTED])
    lower = np.array([lo for _, lo, _ in FITTED])
    upper = np.array([hi for _, _, hi in FITTED])
    result = least_squares(
        residuals, np.clip(start, lower, upper), bounds=(lower, upper), args=(base,)
    )
    fitted = fit_power(with_vector(base, result.x))
    print(report(fitted))
    print(f"rms log error {math.sqrt(float(np.mean(result.fun**2))):.3f}")
    for name in PerfParams.__dataclass_fields__:
        print(f"  {name}: {getattr(fitted, name):.6g}")
    if args.write:
        write(fitted)
        print(f"wrote {PARAMS_FILE}")


if __name__ == "__main__":
    main()
