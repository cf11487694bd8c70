"""The autotuner's PromQL: well formed, reading only metric names slmpack knows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from slmpack import metricnames as mn
from slmpack.autotune import signals
from slmpack.autotune.signals import (
    DEPLOYMENT_LABEL,
    REQUIRED,
    DeploymentRef,
    Signal,
    raw_queries,
    recorded_queries,
    recording_rules,
    render_recording_rules,
)

REF = DeploymentRef("team-a", "chat")
RULES_FILE = Path(signals.__file__).with_name("recording_rules.yaml")

#: Aggregations, functions, operators and modifiers that look like identifiers in PromQL.
_KEYWORDS = frozenset(
    {
        "sum", "avg", "max", "min", "count", "group", "by", "without", "on", "ignoring",
        "group_left", "group_right", "and", "or", "unless", "rate", "avg_over_time",
        "histogram_quantile", "time", "timestamp",
    }
)  # fmt: skip
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def _known_series() -> set[str]:
    names: set[str] = set()
    for value in vars(mn).values():
        if isinstance(value, mn.MetricSpec):
            names.add(value.series)
            if value.kind is mn.MetricKind.HISTOGRAM:
                names |= {value.bucket_series, f"{value.name}_sum", f"{value.name}_count"}
    return names


KNOWN = _known_series()


def _check_balanced(promql: str) -> None:
    """Brackets nest and close, outside string literals."""
    pairs = {")": "(", "}": "{", "]": "["}
    stack: list[str] = []
    in_string = False
    escaped = False
    for char in promql:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "({[":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            raise ValueError(f"unbalanced {char!r} in {promql}")
    if stack or in_string:
        raise ValueError(f"unclosed {stack} in {promql}")


def metric_names(promql: str) -> set[str]:
    """The series a query reads: identifiers left once strings, matchers, ranges, label lists,
    keywords and function names are taken out."""
    _check_balanced(promql)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', promql)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = _LABEL_LISTS.sub(" ", text)
    text = re.sub(r"\bgroup_(left|right)\b", " ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group()
        rest = text[match.end() :].lstrip()
        if name in _KEYWORDS or rest.startswith("("):
            continue
        names.add(name)
    return names


def test_the_parser_finds_names_and_rejects_unbalanced_text() -> None:
    assert metric_names('sum by (le) (rate(a_b{x="(}"}[1m])) / on (UUID) group_left c') == {
        "a_b",
        "c",
    }
    with pytest.raises(ValueError, match="unclosed"):
        metric_names("sum(rate(x[1m])")
    with pytest.raises(ValueError, match="unbalanced"):
        metric_names("sum(x{a=1)}")


def test_every_signal_has_both_kinds_of_query() -> None:
    assert [q.signal for q in raw_queries(REF)] == list(Signal)
    assert [q.signal for q in recorded_queries(REF)] == list(Signal)
    assert set(Signal) >= REQUIRED


@pytest.mark.parametrize("window_s", [60, 90, 300])
def test_raw_queries_read_known_metrics_of_this_deployment_only(window_s: int) -> None:
    for query in raw_queries(REF, window_s):
        names = metric_names(query.promql)
        assert names, query
        assert names <= KNOWN, (query.signal, names - KNOWN)
        assert f'{DEPLOYMENT_LABEL}="chat"' in query.promql, query.signal
        assert 'namespace="team-a"' in query.promql
        if "[" in query.promql:
            assert f"[{signals.duration(window_s)}]" in query.promql


def test_recording_rules_read_known_metrics_and_earlier_rules() -> None:
    defined: set[str] = set()
    for rule in recording_rules():
        names = metric_names(rule.expr)
        assert names <= KNOWN | defined, (rule.record, names - KNOWN - defined)
        assert rule.record.startswith("slmpack:")
        assert rule.record.count(":") == 2
        assert rule.record not in defined
        defined.add(rule.record)


def test_recorded_queries_read_only_recorded_series() -> None:
    defined = {r.record for r in recording_rules()}
    for query in recorded_queries(REF):
        names = metric_names(query.promql)
        assert names, query.signal
        assert names <= defined, (query.signal, names - defined)


def test_the_shipped_rule_file_is_the_generated_one() -> None:
    assert RULES_FILE.read_text() == render_recording_rules()
    document = yaml.safe_load(RULES_FILE.read_text())
    assert document["groups"][0]["name"] == signals.RULE_GROUP
    assert len(document["groups"][0]["rules"]) == len(recording_rules())


def test_latency_quantiles_read_the_bucket_series() -> None:
    queries = {q.signal: q.promql for q in raw_queries(REF)}
    assert queries[Signal.TTFT_P99_S].startswith("histogram_quantile(0.99, sum by (le) (rate(")
    assert mn.TIME_TO_FIRST_TOKEN.bucket_series in queries[Signal.TTFT_P99_S]
    assert mn.INTER_TOKEN_LATENCY.bucket_series in queries[Signal.ITL_P99_S]
    assert (
        f"sum by (finished_reason) (rate({mn.REQUEST_SUCCESS.series}"
        in (queries[Signal.FINISHED_REQUESTS_PER_S])
    )


def test_energy_is_a_rate_of_millijoules_shared_by_tokens() -> None:
    energy = {q.signal: q.promql for q in raw_queries(REF)}[Signal.ATTRIBUTED_ENERGY_WATTS]
    assert f"rate({mn.DCGM_TOTAL_ENERGY_CONSUMPTION.series}[1m])) / 1000" in energy
    # The denominator spans every vLLM pod on the GPU, whichever deployment it belongs to.
    assert f"rate({mn.GENERATION_TOKENS.series}[1m])" in energy
    assert f"+ {signals.IDLE_TOKENS_PER_S}" in energy
    assert "group_left (UUID)" in energy


def test_kv_usage_falls_back_to_the_legacy_gauge() -> None:
    kv = {q.signal: q.promql for q in raw_queries(REF)}[Signal.KV_CACHE_USAGE_RATIO]
    assert mn.KV_CACHE_USAGE_PERC.series in kv
    assert " or " in kv
    assert mn.GPU_CACHE_USAGE_PERC_LEGACY.series in kv


def test_label_values_are_escaped() -> None:
    odd = DeploymentRef('we"ird', "a\\b")
    assert odd.matcher() == 'namespace="we\\"ird",slmpack_dev_deployment="a\\\\b"'
    for query in raw_queries(odd):
        metric_names(query.promql)  # still balanced


def test_windows_are_whole_minutes_or_seconds() -> None:
    assert signals.duration(60) == "1m"
    assert signals.duration(90) == "90s"
    with pytest.raises(ValueError, match="at least one second"):
        signals.duration(0)


def test_agent_energy_sums_the_replica_counters_of_this_deployments_pods() -> None:
    (query,) = [q for q in raw_queries(REF) if q.signal is Signal.AGENT_ENERGY_WATTS]

    assert "rate(slmpack_replica_energy_joules_total[1m])" in query.promql
    # The agent's series have no deployment label: joined on the vLLM pods that do.
    assert "* on (namespace, pod) group_left() group by (namespace, pod)" in query.promql
    assert 'vllm:num_requests_running{namespace="team-a",slmpack_dev_deployment="chat"}' in (
        query.promql
    )
    (recorded,) = [q for q in recorded_queries(REF) if q.signal is Signal.AGENT_ENERGY_WATTS]
    assert recorded.promql == (
        'sum(slmpack:deployment_agent_energy:watts1m{namespace="team-a",'
        'slmpack_dev_deployment="chat"})'
    )


def test_the_policy_prefers_the_agents_energy_to_the_token_share() -> None:
    from slmpack.autotune.model import Packing
    from slmpack.autotune.policy import Observation, RunningConfig
    from slmpack.autotune.snapshot import Snapshot
    from slmpack.planner.types import SharingMode

    running = RunningConfig(Packing(SharingMode.PACKED, 4, 64), 4, 4)
    dcgm = {Signal.ATTRIBUTED_ENERGY_WATTS: 300.0, Signal.ATTRIBUTED_POWER_WATTS: 310.0}

    with_agent = Snapshot(REF, 0.0, 60, {**dcgm, Signal.AGENT_ENERGY_WATTS: 250.0})
    without = Snapshot(REF, 0.0, 60, dcgm)
    power_only = Snapshot(REF, 0.0, 60, {Signal.ATTRIBUTED_POWER_WATTS: 310.0})

    assert Observation.from_snapshot(with_agent, running).attributed_watts == 250.0
    assert Observation.from_snapshot(without, running).attributed_watts == 300.0
    assert Observation.from_snapshot(power_only, running).attributed_watts == 310.0
