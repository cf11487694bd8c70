"""The real vLLM CPU build behind the OpenAI API: endpoints, metrics, and our flags in effect."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from slmpack.dataplane.vllm_cpu import CpuEngineArgs

from .conftest import PLANNED_KV_CACHE_BYTES, PLANNED_MAX_MODEL_LEN
from .vllm_server import VllmServer

pytestmark = pytest.mark.e2e

#: 2 layers x (K, V) x 2 KV heads x head_dim 64 x 2 bytes (bf16): see hack/make_tiny_model.py.
TINY_KV_BYTES_PER_TOKEN = 2 * 2 * 2 * 64 * 2

#: Families the autotuner and dashboards read (docs/vllm-cpu.md), as a scrape shows them.
EXPECTED_FAMILIES = (
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_total",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_success_total",
)


def _completion(server: VllmServer, prompt: str, max_tokens: int = 8) -> dict[str, Any]:
    return {
        "model": server.served_model_name,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        # Random weights emit the end-of-text token at random; the length must be exact.
        "ignore_eos": True,
    }


def test_health(vllm_server: VllmServer) -> None:
    assert vllm_server.get("/health")[0] == 200


def test_models_list_the_served_model_with_the_planned_context(vllm_server: VllmServer) -> None:
    status, body = vllm_server.get_json("/v1/models")
    assert status == 200
    [model] = body["data"]
    assert model["id"] == vllm_server.served_model_name
    assert model["max_model_len"] == PLANNED_MAX_MODEL_LEN


def test_completion_returns_exactly_max_tokens(vllm_server: VllmServer) -> None:
    status, body = vllm_server.post_json(
        "/v1/completions", _completion(vllm_server, "The operator packs", max_tokens=12)
    )
    assert status == 200, body
    [choice] = body["choices"]
    assert choice["finish_reason"] == "length"
    assert isinstance(choice["text"], str)
    assert body["usage"]["completion_tokens"] == 12
    assert body["usage"]["prompt_tokens"] > 0


def test_one_word_prompt_is_served(vllm_server: VllmServer) -> None:
    # Such a prompt reaches the AMX attention kernel before any oneDNN matmul has asked Linux for
    # the AMX state; the venv asks at process start (hack/build-vllm-cpu.sh), else: SIGILL.
    status, body = vllm_server.post_json("/v1/completions", _completion(vllm_server, "hi"))
    assert status == 200, body
    assert body["usage"]["completion_tokens"] == 8


def test_streamed_completion_matches_the_unstreamed_one(vllm_server: VllmServer) -> None:
    request = _completion(vllm_server, "Tokens per second grow", max_tokens=10)
    status, whole = vllm_server.post_json("/v1/completions", request)
    assert status == 200, whole

    events = vllm_server.post_sse("/v1/completions", request)

    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert len(chunks) >= 2, "a 10-token answer should arrive in several chunks"
    assert all(chunk["object"] == "text_completion" for chunk in chunks)
    streamed = "".join(choice["text"] for chunk in chunks for choice in chunk["choices"])
    # Greedy decoding on the same engine and weights: the same text either way.
    assert streamed == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_chat_completion_uses_the_chat_template(vllm_server: VllmServer) -> None:
    message = {"role": "user", "content": "Hello, how are you today?"}
    status, plain = vllm_server.post_json(
        "/v1/completions", _completion(vllm_server, message["content"], max_tokens=1)
    )
    assert status == 200, plain

    status, body = vllm_server.post_json(
        "/v1/chat/completions",
        {
            "model": vllm_server.served_model_name,
            "messages": [message],
            "max_tokens": 6,
            "temperature": 0.0,
            "ignore_eos": True,
        },
    )

    assert status == 200, body
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert body["usage"]["completion_tokens"] == 6
    # The template wraps the message in special tokens, so the prompt is longer than its text.
    assert body["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]


def test_streamed_chat_completion_ends_with_usage_and_done(vllm_server: VllmServer) -> None:
    events = vllm_server.post_sse(
        "/v1/chat/completions",
        {
            "model": vllm_server.served_model_name,
            "messages": [{"role": "user", "content": "Write a short poem about the sea"}],
            "max_tokens": 5,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["usage"]["completion_tokens"] == 5


def test_prompt_longer_than_max_model_len_is_rejected(vllm_server: VllmServer) -> None:
    prompt = "hello world " * PLANNED_MAX_MODEL_LEN  # two tokens a repetition at least

    status, body = vllm_server.post_json("/v1/completions", _completion(vllm_server, prompt))

    assert status == 400
    assert str(PLANNED_MAX_MODEL_LEN) in body["error"]["message"]


def test_kv_cache_is_sized_by_the_planned_bytes(vllm_server: VllmServer) -> None:
    families = {f.name: f for f in text_string_to_metric_families(vllm_server.get("/metrics")[1])}
    [sample] = families["vllm:cache_config_info"].samples
    assert int(sample.labels["kv_cache_memory_bytes"]) == PLANNED_KV_CACHE_BYTES
    tokens = int(sample.labels["kv_cache_size_tokens"])
    assert tokens * TINY_KV_BYTES_PER_TOKEN == PLANNED_KV_CACHE_BYTES


def test_gpu_only_flags_were_left_out(planned_engine_args: CpuEngineArgs) -> None:
    # The server started with these args, so what the CPU build rejects is not among them.
    assert "--gpu-memory-utilization" in {flag.name for flag in planned_engine_args.dropped}
    assert "--gpu-memory-utilization" not in planned_engine_args.args


def test_metrics_carry_the_families_we_read(vllm_server: VllmServer) -> None:
    status, body = vllm_server.post_json(
        "/v1/completions", _completion(vllm_server, "Time to first token", max_tokens=4)
    )
    assert status == 200, body

    families = {f.name: f for f in text_string_to_metric_families(vllm_server.get("/metrics")[1])}

    for expected in EXPECTED_FAMILIES:
        # The parser names a counter's family without the _total its samples carry.
        family = families.get(expected.removesuffix("_total"))
        assert family is not None, f"{expected} missing from /metrics"
        assert family.samples, f"{expected} has no samples"
        for sample in family.samples:
            assert sample.labels.get("model_name") == vllm_server.served_model_name, sample
            assert sample.labels.get("engine") == "0", sample
    generated = sum(s.value for s in families["vllm:generation_tokens"].samples)
    assert generated >= 4
    finished = families["vllm:request_success"].samples
    assert any(s.labels["finished_reason"] == "length" and s.value >= 1 for s in finished)
