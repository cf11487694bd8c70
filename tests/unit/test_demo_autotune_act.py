"""The demo's autotune act: its manifest and how it reads the autotuner's history."""

from __future__ import annotations

from datetime import UTC, datetime

from slmpack.api.v1alpha1 import SLMDeploymentSpec
from slmpack.demo import autotune_act as act

START = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def test_the_manifest_is_an_auto_mode_slmdeployment_on_the_acts_pool() -> None:
    body = act.slm_deployment()
    spec = SLMDeploymentSpec.model_validate(body["spec"])

    assert spec.autotune.mode == "Auto"
    assert spec.replicas is None, "Auto mode owns the replica count"
    assert spec.autotune.max_replicas == act.GPUS
    assert body["metadata"]["namespace"] == act.NAMESPACE
    pool = act.fleet().pools[0]
    assert spec.gpu.node_selector == {"slmpack.io/node-pool": pool.name}
    assert pool.gpu_product == act.L4


def test_history_becomes_rows_timed_from_the_start_of_the_load() -> None:
    history = [
        {
            "time": "2026-01-01T12:00:30Z",
            "action": "Scale",
            "reason": "LoadRose",
            "message": "60 requests queue; scaling out to 2 replicas",
            "from": {"mode": "Exclusive", "replicas": 1},
            "to": {"mode": "Exclusive", "replicas": 2, "gpus": 2},
        },
        {"time": "not a time", "action": "Hold", "reason": "Steady", "message": "m"},
    ]

    rows = act.decision_rows(history, START)

    assert rows[0] == act.DecisionRow(30.0, "Scale", "LoadRose", 1, 2, history[0]["message"])
    assert rows[1].at_s is None
    assert rows[1].replicas_to is None


def test_peak_and_final_replicas_come_from_the_samples() -> None:
    samples = tuple(
        act.Sample(float(i), "s", 6, replicas, replicas, i)
        for i, replicas in enumerate([1, 2, 4, 3, 1])
    )
    result = act.ActResult(samples, (), 10, 0, "Exclusive x1 seqs=128")

    assert (result.peak_replicas, result.final_replicas) == (4, 1)
    assert result.as_dict()["peak_replicas"] == 4
    assert act.ActResult((), (), 0, 0, "").final_replicas == 0


def test_the_report_shows_changes_and_the_first_steady_hold_after_each() -> None:
    from slmpack.demo.report import autotune_rows

    def row(at: float, action: str, reason: str, a: int, b: int) -> act.DecisionRow:
        return act.DecisionRow(at, action, reason, a, b, f"{action} {reason}")

    decisions = (
        row(1, "Hold", "Settling", 1, 1),
        row(5, "Hold", "Steady", 1, 1),
        row(9, "Hold", "Steady", 1, 1),
        row(20, "Scale", "LoadRose", 1, 3),
        row(24, "Hold", "Settling", 3, 3),
        row(40, "Hold", "Steady", 3, 3),
        row(60, "Scale", "LoadFell", 3, 2),
    )
    result = act.ActResult((), decisions, 1, 0, "Exclusive x1 seqs=128")

    rows = autotune_rows(result)

    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("5", "Hold", "Steady", "1"),
        ("20", "Scale", "LoadRose", "1 -> 3"),
        ("40", "Hold", "Steady", "3"),
        ("60", "Scale", "LoadFell", "3 -> 2"),
    ]
