from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog
from slmpack.planner.binpack import pack_heuristic
from slmpack.planner.fleet import (
    FleetModel,
    FleetPool,
    build_fleet_problem,
    build_problem,
    replica_options,
)
from slmpack.planner.memory import usable_bytes
from slmpack.planner.types import Slo

GPUS = default_gpu_catalog()
MODELS = default_model_catalog()


def test_options_share_the_gpu_by_replicas_and_fit_memory() -> None:
    pool = FleetPool("h100", GPUS.get("NVIDIA-H100-80GB-HBM3"), 4)
    options = replica_options(FleetModel(MODELS.get("opt-1.3b"), 10_000), pool)
    assert options
    shares = {round(o.compute_share, 4) for o in options}
    assert 1.0 in shares  # the exclusive option
    assert 0.5 in shares  # two packed engines
    for o in options:
        assert o.tokens_per_s > 0
        assert o.memory_bytes * round(1 / o.compute_share) <= usable_bytes(pool.gpu.memory_bytes)


def test_mig_pool_offers_only_mig_options() -> None:
    pool = FleetPool("a100", GPUS.get("NVIDIA-A100-SXM4-40GB"), 2, mig=True)
    options = replica_options(FleetModel(MODELS.get("smollm2-360m"), 1_000), pool)
    assert options
    assert all(o.mig_profile for o in options)


def test_slo_filters_options() -> None:
    pool = FleetPool("l4", GPUS.get("NVIDIA-L4"), 2)
    loose = replica_options(FleetModel(MODELS.get("qwen2.5-3b"), 1_000), pool)
    tight = replica_options(
        FleetModel(MODELS.get("qwen2.5-3b"), 1_000, slo=Slo(itl_p99_s=0.03)), pool
    )
    assert len(tight) < len(loose)


def test_fleet_demand_is_met_with_few_gpus() -> None:
    pools = [FleetPool("h100", GPUS.get("NVIDIA-H100-80GB-HBM3"), 8)]
    models = [
        FleetModel(MODELS.get("opt-1.3b"), 20_000),
        FleetModel(MODELS.get("qwen2.5-0.5b"), 5_000),
    ]
    result = pack_heuristic(build_problem(models, pools))
    assert result.unmet == {}
    assert 1 <= result.gpus_used <= 3


def test_every_option_keeps_the_engine_it_stands_for() -> None:
    pools = [
        FleetPool("h100", GPUS.get("NVIDIA-H100-80GB-HBM3"), 2),
        FleetPool("a100", GPUS.get("NVIDIA-A100-SXM4-40GB"), 2, mig=True),
    ]
    fleet = build_fleet_problem([FleetModel(MODELS.get("opt-1.3b"), 10_000)], pools)
    assert len(fleet.sources) == len(fleet.problem.options)
    assert fleet.problem == build_problem([FleetModel(MODELS.get("opt-1.3b"), 10_000)], pools)
    for option, source in zip(fleet.problem.options, fleet.sources, strict=True):
        c = source.candidate
        assert c.mig_profile == option.mig_profile
        # The flags size the engine to what the packer reserved, not to the candidate's 1/n.
        assert c.memory.total_bytes == option.memory_bytes
        args = source.launch().args
        assert args[args.index("--max-num-seqs") + 1] == str(c.engine.max_num_seqs)
        share = float(args[args.index("--gpu-memory-utilization") + 1])
        assert share <= option.memory_bytes / source.device_memory_bytes
        if option.mig_profile:
            gpu = GPUS.get("NVIDIA-A100-SXM4-40GB")
            assert source.device_memory_bytes == gpu.mig_profile(option.mig_profile).memory_bytes
        else:
            assert source.device_memory_bytes == GPUS.get("NVIDIA-H100-80GB-HBM3").memory_bytes


def test_gpus_fill_nodes_in_order() -> None:
    pool = FleetPool("h100", GPUS.get("NVIDIA-H100-80GB-HBM3"), 16)
    assert [pool.node_of(i) for i in (0, 7, 8, 15)] == ["h100-0", "h100-0", "h100-1", "h100-1"]
    single = FleetPool("l4", GPUS.get("NVIDIA-L4"), 3, gpus_per_node=1)
    assert single.node_of(2) == "l4-2"
