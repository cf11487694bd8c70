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


def test_pack_example_fleet_meets_demand() -> None:
    fleet = Path(__file__).parents[2] / "examples" / "fleet.yaml"
    result = RUNNER.invoke(app, ["pack", str(fleet), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["unmet_tokens_per_s"] == {}
    assert doc["gpus_used"] >= 1
    assert {p["model"] for p in doc["placements"]} == {"opt-1.3b", "qwen2.5-1.5b", "llama-3.2-3b"}


def test_pack_rejects_a_bad_fleet_file_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.yaml"
    bad.write_text("pools: [{name: a, gpu: NVIDIA-L4, count: 0}]\nmodels: []\n")
    result = RUNNER.invoke(app, ["pack", str(bad)])
    assert result.exit_code == 2
    assert "pools.0.count" in result.output
    assert "models" in result.output
