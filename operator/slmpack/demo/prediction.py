"""The planner's prediction for what a deployment actually runs, at the demo's load (pure).

`status.plan` carries the engine flags the operator chose. The demo prices exactly those
flags with `slmpack.planner.perf`: the saturated output tokens/s per GPU (the capacity that
sizes the load), and the batch, step and power of a GPU carrying the demo's load, which is
what the measurement sees. Power at saturation (what `status.plan.predicted` reports) would
understate a GPU at 80% load: its smaller batches keep it nearly as busy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog, kv_bytes_for_sequence
from slmpack.catalog.types import GPUSpec, ModelSpec, WeightDtype
from slmpack.errors import SlmpackError
from slmpack.planner.perf import (
    Device,
    LoadPoint,
    PackingShape,
    PerfParams,
    predict,
    predict_at_load,
)
from slmpack.planner.types import EngineSettings, SharingMode, Workload

#: vLLM's --dtype (and --quantization) back to the planner's weight formats (planner.flags).
_WEIGHT_DTYPES: dict[tuple[str, str | None], WeightDtype] = {
    ("bfloat16", None): "bf16",
    ("float16", None): "fp16",
    ("float32", None): "fp32",
    ("bfloat16", "fp8"): "fp8",
}


@dataclass(frozen=True)
class DeployedPacking:
    """One GPU of a deployment as the planner sees it, rebuilt from `status.plan`."""

    model: ModelSpec
    gpu: GPUSpec
    shape: PackingShape
    engine: EngineSettings
    workload: Workload
    kv_capacity_tokens: float  # per engine, in requests of the workload's mean length

    def capacity_tokens_per_s(self, params: PerfParams) -> float:
        """Saturated output tokens/s of one GPU."""
        point = predict(
            self.model,
            self.gpu,
            self.shape,
            self.engine,
            self.workload,
            self.kv_capacity_tokens,
            params,
        )
        return point.output_tokens_per_s

    def at_load(self, output_tokens_per_s: float, params: PerfParams) -> LoadPoint:
        """One GPU carrying `output_tokens_per_s` (below its capacity)."""
        return predict_at_load(
            self.model,
            self.gpu,
            self.shape,
            self.engine,
            self.workload,
            self.kv_capacity_tokens,
            params,
            output_tokens_per_s,
        )


def _flag(args: Sequence[str], name: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _int_flag(args: Sequence[str], name: str) -> int:
    value = _flag(args, name)
    if value is None:
        raise SlmpackError(f"The plan's vLLM arguments lack {name}: {' '.join(args)}")
    return int(value)


def deployed_packing(plan: dict[str, Any], model_name: str, workload: Workload) -> DeployedPacking:
    """The packing `plan` (an SLMDeployment's `status.plan`) runs, for the planner."""
    args = [str(a) for a in plan.get("vllmArgs") or ()]
    dtype = (_flag(args, "--dtype") or "bfloat16", _flag(args, "--quantization"))
    weight_dtype = _WEIGHT_DTYPES.get(dtype)
    if weight_dtype is None:
        raise SlmpackError(f"The demo does not price weights of --dtype/--quantization {dtype}")
    engine = EngineSettings(
        max_num_seqs=_int_flag(args, "--max-num-seqs"),
        max_model_len=_int_flag(args, "--max-model-len"),
        max_num_batched_tokens=_int_flag(args, "--max-num-batched-tokens"),
        weight_dtype=weight_dtype,
        kv_dtype="fp8" if _flag(args, "--kv-cache-dtype") == "fp8" else "auto",
    )
    model = default_model_catalog().get(model_name)
    gpu = default_gpu_catalog().get(str(plan.get("product")))
    mode = SharingMode(str(plan.get("mode")))
    if mode is SharingMode.MIG:
        raise SlmpackError("The demo runs whole GPUs; a MIG plan is not priced here")
    engines = int(plan.get("replicasPerGPU") or 1)
    # Packed, time-sliced and MPS engines share the GPU; Exclusive holds it alone.
    shape = PackingShape(mode, engines, 1, Device.whole(gpu))
    kv_bytes = _int_flag(args, "--kv-cache-memory-bytes")
    per_request = kv_bytes_for_sequence(model, workload.tokens_per_request, engine.kv_dtype)
    kv_tokens = kv_bytes / per_request * workload.tokens_per_request
    return DeployedPacking(model, gpu, shape, engine, workload, kv_tokens)
