"""decide(): spec + offers + model -> the offer, sharing mode and packing, or why none."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog
from slmpack.controller.decide import (
    Decision,
    PlanFailedError,
    decide,
    desired_replicas,
    weight_dtype_for,
)
from slmpack.controller.inventory import GpuOffer, cluster_offers
from slmpack.errors import InvalidSpecError
from slmpack.planner.plan import enumerate_candidates
from slmpack.planner.types import SharingMode
from slmpack.units import GIB

from .controller_fixtures import fleet_nodes, mig_single_node, spec, t4_node

GPUS = default_gpu_catalog()
MODELS = default_model_catalog()
OPT_1_3B = MODELS.get("opt-1.3b")
FLEET = fleet_nodes()
ALL = cluster_offers(FLEET.values())
H100 = cluster_offers([FLEET["h100-0"], FLEET["h100-1"]])
A100_MIG = cluster_offers([FLEET["a100-mig-0"]])
L4 = cluster_offers([FLEET["l4-ts-0"], FLEET["l4-ts-1"]])
T4 = cluster_offers([t4_node()])


def _decide(offers: tuple[GpuOffer, ...], arch: str = "opt-1.3b", **fields: Any) -> Decision:
    """`arch` is the catalogue model sized for; `fields` go into the spec."""
    return decide(spec(**fields), MODELS.get(arch), offers, GPUS)


def _fails(offers: tuple[GpuOffer, ...], arch: str = "opt-1.3b", **fields: Any) -> PlanFailedError:
    with pytest.raises(PlanFailedError) as caught:
        _decide(offers, arch, **fields)
    return caught.value


def test_auto_on_h100_packs_several_small_replicas_per_gpu() -> None:
    decision = _decide(H100)

    assert decision.offer.product == "NVIDIA-H100-80GB-HBM3"
    # Only whole GPUs are offered, so Auto can choose Exclusive or Packed; a 1.3B model
    # leaves most of an 80 GB GPU idle under one engine.
    assert decision.mode in (SharingMode.PACKED, SharingMode.EXCLUSIVE)
    assert decision.candidate.replicas_per_gpu > 1
    assert decision.mode is SharingMode.PACKED
    assert decision.engines_per_pod == decision.candidate.replicas_per_gpu


def test_default_replicas_are_one_gpus_worth() -> None:
    decision = _decide(H100)

    per_gpu = decision.candidate.replicas_per_gpu
    assert (decision.replicas, decision.pods, decision.gpus) == (per_gpu, 1, 1)


def test_exclusive_runs_one_replica_per_gpu_and_pod() -> None:
    decision = _decide(H100, gpu={"sharing": "Exclusive"}, replicas=3)

    assert decision.mode is SharingMode.EXCLUSIVE
    assert (decision.replicas, decision.engines_per_pod, decision.pods, decision.gpus) == (
        3,
        1,
        3,
        3,
    )


def test_packed_rounds_replicas_up_to_whole_pods() -> None:
    # 5 engines at 2 per pod: ceil(5 / 2) = 3 pods, which run 3 x 2 = 6 engines on 3 GPUs.
    decision = _decide(H100, gpu={"sharing": "Packed", "replicasPerGPU": 2}, replicas=5)

    assert decision.mode is SharingMode.PACKED
    assert decision.candidate.replicas_per_gpu == 2
    assert (decision.pods, decision.replicas, decision.gpus) == (3, 6, 3)


def test_mig_on_the_a100_node_uses_a_mig_offer() -> None:
    decision = _decide(ALL, gpu={"sharing": "MIG"})

    assert decision.mode is SharingMode.MIG
    assert decision.offer.sharing == "mig"
    assert decision.offer.product == "NVIDIA-A100-SXM4-40GB"
    assert decision.candidate.mig_profile == decision.offer.mig_profile
    assert decision.offer.resource == f"nvidia.com/mig-{decision.offer.mig_profile}"


def test_pinned_mig_profile_picks_that_profile() -> None:
    decision = _decide(ALL, gpu={"sharing": "MIG", "migProfile": "2g.10gb"})

    assert decision.offer.mig_profile == decision.candidate.mig_profile == "2g.10gb"
    assert decision.offer.resource == "nvidia.com/mig-2g.10gb"
    # The catalogue's A100-40GB table allows 3 instances of 2g.10gb per GPU.
    assert decision.candidate.replicas_per_gpu == 3
    assert decision.engines_per_pod == 1
    assert decision.pods == decision.replicas == 3


def test_mig_single_strategy_node_plans_its_one_profile() -> None:
    decision = _decide(cluster_offers([mig_single_node()]), gpu={"sharing": "MIG"})

    assert decision.candidate.mig_profile == "1g.5gb"
    assert decision.offer.resource == "nvidia.com/gpu"


def test_pinned_mig_profile_the_cluster_lacks_is_no_matching_gpu() -> None:
    failure = _fails(A100_MIG, gpu={"sharing": "MIG", "migProfile": "1g.10gb"})

    assert failure.reason == "NoMatchingGPU"
    assert "MIG profile 1g.10gb" in failure.message
    assert "NVIDIA-A100-SXM4-40GB/mig/1g.5gb" in failure.message


def test_time_slicing_on_l4_runs_one_replica_per_slot() -> None:
    decision = _decide(ALL, gpu={"sharing": "TimeSlicing"})

    assert decision.mode is SharingMode.TIME_SLICING
    assert decision.offer.product == "NVIDIA-L4"
    # The device plugin splits each L4 into 4 slots (nvidia.com/gpu.replicas=4).
    assert decision.candidate.replicas_per_gpu == 4
    # One pod per replica, each claiming one slot.
    assert (decision.engines_per_pod, decision.pods, decision.gpus) == (1, 4, 1)


@pytest.mark.parametrize(
    ("products", "expected"),
    [
        (["NVIDIA-H100-80GB-HBM3"], "NVIDIA-H100-80GB-HBM3"),
        (["h100"], "NVIDIA-H100-80GB-HBM3"),  # catalogue alias
        (["NVIDIA H100 80GB HBM3"], "NVIDIA-H100-80GB-HBM3"),  # nvidia-smi spelling
        (["NVIDIA-L4-SHARED"], "NVIDIA-L4"),  # the label as time-slicing GFD writes it
        (["nvidia-l4"], "NVIDIA-L4"),
        (["Tesla-T4", "l4"], "NVIDIA-L4"),  # the first listed product is not in the cluster
    ],
)
def test_products_filter_accepts_aliases_and_shared_spelling(
    products: list[str], expected: str
) -> None:
    decision = _decide(ALL, gpu={"products": products})

    assert decision.offer.product == expected


def test_no_matching_offer_lists_what_the_cluster_offers() -> None:
    failure = _fails(ALL, gpu={"products": ["Tesla-T4"]})

    assert failure.reason == "NoMatchingGPU"
    assert "Tesla-T4" in failure.message
    for offer in ALL:
        assert offer.key in failure.message


def test_sharing_the_nodes_do_not_offer_is_no_matching_gpu() -> None:
    failure = _fails(H100, gpu={"sharing": "MPS"})

    assert failure.reason == "NoMatchingGPU"
    assert "sharing MPS" in failure.message
    assert "NVIDIA-H100-80GB-HBM3/none" in failure.message


def test_no_gpu_nodes_at_all_is_no_matching_gpu() -> None:
    failure = _fails(cluster_offers([FLEET["cpu-0"]]))

    assert failure.reason == "NoMatchingGPU"
    assert "offers: none" in failure.message


def test_model_too_big_for_every_offer_does_not_fit_with_numbers() -> None:
    model = MODELS.get("llama-2-13b")
    failure = _fails(L4, arch="llama-2-13b")

    assert failure.reason == "DoesNotFit"
    assert "NVIDIA-L4/time-slicingx4" in failure.message
    found = re.search(
        r"needs (?P<need>[\d.]+) GiB per replica \(weights (?P<weights>[\d.]+).*"
        r"offers (?P<have>[\d.]+) GiB",
        failure.message,
    )
    assert found is not None, failure.message
    # bf16 weights are 2 bytes per parameter.
    assert float(found["weights"]) == pytest.approx(model.parameter_count * 2 / GIB, abs=0.05)
    assert float(found["need"]) > float(found["have"])
    assert float(found["have"]) <= GPUS.get("NVIDIA-L4").memory_bytes / GIB


@pytest.mark.parametrize(
    "slo",
    [{"ttftP99": "0ms"}, {"itlP99": "fast"}, {"ttftP99": "500"}],
    ids=["zero", "no-number", "no-unit"],
)
def test_invalid_slo_is_invalid_spec(slo: dict[str, str]) -> None:
    failure = _fails(H100, slo=slo)

    assert failure.reason == "InvalidSpec"
    assert repr(next(iter(slo.values()))) in failure.message


def test_slo_no_packing_meets_is_slo_unreachable() -> None:
    failure = _fails(H100, slo={"itlP99": "1us"})

    assert failure.reason == "SLOUnreachable"
    assert "NVIDIA-H100-80GB-HBM3/none" in failure.message


def test_failures_of_different_kinds_sum_up_as_no_feasible_packing() -> None:
    # llama-2-13b needs ~28 GiB: it fits an H100 but not an L4, and the tight SLO rules the
    # H100 out; the two offers fail for different reasons.
    failure = _fails(H100 + L4, arch="llama-2-13b", slo={"itlP99": "1us"})

    assert failure.reason == "NoFeasiblePacking"
    assert "NVIDIA-L4/time-slicingx4:" in failure.message
    assert "NVIDIA-H100-80GB-HBM3/none:" in failure.message


# --- replicas ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "per_gpu", "autotuned", "expected"),
    [
        ({"replicas": 5}, 2, None, 5),  # the user's count wins
        ({"replicas": 0}, 2, None, 0),  # scaled to zero
        ({}, 3, None, 3),  # one GPU's worth
        ({"autotune": {"mode": "Off"}}, 2, 9, 2),  # Off ignores the autotuner
        ({"autotune": {"mode": "Recommend"}}, 2, 9, 2),  # Recommend only reports
        ({"autotune": {"mode": "Auto"}}, 2, 9, 9),
        ({"autotune": {"mode": "Auto", "maxReplicas": 4}}, 2, 9, 4),
        ({"autotune": {"mode": "Auto", "minReplicas": 3}}, 2, 1, 3),
        ({"autotune": {"mode": "Auto", "minReplicas": 3}}, 2, None, 3),
        ({"autotune": {"mode": "Auto", "minReplicas": 1, "maxReplicas": 6}}, 2, None, 2),
    ],
)
def test_desired_replicas(
    fields: dict[str, Any], per_gpu: int, autotuned: int | None, expected: int
) -> None:
    assert desired_replicas(spec(**fields), per_gpu, autotuned) == expected


def test_autotuned_replicas_are_clamped_then_rounded_to_pods() -> None:
    # The autotuner asks for 9; maxReplicas clamps to 5; 2 per pod rounds up to 3 pods.
    decision = decide(
        spec(
            gpu={"sharing": "Packed", "replicasPerGPU": 2},
            autotune={"mode": "Auto", "minReplicas": 1, "maxReplicas": 5},
        ),
        OPT_1_3B,
        H100,
        GPUS,
        autotuned_replicas=9,
    )

    assert (decision.pods, decision.replicas) == (3, 6)


# --- dtypes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "gpu", "expected"),
    [
        ({}, "Tesla-T4", "fp16"),  # Turing has no BF16 tensor cores
        ({}, "NVIDIA-H100-80GB-HBM3", "bf16"),
        ({}, "NVIDIA-A100-SXM4-40GB", "bf16"),
        ({"dtype": "Float16"}, "NVIDIA-H100-80GB-HBM3", "fp16"),
        ({"dtype": "Float32"}, "Tesla-T4", "fp32"),
        ({"quantization": "FP8"}, "NVIDIA-H100-80GB-HBM3", "fp8"),
        ({"quantization": "Int8"}, "NVIDIA-L4", "int8"),
        ({"quantization": "AWQ", "dtype": "BFloat16"}, "Tesla-T4", "int4-awq"),
        ({"quantization": "GPTQ"}, "NVIDIA-L4", "int4-gptq"),
    ],
)
def test_weight_dtype_mapping(model: dict[str, str], gpu: str, expected: str) -> None:
    parsed = spec(model={"uri": "hf://facebook/opt-1.3b", **model})
    assert weight_dtype_for(parsed, GPUS.get(gpu)) == expected


def test_bfloat16_on_t4_is_rejected() -> None:
    parsed = spec(model={"uri": "hf://facebook/opt-1.3b", "dtype": "BFloat16"})
    with pytest.raises(InvalidSpecError, match="Float16"):
        weight_dtype_for(parsed, GPUS.get("Tesla-T4"))

    failure = _fails(T4, model={"uri": "hf://facebook/opt-1.3b", "dtype": "BFloat16"})
    assert failure.reason == "InvalidSpec"
    assert "Tesla-T4" in failure.message


def test_t4_auto_dtype_reaches_the_vllm_flags() -> None:
    decision = _decide(T4)

    args = decision.launch.args
    assert args[args.index("--dtype") + 1] == "float16"


def test_decide_is_memoised_but_returns_equal_decisions() -> None:
    first = _decide(ALL)
    second = _decide(ALL)

    assert first == second
    assert math.ceil(first.replicas / first.candidate.replicas_per_gpu) == first.gpus


def test_an_autotuned_packing_replaces_the_planners_pick_with_its_own_flags() -> None:
    planned = _decide(H100, autotune={"mode": "Auto"})
    other = next(
        c
        for c in enumerate_candidates(planned.request)
        if c.key != planned.candidate.key and c.mode is SharingMode.EXCLUSIVE
    )

    tuned = decide(
        spec(autotune={"mode": "Auto"}),
        OPT_1_3B,
        H100,
        GPUS,
        autotuned_replicas=3,
        autotuned_packing=other.key,
    )

    assert tuned.autotuned
    assert tuned.candidate.key == other.key
    assert (tuned.replicas, tuned.pods, tuned.engines_per_pod) == (3, 3, 1)
    assert f"--max-num-seqs {other.engine.max_num_seqs}" in " ".join(tuned.launch.args)
    assert not planned.autotuned


def test_an_autotuned_packing_the_plan_lacks_leaves_the_planners_pick() -> None:
    planned = _decide(H100, autotune={"mode": "Auto"})

    tuned = decide(
        spec(autotune={"mode": "Auto"}),
        OPT_1_3B,
        H100,
        GPUS,
        autotuned_packing="MIG/1g.10gb x7 seqs=8",
    )

    assert not tuned.autotuned
    assert tuned.candidate.key == planned.candidate.key


# --- GPU memory the node agent measured ----------------------------------------------------


def test_measured_memory_below_the_catalogues_sizes_the_plan() -> None:
    from dataclasses import replace

    from slmpack.controller.decide import MemorySource
    from slmpack.controller.status import plan_status

    catalogue = _decide(H100, replicas=2)
    (offer,) = H100
    smaller = 60 * GIB
    measured = _decide((replace(offer, measured_memory_bytes=smaller),), replicas=2)

    assert catalogue.memory_source is MemorySource.CATALOG
    assert catalogue.device_memory_bytes == GPUS.get(offer.product).memory_bytes
    assert measured.memory_source is MemorySource.MEASURED
    assert measured.gpu.memory_bytes == measured.device_memory_bytes == smaller
    assert measured.request.gpu.memory_bytes == smaller
    # vLLM's fraction is of the memory that is there: the same footprint is a larger share.
    assert measured.launch.args != catalogue.launch.args
    status = plan_status(measured, "opt")
    assert (status.gpu_memory_bytes, status.gpu_memory_source) == (smaller, "Measured")
    assert plan_status(catalogue, "opt").gpu_memory_source == "Catalog"


def test_measured_memory_at_or_above_the_catalogues_changes_nothing() -> None:
    from dataclasses import replace

    from slmpack.controller.decide import MemorySource

    (offer,) = H100
    same = GPUS.get(offer.product).memory_bytes
    plain = _decide(H100, replicas=2)
    measured = _decide((replace(offer, measured_memory_bytes=same + GIB),), replicas=2)

    assert measured.memory_source is MemorySource.CATALOG
    assert measured.gpu == plain.gpu
    assert measured.launch == plain.launch


def test_measured_mig_instance_memory_sizes_a_mig_plan() -> None:
    from dataclasses import replace

    from slmpack.controller.decide import MemorySource

    offers = tuple(
        replace(o, measured_mig_memory_bytes=8 * GIB) if o.mig_profile == "2g.10gb" else o
        for o in A100_MIG
    )
    decision = _decide(offers, gpu={"sharing": "MIG", "migProfile": "2g.10gb"})

    assert decision.memory_source is MemorySource.MEASURED
    assert decision.device_memory_bytes == 8 * GIB
    assert decision.gpu.mig_profile("2g.10gb").memory_bytes == 8 * GIB
    # The whole GPU and the other profiles keep the catalogue's figures.
    catalogue = GPUS.get("NVIDIA-A100-SXM4-40GB")
    assert decision.gpu.memory_bytes == catalogue.memory_bytes
    assert decision.gpu.mig_profile("3g.20gb") == catalogue.mig_profile("3g.20gb")


def test_measured_plans_stay_memoised() -> None:
    from dataclasses import replace

    from slmpack.controller import decide as decide_mod

    (offer,) = H100
    offers = (replace(offer, measured_memory_bytes=70 * GIB),)
    _decide(offers, replicas=2)
    hits = decide_mod._cached_plan.cache_info().hits
    again = _decide(offers, replicas=2)

    assert decide_mod._cached_plan.cache_info().hits == hits + 1
    assert hash(again.request) == hash(again.request)
