"""PromQL for the signals the autotuner reads about one SLMDeployment, and the recording rules
that keep those queries cheap when a Prometheus holds thousands of replicas.

Pure: builders return strings; nothing here talks to Prometheus.

Scrape-side contract (documented in docs/autotune.md):

- vLLM pods are scraped with the Kubernetes pod role, and the relabelling copies
  ``__meta_kubernetes_namespace`` to ``namespace``, ``__meta_kubernetes_pod_name`` to ``pod`` and
  the pod label ``slmpack.dev/deployment`` (``__meta_kubernetes_pod_label_slmpack_dev_deployment``)
  to :data:`DEPLOYMENT_LABEL`. A Packed pod's engines are told apart by vLLM's ``engine`` label.
- dcgm-exporter runs with its Kubernetes pod mapper and is scraped with ``honor_labels: true``,
  so the ``pod`` and ``namespace`` it writes on a GPU's series are kept as they are instead of
  becoming ``exported_pod``. That pair is how a replica is joined to its physical GPU (``UUID``).

Energy attribution. DCGM measures power and energy per physical GPU, and several replicas (of
one or several SLMDeployments) may share that GPU. Each replica gets the share of the GPU's
energy equal to its share of the tokens generated on that GPU over the window:

    watts(pod) = energy_rate(GPU) * tokens(pod) / sum of tokens(p) for pods p on that GPU

Decode dominates the energy of these workloads and costs about the same per token in every
replica of one model, so generated tokens are a fair proxy for work. A small epsilon
(:data:`IDLE_TOKENS_PER_S`) is added to every pod's rate so an idle GPU's energy splits evenly
among its pods instead of dividing zero by zero. Energy of a GPU shared with pods that run no
vLLM goes entirely to the vLLM pods. When dcgm-exporter labels a shared GPU with only one of its
pods (its default pod mapper under time-slicing), that pod receives the whole GPU: the
SLMDeployment's total stays right as long as its GPUs are not shared with other
SLMDeployments, only the split among its own replicas is lost. Without any pod labels on DCGM
series the attributed signals are absent and the autotuner treats energy as unmeasured.

Where the slmpack node agent runs, its ``slmpack_replica_energy_joules_total`` gives each
replica container's energy as NVML's per-process SM utilisation split it (docs/nodeagent.md):
what each replica really used, not a token-share estimate. `Signal.AGENT_ENERGY_WATTS` sums its
rate over the deployment's pods (joined on namespace and pod with the vLLM series, which carry
the deployment label); the policy prefers it and falls back to the token share without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

import yaml

from slmpack import metricnames as mn

#: Label carrying the owning SLMDeployment's name on every vLLM series (the Prometheus
#: relabelling of the pod label ``slmpack.dev/deployment``; dots and slashes are not allowed in
#: Prometheus label names).
DEPLOYMENT_LABEL = "slmpack_dev_deployment"
#: The pod's namespace and name as the scrape config writes them, on vLLM series, and as
#: dcgm-exporter's pod mapper writes them on DCGM series.
NAMESPACE_LABEL = mn.DCGM_LABEL_NAMESPACE
POD_LABEL = mn.DCGM_LABEL_POD
#: Physical GPU identity on DCGM series; MIG instances carry their parent's UUID.
GPU_LABEL = mn.DCGM_LABEL_UUID
#: The label request_success is split by.
FINISHED_REASON_LABEL = "finished_reason"
#: Added to each pod's token rate before attribution so idle GPUs split evenly (tokens/s); far
#: below any real decode rate, so it never moves a busy GPU's split measurably.
IDLE_TOKENS_PER_S = 0.001
#: Window of the recording rules. One minute holds four samples at the common 15 s scrape
#: interval, the least `rate` needs to ride out one missed scrape.
RULE_WINDOW_S = 60
#: How often Prometheus evaluates the recording rules.
RULE_INTERVAL_S = 30
#: Quantile of the latency signals, the SLO's.
LATENCY_QUANTILE = 0.99
RULE_GROUP = "slmpack-autotune"
_MIB_BYTES = 1024 * 1024
_DEPLOYMENT_GROUP = f"{NAMESPACE_LABEL}, {DEPLOYMENT_LABEL}"


class Signal(StrEnum):
    """One measured quantity; the unit is in the name."""

    GENERATION_TOKENS_PER_S = "generation_tokens_per_s"
    PROMPT_TOKENS_PER_S = "prompt_tokens_per_s"
    REQUESTS_RUNNING = "requests_running"  # summed over engines, averaged over the window
    REQUESTS_WAITING = "requests_waiting"
    ENGINES_REPORTING = "engines_reporting"
    NEWEST_SAMPLE_AGE_S = "newest_sample_age_s"
    KV_CACHE_USAGE_RATIO = "kv_cache_usage_ratio"  # mean over engines
    TTFT_P99_S = "ttft_p99_s"
    ITL_P99_S = "itl_p99_s"
    ITL_MEAN_S = "itl_mean_s"
    PREEMPTIONS_PER_S = "preemptions_per_s"
    FINISHED_REQUESTS_PER_S = "finished_requests_per_s"  # by finished_reason
    ATTRIBUTED_ENERGY_WATTS = "attributed_energy_watts"  # from the energy counter
    ATTRIBUTED_POWER_WATTS = "attributed_power_watts"  # from the power gauge (fallback)
    AGENT_ENERGY_WATTS = "agent_energy_watts"  # the node agent's per-replica energy
    GPUS_IN_USE = "gpus_in_use"
    GPU_POWER_WATTS = "gpu_power_watts"  # by UUID
    GPU_ENERGY_WATTS = "gpu_energy_watts"  # by UUID
    GPU_UTIL_RATIO = "gpu_util_ratio"  # by UUID; absent on MIG
    SM_ACTIVE_RATIO = "sm_active_ratio"  # by UUID; needs the profiling counters
    DRAM_ACTIVE_RATIO = "dram_active_ratio"  # by UUID
    FB_USED_BYTES = "fb_used_bytes"  # by UUID


#: Signals returned as a vector keyed by one label rather than as one number.
KEYED_BY: dict[Signal, str] = {
    Signal.FINISHED_REQUESTS_PER_S: FINISHED_REASON_LABEL,
    Signal.GPU_POWER_WATTS: GPU_LABEL,
    Signal.GPU_ENERGY_WATTS: GPU_LABEL,
    Signal.GPU_UTIL_RATIO: GPU_LABEL,
    Signal.SM_ACTIVE_RATIO: GPU_LABEL,
    Signal.DRAM_ACTIVE_RATIO: GPU_LABEL,
    Signal.FB_USED_BYTES: GPU_LABEL,
}

#: Signals the autotuner cannot decide without; the rest degrade gracefully when absent (DCGM
#: profiling counters on MIG, latency histograms with no traffic, energy without pod mapping).
REQUIRED: frozenset[Signal] = frozenset(
    {
        Signal.GENERATION_TOKENS_PER_S,
        Signal.REQUESTS_RUNNING,
        Signal.REQUESTS_WAITING,
        Signal.ENGINES_REPORTING,
    }
)


@dataclass(frozen=True)
class DeploymentRef:
    """One SLMDeployment, as its pods are labelled in Prometheus."""

    namespace: str
    name: str

    def matcher(self) -> str:
        """The label matchers (without braces) selecting this SLMDeployment's vLLM series."""
        return (
            f'{NAMESPACE_LABEL}="{_escape(self.namespace)}",'
            f'{DEPLOYMENT_LABEL}="{_escape(self.name)}"'
        )


@dataclass(frozen=True)
class SignalQuery:
    signal: Signal
    promql: str

    @property
    def keyed_by(self) -> str | None:
        return KEYED_BY.get(self.signal)


@dataclass(frozen=True)
class RecordingRule:
    record: str
    expr: str


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def duration(seconds: int) -> str:
    """A PromQL range: whole minutes as `1m`, otherwise seconds."""
    if seconds <= 0:
        raise ValueError("a PromQL window must be at least one second")
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def _sel(series: str, matcher: str) -> str:
    return f"{series}{{{matcher}}}" if matcher else series


# --- raw expressions: the same text serves one deployment's query and the recording rules ----


def _rate(series: str, matcher: str, window: str) -> str:
    return f"rate({_sel(series, matcher)}[{window}])"


def _avg_over(series: str, matcher: str, window: str) -> str:
    return f"avg_over_time({_sel(series, matcher)}[{window}])"


def _pod_gpu_map() -> str:
    """(namespace, pod, UUID) for every pod dcgm-exporter maps to a GPU; value 1."""
    fb = _sel(mn.DCGM_FB_USED.series, f'{POD_LABEL}!=""')
    return f"group by ({NAMESPACE_LABEL}, {POD_LABEL}, {GPU_LABEL}) ({fb})"


def _pod_gpu_tokens(matcher: str, window: str) -> str:
    """Generated tokens/s of each vLLM pod (plus the idle epsilon), labelled with its GPU."""
    tokens = _rate(mn.GENERATION_TOKENS.series, matcher, window)
    return (
        f"((sum by ({NAMESPACE_LABEL}, {POD_LABEL}) ({tokens}) + {IDLE_TOKENS_PER_S})"
        f" * on ({NAMESPACE_LABEL}, {POD_LABEL}) group_left ({GPU_LABEL}) {_pod_gpu_map()})"
    )


def _gpu_energy_watts(window: str) -> str:
    # mJ counter since driver load; rate() handles the reset a driver reload causes. Copies of
    # one GPU's series (one per pod, per MIG instance) hold the same value, so max dedupes.
    energy = _rate(mn.DCGM_TOTAL_ENERGY_CONSUMPTION.series, "", window)
    return f"(max by ({GPU_LABEL}) ({energy}) / 1000)"


def _gpu_power_watts(window: str) -> str:
    power = _avg_over(mn.DCGM_POWER_USAGE.series, "", window)
    return f"max by ({GPU_LABEL}) ({power})"


def _attributed(matcher: str, window: str, gpu_watts: str) -> str:
    share = (
        f"{_pod_gpu_tokens(matcher, window)} / on ({GPU_LABEL}) group_left()"
        f" sum by ({GPU_LABEL}) ({_pod_gpu_tokens('', window)})"
    )
    # group_left() with its empty label list: a bare group_left followed by "(" would read
    # the parenthesised right-hand side as its label list.
    return f"sum({share} * on ({GPU_LABEL}) group_left() {gpu_watts})"


def _agent_energy_watts(matcher: str, window: str) -> str:
    """Watts of the deployment's pods from the node agent's per-replica energy counters.

    The agent's series carry no deployment label: they are joined on (namespace, pod) with the
    pods' vLLM series, which do. group_left() keeps its empty label list for the same reason
    as in `_attributed`.
    """
    energy = _rate(mn.NODE_AGENT_REPLICA_ENERGY.series, "", window)
    pods = _sel(mn.NUM_REQUESTS_RUNNING.series, matcher)
    return (
        f"sum({energy} * on ({NAMESPACE_LABEL}, {POD_LABEL}) group_left()"
        f" group by ({NAMESPACE_LABEL}, {POD_LABEL}) ({pods}))"
    )


def _deployment_gpus(matcher: str) -> str:
    running = _sel(mn.NUM_REQUESTS_RUNNING.series, matcher)
    return (
        f"group by ({GPU_LABEL}) ({_pod_gpu_map()}"
        f" and on ({NAMESPACE_LABEL}, {POD_LABEL}) {running})"
    )


def _gpu_ratio(series: str, window: str, scale: str = "") -> str:
    # avg over copies: identical per pod, per-instance values on MIG average to the GPU.
    return f"avg by ({GPU_LABEL}) ({_avg_over(series, '', window)}){scale}"


def _fb_used_bytes(window: str) -> str:
    # Per MIG instance on MIG: dedupe the pod copies of each instance, then add instances.
    inner = _avg_over(mn.DCGM_FB_USED.series, "", window)
    return (
        f"sum by ({GPU_LABEL}) (max by ({GPU_LABEL}, {mn.DCGM_LABEL_MIG_INSTANCE}) ({inner}))"
        f" * {_MIB_BYTES}"
    )


def _quantile(bucket_rates: str) -> str:
    return f"histogram_quantile({LATENCY_QUANTILE}, sum by (le) ({bucket_rates}))"


def _kv_usage(matcher: str, window: str, by: str) -> str:
    # vLLM 0.11 renamed the gauge; older images and simulators still emit the legacy name.
    group = f" by ({by})" if by else ""
    current = _avg_over(mn.KV_CACHE_USAGE_PERC.series, matcher, window)
    legacy = _avg_over(mn.GPU_CACHE_USAGE_PERC_LEGACY.series, matcher, window)
    return f"avg{group} ({current}) or avg{group} ({legacy})"


def raw_queries(ref: DeploymentRef, window_s: int = RULE_WINDOW_S) -> tuple[SignalQuery, ...]:
    """Every signal of one SLMDeployment straight from the exporters' series."""
    m, w = ref.matcher(), duration(window_s)
    ttft = mn.TIME_TO_FIRST_TOKEN
    itl = mn.INTER_TOKEN_LATENCY
    dep_gpus = _deployment_gpus(m)
    running = _sel(mn.NUM_REQUESTS_RUNNING.series, m)

    def per_gpu(expr: str) -> str:
        return f"{expr} and on ({GPU_LABEL}) {dep_gpus}"

    queries = {
        Signal.GENERATION_TOKENS_PER_S: f"sum({_rate(mn.GENERATION_TOKENS.series, m, w)})",
        Signal.PROMPT_TOKENS_PER_S: f"sum({_rate(mn.PROMPT_TOKENS.series, m, w)})",
        Signal.REQUESTS_RUNNING: f"sum({_avg_over(mn.NUM_REQUESTS_RUNNING.series, m, w)})",
        Signal.REQUESTS_WAITING: f"sum({_avg_over(mn.NUM_REQUESTS_WAITING.series, m, w)})",
        Signal.ENGINES_REPORTING: f"count({running})",
        Signal.NEWEST_SAMPLE_AGE_S: f"time() - max(timestamp({running}))",
        Signal.KV_CACHE_USAGE_RATIO: _kv_usage(m, w, ""),
        Signal.TTFT_P99_S: _quantile(_rate(ttft.bucket_series, m, w)),
        Signal.ITL_P99_S: _quantile(_rate(itl.bucket_series, m, w)),
        Signal.ITL_MEAN_S: (
            f"sum({_rate(itl.name + '_sum', m, w)}) / sum({_rate(itl.name + '_count', m, w)})"
        ),
        Signal.PREEMPTIONS_PER_S: f"sum({_rate(mn.NUM_PREEMPTIONS.series, m, w)})",
        Signal.FINISHED_REQUESTS_PER_S: (
            f"sum by ({FINISHED_REASON_LABEL}) ({_rate(mn.REQUEST_SUCCESS.series, m, w)})"
        ),
        Signal.ATTRIBUTED_ENERGY_WATTS: _attributed(m, w, _gpu_energy_watts(w)),
        Signal.ATTRIBUTED_POWER_WATTS: _attributed(m, w, f"({_gpu_power_watts(w)})"),
        Signal.AGENT_ENERGY_WATTS: _agent_energy_watts(m, w),
        Signal.GPUS_IN_USE: f"count({dep_gpus})",
        Signal.GPU_POWER_WATTS: per_gpu(_gpu_power_watts(w)),
        Signal.GPU_ENERGY_WATTS: per_gpu(_gpu_energy_watts(w)),
        Signal.GPU_UTIL_RATIO: per_gpu(_gpu_ratio(mn.DCGM_GPU_UTIL.series, w, " / 100")),
        Signal.SM_ACTIVE_RATIO: per_gpu(_gpu_ratio(mn.DCGM_SM_ACTIVE.series, w)),
        Signal.DRAM_ACTIVE_RATIO: per_gpu(_gpu_ratio(mn.DCGM_DRAM_ACTIVE.series, w)),
        Signal.FB_USED_BYTES: per_gpu(_fb_used_bytes(w)),
    }
    return tuple(SignalQuery(s, queries[s]) for s in Signal)


# --- recording rules ------------------------------------------------------------------------


def _rule_name(level: str, metric: str, operation: str) -> str:
    """Prometheus' level:metric:operations naming convention."""
    return f"slmpack:{level}_{metric}:{operation}"


@dataclass(frozen=True)
class _Names:
    """Names of the recorded series at one window."""

    window: str

    @property
    def pod_tokens(self) -> str:
        return _rule_name("pod", "generation_tokens", f"rate{self.window}")

    @property
    def prompt_tokens(self) -> str:
        return _rule_name("deployment", "prompt_tokens", f"rate{self.window}")

    @property
    def running(self) -> str:
        return _rule_name("deployment", "requests_running", f"avg{self.window}")

    @property
    def waiting(self) -> str:
        return _rule_name("deployment", "requests_waiting", f"avg{self.window}")

    @property
    def engines(self) -> str:
        return _rule_name("deployment", "engines", "count")

    @property
    def newest_sample(self) -> str:
        return _rule_name("deployment", "newest_sample", "timestamp")

    @property
    def kv_usage(self) -> str:
        return _rule_name("deployment", "kv_cache_usage", f"ratio_avg{self.window}")

    def latency_buckets(self, metric: str) -> str:
        return _rule_name("deployment", f"{metric}_bucket", f"rate{self.window}")

    @property
    def itl_sum(self) -> str:
        return _rule_name("deployment", "inter_token_latency_seconds_sum", f"rate{self.window}")

    @property
    def itl_count(self) -> str:
        return _rule_name("deployment", "inter_token_latency_seconds_count", f"rate{self.window}")

    @property
    def preemptions(self) -> str:
        return _rule_name("deployment", "preemptions", f"rate{self.window}")

    @property
    def finished(self) -> str:
        return _rule_name("deployment", "finished_requests", f"rate{self.window}")

    @property
    def pod_gpu(self) -> str:
        return _rule_name("pod", "gpu", "info")

    @property
    def pod_gpu_tokens(self) -> str:
        return _rule_name("pod_gpu", "generation_tokens", f"rate{self.window}")

    @property
    def pod_share(self) -> str:
        return _rule_name("pod_gpu", "token_share", f"ratio{self.window}")

    @property
    def gpu_energy(self) -> str:
        return _rule_name("gpu", "energy", f"watts{self.window}")

    @property
    def gpu_power(self) -> str:
        return _rule_name("gpu", "power", f"watts_avg{self.window}")

    @property
    def pod_energy(self) -> str:
        return _rule_name("pod_gpu", "energy", f"watts{self.window}")

    @property
    def pod_power(self) -> str:
        return _rule_name("pod_gpu", "power", f"watts_avg{self.window}")

    @property
    def agent_energy(self) -> str:
        return _rule_name("deployment", "agent_energy", f"watts{self.window}")

    @property
    def gpu_util(self) -> str:
        return _rule_name("gpu", "util", f"ratio_avg{self.window}")

    @property
    def sm_active(self) -> str:
        return _rule_name("gpu", "sm_active", f"ratio_avg{self.window}")

    @property
    def dram_active(self) -> str:
        return _rule_name("gpu", "dram_active", f"ratio_avg{self.window}")

    @property
    def fb_used(self) -> str:
        return _rule_name("gpu", "fb_used", f"bytes_avg{self.window}")


def recording_rules(window_s: int = RULE_WINDOW_S) -> tuple[RecordingRule, ...]:
    """The rules behind :func:`recorded_queries`, in dependency order.

    Per-deployment series are aggregated by (namespace, deployment), so the autotuner's queries
    touch a handful of series each however many replicas run. The token share and attributed
    energy are kept per (pod, GPU) because the share's denominator spans every pod on a GPU,
    whichever SLMDeployment it belongs to.
    """
    w = duration(window_s)
    n = _Names(w)
    dep = f'{DEPLOYMENT_LABEL}!=""'
    by_dep = _DEPLOYMENT_GROUP
    by_pod = f"{NAMESPACE_LABEL}, {POD_LABEL}, {DEPLOYMENT_LABEL}"
    ttft = mn.TIME_TO_FIRST_TOKEN
    itl = mn.INTER_TOKEN_LATENCY
    rules = [
        # Every vLLM pod, labelled or not: all of them enter the attribution's denominator.
        (n.pod_tokens, f"sum by ({by_pod}) ({_rate(mn.GENERATION_TOKENS.series, '', w)})"),
        (n.prompt_tokens, f"sum by ({by_dep}) ({_rate(mn.PROMPT_TOKENS.series, dep, w)})"),
        (n.running, f"sum by ({by_dep}) ({_avg_over(mn.NUM_REQUESTS_RUNNING.series, dep, w)})"),
        (n.waiting, f"sum by ({by_dep}) ({_avg_over(mn.NUM_REQUESTS_WAITING.series, dep, w)})"),
        (n.engines, f"count by ({by_dep}) ({_sel(mn.NUM_REQUESTS_RUNNING.series, dep)})"),
        (
            n.newest_sample,
            f"max by ({by_dep}) (timestamp({_sel(mn.NUM_REQUESTS_RUNNING.series, dep)}))",
        ),
        (n.kv_usage, _kv_usage(dep, w, by_dep)),
        (
            n.latency_buckets("time_to_first_token_seconds"),
            f"sum by ({by_dep}, le) ({_rate(ttft.bucket_series, dep, w)})",
        ),
        (
            n.latency_buckets("inter_token_latency_seconds"),
            f"sum by ({by_dep}, le) ({_rate(itl.bucket_series, dep, w)})",
        ),
        (n.itl_sum, f"sum by ({by_dep}) ({_rate(itl.name + '_sum', dep, w)})"),
        (n.itl_count, f"sum by ({by_dep}) ({_rate(itl.name + '_count', dep, w)})"),
        (n.preemptions, f"sum by ({by_dep}) ({_rate(mn.NUM_PREEMPTIONS.series, dep, w)})"),
        (
            n.finished,
            f"sum by ({by_dep}, {FINISHED_REASON_LABEL})"
            f" ({_rate(mn.REQUEST_SUCCESS.series, dep, w)})",
        ),
        (n.pod_gpu, _pod_gpu_map()),
        (
            n.pod_gpu_tokens,
            f"({n.pod_tokens} + {IDLE_TOKENS_PER_S})"
            f" * on ({NAMESPACE_LABEL}, {POD_LABEL}) group_left ({GPU_LABEL}) {n.pod_gpu}",
        ),
        (
            n.pod_share,
            f"{n.pod_gpu_tokens} / on ({GPU_LABEL}) group_left()"
            f" sum by ({GPU_LABEL}) ({n.pod_gpu_tokens})",
        ),
        (n.gpu_energy, _gpu_energy_watts(w)),
        (n.gpu_power, _gpu_power_watts(w)),
        (n.pod_energy, f"{n.pod_share} * on ({GPU_LABEL}) group_left() {n.gpu_energy}"),
        (n.pod_power, f"{n.pod_share} * on ({GPU_LABEL}) group_left() {n.gpu_power}"),
        (
            n.agent_energy,
            f"sum by ({by_dep}) ({_rate(mn.NODE_AGENT_REPLICA_ENERGY.series, '', w)}"
            f" * on ({NAMESPACE_LABEL}, {POD_LABEL}) group_left ({DEPLOYMENT_LABEL})"
            f" group by ({by_pod}) ({_sel(mn.NUM_REQUESTS_RUNNING.series, dep)}))",
        ),
        (n.gpu_util, _gpu_ratio(mn.DCGM_GPU_UTIL.series, w, " / 100")),
        (n.sm_active, _gpu_ratio(mn.DCGM_SM_ACTIVE.series, w)),
        (n.dram_active, _gpu_ratio(mn.DCGM_DRAM_ACTIVE.series, w)),
        (n.fb_used, _fb_used_bytes(w)),
    ]
    return tuple(RecordingRule(record, _strip_outer(expr)) for record, expr in rules)


def _strip_outer(expr: str) -> str:
    """Drop one pair of parentheses that wraps the whole expression."""
    if not (expr.startswith("(") and expr.endswith(")")):
        return expr
    depth = 0
    for i, char in enumerate(expr):
        depth += char == "("
        depth -= char == ")"
        if depth == 0 and i < len(expr) - 1:
            return expr
    return expr[1:-1]


def recorded_queries(ref: DeploymentRef, window_s: int = RULE_WINDOW_S) -> tuple[SignalQuery, ...]:
    """Every signal of one SLMDeployment read from the recording rules at `window_s`."""
    n = _Names(duration(window_s))
    m = ref.matcher()
    dep_gpus = f"group by ({GPU_LABEL}) ({n.pod_share}{{{m}}})"

    def dep_sum(name: str) -> str:
        return f"sum({name}{{{m}}})"

    def per_gpu(name: str) -> str:
        return f"{name} and on ({GPU_LABEL}) {dep_gpus}"

    queries = {
        Signal.GENERATION_TOKENS_PER_S: dep_sum(n.pod_tokens),
        Signal.PROMPT_TOKENS_PER_S: dep_sum(n.prompt_tokens),
        Signal.REQUESTS_RUNNING: dep_sum(n.running),
        Signal.REQUESTS_WAITING: dep_sum(n.waiting),
        Signal.ENGINES_REPORTING: dep_sum(n.engines),
        Signal.NEWEST_SAMPLE_AGE_S: f"time() - max({n.newest_sample}{{{m}}})",
        Signal.KV_CACHE_USAGE_RATIO: f"avg({n.kv_usage}{{{m}}})",
        Signal.TTFT_P99_S: _quantile(f"{n.latency_buckets('time_to_first_token_seconds')}{{{m}}}"),
        Signal.ITL_P99_S: _quantile(f"{n.latency_buckets('inter_token_latency_seconds')}{{{m}}}"),
        Signal.ITL_MEAN_S: f"{dep_sum(n.itl_sum)} / {dep_sum(n.itl_count)}",
        Signal.PREEMPTIONS_PER_S: dep_sum(n.preemptions),
        Signal.FINISHED_REQUESTS_PER_S: (f"sum by ({FINISHED_REASON_LABEL}) ({n.finished}{{{m}}})"),
        Signal.ATTRIBUTED_ENERGY_WATTS: dep_sum(n.pod_energy),
        Signal.ATTRIBUTED_POWER_WATTS: dep_sum(n.pod_power),
        Signal.AGENT_ENERGY_WATTS: dep_sum(n.agent_energy),
        Signal.GPUS_IN_USE: f"count({dep_gpus})",
        Signal.GPU_POWER_WATTS: per_gpu(n.gpu_power),
        Signal.GPU_ENERGY_WATTS: per_gpu(n.gpu_energy),
        Signal.GPU_UTIL_RATIO: per_gpu(n.gpu_util),
        Signal.SM_ACTIVE_RATIO: per_gpu(n.sm_active),
        Signal.DRAM_ACTIVE_RATIO: per_gpu(n.dram_active),
        Signal.FB_USED_BYTES: per_gpu(n.fb_used),
    }
    return tuple(SignalQuery(s, queries[s]) for s in Signal)


def deployment_queries(
    ref: DeploymentRef, window_s: int = RULE_WINDOW_S, *, recorded: bool = False
) -> tuple[SignalQuery, ...]:
    """The queries for one SLMDeployment: from the recording rules when Prometheus has them
    loaded (`recorded`), else from the raw series (fine for a few hundred replicas)."""
    return recorded_queries(ref, window_s) if recorded else raw_queries(ref, window_s)


def recording_rules_document(window_s: int = RULE_WINDOW_S) -> dict[str, object]:
    """A Prometheus rule file (``rule_files:``); a PrometheusRule's ``spec`` holds the same."""
    return {
        "groups": [
            {
                "name": RULE_GROUP,
                "interval": duration(RULE_INTERVAL_S),
                "rules": [{"record": r.record, "expr": r.expr} for r in recording_rules(window_s)],
            }
        ]
    }


def render_recording_rules(window_s: int = RULE_WINDOW_S) -> str:
    """The text of recording_rules.yaml (a unit test keeps the shipped file equal to it)."""
    header = (
        "# Generated by slmpack.autotune.signals.render_recording_rules(); do not edit.\n"
        "# Recording rules behind the autotuner's queries (docs/autotune.md, section Signals).\n"
    )
    body = yaml.safe_dump(recording_rules_document(window_s), sort_keys=False, width=100)
    return header + body


def rule_names(window_s: int = RULE_WINDOW_S) -> Iterator[str]:
    return (r.record for r in recording_rules(window_s))
