from dataclasses import replace

from slmpack.planner.flags import memory_utilisation, vllm_launch
from slmpack.planner.types import EngineSettings, SharingMode

from .planner_fixtures import GIB, candidate


def _arg(args: tuple[str, ...], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_exclusive_flags_carry_the_plan() -> None:
    c = candidate(10_000, 400, seqs=256, kv_bytes=20 * GIB)
    launch = vllm_launch(c, 80 * GIB)
    assert _arg(launch.args, "--max-num-seqs") == "256"
    assert _arg(launch.args, "--kv-cache-memory-bytes") == str(20 * GIB)
    # footprint 3 + 0.125 + 0.125 + 0.5 + 20 = 23.75 GiB of 80 GiB
    assert _arg(launch.args, "--gpu-memory-utilization") == "0.2968"
    assert _arg(launch.args, "--dtype") == "bfloat16"
    assert launch.env == ()


def test_memory_shares_round_down_so_replicas_never_oversubscribe() -> None:
    share = memory_utilisation(GIB, 3 * GIB)
    assert share == 0.3333
    assert 3 * share <= 1.0


def test_mps_sets_thread_share_and_pinned_memory_limit() -> None:
    c = candidate(10_000, 400, replicas=4, mode=SharingMode.MPS, kv_bytes=10 * GIB)
    env = dict(vllm_launch(c, 80 * GIB).env)
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"  # 2 x fair share of 25%
    # 13.75 GiB footprint + 256 MiB margin = 14336 MiB
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=14336M"


def test_quantized_checkpoints_let_vllm_pick_the_kernel() -> None:
    c = candidate(10_000, 400)
    awq = replace(c, engine=EngineSettings(max_num_seqs=64, weight_dtype="int4-awq"))
    args = vllm_launch(awq, 80 * GIB).args
    assert "--quantization" not in args
    fp8 = replace(c, engine=EngineSettings(max_num_seqs=64, weight_dtype="fp8", kv_dtype="fp8"))
    args = vllm_launch(fp8, 80 * GIB).args
    assert _arg(args, "--quantization") == "fp8"
    assert _arg(args, "--kv-cache-dtype") == "fp8"
