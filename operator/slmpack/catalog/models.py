"""Model catalogue: Hugging Face ``config.json`` files turned into ``ModelSpec`` records, plus
pure byte and FLOP helpers the memory and performance models build on.

Nothing here downloads anything: a model is either one of the configs shipped in
``model_configs/`` (listed in ``model_configs/index.yaml``) or a local ``config.json``.

Parameter counts are derived per architecture, so that a wrong count points at a missing
term rather than a fudge factor:

* OPT: token embeddings (``vocab x word_embed_proj_dim``), learned positions with the
  fairseq offset of 2 (``(max_position_embeddings + 2) x hidden``), q/k/v/out projections
  and fc1/fc2 with biases, two LayerNorms (weight and bias) per layer, a final LayerNorm when
  ``do_layer_norm_before``, and ``project_in``/``project_out`` when
  ``word_embed_proj_dim != hidden_size`` (OPT-350m). lm_head is tied.
* Llama, Mistral, Qwen2/Qwen3, Phi-3 (fused qkv and gate_up have the same count as separate
  projections), Gemma/Gemma-2: gated MLP, RMSNorm (weight only), GQA/MQA through
  ``num_key_value_heads``, ``head_dim`` from the config when present. Qwen2 adds q/k/v
  biases, Qwen3 per-head q/k norms, Gemma-2 pre/post feed-forward norms (4 per layer).
* DeepSeek-V2/V3 style (``kv_lora_rank`` present): multi-head latent attention (MLA) with
  optional q LoRA, and mixture-of-experts layers after ``first_k_dense_replace``.

Unknown architectures raise :class:`CatalogError` by default: a silently wrong count would
size KV caches wrongly. ``generic_fallback=True`` derives them as Llama-like instead.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slmpack.catalog.types import KvDtype, ModelSpec, WeightDtype
from slmpack.errors import CatalogError

#: Quantization group size assumed for int4 AWQ/GPTQ checkpoints (AutoAWQ/AutoGPTQ default).
QUANT_GROUP_SIZE = 128

_DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "float32": 4.0,
    "bf16": 2.0,
    "bfloat16": 2.0,
    "fp16": 2.0,
    "float16": 2.0,
    "half": 2.0,
    # vLLM's --dtype/--kv-cache-dtype auto: the model's 16-bit dtype (float32 checkpoints
    # such as gemma-2-2b are served in 16 bits too).
    "auto": 2.0,
    "fp8": 1.0,
    "fp8_e4m3": 1.0,
    "fp8_e5m2": 1.0,
    "int8": 1.0,
    "int4-awq": 0.5,
    "int4-gptq": 0.5,
}

_LLAMA_LIKE = {
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Phi3ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
}
_MLA = {"DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM"}
_OPT = {"OPTForCausalLM"}
SUPPORTED_ARCHITECTURES = tuple(sorted(_LLAMA_LIKE | _MLA | _OPT))


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of ``dtype`` (a WeightDtype, KvDtype or torch dtype name).

    int4 formats are 0.5; their scales and zeros are added by :func:`weight_bytes`.
    """
    try:
        return _DTYPE_BYTES[dtype.lower()]
    except KeyError:
        raise CatalogError(
            f"unknown dtype {dtype!r}; known: {', '.join(sorted(_DTYPE_BYTES))}"
        ) from None


# --- config parsing ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Counts:
    total: int
    embedding: int
    quantizable: int


class _Config:
    """Typed access to a config mapping; errors name the model and the field."""

    def __init__(self, config: Mapping[str, Any], name: str) -> None:
        self.raw = config
        self.name = name

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def integer(self, key: str, default: int | None = None) -> int:
        value = self.raw.get(key)
        if value is None:
            if default is None:
                raise CatalogError(f"model {self.name!r}: config field {key!r} is missing")
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CatalogError(
                f"model {self.name!r}: config field {key!r} must be a positive integer, "
                f"got {value!r}"
            )
        return value

    def opt_integer(self, key: str) -> int | None:
        return self.integer(key) if self.has(key) else None

    def flag(self, key: str, default: bool) -> bool:
        value = self.raw.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise CatalogError(
                f"model {self.name!r}: config field {key!r} must be true or false, got {value!r}"
            )
        return value


def _architecture(cfg: _Config) -> str:
    archs = cfg.raw.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0]
    if cfg.has("kv_lora_rank"):
        return "DeepseekV2ForCausalLM"
    model_type = cfg.raw.get("model_type")
    by_type = {
        "opt": "OPTForCausalLM",
        "llama": "LlamaForCausalLM",
        "mistral": "MistralForCausalLM",
        "qwen2": "Qwen2ForCausalLM",
        "qwen3": "Qwen3ForCausalLM",
        "phi3": "Phi3ForCausalLM",
        "gemma": "GemmaForCausalLM",
        "gemma2": "Gemma2ForCausalLM",
    }
    if isinstance(model_type, str) and model_type in by_type:
        return by_type[model_type]
    raise CatalogError(
        f"model {cfg.name!r}: config has neither 'architectures' nor a known 'model_type'"
    )


def _opt_counts(cfg: _Config) -> _Counts:
    h = cfg.integer("hidden_size")
    ffn = cfg.integer("ffn_dim")
    layers = cfg.integer("num_hidden_layers")
    vocab = cfg.integer("vocab_size")
    max_pos = cfg.integer("max_position_embeddings")
    proj = cfg.integer("word_embed_proj_dim", h)
    bias = cfg.flag("enable_bias", True)
    ln_affine = cfg.flag("layer_norm_elementwise_affine", True)
    ln_params = (2 * h) if ln_affine else 0  # weight + bias

    # OPTLearnedPositionalEmbedding reserves 2 extra rows (fairseq padding offset).
    positions = (max_pos + 2) * h
    tokens = vocab * proj
    linear = 4 * h * h + 2 * h * ffn
    biases = (4 * h + ffn + h) if bias else 0
    per_layer = linear + biases + 2 * ln_params
    projections = 2 * h * proj if proj != h else 0  # project_in and project_out, no bias
    final_ln = ln_params if cfg.flag("do_layer_norm_before", True) else 0
    if cfg.flag("_remove_final_layer_norm", False):
        final_ln = 0
    lm_head = 0 if cfg.flag("tie_word_embeddings", True) else vocab * proj
    embedding = tokens + positions + lm_head
    total = embedding + layers * per_layer + projections + final_ln
    return _Counts(total=total, embedding=embedding, quantizable=layers * linear)


def _llama_like_counts(cfg: _Config, architecture: str, head_dim: int) -> _Counts:
    h = cfg.integer("hidden_size")
    inter = cfg.integer("intermediate_size")
    layers = cfg.integer("num_hidden_layers")
    heads = cfg.integer("num_attention_heads")
    kv_heads = cfg.integer("num_key_value_heads", heads)
    vocab = cfg.integer("vocab_size")
    tied = cfg.flag("tie_word_embeddings", architecture.startswith("Gemma"))

    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    attn = h * q_out + 2 * h * kv_out + q_out * h
    mlp = 3 * h * inter  # gate, up, down (Phi-3 fuses gate and up: same count)
    linear = attn + mlp

    biases = 0
    if architecture == "Qwen2ForCausalLM":
        biases += q_out + 2 * kv_out  # q/k/v biases; o_proj has none
    elif cfg.flag("attention_bias", False):
        biases += q_out + 2 * kv_out + h
    if cfg.flag("mlp_bias", False):
        biases += 2 * inter + h

    norms = (4 if architecture == "Gemma2ForCausalLM" else 2) * h
    if architecture == "Qwen3ForCausalLM":
        norms += 2 * head_dim  # per-head q_norm and k_norm

    embedding = vocab * h * (1 if tied else 2)
    total = embedding + layers * (linear + biases + norms) + h  # + final norm
    return _Counts(total=total, embedding=embedding, quantizable=layers * linear)


def _mla_counts(cfg: _Config) -> _Counts:
    h = cfg.integer("hidden_size")
    inter = cfg.integer("intermediate_size")
    layers = cfg.integer("num_hidden_layers")
    heads = cfg.integer("num_attention_heads")
    vocab = cfg.integer("vocab_size")
    kv_rank = cfg.integer("kv_lora_rank")
    rope = cfg.integer("qk_rope_head_dim")
    nope = cfg.integer("qk_nope_head_dim")
    v_dim = cfg.integer("v_head_dim")
    q_rank = cfg.opt_integer("q_lora_rank")
    tied = cfg.flag("tie_word_embeddings", False)

    q_dim = heads * (nope + rope)
    q_linear = (h * q_rank + q_rank * q_dim) if q_rank else h * q_dim
    q_norm = q_rank or 0
    kv_linear = h * (kv_rank + rope) + kv_rank * heads * (nope + v_dim)
    attn_linear = q_linear + kv_linear + heads * v_dim * h
    attn_norms = q_norm + kv_rank  # q_a_layernorm, kv_a_layernorm

    experts = cfg.opt_integer("n_routed_experts")
    dense_layers = layers
    moe_linear = moe_router = 0
    if experts:
        first_dense = cfg.raw.get("first_k_dense_replace") or 0
        freq = cfg.integer("moe_layer_freq", 1)
        moe_layers = sum(1 for i in range(layers) if i >= first_dense and i % freq == 0)
        dense_layers = layers - moe_layers
        moe_inter = cfg.integer("moe_intermediate_size")
        shared = cfg.raw.get("n_shared_experts") or 0
        moe_linear = moe_layers * (experts + shared) * 3 * h * moe_inter
        # router weight, plus V3's per-expert score-correction bias
        router = h * experts + (experts if cfg.raw.get("topk_method") == "noaux_tc" else 0)
        moe_router = moe_layers * router

    linear = layers * attn_linear + dense_layers * 3 * h * inter + moe_linear
    norms = layers * (attn_norms + 2 * h) + h
    embedding = vocab * h * (1 if tied else 2)
    total = embedding + linear + moe_router + norms
    return _Counts(total=total, embedding=embedding, quantizable=linear)


def _sliding_window(cfg: _Config, architecture: str, layers: int) -> tuple[int | None, int]:
    """(window tokens, number of layers limited to it)."""
    window = cfg.raw.get("sliding_window")
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        return None, 0
    # Qwen2/Qwen3 ship a sliding_window value but switch it off with use_sliding_window.
    if not cfg.flag("use_sliding_window", True):
        return None, 0
    layer_types = cfg.raw.get("layer_types")
    if isinstance(layer_types, list) and layer_types:
        count = sum(1 for t in layer_types if t == "sliding_attention")
    elif architecture == "Gemma2ForCausalLM":
        count = (layers + 1) // 2  # even-indexed layers are local, odd ones global
    elif architecture in {"Qwen2ForCausalLM", "Qwen3ForCausalLM"} and cfg.has("max_window_layers"):
        # HF Qwen2: layers with index >= max_window_layers use the window.
        count = max(0, layers - cfg.integer("max_window_layers"))
    else:
        count = layers  # Mistral v0.1, Phi-3: every layer
    return (window, count) if count else (None, 0)


def model_from_hf_config(
    config: Mapping[str, Any],
    *,
    name: str,
    hf_id: str = "",
    generic_fallback: bool = False,
) -> ModelSpec:
    """Derive a :class:`ModelSpec` from a Hugging Face ``config.json`` mapping.

    Raises CatalogError for a missing or malformed field, or for an architecture outside
    :data:`SUPPORTED_ARCHITECTURES` unless ``generic_fallback`` (then Llama-like).
    """
    cfg = _Config(config, name)
    architecture = _architecture(cfg)
    known = architecture in _LLAMA_LIKE | _MLA | _OPT
    if not known and not generic_fallback:
        raise CatalogError(
            f"model {name!r}: architecture {architecture!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)}); pass generic_fallback=True "
            "to derive it as a Llama-like decoder"
        )
    is_mla = architecture in _MLA or cfg.has("kv_lora_rank")

    layers = cfg.integer("num_hidden_layers")
    hidden = cfg.integer("hidden_size")
    heads = cfg.integer("num_attention_heads")
    kv_lora_rank = qk_rope = None
    if architecture in _OPT:
        counts = _opt_counts(cfg)
        intermediate = cfg.integer("ffn_dim")
        kv_heads = heads
        head_dim = hidden // heads
    elif is_mla:
        counts = _mla_counts(cfg)
        intermediate = cfg.integer("intermediate_size")
        # The cache holds one latent per token; heads are only decompressed in compute.
        kv_heads = heads
        head_dim = cfg.integer("qk_nope_head_dim") + cfg.integer("qk_rope_head_dim")
        kv_lora_rank = cfg.integer("kv_lora_rank")
        qk_rope = cfg.integer("qk_rope_head_dim")
    else:
        head_dim = cfg.integer("head_dim", hidden // heads)
        counts = _llama_like_counts(cfg, architecture, head_dim)
        intermediate = cfg.integer("intermediate_size")
        kv_heads = cfg.integer("num_key_value_heads", heads)
    if heads % kv_heads:
        raise CatalogError(
            f"model {name!r}: num_attention_heads={heads} is not a multiple of "
            f"num_key_value_heads={kv_heads}"
        )
    window, window_layers = (None, 0) if is_mla else _sliding_window(cfg, architecture, layers)
    dtype = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    return ModelSpec(
        name=name,
        hf_id=hf_id,
        architecture=architecture,
        num_layers=layers,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=cfg.integer("vocab_size"),
        max_position_embeddings=cfg.integer("max_position_embeddings"),
        tie_word_embeddings=cfg.flag(
            "tie_word_embeddings",
            architecture in _OPT or architecture.startswith("Gemma"),
        ),
        torch_dtype=str(dtype),
        parameter_count=counts.total,
        embedding_parameter_count=counts.embedding,
        sliding_window=window,
        sliding_window_layers=window_layers,
        kv_lora_rank=kv_lora_rank,
        qk_rope_head_dim=qk_rope,
        quantizable_parameter_count=counts.quantizable,
    )


def load_model_config(
    path: Path | str, *, name: str | None = None, hf_id: str = "", generic_fallback: bool = False
) -> ModelSpec:
    """Read a local ``config.json`` (or a directory holding one) into a ModelSpec.

    ``name`` defaults to the directory name for ``.../<name>/config.json``, else the stem.
    """
    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as err:
        raise CatalogError(f"{file}: cannot read model config: {err}") from None
    except json.JSONDecodeError as err:
        raise CatalogError(f"{file}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise CatalogError(f"{file}: expected a JSON object")
    if name is None:
        name = file.parent.name if file.name == "config.json" else file.stem
    try:
        return model_from_hf_config(data, name=name, hf_id=hf_id, generic_fallback=generic_fallback)
    except CatalogError as err:
        raise CatalogError(f"{file}: {err}") from None


# --- catalogue -------------------------------------------------------------------------------


class _IndexEntryModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hf_id: str = Field(min_length=1)
    config: str = Field(pattern=r"^[A-Za-z0-9._-]+\.json$")
    aliases: tuple[str, ...] = ()
    published_parameters: int = Field(gt=0)
    published_parameters_source: str = Field(min_length=1)


class _IndexModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = 1
    models: dict[str, _IndexEntryModel]


@dataclass(frozen=True)
class ModelEntry:
    """One catalogue model: its spec and the published count it is checked against."""

    spec: ModelSpec
    aliases: tuple[str, ...]
    published_parameters: int
    published_parameters_source: str


def _key(name: str) -> str:
    return name.strip().lower()


@dataclass(frozen=True)
class ModelCatalog:
    """Shipped model configs by name. Build with :func:`default_model_catalog`."""

    entries: Mapping[str, ModelEntry]
    index: Mapping[str, str]  # lower-case name, alias or hf_id -> name

    @classmethod
    def from_entries(cls, entries: Mapping[str, ModelEntry]) -> ModelCatalog:
        index: dict[str, str] = {}
        for name, entry in entries.items():
            for key in (name, entry.spec.hf_id, *entry.aliases):
                if key:
                    index[_key(key)] = name
        return cls(entries=dict(entries), index=index)

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self.entries))

    def entry(self, name: str) -> ModelEntry:
        found = self.index.get(_key(name))
        if found is None:
            raise self._unknown(name)
        return self.entries[found]

    def get(self, name_or_path: str | Path) -> ModelSpec:
        """A catalogue model (name, alias or HF id, case-insensitive) or a local config.json.

        Never downloads. Raises CatalogError listing the closest known names.
        """
        if isinstance(name_or_path, str):
            found = self.index.get(_key(name_or_path))
            if found is not None:
                return self.entries[found].spec
        path = Path(name_or_path)
        if path.is_file() or (path.is_dir() and (path / "config.json").is_file()):
            return load_model_config(path)
        raise self._unknown(str(name_or_path))

    def _unknown(self, name: str) -> CatalogError:
        close = difflib.get_close_matches(_key(name), list(self.index), n=5, cutoff=0.5)
        names = list(dict.fromkeys(self.index[c] for c in close))
        hint = (
            f"closest known: {', '.join(names)}" if names else f"known: {', '.join(self.names())}"
        )
        return CatalogError(
            f"unknown model {name!r} (not a catalogue name and not a local config.json); "
            f"{hint}. Models are never downloaded: pass the path of a local config.json."
        )


def load_model_catalog() -> ModelCatalog:
    """Parse ``model_configs/index.yaml`` and every config it names."""
    folder = resources.files("slmpack.catalog").joinpath("model_configs")
    origin = "slmpack/catalog/model_configs/index.yaml"
    try:
        index = _IndexModel.model_validate(
            yaml.safe_load(folder.joinpath("index.yaml").read_text(encoding="utf-8"))
        )
    except ValidationError as err:
        raise CatalogError(f"{origin}: {err}") from None
    entries: dict[str, ModelEntry] = {}
    for name, item in index.models.items():
        try:
            data = json.loads(folder.joinpath(item.config).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise CatalogError(f"{origin}: model {name!r}: config {item.config}: {err}") from None
        spec = model_from_hf_config(data, name=name, hf_id=item.hf_id)
        entries[name] = ModelEntry(
            spec=spec,
            aliases=item.aliases,
            published_parameters=item.published_parameters,
            published_parameters_source=item.published_parameters_source,
        )
    return ModelCatalog.from_entries(entries)


@functools.cache
def default_model_catalog() -> ModelCatalog:
    """The shipped model catalogue, parsed once per process."""
    return load_model_catalog()


# --- bytes and FLOPs -------------------------------------------------------------------------


def weight_bytes(model: ModelSpec, dtype: WeightDtype) -> int:
    """Bytes of the model's weights stored as ``dtype``.

    16/32-bit: every parameter at that width. Quantized formats quantize only the decoder
    layers' linear weights (``quantizable_parameter_count``); embeddings, lm_head, norms and
    biases stay 16-bit, as AutoAWQ/AutoGPTQ and vLLM's FP8 checkpoints keep them.

    * ``fp8``/``int8``: 1 byte per quantized weight; per-tensor or per-channel scales
      (< 0.1 % of the weights) are ignored.
    * ``int4-awq``/``int4-gptq``: 0.5 byte per quantized weight plus, per group of
      :data:`QUANT_GROUP_SIZE` input weights of each output channel, one 16-bit scale and
      one 4-bit packed zero point. GPTQ's act-order ``g_idx`` (4 bytes per input row of each
      linear, about 0.1 % of a 7B model) is ignored.
    """
    per_element = dtype_bytes(dtype)
    if dtype in ("bf16", "fp16", "fp32"):
        return math.ceil(model.parameter_count * per_element)
    quantized = model.quantizable_parameter_count or model.non_embedding_parameter_count
    rest_bytes = (model.parameter_count - quantized) * 2
    total = quantized * per_element + rest_bytes
    if dtype in ("int4-awq", "int4-gptq"):
        groups = math.ceil(quantized / QUANT_GROUP_SIZE)
        total += groups * (2 + 0.5)
    return math.ceil(total)


def _kv_element_bytes(kv_dtype: KvDtype) -> float:
    return dtype_bytes(kv_dtype)


def kv_bytes_per_token(model: ModelSpec, kv_dtype: KvDtype = "auto") -> int:
    """KV-cache bytes one token occupies across all layers (no sliding-window cap).

    MHA/GQA/MQA: 2 (K and V) x layers x kv_heads x head_dim x bytes.
    MLA: layers x (kv_lora_rank + qk_rope_head_dim) x bytes (the compressed latent and the
    shared rotary key are cached instead of per-head K and V).
    ``auto`` means the model's 16-bit serving dtype (2 bytes).
    """
    element = _kv_element_bytes(kv_dtype)
    if model.kv_lora_rank is not None:
        rope = model.qk_rope_head_dim or 0
        return math.ceil(model.num_layers * (model.kv_lora_rank + rope) * element)
    return math.ceil(2 * model.num_layers * model.num_kv_heads * model.head_dim * element)


def kv_bytes_for_sequence(model: ModelSpec, tokens: int, kv_dtype: KvDtype = "auto") -> int:
    """KV-cache bytes of one sequence of ``tokens`` tokens.

    Sliding-window layers hold at most ``sliding_window`` tokens (Gemma-2: every other
    layer; Mistral v0.1: all layers). Block rounding is left to the memory model.
    """
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")
    per_layer = kv_bytes_per_token(model, kv_dtype) / model.num_layers
    window_layers = model.sliding_window_layers if model.sliding_window else 0
    full_layers = model.num_layers - window_layers
    windowed_tokens = min(tokens, model.sliding_window or tokens)
    return math.ceil(per_layer * (full_layers * tokens + window_layers * windowed_tokens))


def decode_flops_per_token(model: ModelSpec, context_tokens: int) -> float:
    """FLOPs to decode one token attending to ``context_tokens`` earlier tokens.

    2 x non-embedding parameters (every weight is one multiply-add), plus the lm_head
    matmul 2 x hidden x vocab (counted separately because a tied lm_head is not in the
    non-embedding count), plus attention scores and weighted values,
    4 x layers x heads x head_dim x context, with sliding-window layers attending to at
    most ``sliding_window`` tokens. For MoE configs all experts are counted, an upper bound.
    """
    if context_tokens < 0:
        raise ValueError(f"context_tokens must be >= 0, got {context_tokens}")
    window_layers = model.sliding_window_layers if model.sliding_window else 0
    full_layers = model.num_layers - window_layers
    windowed = min(context_tokens, model.sliding_window or context_tokens)
    attended = full_layers * context_tokens + window_layers * windowed
    matmul = 2.0 * model.non_embedding_parameter_count
    lm_head = 2.0 * model.hidden_size * model.vocab_size
    attention = 4.0 * model.num_attention_heads * model.head_dim * attended
    return matmul + lm_head + attention
