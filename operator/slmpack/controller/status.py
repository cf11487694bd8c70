"""Pure computation of an SLMDeployment's status from its decision and observed children.

Conditions follow the Kubernetes API conventions: one per type, `lastTransitionTime` moves only
when the status flips, each carries the generation it was computed from, and `Ready` sums up
the others.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slmpack.api.v1alpha1 import Condition, ConditionStatus, PlanStatus, PredictedPerf
from slmpack.controller.decide import Decision
from slmpack.units import format_duration

PLANNED = "Planned"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
READY = "Ready"
#: Conditions this controller owns (the autotuner owns `Autotuned`).
OWNED_CONDITIONS = (PLANNED, PROGRESSING, DEGRADED, READY)


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> tuple[Condition, ...]:
    """Upsert by type; the transition time is kept unless the status changes."""
    old = next((c for c in conditions if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == status else now
    new = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    return (*(c for c in conditions if c.type != type_), new)


def plan_status(decision: Decision, served_name: str) -> PlanStatus:
    chosen = decision.candidate
    perf = chosen.perf
    gain = None
    if decision.exclusive_baseline is not None:
        base = decision.exclusive_baseline.perf.total_tokens_per_s
        gain = f"{perf.total_tokens_per_s / base:.2f}" if base > 0 else None
    output_per_joule = perf.output_tokens_per_s / perf.power_watts if perf.power_watts > 0 else 0.0
    return PlanStatus(
        model=served_name,
        product=decision.offer.product,
        mode=chosen.mode.value,
        mig_profile=chosen.mig_profile,
        replicas_per_gpu=chosen.replicas_per_gpu,
        gpus=decision.gpus,
        pods=decision.pods,
        max_num_seqs=chosen.engine.max_num_seqs,
        vllm_args=decision.launch.args,
        vllm_env=tuple(f"{k}={v}" for k, v in decision.launch.env),
        gpu_memory_bytes=decision.device_memory_bytes,
        gpu_memory_source=decision.memory_source.value,
        # Output tokens, as the API documents (the planner's own figures count prompts too,
        # like the paper's "total token throughput").
        predicted=PredictedPerf(
            tokens_per_second_per_gpu=round(perf.output_tokens_per_s),
            power_watts=round(perf.power_watts),
            tokens_per_joule=f"{output_per_joule:.2f}",
            ttft_p99=format_duration(perf.ttft_p99_s),
            itl_p99=format_duration(perf.itl_p99_s),
            gain_over_exclusive=gain,
        ),
    )


@dataclass(frozen=True)
class Rollout:
    """What the owned Deployment reports, in engines (Packed pods hold several)."""

    replicas: int
    ready_replicas: int
    updated: bool  # the controller saw the latest template and every pod runs it
    stalled_message: str | None  # progress deadline exceeded or pods failing to create
    #: A fault seen on the pods themselves: (CamelCase reason, message), or None.
    pod_fault: tuple[str, str] | None = None


def pod_fault(pods: Iterable[Mapping[str, Any]]) -> tuple[str, str] | None:
    """Why pods are not running, as the scheduler and kubelet say it.

    Unschedulable pods usually mean no GPU of the planned kind is free (or a missing PVC);
    a crash loop usually means a bad image, model URI or engine argument.
    """
    unschedulable: list[str] = []
    crashing: list[str] = []
    for pod in pods:
        status = pod.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
                unschedulable.append(str(cond.get("message", "")))
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull"):
                crashing.append(f"{waiting['reason']}: {waiting.get('message', '')}".strip(": "))
    if unschedulable:
        return (
            "Unschedulable",
            f"{len(unschedulable)} pod(s) cannot be scheduled: {unschedulable[0]}",
        )
    if crashing:
        return ("ReplicasFailing", f"{len(crashing)} pod(s) failing: {crashing[0]}")
    return None


def rollout_of(
    deployment: Mapping[str, Any] | None,
    engines_per_pod: int,
    pods: Iterable[Mapping[str, Any]] = (),
) -> Rollout:
    fault = pod_fault(pods)
    if deployment is None:
        return Rollout(0, 0, False, None, fault)
    status = deployment.get("status") or {}
    spec_replicas = int((deployment.get("spec") or {}).get("replicas", 0))
    generation = int((deployment.get("metadata") or {}).get("generation", 0))
    observed = int(status.get("observedGeneration", 0))
    updated = (
        observed >= generation
        and int(status.get("updatedReplicas", 0)) == spec_replicas
        and int(status.get("replicas", 0)) == spec_replicas
        and int(status.get("availableReplicas", 0)) == spec_replicas
    )
    stalled = None
    for cond in status.get("conditions") or []:
        failing = cond.get("type") == "Progressing" and cond.get("reason") == (
            "ProgressDeadlineExceeded"
        )
        failing |= cond.get("type") == "ReplicaFailure" and cond.get("status") == "True"
        if failing:
            stalled = str(cond.get("message", cond.get("reason", "")))
    return Rollout(
        replicas=int(status.get("replicas", 0)) * engines_per_pod,
        ready_replicas=int(status.get("readyReplicas", 0)) * engines_per_pod,
        updated=updated,
        stalled_message=stalled,
        pod_fault=fault,
    )


def planned_conditions(
    conditions: Sequence[Condition],
    decision: Decision,
    rollout: Rollout,
    generation: int,
    now: str,
) -> tuple[Condition, ...]:
    chosen = decision.candidate
    profile = f" ({chosen.mig_profile})" if chosen.mig_profile else ""
    summary = (
        f"{decision.replicas} replicas, {chosen.mode.value}{profile} with "
        f"{chosen.replicas_per_gpu} per GPU on {decision.gpus} {decision.offer.product}"
    )
    out = set_condition(conditions, PLANNED, "True", "Planned", summary, generation, now)
    want = decision.replicas
    if rollout.updated and rollout.ready_replicas >= want:
        out = set_condition(
            out,
            PROGRESSING,
            "False",
            "RolloutComplete",
            "All replicas run the plan",
            generation,
            now,
        )
    else:
        message = f"{rollout.ready_replicas} of {want} replicas ready"
        out = set_condition(out, PROGRESSING, "True", "RollingOut", message, generation, now)
    if rollout.stalled_message:
        out = set_condition(
            out, DEGRADED, "True", "RolloutStalled", rollout.stalled_message, generation, now
        )
    elif rollout.pod_fault is not None:
        reason, message = rollout.pod_fault
        out = set_condition(out, DEGRADED, "True", reason, message, generation, now)
    else:
        out = set_condition(out, DEGRADED, "False", "AsPlanned", "No fault seen", generation, now)
    if rollout.ready_replicas >= want and rollout.updated:
        out = set_condition(
            out, READY, "True", "ReplicasReady", f"{want} replicas ready", generation, now
        )
    else:
        out = set_condition(
            out,
            READY,
            "False",
            "ReplicasNotReady",
            f"{rollout.ready_replicas} of {want} replicas ready",
            generation,
            now,
        )
    return out


def failed_conditions(
    conditions: Sequence[Condition],
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> tuple[Condition, ...]:
    """Planning failed: say why on Planned and Ready; the running children are left as they are."""
    out = set_condition(conditions, PLANNED, "False", reason, message, generation, now)
    return set_condition(out, READY, "False", reason, message, generation, now)
