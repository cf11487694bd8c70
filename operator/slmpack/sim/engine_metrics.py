"""vLLM's /metrics families for one simulated engine, on a registry of its own.

Every family, label set and bucket list comes from `slmpack.metricnames`, which mirrors vLLM
0.32's ``PrometheusStatLogger``. prometheus_client renders them, so suffixes (``_total``,
``_bucket``, ``_created``) match what vLLM's own prometheus_client emits. Each engine gets its
own ``CollectorRegistry`` so that many engines can share one process.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from slmpack import metricnames as mn
from slmpack.sim.scheduler import Batch, SimRequest, StepOutcome

ENGINE_INDEX = "0"


class EngineMetrics:
    """The exporter side of one engine: update per step, render per scrape."""

    def __init__(self, served_model_name: str, max_model_len: int, cache_info: dict[str, str]):
        self.registry = CollectorRegistry(auto_describe=True)
        self._labels = (served_model_name, ENGINE_INDEX)
        self._families: dict[str, Counter | Gauge | Histogram] = {}
        for spec in mn.VLLM_DEFAULT_METRICS:
            self._families[spec.name] = self._build(spec, max_model_len)

        def child(spec: mn.MetricSpec, *extra: str) -> Counter | Gauge | Histogram:
            family = self._families[spec.name]
            return family.labels(*self._labels, *extra)

        counter = self._counter
        self.preemptions = counter(child(mn.NUM_PREEMPTIONS))
        self.prompt_tokens = counter(child(mn.PROMPT_TOKENS))
        self.prompt_tokens_local = counter(child(mn.PROMPT_TOKENS_BY_SOURCE, "local_compute"))
        self.generation_tokens = counter(child(mn.GENERATION_TOKENS))
        self.success = {
            reason: counter(child(mn.REQUEST_SUCCESS, reason)) for reason in mn.VLLM_FINISH_REASONS
        }
        # Families vLLM exports with zero values when the feature never fires.
        for spec in (
            mn.PREFIX_CACHE_QUERIES,
            mn.PREFIX_CACHE_HITS,
            mn.EXTERNAL_PREFIX_CACHE_QUERIES,
            mn.EXTERNAL_PREFIX_CACHE_HITS,
            mn.MM_CACHE_QUERIES,
            mn.MM_CACHE_HITS,
            mn.PROMPT_TOKENS_CACHED,
        ):
            child(spec)
        for source in mn.VLLM_PROMPT_TOKEN_SOURCES:
            child(mn.PROMPT_TOKENS_BY_SOURCE, source)
        for source in mn.VLLM_CACHE_HIT_SOURCES:
            child(mn.PROMPT_TOKENS_CACHED_BY_SOURCE, source)
        for reason in mn.VLLM_ADMISSION_REASONS:
            self._families[mn.ADMISSION_REJECTIONS.name].labels(served_model_name, reason)
        sleep = self._families[mn.ENGINE_SLEEP_STATE.name]
        for state in mn.VLLM_SLEEP_STATES:
            self._gauge(sleep.labels(*self._labels, state)).set(1 if state == "awake" else 0)
        info = self._families[mn.CACHE_CONFIG_INFO.name]
        values = {**cache_info, "engine": ENGINE_INDEX}
        self._gauge(info.labels(*(values.get(k, "") for k in mn.CACHE_CONFIG_INFO.labels))).set(1)

        histogram = self._histogram
        self.iteration_tokens = histogram(child(mn.ITERATION_TOKENS))
        self.ttft = histogram(child(mn.TIME_TO_FIRST_TOKEN))
        self.itl = histogram(child(mn.INTER_TOKEN_LATENCY))
        self.tpot = histogram(child(mn.REQUEST_TIME_PER_OUTPUT_TOKEN))
        self.e2e = histogram(child(mn.E2E_REQUEST_LATENCY))
        self.queue = histogram(child(mn.REQUEST_QUEUE_TIME))
        self.inference = histogram(child(mn.REQUEST_INFERENCE_TIME))
        self.prefill = histogram(child(mn.REQUEST_PREFILL_TIME))
        self.decode = histogram(child(mn.REQUEST_DECODE_TIME))
        self.num_preemptions = histogram(child(mn.REQUEST_NUM_PREEMPTIONS))
        self.prompt_len = histogram(child(mn.REQUEST_PROMPT_TOKENS))
        self.generation_len = histogram(child(mn.REQUEST_GENERATION_TOKENS))
        self.prefill_kv = histogram(child(mn.REQUEST_PREFILL_KV_COMPUTED_TOKENS))
        self.max_generation = histogram(child(mn.REQUEST_MAX_NUM_GENERATION_TOKENS))
        self.params_n = histogram(child(mn.REQUEST_PARAMS_N))
        self.params_max_tokens = histogram(child(mn.REQUEST_PARAMS_MAX_TOKENS))

    def bind_scheduler_state(
        self, running: Callable[[], float], waiting: Callable[[], float], kv: Callable[[], float]
    ) -> None:
        """Gauges read at scrape time, so steps pay nothing for them."""
        fam = self._families
        self._gauge(fam[mn.NUM_REQUESTS_RUNNING.name].labels(*self._labels)).set_function(running)
        self._gauge(fam[mn.NUM_REQUESTS_WAITING.name].labels(*self._labels)).set_function(waiting)
        by_reason = fam[mn.NUM_REQUESTS_WAITING_BY_REASON.name]
        self._gauge(by_reason.labels(*self._labels, "capacity")).set_function(waiting)
        self._gauge(by_reason.labels(*self._labels, "deferred")).set(0)
        self._gauge(fam[mn.KV_CACHE_USAGE_PERC.name].labels(*self._labels)).set_function(kv)

    def record_arrival(self, request: SimRequest) -> None:
        self.params_n.observe(1)
        self.max_generation.observe(request.output_tokens)
        if request.max_tokens_param is not None:
            self.params_max_tokens.observe(request.max_tokens_param)

    def record_step(self, batch: Batch, outcome: StepOutcome, step_start_s: float) -> None:
        if batch.preempted:
            self.preemptions.inc(len(batch.preempted))
        if outcome.prompt_tokens:
            self.prompt_tokens.inc(outcome.prompt_tokens)
            self.prompt_tokens_local.inc(outcome.prompt_tokens)
        if outcome.generated_tokens:
            self.generation_tokens.inc(outcome.generated_tokens)
        self.iteration_tokens.observe(batch.prefill_tokens + outcome.generated_tokens)
        for request in outcome.first_tokens:
            self.ttft.observe(max(0.0, (request.first_token_s or 0.0) - request.arrival_s))
        observe_itl = self.itl.observe
        for gap in outcome.inter_token_s:
            observe_itl(gap)
        for request in outcome.finished:
            self.record_finished(request, "length")

    def record_finished(self, request: SimRequest, reason: str) -> None:
        self.success[reason].inc()
        if reason != "length":
            return
        end = request.finished_s or 0.0
        scheduled = request.scheduled_s if request.scheduled_s is not None else end
        first = request.first_token_s if request.first_token_s is not None else end
        self.e2e.observe(max(0.0, end - request.arrival_s))
        self.queue.observe(max(0.0, scheduled - request.arrival_s))
        self.inference.observe(end - scheduled)
        self.prefill.observe(first - scheduled)
        self.decode.observe(end - first)
        per_token = (end - first) / (request.generated - 1) if request.generated > 1 else 0.0
        self.tpot.observe(per_token)
        self.num_preemptions.observe(request.preemptions)
        self.prompt_len.observe(request.prompt_tokens)
        self.prefill_kv.observe(request.prompt_tokens)
        self.generation_len.observe(request.generated)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def _build(self, spec: mn.MetricSpec, max_model_len: int) -> Counter | Gauge | Histogram:
        if spec.kind is mn.MetricKind.COUNTER:
            return Counter(spec.name, spec.documentation, spec.labels, registry=self.registry)
        if spec.kind is mn.MetricKind.GAUGE:
            return Gauge(spec.name, spec.documentation, spec.labels, registry=self.registry)
        assert spec.buckets is not None
        return Histogram(
            spec.name,
            spec.documentation,
            spec.labels,
            registry=self.registry,
            buckets=mn.vllm_buckets(spec.buckets, max_model_len),
        )

    @staticmethod
    def _counter(metric: Counter | Gauge | Histogram) -> Counter:
        assert isinstance(metric, Counter)
        return metric

    @staticmethod
    def _gauge(metric: Counter | Gauge | Histogram) -> Gauge:
        assert isinstance(metric, Gauge)
        return metric

    @staticmethod
    def _histogram(metric: Counter | Gauge | Histogram) -> Histogram:
        assert isinstance(metric, Histogram)
        return metric
