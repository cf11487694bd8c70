"""Pure decision of one SLMDeployment: which GPU offer, sharing mode and packing to run.

Inputs are the parsed spec, the cluster's GPU offers and the model's architecture; the output is
a `Decision` (what to render) or a `PlanFailedError` whose message says what the user can change.
Plans are memoised: a thousand SLMDeployments of the same model on the same offers plan once.

GPU memory is the catalogue's unless the node agent measured less on the offer's nodes: the
driver, ECC and the board reserve memory that datasheets count, and vLLM started with a KV
cache sized for memory that is not there fails at start.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from slmpack.api.v1alpha1 import SLMDeploymentSpec
from slmpack.catalog.gpus import GpuCatalog, normalize_product
from slmpack.catalog.types import GPUSpec, KvDtype, ModelSpec, WeightDtype
from slmpack.controller.inventory import GpuOffer
from slmpack.errors import CatalogError, DoesNotFitError, InvalidSpecError, SlmpackError
from slmpack.planner.flags import VllmLaunch
from slmpack.planner.plan import Plan, PlanRequest, baseline, launch_for, plan
from slmpack.planner.types import Candidate, Objective, SharingMode, Slo, Workload
from slmpack.units import parse_duration_s

#: GPU families without BF16 tensor cores; Auto dtype falls back to FP16 on them.
_NO_BF16_FAMILIES = frozenset({"turing", "volta", "pascal"})

_QUANTIZED: dict[str, WeightDtype] = {
    "FP8": "fp8",
    "Int8": "int8",
    "AWQ": "int4-awq",
    "GPTQ": "int4-gptq",
}
_DTYPES: dict[str, WeightDtype] = {"BFloat16": "bf16", "Float16": "fp16", "Float32": "fp32"}


class MemorySource(StrEnum):
    """Where the GPU memory a plan was sized for came from (status.plan.gpuMemorySource)."""

    CATALOG = "Catalog"
    MEASURED = "Measured"  # the node agent's slmpack.dev/gpu-inventory annotation


class PlanFailedError(SlmpackError):
    """No packing can be run; `reason` is a CamelCase condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Decision:
    offer: GpuOffer
    gpu: GPUSpec
    candidate: Candidate
    launch: VllmLaunch
    exclusive_baseline: Candidate | None
    replicas: int  # vLLM engines to run
    engines_per_pod: int  # >1 only for Packed
    pods: int
    gpus: int
    #: What was planned with: the autotuner builds its prior from it.
    request: PlanRequest
    #: The autotuner's packing replaced the planner's pick.
    autotuned: bool = False
    memory_source: MemorySource = MemorySource.CATALOG

    @property
    def mode(self) -> SharingMode:
        return self.candidate.mode

    @property
    def device_memory_bytes(self) -> int:
        """Memory of the device one replica group was sized for: the GPU, or its MIG instance."""
        if self.candidate.mig_profile is not None:
            return self.gpu.mig_profile(self.candidate.mig_profile).memory_bytes
        return self.gpu.memory_bytes


def planned_gpu(gpu: GPUSpec, offer: GpuOffer) -> tuple[GPUSpec, MemorySource]:
    """The catalogue's GPU with the offer's measured memory where it is smaller (for a MIG
    offer, that of its instance profile). GPUSpec stays frozen and hashable, so plans keep
    being memoised per (measured) GPU."""
    measured = offer.measured_memory_bytes
    if offer.mig_profile is not None:
        measured = offer.measured_mig_memory_bytes
        profiles = {p.name: p for p in gpu.mig_profiles}
        profile = profiles.get(offer.mig_profile)
        if measured is None or profile is None or measured >= profile.memory_bytes:
            return gpu, MemorySource.CATALOG
        smaller = replace(profile, memory_bytes=measured)
        return (
            replace(
                gpu,
                mig_profiles=tuple(smaller if p is profile else p for p in gpu.mig_profiles),
            ),
            MemorySource.MEASURED,
        )
    if measured is None or measured >= gpu.memory_bytes:
        return gpu, MemorySource.CATALOG
    return replace(gpu, memory_bytes=measured), MemorySource.MEASURED


def weight_dtype_for(spec: SLMDeploymentSpec, gpu: GPUSpec) -> WeightDtype:
    model = spec.model
    if model.quantization != "None":
        return _QUANTIZED[model.quantization]
    if model.dtype == "Auto":
        return "fp16" if gpu.family in _NO_BF16_FAMILIES else "bf16"
    if model.dtype == "BFloat16" and gpu.family in _NO_BF16_FAMILIES:
        raise InvalidSpecError(
            f"{gpu.product} ({gpu.family}) has no BF16 support; set model.dtype to Float16 or Auto"
        )
    return _DTYPES[model.dtype]


def _kv_dtype(spec: SLMDeploymentSpec) -> KvDtype:
    return "fp8" if spec.model.kv_cache_dtype == "FP8" else "auto"


def _slo(spec: SLMDeploymentSpec) -> Slo:
    ttft = spec.slo.ttft_p99
    itl = spec.slo.itl_p99
    return Slo(
        ttft_p99_s=parse_duration_s(ttft) if ttft else None,
        itl_p99_s=parse_duration_s(itl) if itl else None,
    )


def _workload(spec: SLMDeploymentSpec) -> Workload:
    default = Workload()
    mean_in = spec.workload.mean_input_tokens or default.mean_input_tokens
    return Workload(
        mean_input_tokens=mean_in,
        mean_output_tokens=spec.workload.mean_output_tokens or default.mean_output_tokens,
        p99_input_tokens=max(default.p99_input_tokens, mean_in),
    )


def _modes_for(offer: GpuOffer, wanted: str) -> tuple[SharingMode, ...]:
    offered: tuple[SharingMode, ...] = {
        "none": (SharingMode.EXCLUSIVE, SharingMode.PACKED),
        "time-slicing": (SharingMode.TIME_SLICING,),
        "mps": (SharingMode.MPS,),
        "mig": (SharingMode.MIG,),
    }[offer.sharing]
    if wanted == "Auto":
        return offered
    return tuple(m for m in offered if m.value == wanted)


def _matches_products(offer: GpuOffer, products: Sequence[str], catalog: GpuCatalog) -> bool:
    if not products:
        return True
    mine = normalize_product(offer.product)
    for product in products:
        if normalize_product(product) == mine:
            return True
        same_gpu = product in catalog and offer.product in catalog
        if same_gpu and catalog.get(product).product == catalog.get(offer.product).product:
            return True
    return False


@functools.lru_cache(maxsize=2048)
def _cached_plan(request: PlanRequest) -> Plan:
    return plan(request)


def _score(candidate: Candidate, objective: Objective, best_tps: float, best_tpj: float) -> float:
    tps = candidate.perf.total_tokens_per_s / best_tps
    tpj = candidate.perf.tokens_per_joule / best_tpj
    if objective is Objective.THROUGHPUT:
        return tps
    if objective is Objective.ENERGY:
        return tpj
    return math.sqrt(tps * tpj)


def _offers_text(offers: Sequence[GpuOffer]) -> str:
    return ", ".join(o.key for o in offers) if offers else "none"


def desired_replicas(spec: SLMDeploymentSpec, per_gpu: int, autotuned: int | None) -> int:
    """Replicas (engines) to run: the spec's, the autotuner's in Auto mode, else one GPU's worth."""
    if spec.replicas is not None:
        return spec.replicas
    want = autotuned if spec.autotune.mode == "Auto" and autotuned is not None else per_gpu
    if spec.autotune.mode == "Auto":
        low = spec.autotune.min_replicas if spec.autotune.min_replicas is not None else 0
        high = spec.autotune.max_replicas if spec.autotune.max_replicas is not None else want
        want = min(max(want, low), max(high, low))
    return want


def decide(
    spec: SLMDeploymentSpec,
    model: ModelSpec,
    offers: Sequence[GpuOffer],
    gpus: GpuCatalog,
    autotuned_replicas: int | None = None,
    autotuned_packing: str | None = None,
) -> Decision:
    """The packing to run, or PlanFailedError saying why there is none and what would help.

    `autotuned_packing` (a Candidate.key) is the autotuner's choice in Auto mode: it replaces
    the planner's pick when the chosen offer's plan holds it (the autotuner measured it, so
    the prior's SLO verdict no longer decides); otherwise the planner's pick stands.
    """
    try:
        slo = _slo(spec)
    except InvalidSpecError as err:
        raise PlanFailedError("InvalidSpec", str(err)) from err
    objective = Objective(spec.autotune.objective)
    known = [o for o in offers if o.product in gpus]
    matching = [
        o
        for o in known
        if _matches_products(o, spec.gpu.products, gpus) and _modes_for(o, spec.gpu.sharing)
    ]
    if spec.gpu.mig_profile:
        matching = [o for o in matching if o.mig_profile in (None, spec.gpu.mig_profile)]
        matching = [o for o in matching if o.sharing != "mig" or o.mig_profile]
        if spec.gpu.sharing == "MIG":
            matching = [o for o in matching if o.mig_profile == spec.gpu.mig_profile]
    if not matching:
        wanted = ", ".join(spec.gpu.products) or "any known GPU"
        raise PlanFailedError(
            "NoMatchingGPU",
            f"no schedulable node offers {wanted} with sharing {spec.gpu.sharing}"
            + (f" and MIG profile {spec.gpu.mig_profile}" if spec.gpu.mig_profile else "")
            + f"; the cluster offers: {_offers_text(known)}. Change gpu.products or gpu.sharing,"
            " or add such nodes",
        )
    plans: list[tuple[GpuOffer, GPUSpec, Plan]] = []
    problems: list[tuple[str, str]] = []
    for offer in matching:
        gpu, _ = planned_gpu(gpus.get(offer.product), offer)
        try:
            request = PlanRequest(
                model=model,
                gpu=gpu,
                modes=_modes_for(offer, spec.gpu.sharing),
                objective=objective,
                slo=slo,
                workload=_workload(spec),
                max_model_len=spec.model.max_model_len,
                weight_dtype=weight_dtype_for(spec, gpu),
                kv_dtype=_kv_dtype(spec),
                replicas_per_gpu=spec.gpu.replicas_per_gpu,
                mig_profile=offer.mig_profile,
                shared_slots_per_gpu=offer.slots_per_gpu if offer.sharing != "none" else None,
            )
            result = _cached_plan(request)
        except DoesNotFitError as err:
            problems.append(("DoesNotFit", f"{offer.key}: {err}"))
            continue
        except (InvalidSpecError, CatalogError) as err:
            problems.append(("InvalidSpec", f"{offer.key}: {err}"))
            continue
        if result.recommended is None:
            problems.append(("SLOUnreachable", f"{offer.key}: {result.reason}"))
            continue
        plans.append((offer, gpu, result))
    if not plans:
        reason = problems[0][0] if len({r for r, _ in problems}) == 1 else "NoFeasiblePacking"
        raise PlanFailedError(reason, "; ".join(m for _, m in problems))
    best_tps = max(p.recommended.perf.total_tokens_per_s for _, _, p in plans if p.recommended)
    best_tpj = max(p.recommended.perf.tokens_per_joule for _, _, p in plans if p.recommended)

    def rank(item: tuple[GpuOffer, GPUSpec, Plan]) -> tuple[float, str]:
        chosen = item[2].recommended
        assert chosen is not None
        return (-_score(chosen, objective, best_tps, best_tpj), item[0].key)

    offer, gpu, best = min(plans, key=rank)
    chosen = best.recommended
    assert chosen is not None
    assert best.launch is not None
    launch = best.launch
    tuned = autotuned_packing is not None and autotuned_packing != chosen.key
    if tuned:
        found = next((c for c in best.candidates if c.key == autotuned_packing), None)
        if found is None:
            tuned = False
        else:
            chosen, launch = found, launch_for(best.request, found)
    per_gpu = chosen.replicas_per_gpu
    replicas = desired_replicas(spec, per_gpu, autotuned_replicas)
    engines_per_pod = per_gpu if chosen.mode is SharingMode.PACKED else 1
    pods = math.ceil(replicas / engines_per_pod)
    return Decision(
        offer=offer,
        gpu=gpu,
        candidate=chosen,
        launch=launch,
        exclusive_baseline=baseline(best.candidates),
        replicas=pods * engines_per_pod,
        engines_per_pod=engines_per_pod,
        pods=pods,
        gpus=math.ceil(pods * engines_per_pod / per_gpu),
        request=best.request,
        autotuned=tuned,
        memory_source=planned_gpu(gpus.get(offer.product), offer)[1],
    )
