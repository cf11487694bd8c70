"""vllm-sim and dcgm-sim over real HTTP on loopback, in the test's event loop."""

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from slmpack import metricnames as mn
from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog
from slmpack.planner.perf import Device, PackingShape, default_perf_params, predict
from slmpack.planner.types import EngineSettings, SharingMode, Workload
from slmpack.sim.dcgm import DcgmSim, DcgmSimConfig
from slmpack.sim.engine import EngineRunner, EngineTotals, SimClock
from slmpack.sim.errors import SimStartupError
from slmpack.sim.registry import GpuState
from slmpack.sim.vllm import SimServer, VllmSimConfig, start_servers, stop_servers

GPU = "NVIDIA-H100-80GB-HBM3"
H100 = default_gpu_catalog().get(GPU)
OPT = default_model_catalog().get("opt-1.3b")
PARAMS = default_perf_params()
PROMPT_TOKENS = 111
MEAN_OUTPUT = 128


def config(**overrides: object) -> VllmSimConfig:
    base = VllmSimConfig(
        model="facebook/opt-1.3b",
        host="127.0.0.1",
        port=0,
        max_num_seqs=32,
        max_model_len=2048,
        max_num_batched_tokens=2048,
        gpu_memory_utilization=0.3,
        sim_gpu=GPU,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


@asynccontextmanager
async def running(*configs: VllmSimConfig) -> AsyncIterator[list[SimServer]]:
    servers = await start_servers(configs)
    try:
        yield servers
    finally:
        await stop_servers(servers)


@asynccontextmanager
async def closed_loop(url: str, clients: int, seed: int = 0) -> AsyncIterator[None]:
    """`clients` users, each sending the next request when the last one returns."""
    rng = random.Random(seed)
    stop = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def user() -> None:
            while not stop.is_set():
                body = {
                    "prompt_token_ids": [1] * PROMPT_TOKENS,
                    "max_tokens": rng.randint(MEAN_OUTPUT // 2, MEAN_OUTPUT * 3 // 2),
                }
                async with session.post(f"{url}/v1/completions", json=body) as response:
                    await response.read()

        tasks = [asyncio.create_task(user()) for _ in range(clients)]
        try:
            yield
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Sample name with sorted labels -> value, for every sample of /metrics."""
    async with session.get(f"{url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def total(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k.startswith(name + "{"))


#: Wall-clock bound on every wait below. Progress is measured in simulated time, so a loaded
#: host only makes the waits longer; only a stalled engine reaches this.
WAIT_LIMIT_S = 120.0


async def charge(
    runners: Sequence[EngineRunner], busy_s: float
) -> tuple[list[EngineTotals], list[EngineTotals]]:
    """Totals before and after every engine has charged `busy_s` more simulated seconds."""
    before = [r.totals() for r in runners]
    async with asyncio.timeout(WAIT_LIMIT_S):
        while any(
            r.totals().busy_s - b.busy_s < busy_s for r, b in zip(runners, before, strict=True)
        ):
            await asyncio.sleep(0.05)
    return before, [r.totals() for r in runners]


async def until(condition: Callable[[], bool], limit_s: float) -> None:
    async with asyncio.timeout(limit_s):
        while not condition():
            await asyncio.sleep(0.05)


def output_rate(before: EngineTotals, after: EngineTotals) -> float:
    """Generated tokens per simulated second of steps, whatever the host's speed."""
    return (after.generated_tokens - before.generated_tokens) / (after.busy_s - before.busy_s)


def mean_batch(before: EngineTotals, after: EngineTotals) -> float:
    return (after.scheduled_seqs - before.scheduled_seqs) / (after.steps - before.steps)


def stretch(before: EngineTotals, after: EngineTotals) -> float:
    """Charged over solo step time: how much the neighbours slowed the engine down."""
    return (after.busy_s - before.busy_s) / (after.solo_busy_s - before.solo_busy_s)


def runners_of(servers: Sequence[SimServer]) -> list[EngineRunner]:
    runners = [s.runner for s in servers]
    assert all(r is not None for r in runners)
    return [r for r in runners if r is not None]


def planned_output_rate(
    seqs: int, engines: int = 1, mode: SharingMode = SharingMode.EXCLUSIVE
) -> float:
    """The planner's output tokens/s of one engine at this batch (KV cache never binding)."""
    engine = EngineSettings(max_num_seqs=seqs, max_model_len=2048, max_num_batched_tokens=2048)
    shape = PackingShape(mode, engines, 1, Device.whole(H100))
    workload = Workload(PROMPT_TOKENS, MEAN_OUTPUT, PROMPT_TOKENS)
    return predict(OPT, H100, shape, engine, workload, 1e12, PARAMS).output_tokens_per_s / engines


# --- the OpenAI API ---------------------------------------------------------------------------


async def test_completions_chat_streaming_and_models() -> None:
    async with running(config(sim_speedup=20)) as [server], aiohttp.ClientSession() as s:
        url = server.url
        async with s.get(f"{url}/health") as r:
            assert r.status == 200
        async with s.get(f"{url}/v1/models") as r:
            card = (await r.json())["data"][0]
        assert card["id"] == "facebook/opt-1.3b"
        assert card["max_model_len"] == 2048

        body = {"model": "facebook/opt-1.3b", "prompt": "a" * 400, "max_tokens": 7}
        async with s.post(f"{url}/v1/completions", json=body) as r:
            done = await r.json()
        assert done["usage"] == {
            "prompt_tokens": 100,  # 400 characters at 4 per token
            "completion_tokens": 7,
            "total_tokens": 107,
            "prompt_tokens_details": None,
        }
        assert done["choices"][0]["finish_reason"] == "length"
        assert len(done["choices"][0]["text"].split()) == 7

        async with s.post(f"{url}/v1/completions", json={**body, "stream": True}) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            events = (await r.text()).strip().split("\n\n")
        assert events[-1] == "data: [DONE]"
        chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
        assert len(chunks) == 7
        assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 6 + ["length"]
        assert all(c["object"] == "text_completion" for c in chunks)

        chat = {
            "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with s.post(f"{url}/v1/chat/completions", json=chat) as r:
            events = (await r.text()).strip().split("\n\n")
        assert events[-1] == "data: [DONE]"
        chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert [c["choices"][0]["finish_reason"] for c in chunks[1:4]] == [None, None, "length"]
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["completion_tokens"] == 3


async def test_requests_vllm_would_reject_are_rejected() -> None:
    async with running(config(max_model_len=256)) as [server], aiohttp.ClientSession() as s:
        url = server.url
        async with s.post(f"{url}/v1/completions", json={"model": "other", "prompt": "x"}) as r:
            assert r.status == 404
            assert (await r.json())["error"]["message"] == "The model `other` does not exist."
        too_long = {"prompt_token_ids": [1] * 300, "max_tokens": 4}
        async with s.post(f"{url}/v1/completions", json=too_long) as r:
            assert r.status == 400
            assert "maximum context length is 256 tokens" in (await r.json())["error"]["message"]
        capped = {"prompt_token_ids": [1] * 250, "max_tokens": 100}
        async with s.post(f"{url}/v1/completions", json=capped) as r:
            assert (await r.json())["usage"]["completion_tokens"] == 6


async def test_metrics_expose_vllm_families_and_count_served_tokens() -> None:
    async with running(config(sim_speedup=20)) as [server], aiohttp.ClientSession() as s:
        for _ in range(3):
            body = {"prompt_token_ids": [1] * 50, "max_tokens": 10}
            async with s.post(f"{server.url}/v1/completions", json=body) as r:
                assert r.status == 200
        async with s.get(f"{server.url}/metrics") as r:
            text = await r.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for spec in mn.VLLM_DEFAULT_METRICS:
        assert families[spec.name].type == spec.kind.value
    samples = {
        (s.name, s.labels.get("model_name")): s.value for f in families.values() for s in f.samples
    }
    assert samples[("vllm:generation_tokens_total", "facebook/opt-1.3b")] == 30
    assert samples[("vllm:prompt_tokens_total", "facebook/opt-1.3b")] == 150
    assert samples[("vllm:e2e_request_latency_seconds_count", "facebook/opt-1.3b")] == 3


# --- timing -----------------------------------------------------------------------------------


async def test_http_throughput_follows_the_planner_as_batch_grows() -> None:
    measured = {}
    for seqs in (4, 32):
        cfg = config(max_num_seqs=seqs, sim_speedup=2.0)
        # Twice as many clients as batch slots keep a queue, so a client's round trip never
        # leaves a slot empty, however slowly the host runs them.
        async with running(cfg) as servers, closed_loop(servers[0].url, clients=2 * seqs):
            runners = runners_of(servers)
            await charge(runners, 1.0)
            [before], [after] = await charge(runners, 3.0)
        assert mean_batch(before, after) == seqs
        measured[seqs] = output_rate(before, after)
    planned = {seqs: planned_output_rate(seqs) for seqs in measured}
    for seqs, rate in measured.items():
        assert rate == pytest.approx(planned[seqs], rel=0.05), seqs
    assert measured[32] / measured[4] == pytest.approx(planned[32] / planned[4], rel=0.05)


async def test_colocated_sims_slow_each_other_down(tmp_path: Path) -> None:
    mps = config(sim_mode=SharingMode.MPS, sim_state_dir=tmp_path, sim_speedup=2.0)
    async with running(mps, mps) as servers:
        runners = runners_of(servers)
        urls = [s.url for s in servers]
        async with closed_loop(urls[0], clients=64, seed=1):
            await charge(runners[:1], 1.0)
            [before], [after] = await charge(runners[:1], 3.0)
            alone = output_rate(before, after)
            assert stretch(before, after) == 1.0
            assert runners[1].totals().generated_tokens == 0
            async with closed_loop(urls[1], clients=64, seed=2):
                await until(lambda: all(r.totals().slowdown > 1.0 for r in runners), 30.0)
                # Neighbours' duties are averaged over about 0.5 wall seconds; 2 simulated
                # seconds at speedup 2 take at least 1.
                await charge(runners, 2.0)
                shared = await charge(runners, 3.0)
    expected_drop = planned_output_rate(32, 2, SharingMode.MPS) / planned_output_rate(32)
    assert expected_drop < 0.95
    for before, after in zip(*shared, strict=True):
        assert mean_batch(before, after) == 32
        assert stretch(before, after) > 1.0
        assert output_rate(before, after) / alone == pytest.approx(expected_drop, rel=0.03)


async def test_a_third_engine_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    half = config(gpu_memory_utilization=0.45, sim_state_dir=tmp_path, sim_mode=SharingMode.MPS)
    async with running(half, half):
        with pytest.raises(SimStartupError, match=r"Free memory on device .* \(7\.46/79\.65 GiB\)"):
            await SimServer(half).start()
        assert len(GpuState(tmp_path, "0").records()) == 2
    assert GpuState(tmp_path, "0").records() == []  # stopped engines release their memory


async def test_a_thousand_concurrent_streams_complete() -> None:
    streams, tokens = 1000, 24
    cfg = config(max_num_seqs=1024, gpu_memory_utilization=0.5, sim_speedup=50)
    async with running(cfg) as [server]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def stream(i: int) -> int:
                body = {"prompt": f"request {i} " * 20, "max_tokens": tokens, "stream": True}
                async with session.post(f"{server.url}/v1/completions", json=body) as r:
                    text = await r.text()
                assert text.endswith("data: [DONE]\n\n")
                return text.count('"text":')

            # How long the streams take is the host's business (bench/ measures it); the limit
            # only turns a hang into a failure.
            async with asyncio.timeout(WAIT_LIMIT_S):
                counts = await asyncio.gather(*(stream(i) for i in range(streams)))
        [runner] = runners_of([server])
        totals = runner.totals()
    assert counts == [tokens] * streams
    assert totals.generated_tokens == streams * tokens
    assert runner.scheduler.idle


# --- dcgm-sim ---------------------------------------------------------------------------------


async def test_dcgm_energy_grows_with_power_times_time(tmp_path: Path) -> None:
    speedup = 4.0
    engine = config(sim_state_dir=tmp_path, sim_speedup=speedup, sim_pod_name="vllm-0")
    # dcgm-sim's clock is moved by hand and sampled only at scrapes, so each energy step is
    # the power the previous scrape reported times exactly the time the test let pass.
    wall = [0.0]
    clock = SimClock(speedup, wall=lambda: wall[0])
    dcgm_config = DcgmSimConfig(
        state_dir=tmp_path,
        gpu=GPU,
        host="127.0.0.1",
        port=0,
        speedup=speedup,
        sample_interval_s=3600.0,
        hostname="n1",
    )
    dcgm = DcgmSim(dcgm_config, PARAMS, clock)
    await dcgm.start()
    power = "DCGM_FI_DEV_POWER_USAGE"
    energy = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total"  # the parser adds _total
    try:
        async with running(engine) as servers, aiohttp.ClientSession() as s:
            idle = await scrape(s, dcgm.url)
            async with closed_loop(servers[0].url, clients=64):
                # Activity is averaged over ~0.5 wall seconds; 3 simulated seconds take >= 0.75.
                await charge(runners_of(servers), 3.0)
                readings = [await scrape(s, dcgm.url)]
                for wall_s in (1.0, 0.5):
                    wall[0] += wall_s
                    readings.append(await scrape(s, dcgm.url))
    finally:
        await dcgm.stop()
    assert total(idle, power) == H100.idle_watts
    for before, after, wall_s in zip(readings[:-1], readings[1:], (1.0, 0.5), strict=True):
        assert total(before, power) > H100.idle_watts * 1.5
        joules = (total(after, energy) - total(before, energy)) / 1000
        assert joules == pytest.approx(total(before, power) * wall_s * speedup, abs=0.002)
    assert servers[0].grant is not None
    assert total(readings[-1], "DCGM_FI_DEV_FB_USED") == servers[0].grant.reserved_bytes // 2**20
    assert any("pod=vllm-0" in key for key in readings[-1])
