"""Percentiles, throughput and goodput by hand; SSE parsing; request plans and bodies."""

import json
import math
import random

import pytest

from slmpack.loadgen.arrivals import Phase, Schedule
from slmpack.loadgen.lengths import Fixed, Uniform
from slmpack.loadgen.sse import SseDecoder, StreamEvent, classify
from slmpack.loadgen.stats import Distribution, RequestRecord, Slo, percentile, summarize
from slmpack.loadgen.workload import plan_requests, prompt_text, request_body


def record(
    index: int,
    ttft: float | None,
    itl: tuple[float, ...],
    *,
    tokens: int | None = None,
    prompt: int = 10,
    error: str | None = None,
    url: str = "http://a",
) -> RequestRecord:
    return RequestRecord(
        index=index,
        base_url=url,
        scheduled_s=0.0,
        sent_s=0.0,
        prompt_tokens=prompt,
        requested_output_tokens=len(itl) + 1,
        output_tokens=len(itl) + 1 if tokens is None else tokens,
        ttft_s=ttft,
        itl_s=itl,
        e2e_s=(ttft or 0) + sum(itl),
        error=error,
    )


# --- percentiles -------------------------------------------------------------------------------


def test_percentiles_interpolate_between_ranks() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    # Rank position (n - 1) * q: p50 at 1.5 -> 2.5; p90 at 2.7 -> 3.7; p99 at 2.97 -> 3.97.
    assert percentile(values, 50) == 2.5
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="percentile"):
        percentile(values, 101)


def test_distribution_sorts_and_scales() -> None:
    d = Distribution.of([0.4, 0.1, 0.3, 0.2], scale=10)
    assert (d.count, d.mean, d.p50, d.max) == (4, pytest.approx(2.5), pytest.approx(2.5), 4.0)
    assert d.p90 == pytest.approx(3.7)


# --- the report ----------------------------------------------------------------------------------


def test_summary_counts_only_successful_requests_toward_throughput() -> None:
    records = [
        record(0, 0.1, (0.01, 0.01, 0.02), url="http://a"),  # 4 tokens
        record(1, 0.3, (0.02,) * 9, url="http://b"),  # 10 tokens
        record(2, 0.2, (0.05,), tokens=2, error="timeout"),
        record(3, None, (), tokens=0, error="http_500"),
    ]
    report = summarize(records, duration_wall_s=2.0, peak_in_flight=3)
    assert (report.requests, report.completed, report.failed) == (4, 2, 2)
    assert report.errors == {"http_500": 1, "timeout": 1}
    assert report.output_tokens == 14
    assert report.failed_output_tokens == 2
    assert report.input_tokens == 20
    assert report.output_tokens_per_s == 7.0
    assert report.total_tokens_per_s == 17.0
    assert report.request_rate_per_s == 1.0
    assert report.ttft_s.p50 == pytest.approx(0.2)  # of 0.1 and 0.3
    assert report.itl_s.count == 12  # pooled gaps of the successful requests
    assert report.tpot_s.mean == pytest.approx((0.04 / 3 + 0.02) / 2)
    assert report.completed_by_url == {"http://a": 1, "http://b": 1}
    assert report.peak_in_flight == 3
    doc = report.to_dict()
    json.dumps(doc, allow_nan=False)  # NaN-free, JSON-ready
    assert doc["goodput"] is None


def test_time_scale_converts_to_server_seconds() -> None:
    report = summarize([record(0, 0.1, (0.01,) * 9)], duration_wall_s=1.0, time_scale=5)
    assert report.duration_s == 5.0
    assert report.output_tokens_per_s == 2.0
    assert report.ttft_s.p50 == pytest.approx(0.5)
    assert report.itl_s.p99 == pytest.approx(0.05)


def test_goodput_counts_requests_meeting_both_targets() -> None:
    records = [
        record(0, 0.1, (0.02, 0.02, 0.02)),  # meets both
        record(1, 0.6, (0.02, 0.02)),  # TTFT too long
        record(2, 0.1, (0.02, 0.09)),  # one slow gap: fails p99 and max, passes mean
        record(3, 0.2, ()),  # one token: no gaps, meets
        record(4, 0.1, (0.02,), error="timeout"),  # failed requests never count
    ]
    slo = Slo(ttft_s=0.5, itl_s=0.05)
    report = summarize(records, duration_wall_s=4.0, slo=slo)
    assert report.goodput is not None
    assert report.goodput.requests == 2
    assert report.goodput.per_s == 0.5
    assert report.goodput.ratio == 2 / 5
    # p99 over TTFTs 0.1, 0.6, 0.1, 0.2 is above 0.5; pooled gaps' p99 is above 0.05.
    assert report.goodput.ttft_p99_met is False
    assert report.goodput.itl_p99_met is False
    mean_slo = summarize(records, 4.0, slo=Slo(0.5, 0.06, itl_stat="mean")).goodput
    assert mean_slo is not None
    assert mean_slo.requests == 3
    loose = summarize(records, 4.0, slo=Slo(ttft_s=1.0)).goodput
    assert loose is not None
    assert (loose.requests, loose.ttft_p99_met, loose.itl_p99_met) == (4, True, None)


# --- server-sent events --------------------------------------------------------------------------


def test_sse_decoder_reassembles_events_split_across_reads() -> None:
    stream = (
        b'data: {"choices":[{"text":" a"}]}\n\n: keep-alive\n\n'
        b'data: {"choices":[{"text":""}]}\r\n\r\ndata: [DONE]\n\n'
    )
    for cut in range(1, len(stream)):
        decoder = SseDecoder()
        payloads = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert payloads == [
            b'{"choices":[{"text":" a"}]}',
            b'{"choices":[{"text":""}]}',
            b"[DONE]",
        ], cut
        assert decoder.pending == b""


def test_classify_tokens_usage_and_errors() -> None:
    assert classify(b'{"choices":[{"text":""}]}', "completions") == StreamEvent(tokens=1)
    usage = b'{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}'
    assert classify(usage, "completions") == StreamEvent(0, 7, 3)
    role = b'{"choices":[{"delta":{"role":"assistant","content":""}}]}'
    assert classify(role, "chat") == StreamEvent()
    assert classify(b'{"choices":[{"delta":{"content":"hi"}}]}', "chat").tokens == 1
    assert classify(b"[DONE]", "chat").done
    assert classify(b'{"error":{"message":"boom"}}', "chat").error == "stream_error: boom"
    assert classify(b"{nope", "chat").error == "invalid_json"


# --- plans and bodies ----------------------------------------------------------------------------


def test_plans_are_seeded_round_robin_and_fit_the_context() -> None:
    schedule = Schedule((Phase(0, burst=6),))
    urls = ["http://a/", "http://b"]
    plan = plan_requests(schedule, Uniform(1000, 3000), Fixed(800), urls, 4, max_model_len=2048)
    assert [p.base_url for p in plan] == ["http://a", "http://b"] * 3
    assert all(p.prompt_tokens <= 2047 and p.prompt_tokens + p.output_tokens <= 2048 for p in plan)
    assert any(p.output_tokens < 800 for p in plan)
    assert plan == plan_requests(schedule, Uniform(1000, 3000), Fixed(800), urls, 4, 2048)


def test_request_bodies_ask_for_exact_lengths() -> None:
    [req] = plan_requests(Schedule((Phase(0, burst=1),)), Fixed(111), Fixed(7), ["http://a"], 0)
    body = request_body(req, "completions", "m", "text", seed=0)
    assert body["max_tokens"] == 7
    assert body["ignore_eos"]
    assert body["stream"]
    assert body["stream_options"] == {"include_usage": True}
    assert len(body["prompt"]) == 4 * 111  # vllm-sim: four characters per token
    tokens = request_body(req, "completions", "m", "tokens", seed=0)["prompt"]
    assert len(tokens) == 111
    assert all(10 <= t < 500 for t in tokens)
    chat = request_body(req, "chat", "m", "text", seed=0)
    assert chat["max_completion_tokens"] == 7
    assert chat["messages"][0]["content"] == body["prompt"]
    with pytest.raises(ValueError, match="chat"):
        request_body(req, "chat", "m", "tokens", seed=0)
    assert prompt_text(3, random.Random(1)) == prompt_text(3, random.Random(1))
