"""Typed mirror of crds/slmpack.dev_slmdeployments.yaml (a unit test keeps them in step).

The apiserver has already applied the schema, its defaults and the CEL rules by the time the
operator sees an object, so these models parse rather than validate: unknown fields are ignored
(a newer CRD may add some) and the defaults repeat the CRD's for objects read from older
clusters.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "slmpack.dev"
VERSION = "v1alpha1"
KIND = "SLMDeployment"
PLURAL = "slmdeployments"
API_VERSION = f"{GROUP}/{VERSION}"

SharingName = Literal["Auto", "Exclusive", "TimeSlicing", "MPS", "MIG", "Packed"]
DtypeName = Literal["Auto", "BFloat16", "Float16", "Float32"]
QuantizationName = Literal["None", "FP8", "Int8", "AWQ", "GPTQ"]
AutotuneMode = Literal["Off", "Recommend", "Auto"]
ObjectiveName = Literal["Throughput", "Energy", "Balanced"]
#: Where a plan's GPU memory came from: the GPU catalogue, or the node agent's measurement.
MemorySourceName = Literal["Catalog", "Measured"]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


class ConfigMapRef(_Model):
    name: str
    key: str = "config.json"


class ModelConfigSource(_Model):
    catalog_name: str | None = None
    config_map_ref: ConfigMapRef | None = None


class ModelSource(_Model):
    uri: str
    served_name: str | None = None
    config: ModelConfigSource | None = None
    dtype: DtypeName = "Auto"
    quantization: QuantizationName = "None"
    kv_cache_dtype: Literal["Auto", "FP8"] = "Auto"
    max_model_len: int | None = None

    @property
    def scheme(self) -> str:
        return self.uri.split("://", 1)[0]

    @property
    def location(self) -> str:
        """The URI without its scheme: org/name, claim/path or bucket/path."""
        return self.uri.split("://", 1)[1]

    @property
    def effective_served_name(self) -> str:
        return self.served_name or self.location.rstrip("/").rsplit("/", 1)[-1]


class EnvVar(_Model):
    name: str
    value: str | None = None
    value_from: dict[str, Any] | None = None


class Resources(_Model):
    requests: dict[str, int | str] = Field(default_factory=dict)
    limits: dict[str, int | str] = Field(default_factory=dict)


class SecretKeyRef(_Model):
    name: str
    key: str = "HF_TOKEN"


class EngineSpec(_Model):
    image: str | None = None
    launcher_image: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[EnvVar, ...] = ()
    resources: Resources = Field(default_factory=Resources)
    hf_token_secret_ref: SecretKeyRef | None = None


class GpuSpec(_Model):
    products: tuple[str, ...] = ()
    sharing: SharingName = "Auto"
    mig_profile: str | None = None
    replicas_per_gpu: int | None = Field(default=None, alias="replicasPerGPU")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()


class AutotuneSpec(_Model):
    mode: AutotuneMode = "Off"
    min_replicas: int | None = None
    max_replicas: int | None = None
    objective: ObjectiveName = "Balanced"


class SloSpec(_Model):
    ttft_p99: str | None = Field(default=None, alias="ttftP99")
    itl_p99: str | None = Field(default=None, alias="itlP99")


class WorkloadSpec(_Model):
    mean_input_tokens: int | None = None
    mean_output_tokens: int | None = None


class SLMDeploymentSpec(_Model):
    model: ModelSource
    engine: EngineSpec = Field(default_factory=EngineSpec)
    gpu: GpuSpec = Field(default_factory=GpuSpec)
    replicas: int | None = None
    autotune: AutotuneSpec = Field(default_factory=AutotuneSpec)
    slo: SloSpec = Field(default_factory=SloSpec)
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(_Model):
    type: str
    status: ConditionStatus
    reason: str
    message: str
    last_transition_time: str
    observed_generation: int | None = None


class PredictedPerf(_Model):
    tokens_per_second_per_gpu: int | None = Field(default=None, alias="tokensPerSecondPerGPU")
    power_watts: int | None = None
    tokens_per_joule: str | None = None
    ttft_p99: str | None = Field(default=None, alias="ttftP99")
    itl_p99: str | None = Field(default=None, alias="itlP99")
    gain_over_exclusive: str | None = None


class PlanStatus(_Model):
    model: str | None = None
    product: str | None = None
    mode: str | None = None
    mig_profile: str | None = None
    replicas_per_gpu: int | None = Field(default=None, alias="replicasPerGPU")
    gpus: int | None = None
    pods: int | None = None
    max_num_seqs: int | None = None
    vllm_args: tuple[str, ...] = ()
    vllm_env: tuple[str, ...] = ()
    gpu_memory_bytes: int | None = None
    gpu_memory_source: MemorySourceName | None = None
    predicted: PredictedPerf | None = None


class AutotuneTarget(_Model):
    mode: str | None = None
    mig_profile: str | None = None
    replicas_per_gpu: int | None = Field(default=None, alias="replicasPerGPU")
    max_num_seqs: int | None = None
    replicas: int | None = None
    gpus: int | None = None


class AutotuneStatus(_Model):
    mode: str | None = None
    last_tune_time: str | None = None
    target: AutotuneTarget | None = None
    last_decision: dict[str, Any] | None = None
    history: tuple[dict[str, Any], ...] = ()
    state: dict[str, Any] | None = None


class SLMDeploymentStatus(_Model):
    observed_generation: int | None = None
    conditions: tuple[Condition, ...] = ()
    plan: PlanStatus | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    ready_text: str | None = None
    selector: str | None = None
    endpoint: str | None = None
    autotune: AutotuneStatus | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form the API stores (camelCase, unset fields left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
