"""The planner end to end: enumeration, fit per mode, errors, recommendation."""

import pytest

from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog
from slmpack.errors import DoesNotFitError, InvalidSpecError
from slmpack.planner.memory import usable_bytes
from slmpack.planner.plan import PlanRequest, baseline, enumerate_candidates, plan
from slmpack.planner.types import Objective, SharingMode, Slo

GPUS = default_gpu_catalog()
MODELS = default_model_catalog()
H100 = GPUS.get("NVIDIA-H100-80GB-HBM3")
A100_40 = GPUS.get("NVIDIA-A100-SXM4-40GB")
L4 = GPUS.get("NVIDIA-L4")


def test_every_candidate_fits_its_memory_share() -> None:
    request = PlanRequest(MODELS.get("opt-1.3b"), H100)
    candidates = enumerate_candidates(request)
    assert candidates
    for c in candidates:
        if c.mode is SharingMode.MIG:
            assert c.mig_profile is not None
            device = H100.mig_profile(c.mig_profile).memory_bytes
            per_device = 1
        else:
            device, per_device = H100.memory_bytes, c.replicas_per_gpu
        assert c.memory.total_bytes * per_device <= usable_bytes(device)


def test_small_model_packs_several_replicas_for_throughput() -> None:
    result = plan(PlanRequest(MODELS.get("opt-1.3b"), H100, objective=Objective.THROUGHPUT))
    assert result.recommended is not None
    assert result.recommended.replicas_per_gpu >= 2
    base = baseline(result.candidates)
    assert base is not None
    assert result.recommended.perf.total_tokens_per_s > 1.2 * base.perf.total_tokens_per_s
    assert result.launch is not None
    assert "--kv-cache-memory-bytes" in result.launch.args


def test_recommendation_is_on_the_front() -> None:
    result = plan(PlanRequest(MODELS.get("qwen2.5-1.5b"), H100))
    assert result.recommended in result.front


def test_exclusive_only_gives_one_replica() -> None:
    request = PlanRequest(MODELS.get("opt-1.3b"), H100, modes=(SharingMode.EXCLUSIVE,))
    assert {c.replicas_per_gpu for c in enumerate_candidates(request)} == {1}


def test_mig_uses_homogeneous_layouts_of_the_gpu() -> None:
    request = PlanRequest(MODELS.get("smollm2-360m"), A100_40, modes=(SharingMode.MIG,))
    candidates = enumerate_candidates(request)
    by_profile = {c.mig_profile: c.replicas_per_gpu for c in candidates}
    assert by_profile["1g.5gb"] == 7
    assert by_profile["3g.20gb"] == 2


def test_pinned_replicas_and_shared_slots() -> None:
    model = MODELS.get("qwen2.5-0.5b")
    pinned = PlanRequest(model, L4, modes=(SharingMode.MPS,), replicas_per_gpu=3)
    assert {c.replicas_per_gpu for c in enumerate_candidates(pinned)} == {3}
    slots = PlanRequest(model, L4, modes=(SharingMode.TIME_SLICING,), shared_slots_per_gpu=4)
    candidates = enumerate_candidates(slots)
    assert {c.replicas_per_gpu for c in candidates} == {4}
    assert all(4 * c.memory.total_bytes <= usable_bytes(L4.memory_bytes) for c in candidates)


def test_model_too_big_for_the_gpu_says_why_and_what_helps() -> None:
    request = PlanRequest(MODELS.get("llama-3.1-8b"), GPUS.get("Tesla-T4"), max_model_len=8192)
    with pytest.raises(DoesNotFitError) as err:
        plan(request)
    message = str(err.value)
    assert "needs" in message
    assert "GiB" in message
    assert "Tesla-T4" in message
    assert "maxModelLen" in message
    assert "int4-awq" in message


def test_mig_on_a_gpu_without_mig_is_rejected() -> None:
    with pytest.raises(InvalidSpecError, match="no MIG"):
        plan(PlanRequest(MODELS.get("opt-125m"), L4, modes=(SharingMode.MIG,)))


def test_too_long_context_is_rejected() -> None:
    with pytest.raises(InvalidSpecError, match="maxModelLen"):
        plan(PlanRequest(MODELS.get("opt-125m"), H100, max_model_len=4096))


def test_unreachable_slo_gives_no_recommendation_and_names_the_gap() -> None:
    result = plan(PlanRequest(MODELS.get("llama-2-7b"), L4, slo=Slo(itl_p99_s=0.001)))
    assert result.recommended is None
    assert not result.feasible
    assert "ITL p99" in result.reason
    assert result.launch is None


def test_tighter_slo_never_raises_throughput() -> None:
    model = MODELS.get("opt-2.7b")
    loose = plan(PlanRequest(model, H100, objective=Objective.THROUGHPUT))
    tight = plan(PlanRequest(model, H100, objective=Objective.THROUGHPUT, slo=Slo(itl_p99_s=0.02)))
    assert loose.recommended is not None
    assert tight.recommended is not None
    assert tight.recommended.perf.itl_p99_s <= 0.02
    assert tight.recommended.perf.total_tokens_per_s <= loose.recommended.perf.total_tokens_per_s
