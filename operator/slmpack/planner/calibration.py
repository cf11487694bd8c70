"""Compare the performance model with the published figures it is calibrated on.

`calibration_targets.yaml` holds the figures with their sources; `hack/calibrate.py` fits
`perf_params.yaml` to them, and a unit test bounds the error per figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog, kv_bytes_for_sequence
from slmpack.planner.memory import replica_memory
from slmpack.planner.perf import Device, PackingShape, PerfParams, predict
from slmpack.planner.types import EngineSettings, PerfPoint, SharingMode, Workload


@dataclass(frozen=True)
class TargetPoint:
    model: str
    mode: SharingMode
    replicas: int
    max_num_seqs: int
    tokens_per_s: float
    itl_s: float
    power_watts: float | None
    source: str


@dataclass(frozen=True)
class TargetRatio:
    model: str
    replicas: int
    max_num_seqs: int
    time_slicing_over_mps: float
    source: str


@dataclass(frozen=True)
class Targets:
    gpu: str
    max_model_len: int
    memory_utilisation_total: float
    workload: Workload
    points: tuple[TargetPoint, ...]
    ratios: tuple[TargetRatio, ...]


@cache
def load_targets() -> Targets:
    text = resources.files("slmpack.planner").joinpath("calibration_targets.yaml").read_text()
    doc: dict[str, Any] = yaml.safe_load(text)
    points = tuple(
        TargetPoint(
            model=p["model"],
            mode=SharingMode(p["mode"]),
            replicas=int(p["replicas"]),
            max_num_seqs=int(p["max_num_seqs"]),
            tokens_per_s=float(p["tokens_per_s"]),
            itl_s=float(p["itl_ms"]) / 1e3,
            power_watts=float(p["power_w"]) if "power_w" in p else None,
            source=str(p["source"]),
        )
        for p in doc["points"]
    )
    ratios = tuple(
        TargetRatio(
            model=r["model"],
            replicas=int(r["replicas"]),
            max_num_seqs=int(r["max_num_seqs"]),
            time_slicing_over_mps=float(r["time_slicing_over_mps"]),
            source=str(r["source"]),
        )
        for r in doc.get("ratios", [])
    )
    return Targets(
        gpu=str(doc["gpu"]),
        max_model_len=int(doc["max_model_len"]),
        memory_utilisation_total=float(doc["memory_utilisation_total"]),
        workload=Workload(**doc["workload"]),
        points=points,
        ratios=ratios,
    )


def predict_target(
    targets: Targets,
    model_name: str,
    mode: SharingMode,
    replicas: int,
    max_num_seqs: int,
    params: PerfParams,
) -> PerfPoint:
    """Predict one point of the reference setup (memory split as `0.9 / replicas` of the GPU)."""
    gpu = default_gpu_catalog().get(targets.gpu)
    model = default_model_catalog().get(model_name)
    engine = EngineSettings(
        max_num_seqs=max_num_seqs,
        max_model_len=targets.max_model_len,
        max_num_batched_tokens=max(2048, targets.max_model_len),
        weight_dtype="fp16",
    )
    memory = replica_memory(model, engine, targets.workload)
    share_bytes = int(gpu.memory_bytes * targets.memory_utilisation_total / replicas)
    kv_bytes = max(0, share_bytes - memory.non_kv_bytes)
    per_request = kv_bytes_for_sequence(model, targets.workload.tokens_per_request, "auto")
    kv_tokens = kv_bytes / per_request * targets.workload.tokens_per_request
    shape = PackingShape(mode, replicas, 1, Device.whole(gpu))
    return predict(model, gpu, shape, engine, targets.workload, kv_tokens, params)


@dataclass(frozen=True)
class PointError:
    target: TargetPoint
    predicted: PerfPoint

    @property
    def throughput_error_ratio(self) -> float:
        return self.predicted.total_tokens_per_s / self.target.tokens_per_s - 1.0

    @property
    def itl_error_ratio(self) -> float:
        return self.predicted.step_s / self.target.itl_s - 1.0

    @property
    def power_error_ratio(self) -> float | None:
        if self.target.power_watts is None:
            return None
        return self.predicted.power_watts / self.target.power_watts - 1.0


def point_errors(params: PerfParams, targets: Targets | None = None) -> tuple[PointError, ...]:
    targets = targets or load_targets()
    return tuple(
        PointError(p, predict_target(targets, p.model, p.mode, p.replicas, p.max_num_seqs, params))
        for p in targets.points
    )


def time_slicing_ratio(params: PerfParams, ratio: TargetRatio, targets: Targets) -> float:
    """Predicted time-slicing / MPS throughput for the packing of `ratio`."""
    ts = predict_target(
        targets,
        ratio.model,
        SharingMode.TIME_SLICING,
        ratio.replicas,
        ratio.max_num_seqs,
        params,
    )
    mps = predict_target(
        targets, ratio.model, SharingMode.MPS, ratio.replicas, ratio.max_num_seqs, params
    )
    return ts.total_tokens_per_s / mps.total_tokens_per_s
