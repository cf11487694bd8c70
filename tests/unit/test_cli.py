"""The `slmpack` command line, run in-process."""

import json
from pathlib import Path

from typer.testing import CliRunner

from slmpack.cli.main import app

RUNNER = CliRunner()


def test_plan_table_marks_the_recommendation_and_prints_flags() -> None:
    result = RUNNER.invoke(app, ["plan", "--model", "opt-1.3b", "--gpu", "h100-80gb"])
    assert result.exit_code == 0, result.output
    assert "Pareto front: opt-1.3b on NVIDIA-H100-80GB-HBM3" in result.output
    assert "Recommended (*)" in result.output
    assert "--kv-cache-memory-bytes" in result.output


def test_plan_json_and_plot(tmp_path: Path) -> None:
    png = tmp_path / "front.png"
    result = RUNNER.invoke(
        app,
        [
            "plan",
            "--model",
            "qwen2.5-0.5b",
            "--gpu",
            "NVIDIA-L4",
            "--slo-itl",
            "80ms",
            "--json",
            "--plot",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["feasible"] is True
    assert doc["recommended"]["meets_slo"] is True
    assert doc["recommended"]["itl_p99_s"] <= 0.080
    assert any(row["recommended"] for row in doc["front"])
    assert "--max-num-seqs" in doc["vllm"]["args"]
    assert png.read_bytes().startswith(b"\x89PNG")


def test_unknown_gpu_lists_the_closest_names() -> None:
    result = RUNNER.invoke(app, ["plan", "--model", "opt-1.3b", "--gpu", "NVIDIA-H100-80GB"])
    assert result.exit_code == 2
    assert "NVIDIA-H100-80GB-HBM3" in result.output


def test_unknown_model_lists_the_closest_names() -> None:
    result = RUNNER.invoke(app, ["plan", "--model", "opt-1.4b", "--gpu", "h100"])
    assert result.exit_code == 2
    assert "opt-1.3b" in result.output


def test_model_that_fits_nowhere_on_this_gpu_names_bigger_ones() -> None:
    result = RUNNER.invoke(
        app, ["plan", "--model", "llama-3.1-8b", "--gpu", "Tesla-T4", "--max-model-len", "16384"]
    )
    assert result.exit_code == 2
    assert "needs" in result.output
    assert "NVIDIA-H100-80GB-HBM3" in result.output


def test_bad_slo_says_how_to_write_it() -> None:
    result = RUNNER.invoke(
        app, ["plan", "--model", "opt-1.3b", "--gpu", "h100", "--slo-itl", "fast"]
    )
    assert result.exit_code == 2
    assert "500ms" in result.output


EXAMPLE_FLEET = Path(__file__).parents[2] / "examples" / "fleet.yaml"


def test_pack_example_fleet_meets_demand() -> None:
    result = RUNNER.invoke(app, ["pack", str(EXAMPLE_FLEET), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["unmet_tokens_per_s"] == {}
    assert doc["gpus_used"] >= 1
    assert {p["model"] for p in doc["placements"]} == {"opt-1.3b", "qwen2.5-1.5b", "llama-3.2-3b"}


def test_pack_json_lists_every_used_gpu_with_its_engines() -> None:
    result = RUNNER.invoke(app, ["pack", str(EXAMPLE_FLEET), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    gpus = doc["gpus"]
    assert len(gpus) == doc["gpus_used"]
    groups = [g for gpu in gpus for g in gpu["replica_groups"]]
    assert sum(g["replicas"] for g in groups) == sum(p["replicas"] for p in doc["placements"])
    products = {"h100": "NVIDIA-H100-80GB-HBM3", "a100-mig": "NVIDIA-A100-SXM4-40GB"}
    for gpu in gpus:
        assert gpu["product"] == products[gpu["pool"]]
        assert gpu["node"] == f"{gpu['pool']}-{gpu['gpu'] // 8}"  # 8 GPUs per node by default
        for group in gpu["replica_groups"]:
            args = group["vllm"]["args"]
            assert args[args.index("--max-num-seqs") + 1] == str(group["max_num_seqs"])
            assert "--kv-cache-memory-bytes" in args
            if gpu["pool"] == "a100-mig":
                assert group["mode"] == "MIG"
                assert group["mig_profile"] in gpu["mig_layout"]
            else:
                assert gpu["mig_layout"] is None
                assert group["mode"] in ("Exclusive", "Packed")
        whole = [g for g in gpu["replica_groups"] if g["compute_share"] is not None]
        # Co-located engines never ask for more than the GPU between them.
        assert sum(g["compute_share"] * g["replicas"] for g in whole) <= 1.0 + 1e-6
        shares = [
            float(g["vllm"]["args"][g["vllm"]["args"].index("--gpu-memory-utilization") + 1])
            * g["replicas"]
            for g in whole
        ]
        assert sum(shares) <= 1.0


def test_pack_table_shows_gpus_nodes_layouts_and_flags() -> None:
    result = RUNNER.invoke(app, ["pack", str(EXAMPLE_FLEET)])
    assert result.exit_code == 0, result.output
    out = result.output
    for text in (
        "GPUs used (heuristic)",
        "h100/0",
        "h100-0",
        "NVIDIA-H100-80GB-HBM3",
        "MIG LAYOUT",
    ):
        assert text in out
    assert "a100-mig-0" in out  # the MIG pool is used: its instances suit the small models
    assert "#1" in out
    assert "--kv-cache-memory-bytes" in out
    assert "--max-num-seqs" in out
    # The totals printed before the per-GPU view stay.
    assert "Packing of fleet.yaml (heuristic)" in out
    assert "GPUs used: " in out


def test_pack_puts_gpus_on_nodes_by_gpus_per_node(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "pools: [{name: l4, gpu: NVIDIA-L4, count: 8, gpusPerNode: 1}]\n"
        "models: [{name: qwen2.5-0.5b, demandTokensPerSecond: 60000}]\n"
    )
    result = RUNNER.invoke(app, ["pack", str(fleet), "--json"])
    assert result.exit_code == 0, result.output
    gpus = json.loads(result.output)["gpus"]
    assert len(gpus) >= 2
    assert [gpu["node"] for gpu in gpus] == [f"l4-{gpu['gpu']}" for gpu in gpus]


def test_pack_rejects_a_bad_fleet_file_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.yaml"
    bad.write_text("pools: [{name: a, gpu: NVIDIA-L4, count: 0, gpusPerNode: 0}]\nmodels: []\n")
    result = RUNNER.invoke(app, ["pack", str(bad)])
    assert result.exit_code == 2
    assert "pools.0.count" in result.output
    assert "pools.0.gpusPerNode" in result.output
    assert "models" in result.output
