"""Model catalogue: parameter derivation, lookups, and byte/FLOP helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from slmpack.catalog.models import (
    ModelCatalog,
    decode_flops_per_token,
    default_model_catalog,
    dtype_bytes,
    kv_bytes_for_sequence,
    kv_bytes_per_token,
    load_model_config,
    model_from_hf_config,
    weight_bytes,
)
from slmpack.catalog.types import ModelSpec
from slmpack.errors import CatalogError

KIB = 1024

EXPECTED_MODELS = {
    "opt-125m",
    "opt-1.3b",
    "opt-2.7b",
    "llama-2-7b",
    "llama-3.2-1b",
    "llama-3.2-3b",
    "llama-3.1-8b",
    "qwen2.5-0.5b",
    "qwen2.5-1.5b",
    "qwen2.5-3b",
    "qwen2.5-7b",
    "phi-3-mini",
    "gemma-2-2b",
    "smollm2-135m",
    "smollm2-360m",
    "smollm2-1.7b",
    "mistral-7b",
}


@pytest.fixture(scope="module")
def catalog() -> ModelCatalog:
    return default_model_catalog()


def _config(catalog: ModelCatalog, name: str) -> dict[str, Any]:
    """The shipped config.json of ``name`` as a fresh dict (safe to mutate)."""
    folder = Path(__file__).resolve().parents[2] / "operator/slmpack/catalog/model_configs"
    data: dict[str, Any] = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    return data


def _spec(config: dict[str, Any], name: str = "test") -> ModelSpec:
    return model_from_hf_config(config, name=name)


# --- every shipped model -------------------------------------------------------------------


def test_catalogue_lists_every_expected_model(catalog: ModelCatalog) -> None:
    assert set(catalog.names()) >= EXPECTED_MODELS


def test_every_indexed_model_matches_its_published_count(catalog: ModelCatalog) -> None:
    """Reads index.yaml through the catalogue, so models added there are checked too."""
    for name in catalog.names():
        entry = catalog.entry(name)
        assert entry.published_parameters_source.strip(), name
        assert entry.spec.parameter_count == pytest.approx(entry.published_parameters, rel=0.02), (
            name
        )


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_derived_parameter_count_matches_published(catalog: ModelCatalog, name: str) -> None:
    entry = catalog.entry(name)
    assert entry.published_parameters_source.strip()
    assert entry.spec.parameter_count == pytest.approx(entry.published_parameters, rel=0.02)


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_shipped_spec_is_consistent(catalog: ModelCatalog, name: str) -> None:
    spec = catalog.get(name)
    assert spec.name == name
    assert "/" in spec.hf_id
    assert spec.num_attention_heads % spec.num_kv_heads == 0
    assert 0 < spec.quantizable_parameter_count < spec.non_embedding_parameter_count
    assert 0 < spec.embedding_parameter_count < spec.parameter_count
    if spec.sliding_window is None:
        assert spec.sliding_window_layers == 0


# --- exact counts: each would break if one term were dropped --------------------------------


@pytest.mark.parametrize(
    ("name", "exact"),
    [
        # Learned positions with the +2 offset: without it, 2 x 768 fewer.
        ("opt-125m", 125_239_296),
        ("opt-1.3b", 1_315_758_080),
        # Untied lm_head: tying it would remove 32000 x 4096.
        ("llama-2-7b", 6_738_415_616),
        ("mistral-7b", 7_241_732_096),
        # q/k/v biases: dropping them removes 24 x (896 + 2 x 128).
        ("qwen2.5-0.5b", 494_032_768),
        # Four norms per layer (pre/post attention and feed-forward), tied embeddings.
        ("gemma-2-2b", 2_614_341_888),
        # Fused qkv/gate_up count like separate projections.
        ("phi-3-mini", 3_821_079_552),
        ("llama-3.2-1b", 1_235_814_400),
    ],
)
def test_exact_parameter_counts(catalog: ModelCatalog, name: str, exact: int) -> None:
    assert catalog.get(name).parameter_count == exact


def test_opt_position_offset_counts_two_extra_rows(catalog: ModelCatalog) -> None:
    config = _config(catalog, "opt-125m")
    base = _spec(config).embedding_parameter_count
    tokens = 50272 * 768
    assert base - tokens == (2048 + 2) * 768


def test_opt_350m_projections_and_no_final_layer_norm() -> None:
    """OPT-350m: word_embed_proj_dim 512 adds project_in/out; post-LN has no final norm."""
    config = {
        "architectures": ["OPTForCausalLM"],
        "hidden_size": 1024,
        "ffn_dim": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "word_embed_proj_dim": 512,
        "do_layer_norm_before": False,
        "vocab_size": 50272,
        "max_position_embeddings": 2048,
    }
    spec = _spec(config)
    assert spec.parameter_count == 331_196_416  # facebook/opt-350m
    assert spec.embedding_parameter_count == 50272 * 512 + 2050 * 1024


def test_opt_biases_are_counted(catalog: ModelCatalog) -> None:
    config = _config(catalog, "opt-125m")
    with_bias = _spec(config).parameter_count
    config["enable_bias"] = False
    h, ffn = 768, 3072
    assert with_bias - _spec(config).parameter_count == 12 * (4 * h + ffn + h)


def test_untied_lm_head_is_counted(catalog: ModelCatalog) -> None:
    config = _config(catalog, "llama-2-7b")
    untied = _spec(config)
    config["tie_word_embeddings"] = True
    tied = _spec(config)
    assert untied.parameter_count - tied.parameter_count == 32000 * 4096
    assert untied.embedding_parameter_count == 2 * 32000 * 4096


def test_qwen2_qkv_biases_are_counted(catalog: ModelCatalog) -> None:
    config = _config(catalog, "qwen2.5-0.5b")
    qwen = _spec(config)
    config["architectures"] = ["LlamaForCausalLM"]
    llama_like = _spec(config)
    assert qwen.parameter_count - llama_like.parameter_count == 24 * (896 + 2 * 128)


def test_gemma2_extra_norms_and_head_dim(catalog: ModelCatalog) -> None:
    spec = catalog.get("gemma-2-2b")
    assert spec.head_dim == 256  # from config, not 2304 / 8 = 288
    config = _config(catalog, "gemma-2-2b")
    config["architectures"] = ["GemmaForCausalLM"]
    assert spec.parameter_count - _spec(config).parameter_count == 26 * 2 * 2304


def test_missing_config_field_names_model_and_field() -> None:
    with pytest.raises(CatalogError, match="model 'broken': config field 'hidden_size'"):
        model_from_hf_config(
            {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2}, name="broken"
        )


def test_bad_config_value_is_rejected() -> None:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": "two",
        "num_attention_heads": 4,
        "vocab_size": 100,
        "max_position_embeddings": 128,
    }
    with pytest.raises(CatalogError, match="'num_hidden_layers' must be a positive integer"):
        model_from_hf_config(config, name="bad")


def _tiny_llama(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 100,
        "max_position_embeddings": 128,
        "tie_word_embeddings": False,
    }
    config.update(overrides)
    return config


def test_tiny_llama_count_by_hand() -> None:
    spec = _spec(_tiny_llama())
    per_layer = 4 * 64 * 64 + 3 * 64 * 128 + 2 * 64
    assert spec.parameter_count == 2 * 100 * 64 + 2 * per_layer + 64
    assert spec.quantizable_parameter_count == 2 * (4 * 64 * 64 + 3 * 64 * 128)


def test_unknown_architecture_is_an_error_unless_generic() -> None:
    config = _tiny_llama(architectures=["FancyNewForCausalLM"])
    with pytest.raises(CatalogError, match="'FancyNewForCausalLM' is not supported"):
        _spec(config)
    generic = model_from_hf_config(config, name="fancy", generic_fallback=True)
    assert generic.architecture == "FancyNewForCausalLM"
    assert generic.parameter_count == _spec(_tiny_llama()).parameter_count


# --- KV cache ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected_bytes"),
    [
        ("opt-1.3b", 2 * 24 * 2048 * 2),  # 196,608 B = 192 KiB, as measured in vLLM
        ("opt-2.7b", 320 * KIB),
        ("llama-2-7b", 512 * KIB),
        ("llama-3.1-8b", 128 * KIB),  # GQA: 8 KV heads of 128
        ("qwen2.5-0.5b", 2 * 24 * 2 * 64 * 2),
    ],
)
def test_kv_bytes_per_token_reference(
    catalog: ModelCatalog, name: str, expected_bytes: int
) -> None:
    assert kv_bytes_per_token(catalog.get(name)) == expected_bytes


def test_kv_reference_llama_2_13b() -> None:
    config = _tiny_llama(
        hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40
    )
    config.pop("num_key_value_heads")
    assert kv_bytes_per_token(_spec(config)) == 800 * KIB


def test_kv_dtype_widths(catalog: ModelCatalog) -> None:
    spec = catalog.get("llama-2-7b")
    assert kv_bytes_per_token(spec, "fp8") == 256 * KIB
    assert kv_bytes_per_token(spec, "bf16") == kv_bytes_per_token(spec, "auto")
    # float32 checkpoints are still served (and cached) in 16 bits under "auto".
    assert kv_bytes_per_token(catalog.get("gemma-2-2b"), "auto") == 2 * 26 * 4 * 256 * 2


def test_mqa_has_one_kv_head() -> None:
    spec = _spec(_tiny_llama(num_key_value_heads=1))
    assert spec.num_kv_heads == 1
    assert kv_bytes_per_token(spec) == 2 * 2 * 1 * 16 * 2


def test_gqa_heads_must_divide() -> None:
    with pytest.raises(CatalogError, match="not a multiple"):
        _spec(_tiny_llama(num_key_value_heads=3))


def test_gemma2_half_the_layers_slide(catalog: ModelCatalog) -> None:
    spec = catalog.get("gemma-2-2b")
    assert (spec.sliding_window, spec.sliding_window_layers) == (4096, 13)
    per_layer = 2 * 4 * 256 * 2
    assert kv_bytes_for_sequence(spec, 2000) == 26 * per_layer * 2000
    assert kv_bytes_for_sequence(spec, 8192) == per_layer * (13 * 8192 + 13 * 4096)


def test_mistral_window_on_every_layer(catalog: ModelCatalog) -> None:
    spec = catalog.get("mistral-7b")
    assert (spec.sliding_window, spec.sliding_window_layers) == (4096, 32)
    per_token = kv_bytes_per_token(spec)
    assert kv_bytes_for_sequence(spec, 10_000) == per_token * 4096
    assert kv_bytes_for_sequence(spec, 1_000) == per_token * 1_000


def test_qwen_sliding_window_flag_is_honoured(catalog: ModelCatalog) -> None:
    spec = catalog.get("qwen2.5-7b")
    assert spec.sliding_window is None
    assert kv_bytes_for_sequence(spec, 100_000) == kv_bytes_per_token(spec) * 100_000
    config = _config(catalog, "qwen2.5-0.5b")
    config.update(use_sliding_window=True, sliding_window=1024, max_window_layers=20)
    enabled = _spec(config)
    assert (enabled.sliding_window, enabled.sliding_window_layers) == (1024, 4)


def test_llama_has_no_window(catalog: ModelCatalog) -> None:
    spec = catalog.get("llama-3.1-8b")
    assert spec.sliding_window is None
    assert kv_bytes_for_sequence(spec, 3) == 3 * 128 * KIB


def test_negative_tokens_rejected(catalog: ModelCatalog) -> None:
    with pytest.raises(ValueError, match="tokens"):
        kv_bytes_for_sequence(catalog.get("opt-125m"), -1)


# --- MLA -------------------------------------------------------------------------------------


def _tiny_mla(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architectures": ["DeepseekV2ForCausalLM"],
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "kv_lora_rank": 64,
        "q_lora_rank": None,
        "qk_rope_head_dim": 16,
        "qk_nope_head_dim": 32,
        "v_head_dim": 32,
        "vocab_size": 1000,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    }
    config.update(overrides)
    return config


def test_mla_count_and_kv_by_hand() -> None:
    spec = _spec(_tiny_mla())
    q = 256 * 4 * (32 + 16)
    kv_a = 256 * (64 + 16)
    kv_b = 64 * 4 * (32 + 32)
    o = 4 * 32 * 256
    mlp = 3 * 256 * 512
    norms = 64 + 2 * 256
    per_layer = q + kv_a + kv_b + o + mlp + norms
    assert spec.parameter_count == 2 * 1000 * 256 + 2 * per_layer + 256
    assert (spec.kv_lora_rank, spec.qk_rope_head_dim) == (64, 16)
    assert spec.head_dim == 48
    # The latent (64) plus the shared rotary key (16), per layer, 2 bytes each.
    assert kv_bytes_per_token(spec) == 2 * (64 + 16) * 2
    assert kv_bytes_per_token(spec, "fp8") == 2 * (64 + 16)


def test_mla_q_lora_and_moe_layers() -> None:
    base = _spec(_tiny_mla()).parameter_count
    with_q_lora = _spec(_tiny_mla(q_lora_rank=32)).parameter_count
    # Per layer (2 layers): q_proj replaced by q_a_proj, q_a_layernorm and q_b_proj.
    assert base - with_q_lora == 2 * (256 * 4 * 48 - (256 * 32 + 32 + 32 * 4 * 48))
    moe = _spec(
        _tiny_mla(
            n_routed_experts=4,
            n_shared_experts=1,
            moe_intermediate_size=64,
            first_k_dense_replace=1,
            moe_layer_freq=1,
        )
    ).parameter_count
    # Layer 1 swaps its dense MLP for 5 experts of 64 and a 4-way router.
    assert moe - base == (4 + 1) * 3 * 256 * 64 + 256 * 4 - 3 * 256 * 512


# --- weights ----------------------------------------------------------------------------------


def test_dtype_bytes() -> None:
    assert dtype_bytes("bf16") == 2
    assert dtype_bytes("float32") == 4
    assert dtype_bytes("fp8") == 1
    assert dtype_bytes("int4-awq") == 0.5
    assert dtype_bytes("auto") == 2
    with pytest.raises(CatalogError, match="unknown dtype"):
        dtype_bytes("int3")


def test_weight_bytes_16_and_32_bit(catalog: ModelCatalog) -> None:
    spec = catalog.get("llama-2-7b")
    assert weight_bytes(spec, "fp16") == 2 * 6_738_415_616
    assert weight_bytes(spec, "fp32") == 4 * 6_738_415_616


def test_weight_bytes_awq_keeps_embeddings_16_bit(catalog: ModelCatalog) -> None:
    spec = catalog.get("llama-2-7b")
    linear = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    assert spec.quantizable_parameter_count == linear
    rest = 6_738_415_616 - linear  # embeddings, lm_head, norms
    groups = linear // 128
    expected = linear // 2 + 2 * rest + groups * 2 + groups // 2
    assert weight_bytes(spec, "int4-awq") == expected
    assert weight_bytes(spec, "int4-gptq") == expected
    assert weight_bytes(spec, "int8") == linear + 2 * rest
    assert weight_bytes(spec, "fp8") == linear + 2 * rest


def test_quantized_formats_order(catalog: ModelCatalog) -> None:
    for name in catalog.names():
        spec = catalog.get(name)
        assert (
            weight_bytes(spec, "int4-awq")
            < weight_bytes(spec, "int8")
            < weight_bytes(spec, "bf16")
            < weight_bytes(spec, "fp32")
        )


# --- decode FLOPs ------------------------------------------------------------------------------


def test_decode_flops_by_hand(catalog: ModelCatalog) -> None:
    spec = catalog.get("llama-2-7b")
    non_embedding = 6_738_415_616 - 2 * 32000 * 4096
    lm_head = 4096 * 32000
    attention = 4 * 32 * 32 * 128 * 1000
    expected = 2 * non_embedding + 2 * lm_head + attention
    assert decode_flops_per_token(spec, 1000) == pytest.approx(expected)
    assert decode_flops_per_token(spec, 0) == pytest.approx(2 * non_embedding + 2 * lm_head)


def test_decode_flops_tied_lm_head_still_counted(catalog: ModelCatalog) -> None:
    spec = catalog.get("qwen2.5-0.5b")
    assert decode_flops_per_token(spec, 0) == pytest.approx(
        2 * spec.non_embedding_parameter_count + 2 * 896 * 151936
    )


def test_decode_flops_sliding_layers_stop_growing(catalog: ModelCatalog) -> None:
    spec = catalog.get("mistral-7b")
    assert decode_flops_per_token(spec, 20_000) == decode_flops_per_token(spec, 4096)
    gemma = catalog.get("gemma-2-2b")
    step = decode_flops_per_token(gemma, 5097) - decode_flops_per_token(gemma, 5096)
    assert step == pytest.approx(4 * 8 * 256 * 13)  # only the 13 global layers


# --- lookups -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("opt-1.3b", "opt-1.3b"),
        ("OPT-1.3B", "opt-1.3b"),
        ("facebook/opt-1.3b", "opt-1.3b"),
        ("meta-llama/Llama-2-7b-hf", "llama-2-7b"),
        ("Qwen/Qwen2.5-7B", "qwen2.5-7b"),
        ("phi-3-mini-4k-instruct", "phi-3-mini"),
        ("mistralai/Mistral-7B-v0.1", "mistral-7b"),
    ],
)
def test_catalogue_lookup(catalog: ModelCatalog, query: str, name: str) -> None:
    assert catalog.get(query).name == name


def test_unknown_model_lists_closest(catalog: ModelCatalog) -> None:
    with pytest.raises(CatalogError) as err:
        catalog.get("opt-1.3")
    message = str(err.value)
    assert "unknown model 'opt-1.3'" in message
    assert "closest known: opt-1.3b" in message


def test_local_config_path_and_directory(tmp_path: Path, catalog: ModelCatalog) -> None:
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    config_file = model_dir / "config.json"
    config_file.write_text(json.dumps(_config(catalog, "smollm2-135m")), encoding="utf-8")
    by_file = catalog.get(str(config_file))
    by_dir = catalog.get(model_dir)
    assert by_file.name == by_dir.name == "my-model"
    assert by_file.parameter_count == 134_515_008
    assert load_model_config(config_file, name="x", hf_id="me/x").hf_id == "me/x"


def test_local_config_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(CatalogError, match=r"bad\.json: not valid JSON"):
        load_model_config(bad)
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}), encoding="utf-8")
    with pytest.raises(CatalogError, match=r"incomplete\.json: model 'incomplete'"):
        load_model_config(incomplete)
