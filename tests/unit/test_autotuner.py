"""The autotuner's shell and its status glue, against an in-memory API and canned snapshots:
what a pass writes, that the reconciler follows the target in Auto mode only, that an outage
holds, and that nothing is written twice."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from slmpack.api.v1alpha1 import AutotuneStatus, AutotuneTarget, SLMDeploymentStatus
from slmpack.autotune.model import Packing, build_prior
from slmpack.autotune.policy import Action, Decision, Reason, TunerState
from slmpack.autotune.prometheus import PrometheusRejectedError, PrometheusUnavailableError
from slmpack.autotune.signals import DeploymentRef, Signal
from slmpack.autotune.snapshot import Snapshot
from slmpack.controller import autotuner as tuner
from slmpack.controller import tuning
from slmpack.controller.kube import KubeApi
from slmpack.controller.metrics import OperatorMetrics
from slmpack.controller.reconciler import Controller
from slmpack.controller.settings import AutotuneSettings, Settings
from slmpack.planner.types import SharingMode

from .controller_fixtures import FakeKube, h100_node

KEY = ("team-a", "chat")
START = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
AUTOTUNE = AutotuneSettings(
    prometheus_url="http://prometheus.test:9090",
    interval_seconds=10,
    window_seconds=10,
    settle_seconds=1,
)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def _slmd(mode: str = "Auto", generation: int = 1, **autotune: Any) -> dict[str, Any]:
    return {
        "apiVersion": "slmpack.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": "chat", "namespace": "team-a", "uid": "u-1", "generation": generation},
        "spec": {
            "model": {"uri": "hf://facebook/opt-1.3b"},
            "autotune": {"mode": mode, "objective": "Throughput", **autotune},
        },
    }


class World:
    """A controller and an autotuner sharing a fake API; statuses are fed back as watch events."""

    def __init__(self, mode: str = "Auto", prometheus: bool = True, **autotune: Any) -> None:
        self.fake = FakeKube()
        self.clock = Clock()
        settings = Settings(
            instance="operator-0",
            autotune=AUTOTUNE if prometheus else AutotuneSettings(prometheus_url=""),
        )
        self.controller = Controller(
            cast(KubeApi, self.fake),
            settings,
            OperatorMetrics(),
            clock=lambda: datetime.fromtimestamp(self.clock.now, UTC),
        )
        self.controller.on_node("ADDED", h100_node())
        self.autotuner = tuner.Autotuner(
            self.controller,
            cast(KubeApi, self.fake),
            settings,
            cast(Any, object()) if prometheus else None,
            clock=self.clock,
        )
        self.body = _slmd(mode, **autotune)
        self.controller.on_slmd("ADDED", self.body)
        self.snapshots: list[Snapshot | Exception] = []

    @property
    def status(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.body.setdefault("status", {}))

    def merge_status(self, written: Mapping[str, Any]) -> None:
        """What server-side apply makes of a status write: fields replaced, conditions merged
        by type."""
        status = self.status
        for name, value in written.items():
            if name == "conditions":
                by_type = {c["type"]: c for c in status.get("conditions", [])}
                by_type.update({c["type"]: c for c in value})
                status["conditions"] = list(by_type.values())
            else:
                status[name] = copy.deepcopy(value)

    def deliver(self) -> None:
        for write in self.fake.statuses:
            self.merge_status(write["status"])
        self.fake.statuses.clear()
        self.controller.on_slmd("MODIFIED", copy.deepcopy(self.body))

    async def reconcile(self, ready: bool = True) -> None:
        while len(self.controller.queue):
            key = await self.controller.queue.get()
            self.controller.queue.done(key)
            await self.controller.reconcile(key)
        self.deliver()
        if ready:
            self.status["readyReplicas"] = self.status.get("replicas") or self.planned.replicas
            self.controller.on_slmd("MODIFIED", copy.deepcopy(self.body))

    @property
    def planned(self) -> Any:
        return self.controller.decisions[KEY]

    async def tune(self, advance_s: float = 0.0) -> None:
        self.clock.now += advance_s
        await self.autotuner.tune_once(KEY)
        self.deliver()

    def autotune_status(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.status["autotune"])

    def condition(self) -> dict[str, Any]:
        return next(c for c in self.status["conditions"] if c["type"] == "Autotuned")


@pytest.fixture
def snapshots(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    queue: list[Any] = []

    async def fake_collect(client: Any, deployment: DeploymentRef, **_: Any) -> Snapshot:
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        return cast(Snapshot, item(deployment))

    monkeypatch.setattr(tuner, "collect_snapshot", fake_collect)
    return queue


def saturated(world: World, load: float, waiting: float = 0.0) -> Any:
    """A snapshot of the running packing serving `load` times the prior's capacity."""

    def make(deployment: DeploymentRef) -> Snapshot:
        planned = world.planned
        point = build_prior(planned.request).get(Packing.of(planned.candidate))
        assert point is not None
        gpus = planned.gpus
        generated = point.output_capacity_tokens_per_s * gpus * min(load, 1.0)
        batch = point.batch_per_replica * min(load, 1.0) * planned.replicas
        values = {
            Signal.GENERATION_TOKENS_PER_S: generated,
            Signal.PROMPT_TOKENS_PER_S: generated * 111 / 292,
            Signal.REQUESTS_RUNNING: batch,
            Signal.REQUESTS_WAITING: waiting,
            Signal.ENGINES_REPORTING: float(planned.replicas),
            Signal.NEWEST_SAMPLE_AGE_S: 1.0,
            Signal.TTFT_P99_S: 0.2,
            Signal.ITL_P99_S: 0.02,
            Signal.ATTRIBUTED_ENERGY_WATTS: 500.0 * gpus,
        }
        return Snapshot(deployment, world.clock.now, 10, values, {})

    return make


# --- pure glue ----------------------------------------------------------------------------


def test_target_round_trips_to_the_planner_key() -> None:
    packing = Packing(SharingMode.PACKED, 4, 128)
    status = AutotuneStatus(
        target=AutotuneTarget.model_validate(packing.as_dict() | {"replicas": 8, "gpus": 2})
    )

    target = tuning.target_of(status)

    assert target == tuning.Target(packing.key, 8)
    assert tuning.target_of(None) is None
    assert tuning.target_of(AutotuneStatus()) is None
    bad = AutotuneStatus(target=AutotuneTarget(mode="Bogus", replicas_per_gpu=2, max_num_seqs=8))
    assert tuning.target_of(bad) == tuning.Target(None, None)


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        ("Steady", "True"),
        ("LoadRose", "True"),
        ("Settling", "True"),
        ("SLOBreached", "True"),
        ("AtMaxReplicas", "True"),
        ("PrometheusUnavailable", "False"),
        ("MetricsStale", "False"),
        ("MetricsMissing", "False"),
        ("PrometheusRejected", "False"),
        ("PrometheusNotConfigured", "False"),
    ],
)
def test_condition_is_false_only_when_the_autotuner_cannot_work(reason: str, status: str) -> None:
    assert tuning.condition_status(reason) == status


NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def _peer(priority: int, seen_s_ago: float, lifetime: int = 60, naive: bool = False) -> Any:
    seen = NOW - timedelta(seconds=seen_s_ago)
    if naive:
        seen = seen.replace(tzinfo=None)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


@pytest.mark.parametrize(
    ("peers", "active"),
    [
        ({"me": _peer(10, 1)}, True),
        ({}, True),
        ({"me": _peer(10, 1), "other": _peer(5, 1)}, True),
        ({"me": _peer(10, 1), "other": _peer(20, 1)}, False),
        ({"me": _peer(10, 1), "other": _peer(20, 1, naive=True)}, False),
        ({"me": _peer(10, 1), "dead": _peer(20, 120)}, True),
        ({"me": _peer(10, 1), "twin": _peer(10, 1)}, False),
        ({"me": _peer(10, 1), "junk": "not a peer", "bad": {"lastseen": "never"}}, True),
    ],
)
def test_peering_verdict_follows_kopfs_rule(peers: dict[str, Any], active: bool) -> None:
    assert tuning.is_active_peer(peers, 10, NOW) is active


def _hold(at_s: float, reason: Reason = Reason.STEADY) -> Decision:
    packing = Packing(SharingMode.PACKED, 2, 256)
    return Decision(at_s, Action.HOLD, reason, "holding", packing, 4, packing, 4)


def test_outcome_is_news_only_when_the_decision_changes_and_history_is_capped() -> None:
    previous: AutotuneStatus | None = None
    conditions: tuple[Any, ...] = ()
    news = []
    for index, reason in enumerate([Reason.STEADY, Reason.STEADY, Reason.SETTLING] * 4):
        out = tuning.outcome(
            previous, conditions, _hold(START + index, reason), TunerState(), "Auto", 1, NOW, 3
        )
        news.append(out.news)
        previous = AutotuneStatus.model_validate(out.status)
        conditions = (out.condition,)

    assert news == [True, False, True] * 4
    assert previous is not None
    assert len(previous.history) == 3
    assert previous.target is None, "holds set no target"


def test_a_hold_keeps_the_target_of_the_last_change() -> None:
    packing = Packing(SharingMode.PACKED, 2, 256)
    scale = Decision(START, Action.SCALE, Reason.LOAD_FELL, "in", packing, 4, packing, 2)
    scaled = tuning.outcome(None, (), scale, TunerState(), "Auto", 1, NOW, 10)
    # The outage hold still describes the 4 replicas the policy last saw.
    outage = _hold(START + 10, Reason.PROMETHEUS_UNAVAILABLE)

    held = tuning.outcome(
        AutotuneStatus.model_validate(scaled.status),
        (scaled.condition,),
        outage,
        TunerState(),
        "Auto",
        1,
        NOW,
        10,
    )

    expected = {"mode": "Packed", "replicasPerGPU": 2, "maxNumSeqs": 256, "replicas": 2, "gpus": 1}
    assert scaled.status["target"] == expected
    assert held.status["target"] == expected


def test_outcome_unchanged_but_for_the_time_is_not_written_again() -> None:
    first = tuning.outcome(None, (), _hold(START), TunerState(), "Auto", 1, NOW, 10)
    again = tuning.outcome(
        AutotuneStatus.model_validate(first.status),
        (first.condition,),
        _hold(START + 60),
        TunerState(),
        "Auto",
        1,
        NOW + timedelta(seconds=60),
        10,
    )

    assert first.changed
    assert not again.changed
    assert not again.news


def test_state_from_status_survives_a_restart_and_forgets_trials_on_a_spec_change() -> None:
    packing = Packing(SharingMode.PACKED, 2, 256)
    state = TunerState(last_repack_s=5.0, trial_from=packing, demand=((1.0, 2.0),))
    status = AutotuneStatus(state=state.as_dict() | {"generation": 3})

    assert tuning.state_from(status, 3) == state
    assert tuning.state_from(status, 4) == state.after_spec_change()
    assert tuning.state_from(AutotuneStatus(state={"measured": [{"x": 1}]}), 3) == TunerState()
    assert tuning.state_from(None, 1) == TunerState()


# --- the shell ----------------------------------------------------------------------------


async def test_a_load_rise_scales_out_and_the_reconciler_follows(snapshots: list[Any]) -> None:
    world = World()
    await world.reconcile()
    before = world.planned.replicas
    snapshots.append(saturated(world, load=3.0, waiting=40.0 * before))

    await world.tune()  # first sight: settling
    assert world.autotune_status()["lastDecision"]["reason"] == "Settling"
    await world.tune(advance_s=15)
    await world.tune(advance_s=10)

    decision = world.autotune_status()["lastDecision"]
    assert decision["action"] == "Scale", decision
    assert decision["to"]["replicas"] > before
    assert world.autotune_status()["target"]["replicas"] == decision["to"]["replicas"]
    assert world.condition()["status"] == "True"
    await world.reconcile()
    assert world.planned.replicas == decision["to"]["replicas"]
    deployment = next(o for o in world.fake.applied[::-1] if o["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] * world.planned.engines_per_pod == world.planned.replicas
    events = [e for e in world.fake.created if e.get("action") == "Autotune"]
    assert [e["reason"] for e in events] == ["Settling", "LoadRose"]
    registry = world.controller.metrics.registry
    labels = {"namespace": KEY[0], "name": KEY[1]}
    measured = registry.get_sample_value(
        "slmpack_autotune_measured_tokens_per_second_per_gpu", labels
    )
    assert measured is not None
    assert measured > 0
    assert registry.get_sample_value("slmpack_operator_planned_gpus", labels) == (
        world.planned.gpus
    )
    decisions = registry.get_sample_value(
        "slmpack_autotune_decisions_total",
        labels | {"action": "Scale", "reason": "LoadRose"},
    )
    assert decisions == 1


async def test_recommend_reports_the_target_but_the_reconciler_ignores_it(
    snapshots: list[Any],
) -> None:
    world = World(mode="Recommend")
    await world.reconcile()
    before = world.planned.replicas
    snapshots.append(saturated(world, load=3.0, waiting=40.0 * before))

    for advance in (0, 15, 10):
        await world.tune(advance_s=advance)
    await world.reconcile()

    decision = world.autotune_status()["lastDecision"]
    assert decision["action"] == "Scale"
    assert decision["message"].startswith("recommended, not applied")
    assert world.autotune_status()["target"]["replicas"] > before
    assert world.planned.replicas == before


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (PrometheusUnavailableError("connection refused"), "PrometheusUnavailable"),
        (PrometheusRejectedError("HTTP 403: forbidden", 403), "PrometheusRejected"),
    ],
)
async def test_an_outage_holds_with_a_warning_and_writes_once(
    snapshots: list[Any], error: Exception, reason: str
) -> None:
    world = World()
    await world.reconcile()
    before = world.planned.replicas
    snapshots.append(error)

    await world.tune()
    writes = len(world.fake.writes())
    await world.tune(advance_s=10)
    await world.tune(advance_s=10)

    assert world.condition()["status"] == "False"
    assert world.condition()["reason"] == reason
    assert world.autotune_status()["lastDecision"]["action"] == "Hold"
    assert len(world.fake.writes()) == writes  # nothing new to say
    warnings = [e for e in world.fake.created if e.get("action") == "Autotune"]
    assert [(e["type"], e["reason"]) for e in warnings] == [("Warning", reason)]
    await world.reconcile()
    assert world.planned.replicas == before


async def test_without_prometheus_the_condition_says_how_to_fix_it() -> None:
    world = World(prometheus=False)
    await world.reconcile()

    await world.tune()
    writes = len(world.fake.writes())
    await world.tune(advance_s=10)

    assert world.condition()["status"] == "False"
    assert world.condition()["reason"] == "PrometheusNotConfigured"
    assert "SLMPACK_PROMETHEUS_URL" in world.condition()["message"]
    assert len(world.fake.writes()) == writes


async def test_a_restarted_autotuner_goes_on_from_status(snapshots: list[Any]) -> None:
    world = World()
    await world.reconcile()
    snapshots.append(saturated(world, load=0.5))
    await world.tune()
    await world.tune(advance_s=15)
    learnt = SLMDeploymentStatus.model_validate(world.status).autotune
    assert learnt is not None
    assert learnt.state is not None
    assert learnt.state["measured"], "the first clean window is measured"

    world.autotuner = tuner.Autotuner(
        world.controller,
        cast(KubeApi, world.fake),
        world.controller.settings,
        cast(Any, object()),
        clock=world.clock,
    )
    await world.tune(advance_s=10)

    state = SLMDeploymentStatus.model_validate(world.status).autotune
    assert state is not None
    assert state.state is not None
    windows = state.state["measured"][0]["loads"][0]["step_s"][0]
    assert windows == pytest.approx(2.0), "the restarted autotuner added to what was learnt"


async def test_the_status_write_touches_only_autotuner_fields(snapshots: list[Any]) -> None:
    world = World()
    await world.reconcile()
    snapshots.append(saturated(world, load=0.5))

    await world.autotuner.tune_once(KEY)

    (write,) = world.fake.statuses
    assert set(write["status"]) == {"autotune", "conditions"}
    assert [c["type"] for c in write["status"]["conditions"]] == ["Autotuned"]


async def test_the_reconciler_leaves_autotune_status_alone(snapshots: list[Any]) -> None:
    world = World()
    await world.reconcile()
    snapshots.append(saturated(world, load=0.5))
    await world.tune()
    world.controller.on_slmd("MODIFIED", copy.deepcopy(world.body))
    world.controller.queue.add(KEY)

    await world.reconcile()

    for write in world.fake.statuses:
        assert "autotune" not in write["status"]
        assert all(c["type"] != "Autotuned" for c in write["status"]["conditions"])


def test_policy_config_scales_staleness_with_the_window() -> None:
    config = tuner.policy_config(AUTOTUNE)

    assert config.window_s == 10
    assert config.settle_s == 1
    assert config.max_sample_age_s == 15
    assert config.max_snapshot_age_s == 20
