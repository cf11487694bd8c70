"""Pure glue between the autotune policy and an SLMDeployment's status.

What the autotuner writes (`status.autotune` and the `Autotuned` condition), what the
reconciler reads back from it (the target packing and replica count in Auto mode), and whether
this operator replica is the one that should tune. No API calls and no clock: the shell in
`controller.autotuner` passes `now` in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from slmpack.api.v1alpha1 import AutotuneStatus, AutotuneTarget, Condition, ConditionStatus
from slmpack.autotune.model import Packing
from slmpack.autotune.policy import WARNING_REASONS, Action, Decision, Reason, TunerState
from slmpack.controller.status import set_condition
from slmpack.planner.types import SharingMode

AUTOTUNED = "Autotuned"
#: Reasons the operator adds to the policy's own, for holds that come before any policy pass.
PROMETHEUS_REJECTED = "PrometheusRejected"
PROMETHEUS_NOT_CONFIGURED = "PrometheusNotConfigured"
#: Holds that say the autotuner cannot do its work: the condition turns False.
NOT_WORKING_REASONS = frozenset(
    {*(r.value for r in WARNING_REASONS), PROMETHEUS_REJECTED, PROMETHEUS_NOT_CONFIGURED}
) - {Reason.AT_MAX_REPLICAS.value, Reason.SLO_BREACHED.value}


@dataclass(frozen=True)
class Target:
    """What Auto mode runs: the packing (a planner Candidate.key) and the replica count."""

    packing_key: str | None
    replicas: int | None


def packing_of(target: AutotuneTarget) -> Packing | None:
    if target.mode is None or target.replicas_per_gpu is None or target.max_num_seqs is None:
        return None
    try:
        mode = SharingMode(target.mode)
    except ValueError:
        return None
    return Packing(mode, target.replicas_per_gpu, target.max_num_seqs, target.mig_profile)


def target_of(status: AutotuneStatus | None) -> Target | None:
    """The autotuner's target from status, or None when it has set none."""
    if status is None or status.target is None:
        return None
    packing = packing_of(status.target)
    return Target(packing.key if packing else None, status.target.replicas)


def raw_target(status: Mapping[str, Any] | None) -> Any:
    """status.autotune.target as stored, for cheap change detection on watch events."""
    return ((status or {}).get("autotune") or {}).get("target")


def condition_status(reason: str) -> ConditionStatus:
    return "False" if reason in NOT_WORKING_REASONS else "True"


def state_from(status: AutotuneStatus | None, generation: int) -> TunerState:
    """The policy state status carries; what survives a spec change when the generation moved.
    A state this version cannot read starts afresh rather than failing every pass."""
    data = (status.state if status is not None else None) or {}
    try:
        state = TunerState.from_dict(data)
    except (KeyError, TypeError, ValueError):
        return TunerState()
    if data.get("generation") not in (None, generation):
        return state.after_spec_change()
    return state


def _without_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_without_none(v) for v in value]
    return value


def _comparable(autotune: Mapping[str, Any]) -> Any:
    """status.autotune without what moves on every pass: the time of the pass and of the
    last decision (only their content is news)."""
    out = dict(_without_none(autotune))
    out.pop("lastTuneTime", None)
    if isinstance(out.get("lastDecision"), dict):
        out["lastDecision"] = {k: v for k, v in out["lastDecision"].items() if k != "time"}
    return out


def _same_decision(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> bool:
    if a is None:
        return False
    return all(a.get(k) == b.get(k) for k in ("action", "reason", "from", "to"))


@dataclass(frozen=True)
class TuneOutcome:
    """What one pass writes, and whether it is news (an Event, a history entry)."""

    status: dict[str, Any]  # the whole status.autotune
    condition: Condition
    changed: bool  # anything but the time differs from what status holds
    news: bool  # the decision differs from the last one
    entry: dict[str, Any]


def outcome(
    previous: AutotuneStatus | None,
    conditions: tuple[Condition, ...],
    decision: Decision,
    state: TunerState,
    mode: str,
    generation: int,
    now: datetime,
    history: int,
    reason_override: str | None = None,
) -> TuneOutcome:
    """status.autotune and the Autotuned condition after one policy pass."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    entry = decision.as_status_entry()
    if reason_override is not None:
        entry["reason"] = reason_override
    if mode == "Recommend" and decision.action is not Action.HOLD:
        entry["message"] = "recommended, not applied: " + decision.message
    last = previous.last_decision if previous is not None else None
    news = not _same_decision(last, entry)
    past = list(previous.history if previous is not None else ())
    if news:
        past = [*past, entry][-history:]
    target: dict[str, Any] | None = None
    # Only a change sets the target. A hold describes what ran when the policy last saw it,
    # which may predate the last change (an outage skips the tracking): it must not undo it.
    if decision.changes and decision.target is not None and decision.target_replicas is not None:
        target = decision.target.as_dict() | {
            "replicas": decision.target_replicas,
            "gpus": decision.target_gpus,
        }
    elif previous is not None and previous.target is not None:
        target = previous.target.model_dump(by_alias=True, exclude_none=True)
    body: dict[str, Any] = {"mode": mode}
    if target is not None:
        body["target"] = target
    body["lastDecision"] = entry
    body["history"] = past
    body["state"] = state.as_dict() | {"generation": generation}
    old = _comparable(previous.model_dump(by_alias=True, mode="json") if previous else {})
    changed = _comparable(body | {"lastDecision": entry}) != old
    body["lastTuneTime"] = stamp
    reason = entry["reason"]
    message = entry["message"]
    (condition,) = [
        c
        for c in set_condition(
            [c for c in conditions if c.type == AUTOTUNED],
            AUTOTUNED,
            condition_status(reason),
            reason,
            message,
            generation,
            stamp,
        )
        if c.type == AUTOTUNED
    ]
    old_condition = next((c for c in conditions if c.type == AUTOTUNED), None)
    changed = changed or old_condition != condition
    return TuneOutcome(body, condition, changed, news, entry)


def not_configured_condition(
    conditions: tuple[Condition, ...], generation: int, now: datetime
) -> Condition:
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    (condition,) = set_condition(
        [c for c in conditions if c.type == AUTOTUNED],
        AUTOTUNED,
        "False",
        PROMETHEUS_NOT_CONFIGURED,
        "the operator has no Prometheus to read (SLMPACK_PROMETHEUS_URL is empty); set "
        "prometheus.url in the chart, or set autotune.mode to Off",
        generation,
        stamp,
    )
    return condition


def _parse_time(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    # kopf writes naive UTC times.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def is_active_peer(peers: Mapping[str, Any], priority: int, now: datetime) -> bool:
    """Whether kopf's peering lets a replica of this priority work, by kopf's own rule: it
    freezes when a live peer has a higher priority or another has the same one. `peers` is a
    KopfPeering's status (peer id -> priority, lifetime, lastseen), which includes us."""
    same = 0
    for info in peers.values():
        if not isinstance(info, Mapping):
            continue
        seen = _parse_time(str(info.get("lastseen", "")))
        lifetime = float(info.get("lifetime", 60))
        if seen is None or seen + timedelta(seconds=lifetime) <= now:
            continue
        other = int(info.get("priority", 0))
        if other > priority:
            return False
        if other == priority:
            same += 1
    return same <= 1


def events_for(outcome_: TuneOutcome, decision: Decision) -> tuple[str, str] | None:
    """(type, reason) of the Event a pass raises, or None when it is not news."""
    if not outcome_.news:
        return None
    reason = str(outcome_.entry["reason"])
    warning = decision.event_type == "Warning" or reason in NOT_WORKING_REASONS
    return ("Warning" if warning else "Normal", reason)
