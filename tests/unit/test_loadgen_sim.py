"""The load generator against vllm-sim over loopback HTTP, in the test's event loop.

The sim's own /metrics counters are an independent count of the same run: every token the
generator reports must be one the engine says it generated.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from slmpack import metricnames as mn
from slmpack.loadgen.arrivals import Phase, Schedule
from slmpack.loadgen.cli import load_main
from slmpack.loadgen.driver import DriverConfig, run_load
from slmpack.loadgen.lengths import Fixed, LogNormal
from slmpack.loadgen.stats import Slo, summarize
from slmpack.loadgen.workload import plan_requests
from slmpack.sim.engine import EngineRunner
from slmpack.sim.vllm import SimServer, VllmSimConfig, start_servers, stop_servers

MODEL = "facebook/opt-1.3b"


def sim_config(**overrides: object) -> VllmSimConfig:
    base = VllmSimConfig(
        model=MODEL,
        host="127.0.0.1",
        port=0,
        max_num_seqs=64,
        max_model_len=2048,
        max_num_batched_tokens=2048,
        gpu_memory_utilization=0.5,
        sim_speedup=20,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


@asynccontextmanager
async def running(*configs: VllmSimConfig) -> AsyncIterator[list[SimServer]]:
    servers = await start_servers(configs)
    try:
        yield servers
    finally:
        await stop_servers(servers)


async def counters(url: str) -> dict[str, float]:
    """Sum over labels of the counters and histogram sums/counts the checks read."""
    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as r:
        text = await r.text()
    wanted = {
        mn.GENERATION_TOKENS.series,
        mn.PROMPT_TOKENS.series,
        mn.REQUEST_SUCCESS.series,
        f"{mn.E2E_REQUEST_LATENCY.name}_sum",
        f"{mn.E2E_REQUEST_LATENCY.name}_count",
        f"{mn.TIME_TO_FIRST_TOKEN.name}_sum",
    }
    out = dict.fromkeys(wanted, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                out[sample.name] += sample.value
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


async def test_generated_tokens_match_the_sims_counters_over_two_servers() -> None:
    speedup = 20.0
    async with running(sim_config(), sim_config()) as servers:
        urls = [s.url for s in servers]
        before = [await counters(u) for u in urls]
        schedule = Schedule((Phase(4.0, 40.0), Phase(0, burst=20)), max_requests=200)
        plan = plan_requests(
            schedule, LogNormal(111, 1.0, 4, 1024), LogNormal(96, 0.8, 4, 512), urls, seed=11
        )
        config = DriverConfig(model=MODEL, time_scale=speedup, seed=11)
        run = await run_load(plan, config)
        after = [await counters(u) for u in urls]
    report = summarize(run.records, run.duration_wall_s, time_scale=speedup)
    sim = [delta(a, b) for a, b in zip(after, before, strict=True)]
    assert report.failed == 0
    assert report.completed == len(plan) > 150
    # Token for token, server by server (round robin puts alternate requests on each).
    for i, url in enumerate(urls):
        mine = [r for r in run.records if r.base_url == url]
        assert sum(r.output_tokens for r in mine) == sim[i][mn.GENERATION_TOKENS.series]
        assert sum(r.prompt_tokens for r in mine) == sim[i][mn.PROMPT_TOKENS.series]
        assert len(mine) == sim[i][mn.REQUEST_SUCCESS.series]
    # Every request got what it asked for, and the streamed chunks agree with the usage.
    assert all(r.output_tokens == r.requested_output_tokens for r in run.records)
    assert all(len(r.itl_s) == r.output_tokens - 1 for r in run.records)
    assert report.output_tokens == sum(p.output_tokens for p in plan)


async def engine_lag_s(runner: EngineRunner, stop: asyncio.Event) -> float:
    """Most simulated seconds the engine's step clock trailed the wall clock while busy."""
    worst = 0.0
    while not stop.is_set():
        if not runner.scheduler.idle:
            worst = max(worst, runner.clock.now() - runner.time_s)
        await asyncio.sleep(0.005)
    return worst


async def test_latencies_match_the_sims_own_clock_when_it_keeps_up() -> None:
    # The engine's latency histograms are in simulated seconds, the client's in wall seconds x
    # speedup; the client adds HTTP and event-loop time, a few milliseconds per request.
    speedup = 4.0
    async with running(sim_config(sim_speedup=speedup)) as [server]:
        assert server.runner is not None
        before = await counters(server.url)
        plan = plan_requests(
            Schedule((Phase(4.0, 20.0),)), LogNormal(111, 1.0, 4, 1024), Fixed(96), [server.url], 3
        )
        stop = asyncio.Event()
        watcher = asyncio.create_task(engine_lag_s(server.runner, stop))
        run = await run_load(plan, DriverConfig(model=MODEL, time_scale=speedup))
        stop.set()
        lag_s = await watcher
        sim = delta(await counters(server.url), before)
    report = summarize(run.records, run.duration_wall_s, time_scale=speedup)
    assert report.completed == len(plan) == sim[f"{mn.E2E_REQUEST_LATENCY.name}_count"]
    sim_e2e = sim[f"{mn.E2E_REQUEST_LATENCY.name}_sum"] / len(plan)
    sim_ttft = sim[f"{mn.TIME_TO_FIRST_TOKEN.name}_sum"] / len(plan)
    # The engine stamps an arrival with the wall clock and its finish with its step clock, which
    # trails the wall clock by up to `lag_s` on a busy host: its latencies come out short by
    # at most that. The client never sees a request finish before the engine finishes it.
    assert sim_e2e + lag_s > 0.3  # 96 steps of several milliseconds each
    assert report.e2e_s.mean > sim_e2e * 0.98
    assert report.e2e_s.mean < sim_e2e * 1.08 + lag_s
    assert report.ttft_s.mean > sim_ttft * 0.95


async def test_a_thousand_concurrent_streams_from_one_session_complete() -> None:
    streams, tokens, speedup = 1000, 24, 50.0
    cfg = sim_config(max_num_seqs=1024, sim_speedup=speedup)
    async with running(cfg) as [server]:
        before = await counters(server.url)
        plan = plan_requests(
            Schedule((Phase(0, burst=streams),)), Fixed(40), Fixed(tokens), [server.url], 0
        )
        run = await run_load(plan, DriverConfig(model=MODEL, time_scale=speedup))
        sim = delta(await counters(server.url), before)
    report = summarize(run.records, run.duration_wall_s, time_scale=speedup)
    assert report.errors == {}
    assert report.completed == streams
    assert run.peak_in_flight == streams  # all open at once: no client-side queue
    assert report.output_tokens == streams * tokens == sim[mn.GENERATION_TOKENS.series]
    assert run.duration_wall_s < 60  # about 1.5 s on 2 idle cores


async def test_concurrency_cap_and_errors_are_reported() -> None:
    async with running(sim_config(max_model_len=256)) as [server]:
        plan = plan_requests(Schedule((Phase(0, burst=30),)), Fixed(50), Fixed(8), [server.url], 0)
        capped = await run_load(plan, DriverConfig(model=MODEL, max_concurrency=4))
        wrong = await run_load(plan[:3], DriverConfig(model="no-such-model"))
        too_long = plan_requests(
            Schedule((Phase(0, burst=2),)), Fixed(300), Fixed(8), [server.url], 0
        )
        rejected = await run_load(too_long, DriverConfig(model=MODEL))
    assert capped.peak_in_flight == 4
    assert all(r.ok for r in capped.records)
    report = summarize(wrong.records + rejected.records, 1.0, slo=Slo(ttft_s=1.0))
    assert report.errors == {"http_400": 2, "http_404": 3}
    assert report.completed == 0
    assert report.goodput is not None
    assert report.goodput.requests == 0


async def test_a_cancelled_run_stops_its_requests() -> None:
    async with running(sim_config(sim_speedup=1)) as [server]:
        assert server.runner is not None
        plan = plan_requests(
            Schedule((Phase(0, burst=20), Phase(60, 5))), Fixed(20), Fixed(1000), [server.url], 0
        )
        load = asyncio.create_task(run_load(plan, DriverConfig(model=MODEL)))
        await asyncio.sleep(0.3)
        assert len(server.runner.scheduler.running) >= 20
        load.cancel()
        with pytest.raises(asyncio.CancelledError):
            await load
        for _ in range(100):  # the server notices closed connections within a step or two
            if not server.runner.scheduler.running:
                break
            await asyncio.sleep(0.02)
        assert not server.runner.scheduler.running


async def test_chat_requests_stream_and_count(tmp_path: Path) -> None:
    async with running(sim_config()) as [server]:
        before = await counters(server.url)
        plan = plan_requests(Schedule((Phase(0, burst=10),)), Fixed(20), Fixed(12), [server.url], 0)
        run = await run_load(plan, DriverConfig(model=MODEL, api="chat"))
        sim = delta(await counters(server.url), before)
    assert all(r.ok and r.output_tokens == 12 and len(r.itl_s) == 11 for r in run.records)
    assert sim[mn.GENERATION_TOKENS.series] == 120


async def test_the_command_line_writes_a_json_document(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    requests_file = tmp_path / "requests.jsonl"
    async with running(sim_config()) as [server]:
        argv = [
            "--base-url",
            server.url,
            "--phase",
            "rate=20..60,duration=2",
            "--phase",
            "burst=10",
            "--input-len",
            "sharegpt",
            "--output-len",
            "uniform:8:32",
            "--time-scale",
            "20",
            "--slo-ttft-ms",
            "2000",
            "--slo-itl-ms",
            "200",
            "--json",
            str(out),
            "--save-requests",
            str(requests_file),
            "--quiet",
        ]
        # load_main runs its own event loop; the sim keeps serving from this one.
        code = await asyncio.to_thread(load_main, argv)
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["schema_version"] == 1
    assert doc["parameters"]["model"] == MODEL  # read from /v1/models
    assert doc["parameters"]["input_len"]["mean_tokens"] == 111
    assert doc["parameters"]["time_scale"] == 20
    results = doc["results"]
    assert results["completed"] == results["requests"] > 50
    assert results["goodput"]["slo"]["ttft_s"] == 2.0
    for key in ("output_tokens_per_s", "total_tokens_per_s", "request_rate_per_s"):
        assert results[key] > 0
    for key in ("ttft_s", "itl_s", "e2e_s", "tpot_s"):
        assert set(results[key]) == {"count", "mean", "p50", "p90", "p99", "max"}
    lines = requests_file.read_text().splitlines()
    assert len(lines) == results["requests"]
    assert json.loads(lines[0])["index"] == 0
