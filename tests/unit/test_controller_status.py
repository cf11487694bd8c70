"""Status computation: condition upserts, the Deployment's rollout, and the summaries."""

from __future__ import annotations

from typing import Any

import pytest

from slmpack.api.v1alpha1 import Condition
from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog
from slmpack.controller import status as st
from slmpack.controller.decide import Decision, decide
from slmpack.controller.inventory import cluster_offers

from .controller_fixtures import h100_node, spec

T0 = "2025-01-01T00:00:00Z"
T1 = "2025-01-01T00:05:00Z"


def _decision() -> Decision:
    # 4 engines at 2 per pod: 2 Packed pods on 2 GPUs.
    return decide(
        spec(gpu={"sharing": "Packed", "replicasPerGPU": 2}, replicas=4),
        default_model_catalog().get("opt-1.3b"),
        cluster_offers([h100_node()]),
        default_gpu_catalog(),
    )


DECISION = _decision()


def _by_type(conditions: tuple[Condition, ...]) -> dict[str, Condition]:
    assert len({c.type for c in conditions}) == len(conditions), "one condition per type"
    return {c.type: c for c in conditions}


# --- set_condition ------------------------------------------------------------------------


def test_new_condition_starts_its_transition_now() -> None:
    (cond,) = st.set_condition((), "Planned", "True", "Planned", "ok", 3, T0)

    assert cond == Condition(
        type="Planned",
        status="True",
        reason="Planned",
        message="ok",
        last_transition_time=T0,
        observed_generation=3,
    )


def test_same_status_keeps_the_transition_time_but_updates_the_rest() -> None:
    first = st.set_condition((), "Ready", "False", "ReplicasNotReady", "0 of 2", 1, T0)
    second = _by_type(st.set_condition(first, "Ready", "False", "Other", "1 of 2", 2, T1))

    assert second["Ready"].last_transition_time == T0
    assert (second["Ready"].reason, second["Ready"].message) == ("Other", "1 of 2")
    assert second["Ready"].observed_generation == 2


def test_flipped_status_moves_the_transition_time() -> None:
    first = st.set_condition((), "Ready", "False", "ReplicasNotReady", "0 of 2", 1, T0)
    flipped = _by_type(st.set_condition(first, "Ready", "True", "ReplicasReady", "2", 1, T1))

    assert flipped["Ready"].last_transition_time == T1
    unknown = _by_type(st.set_condition(first, "Ready", "Unknown", "Checking", "?", 1, T1))
    assert unknown["Ready"].last_transition_time == T1


def test_other_types_are_left_alone() -> None:
    autotuned = Condition(
        type="Autotuned", status="True", reason="Tuned", message="x", last_transition_time=T0
    )
    out = _by_type(st.set_condition((autotuned,), "Ready", "True", "R", "m", 1, T1))

    assert out["Autotuned"] == autotuned
    assert set(out) == {"Autotuned", "Ready"}


# --- rollout_of ---------------------------------------------------------------------------


def _deployment(generation: int = 3, spec_replicas: int = 2, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": spec_replicas},
        "status": status,
    }


def test_no_deployment_yet_is_nothing_ready() -> None:
    assert st.rollout_of(None, 2) == st.Rollout(0, 0, False, None)


def test_rollout_mid_way_is_not_updated() -> None:
    # One of two pods runs the new template; both old and new pods still serve.
    deployment = _deployment(
        observedGeneration=3, replicas=2, updatedReplicas=1, readyReplicas=2, availableReplicas=2
    )
    rollout = st.rollout_of(deployment, engines_per_pod=2)

    assert rollout == st.Rollout(replicas=4, ready_replicas=4, updated=False, stalled_message=None)


def test_complete_rollout_counts_engines_not_pods() -> None:
    deployment = _deployment(
        observedGeneration=3, replicas=2, updatedReplicas=2, readyReplicas=2, availableReplicas=2
    )
    assert st.rollout_of(deployment, engines_per_pod=3) == st.Rollout(6, 6, True, None)


def test_unobserved_generation_is_not_updated_even_with_matching_counts() -> None:
    # The Deployment controller has not seen our latest template yet.
    deployment = _deployment(
        generation=4,
        observedGeneration=3,
        replicas=2,
        updatedReplicas=2,
        readyReplicas=2,
        availableReplicas=2,
    )
    assert st.rollout_of(deployment, 1).updated is False


def test_surplus_old_pods_mean_not_updated() -> None:
    deployment = _deployment(
        observedGeneration=3, replicas=3, updatedReplicas=2, readyReplicas=3, availableReplicas=3
    )
    assert st.rollout_of(deployment, 1).updated is False


def test_progress_deadline_exceeded_is_stalled() -> None:
    message = 'ReplicaSet "chat-7c9" has timed out progressing.'
    deployment = _deployment(
        observedGeneration=3,
        replicas=2,
        updatedReplicas=1,
        readyReplicas=1,
        conditions=[
            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": message,
            },
        ],
    )
    assert st.rollout_of(deployment, 1).stalled_message == message


def test_replica_failure_is_stalled_only_while_true() -> None:
    failing = {
        "type": "ReplicaFailure",
        "status": "True",
        "reason": "FailedCreate",
        "message": 'pods "chat-x" is forbidden: exceeded quota',
    }
    deployment = _deployment(conditions=[failing])
    assert st.rollout_of(deployment, 1).stalled_message == failing["message"]

    healed = _deployment(conditions=[{**failing, "status": "False"}])
    assert st.rollout_of(healed, 1).stalled_message is None


def test_normal_progress_is_not_stalled() -> None:
    progressing = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}
    assert st.rollout_of(_deployment(conditions=[progressing]), 1).stalled_message is None


# --- planned_conditions / failed_conditions -----------------------------------------------


def test_decision_under_test_is_two_packed_pods() -> None:
    assert (DECISION.replicas, DECISION.pods, DECISION.gpus) == (4, 2, 2)


def test_ready_when_updated_and_all_engines_ready() -> None:
    conds = _by_type(
        st.planned_conditions((), DECISION, st.Rollout(4, 4, True, None), generation=7, now=T0)
    )

    assert set(conds) == {"Planned", "Progressing", "Degraded", "Ready"}
    assert all(c.observed_generation == 7 for c in conds.values())
    assert (conds["Planned"].status, conds["Planned"].reason) == ("True", "Planned")
    assert conds["Planned"].message == (
        "4 replicas, Packed with 2 per GPU on 2 NVIDIA-H100-80GB-HBM3"
    )
    assert (conds["Progressing"].status, conds["Progressing"].reason) == (
        "False",
        "RolloutComplete",
    )
    assert (conds["Degraded"].status, conds["Degraded"].reason) == ("False", "AsPlanned")
    assert (conds["Ready"].status, conds["Ready"].message) == ("True", "4 replicas ready")


@pytest.mark.parametrize(
    ("rollout", "message"),
    [
        (st.Rollout(4, 4, False, None), "4 of 4 replicas ready"),  # old template still serving
        (st.Rollout(4, 2, True, None), "2 of 4 replicas ready"),
        (st.Rollout(0, 0, False, None), "0 of 4 replicas ready"),
    ],
)
def test_not_ready_until_updated_and_enough_ready(rollout: st.Rollout, message: str) -> None:
    conds = _by_type(st.planned_conditions((), DECISION, rollout, 1, T0))

    assert (conds["Ready"].status, conds["Ready"].reason) == ("False", "ReplicasNotReady")
    assert conds["Ready"].message == message
    assert (conds["Progressing"].status, conds["Progressing"].reason) == ("True", "RollingOut")
    assert conds["Progressing"].message == message


def test_stalled_rollout_is_degraded() -> None:
    rollout = st.Rollout(2, 0, False, "exceeded quota")
    conds = _by_type(st.planned_conditions((), DECISION, rollout, 1, T0))

    assert (conds["Degraded"].status, conds["Degraded"].reason) == ("True", "RolloutStalled")
    assert conds["Degraded"].message == "exceeded quota"
    assert conds["Ready"].status == "False"


def test_ready_keeps_its_transition_time_across_passes() -> None:
    done = st.Rollout(4, 4, True, None)
    first = st.planned_conditions((), DECISION, done, 1, T0)
    again = _by_type(st.planned_conditions(first, DECISION, done, 1, T1))

    assert {c.last_transition_time for c in again.values()} == {T0}
    broken = _by_type(st.planned_conditions(first, DECISION, st.Rollout(4, 2, True, None), 1, T1))
    assert broken["Ready"].last_transition_time == T1
    assert broken["Planned"].last_transition_time == T0


def test_failure_sets_planned_and_ready_false_and_keeps_the_rest() -> None:
    before = st.planned_conditions((), DECISION, st.Rollout(4, 4, True, None), 1, T0)
    after = _by_type(st.failed_conditions(before, "NoMatchingGPU", "no L4 left", 2, T1))

    for type_ in ("Planned", "Ready"):
        assert (after[type_].status, after[type_].reason) == ("False", "NoMatchingGPU")
        assert after[type_].message == "no L4 left"
        assert (after[type_].observed_generation, after[type_].last_transition_time) == (2, T1)
    # The running children are left as they are, and so are their conditions.
    before_by_type = _by_type(before)
    assert after["Progressing"] == before_by_type["Progressing"]
    assert after["Degraded"] == before_by_type["Degraded"]


def test_first_failure_creates_both_conditions() -> None:
    conds = _by_type(st.failed_conditions((), "InvalidSpec", "bad", 1, T0))
    assert set(conds) == {"Planned", "Ready"}


# --- plan_status --------------------------------------------------------------------------


def test_plan_status_reports_the_decision() -> None:
    plan = st.plan_status(DECISION, "opt-1.3b")
    chosen = DECISION.candidate

    assert (plan.model, plan.product, plan.mode) == ("opt-1.3b", "NVIDIA-H100-80GB-HBM3", "Packed")
    assert (plan.replicas_per_gpu, plan.gpus, plan.pods) == (2, 2, 2)
    assert plan.mig_profile is None
    assert plan.max_num_seqs == chosen.engine.max_num_seqs
    assert plan.vllm_args == DECISION.launch.args
    assert plan.predicted is not None
    # Output tokens, as the CRD documents; the planner's total counts the prompts too.
    assert plan.predicted.tokens_per_second_per_gpu == round(chosen.perf.output_tokens_per_s)
    assert plan.predicted.tokens_per_second_per_gpu < chosen.perf.total_tokens_per_s
    assert plan.predicted.power_watts == round(chosen.perf.power_watts)
    assert plan.predicted.tokens_per_joule == (
        f"{chosen.perf.output_tokens_per_s / chosen.perf.power_watts:.2f}"
    )
    # Pinned to 2 per GPU, the plan has no one-per-GPU point to compare with.
    assert DECISION.exclusive_baseline is None
    assert plan.predicted.gain_over_exclusive is None
    # Serialised the way the CRD's status schema names the fields.
    dumped = plan.model_dump(by_alias=True, exclude_none=True)
    assert dumped["replicasPerGPU"] == 2
    assert "tokensPerSecondPerGPU" in dumped["predicted"]


def test_gain_over_exclusive_is_throughput_over_the_one_per_gpu_baseline() -> None:
    decision = decide(
        spec(),
        default_model_catalog().get("opt-1.3b"),
        cluster_offers([h100_node()]),
        default_gpu_catalog(),
    )
    baseline = decision.exclusive_baseline
    assert baseline is not None
    predicted = st.plan_status(decision, "opt-1.3b").predicted
    assert predicted is not None
    assert predicted.gain_over_exclusive is not None

    ratio = decision.candidate.perf.total_tokens_per_s / baseline.perf.total_tokens_per_s
    assert float(predicted.gain_over_exclusive) == pytest.approx(ratio, abs=0.005)
    assert ratio > 1  # packing a 1.3B model beats one engine per H100
