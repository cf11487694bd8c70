"""The planner's entry point: enumerate packings of one model on one GPU, keep the Pareto front,
recommend one for the objective under the SLO, and emit the vLLM flags that realise it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from slmpack.catalog.models import kv_bytes_for_sequence, weight_bytes
from slmpack.catalog.types import GPUSpec, KvDtype, MigProfile, ModelSpec, WeightDtype
from slmpack.errors import DoesNotFitError, InvalidSpecError
from slmpack.planner.flags import VllmLaunch, vllm_launch
from slmpack.planner.memory import replica_memory, usable_bytes
from slmpack.planner.pareto import pareto_front, pick
from slmpack.planner.perf import (
    Device,
    PackingShape,
    PerfParams,
    default_perf_params,
    predict,
)
from slmpack.planner.types import (
    Candidate,
    EngineSettings,
    MemoryBreakdown,
    Objective,
    SharingMode,
    Slo,
    Workload,
)
from slmpack.units import GIB

#: Batch sizes tried per replica: the calibration sweep of the reference paper.
DEFAULT_MAX_NUM_SEQS = (8, 16, 32, 64, 96, 128, 192, 256, 384, 512)
#: More engines than this on one GPU costs host CPU and memory for no measured gain.
DEFAULT_MAX_REPLICAS_PER_GPU = 8
ALL_MODES = (
    SharingMode.EXCLUSIVE,
    SharingMode.PACKED,
    SharingMode.TIME_SLICING,
    SharingMode.MPS,
    SharingMode.MIG,
)


@dataclass(frozen=True)
class PlanRequest:
    model: ModelSpec
    gpu: GPUSpec
    modes: tuple[SharingMode, ...] = ALL_MODES
    objective: Objective = Objective.BALANCED
    slo: Slo = field(default_factory=Slo)
    workload: Workload = field(default_factory=Workload)
    max_model_len: int | None = None  # None: min(model context, 4096)
    max_num_batched_tokens: int | None = None  # None: max(2048, max_model_len)
    weight_dtype: WeightDtype = "bf16"
    kv_dtype: KvDtype = "auto"
    max_num_seqs_options: tuple[int, ...] = DEFAULT_MAX_NUM_SEQS
    replicas_per_gpu: int | None = None  # pin
    max_replicas_per_gpu: int = DEFAULT_MAX_REPLICAS_PER_GPU
    mig_profile: str | None = None  # pin
    # Device-plugin sharing splits each GPU into this many slots (time-slicing/MPS node config).
    shared_slots_per_gpu: int | None = None
    load_ratio: float = 0.8


@dataclass(frozen=True)
class Plan:
    request: PlanRequest
    candidates: tuple[Candidate, ...]
    front: tuple[Candidate, ...]
    recommended: Candidate | None
    reason: str
    launch: VllmLaunch | None

    @property
    def feasible(self) -> bool:
        return self.recommended is not None


def resolved_engine(request: PlanRequest, max_num_seqs: int) -> EngineSettings:
    max_model_len = request.max_model_len or min(request.model.max_position_embeddings, 4096)
    if max_model_len > request.model.max_position_embeddings:
        raise InvalidSpecError(
            f"maxModelLen {max_model_len} exceeds {request.model.name}'s context of "
            f"{request.model.max_position_embeddings} tokens; lower it"
        )
    batched = request.max_num_batched_tokens or max(2048, max_model_len)
    return EngineSettings(
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        max_num_batched_tokens=batched,
        weight_dtype=request.weight_dtype,
        kv_dtype=request.kv_dtype,
    )


def _shapes(request: PlanRequest) -> Iterator[tuple[PackingShape, MigProfile | None, int]]:
    """(shape, MIG profile, memory slots per device) for every packing the request allows."""
    gpu = request.gpu
    whole = Device.whole(gpu)
    pinned = request.replicas_per_gpu
    for mode in request.modes:
        if mode is SharingMode.EXCLUSIVE:
            if pinned in (None, 1):
                yield PackingShape(mode, 1, 1, whole), None, 1
        elif mode is SharingMode.MIG:
            profiles = gpu.mig_profiles
            if request.mig_profile:
                profiles = (gpu.mig_profile(request.mig_profile),)
            for profile in profiles:
                # A single full-GPU instance is Exclusive with MIG switched on; list it only
                # when MIG is all the request allows.
                whole_gpu = profile.max_instances == 1 and SharingMode.EXCLUSIVE in request.modes
                if pinned in (None, profile.max_instances) and not whole_gpu:
                    device = Device.mig(gpu, profile)
                    yield PackingShape(mode, 1, profile.max_instances, device), profile, 1
        else:
            slots = request.shared_slots_per_gpu if mode is not SharingMode.PACKED else None
            counts = range(2, request.max_replicas_per_gpu + 1)
            if pinned is not None:
                counts = range(pinned, pinned + 1)
            elif slots is not None:
                counts = range(slots, slots + 1)
            for n in counts:
                yield PackingShape(mode, n, 1, whole), None, slots or n


def _kv_tokens(model: ModelSpec, kv_bytes: int, engine: EngineSettings, w: Workload) -> float:
    per_request = kv_bytes_for_sequence(model, w.tokens_per_request, engine.kv_dtype)
    return kv_bytes / per_request * w.tokens_per_request


def _violations(perf_itl: float, perf_ttft: float, slo: Slo) -> tuple[str, ...]:
    out: list[str] = []
    if slo.itl_p99_s is not None and perf_itl > slo.itl_p99_s:
        out.append(f"ITL p99 {perf_itl * 1e3:.1f} ms > {slo.itl_p99_s * 1e3:.1f} ms")
    if slo.ttft_p99_s is not None and perf_ttft > slo.ttft_p99_s:
        out.append(f"TTFT p99 {perf_ttft * 1e3:.0f} ms > {slo.ttft_p99_s * 1e3:.0f} ms")
    return tuple(out)


def enumerate_candidates(
    request: PlanRequest, params: PerfParams | None = None
) -> tuple[Candidate, ...]:
    """Every packing whose replicas fit their memory share, with predicted performance."""
    params = params or default_perf_params()
    engines = [resolved_engine(request, seqs) for seqs in request.max_num_seqs_options]
    needs = [(e, replica_memory(request.model, e, request.workload)) for e in engines]
    out: list[Candidate] = []
    for shape, profile, slots in _shapes(request):
        budget = usable_bytes(shape.device.memory_bytes) // slots
        for engine, need in needs:
            if need.total_bytes > budget:
                continue
            # The engine gets its whole share as KV cache: headroom for long sequences costs
            # nothing once the share is reserved for it.
            memory = replace(need, kv_cache_bytes=budget - need.non_kv_bytes)
            kv_tokens = _kv_tokens(request.model, memory.kv_cache_bytes, engine, request.workload)
            perf = predict(
                request.model,
                request.gpu,
                shape,
                engine,
                request.workload,
                kv_tokens,
                params,
                request.load_ratio,
            )
            violations = _violations(perf.itl_p99_s, perf.ttft_p99_s, request.slo)
            out.append(
                Candidate(
                    mode=shape.mode,
                    replicas_per_gpu=shape.engines_per_device * shape.devices_per_gpu,
                    engine=engine,
                    memory=memory,
                    perf=perf,
                    mig_profile=profile.name if profile else None,
                    meets_slo=not violations,
                    slo_violations=violations,
                )
            )
    return tuple(out)


def _check_supported(request: PlanRequest) -> None:
    if SharingMode.MIG in request.modes and len(request.modes) == 1 and not request.gpu.mig_capable:
        raise InvalidSpecError(
            f"{request.gpu.product} has no MIG; choose Exclusive, Packed, TimeSlicing or MPS"
        )
    if request.mig_profile and SharingMode.MIG not in request.modes:
        raise InvalidSpecError("a MIG profile was given but MIG is not among the sharing modes")


def does_not_fit_message(request: PlanRequest) -> str:
    """Needed vs available memory for one replica at the smallest batch, and what would help."""
    engine = resolved_engine(request, min(request.max_num_seqs_options))
    need: MemoryBreakdown = replica_memory(request.model, engine, request.workload)
    largest = max(
        [request.gpu.memory_bytes, *(p.memory_bytes for p in request.gpu.mig_profiles)]
        if SharingMode.MIG in request.modes and len(request.modes) == 1
        else [request.gpu.memory_bytes]
    )
    available = usable_bytes(largest)
    hints = []
    if engine.max_model_len > 2048:
        hints.append(f"a smaller maxModelLen (now {engine.max_model_len})")
    if request.weight_dtype in ("bf16", "fp16", "fp32"):
        int4 = weight_bytes(request.model, "int4-awq")
        hints.append(f"int4-awq quantization (weights {int4 / GIB:.1f} GiB)")
    hints.append("a GPU with more memory")
    return (
        f"{request.model.name} needs {need.total_bytes / GIB:.1f} GiB per replica "
        f"(weights {need.weights_bytes / GIB:.1f}, KV {need.kv_cache_bytes / GIB:.1f}, "
        f"activations {need.activation_peak_bytes / GIB:.2f}, CUDA graphs "
        f"{need.cuda_graph_bytes / GIB:.2f}, runtime {need.runtime_overhead_bytes / GIB:.2f}) "
        f"but {request.gpu.product} offers {available / GIB:.1f} GiB; try " + ", or ".join(hints)
    )


def plan(request: PlanRequest, params: PerfParams | None = None) -> Plan:
    """Plan the packing of `request.model` on `request.gpu`.

    Raises DoesNotFitError when not even one replica fits, InvalidSpecError on an inconsistent
    request. A plan whose candidates all miss the SLO is returned with `recommended=None`.
    """
    _check_supported(request)
    candidates = enumerate_candidates(request, params)
    if not candidates:
        raise DoesNotFitError(does_not_fit_message(request))
    # The front does not depend on the order, but dominated candidates are ruled out sooner
    # when likely dominators come first.
    front = pareto_front(sorted(candidates, key=_dominance_order), request.slo)
    chosen = pick(candidates, request.objective)
    if chosen is None:
        closest = min(candidates, key=lambda c: len(c.slo_violations) + c.perf.itl_p99_s)
        reason = (
            f"no packing meets the SLO; the closest ({closest.key}) has "
            + "; ".join(closest.slo_violations)
            + ". Relax the SLO, or use a faster GPU"
        )
        return Plan(request, candidates, front, None, reason, None)
    reason = f"best {request.objective.value.lower()} among {len(candidates)} packings"
    return Plan(request, candidates, front, chosen, reason, launch_for(request, chosen))


def launch_for(request: PlanRequest, candidate: Candidate) -> VllmLaunch:
    """The vLLM flags and environment of one of the request's candidates."""
    device_memory = (
        request.gpu.mig_profile(candidate.mig_profile).memory_bytes
        if candidate.mig_profile
        else request.gpu.memory_bytes
    )
    return vllm_launch(candidate, device_memory)


def _dominance_order(candidate: Candidate) -> float:
    return -candidate.perf.total_tokens_per_s * candidate.perf.tokens_per_joule


def baseline(candidates: Sequence[Candidate]) -> Candidate | None:
    """The best single-replica exclusive point: what one vLLM per GPU delivers today."""
    singles = [c for c in candidates if c.mode is SharingMode.EXCLUSIVE]
    return max(singles, key=lambda c: c.perf.total_tokens_per_s, default=None)
