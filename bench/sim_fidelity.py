"""How faithful and how costly vllm-sim is.

1. **Against the paper.** For every figure in `planner/calibration_targets.yaml` (Recasens,
   Agullo et al. 2025, arXiv 2503.08311: throughput vs batch for OPT-1.3B/2.7B and Llama-2-7B/13B,
   and MPS replication, on a 64 GB H100) the sim's engine (its scheduler and step timing, in
   virtual time) is run closed-loop with the paper's memory split, and its total tokens/s and
   mean step time are set beside the paper's total tokens/s and mean ITL. Two length mixes:
   111 input / 292 +- 50% output tokens (what `predict` assumes, up to the spread) and the
   load generator's ShareGPT-like lognormals (means 111 / 292, closer to the paper's data).
   Replication gains (2 x 256 over 1 x 768 and so on) are compared as ratios.
2. **Against the planner.** The same configurations through `perf.predict`: the relative
   difference of output tokens/s, its maximum, and the maximum over configurations whose KV
   cache does not bind (where the two memory views differ on purpose, see the .md).
   Two of them are also served over HTTP by in-process sim servers under the load generator;
   their rate comes from the engine's charged time, which does not depend on the host's speed.
   Then short outputs (the demo's 111 in / 32 out, and 8 out) on an 80 GB H100 with the
   planner's own memory split: every step then also prefills many new prompts within the
   `max_num_batched_tokens` budget, a regime the paper's figures do not cover.
3. **Overhead.** A vllm-sim process (OPT-1.3B on an 80 GB H100, 4x speedup) serves the load
   generator at several Poisson rates for a fixed time; its CPU time (/proc) and the tokens it
   generated (its /metrics counter) give CPU seconds per 1,000 streamed tokens/s, after
   subtracting an idle sim measured the same way in the same run. The generator's own CPU
   time is reported beside it.

Writes bench/results/sim_fidelity.json and .md. Never passes or fails.

    .venv/bin/python bench/sim_fidelity.py            # about 2 minutes on 2 cores
    .venv/bin/python bench/sim_fidelity.py --quick    # fewer configurations, shorter runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchinfo import git_sha, hardware, table
from slmpack import metricnames as mn
from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog
from slmpack.loadgen import DriverConfig, Phase, Schedule, plan_requests, run_load, summarize
from slmpack.loadgen.lengths import Fixed, Uniform, sharegpt_input, sharegpt_output
from slmpack.planner.calibration import TargetPoint, Targets, load_targets, predict_target
from slmpack.planner.perf import Device, PerfParams, default_perf_params
from slmpack.planner.plan import PlanRequest, enumerate_candidates
from slmpack.planner.types import EngineSettings, SharingMode, Workload
from slmpack.sim.memory_grant import block_bytes, grant_memory
from slmpack.sim.offline import closed_loop_throughput
from slmpack.sim.scheduler import Scheduler, SimRequest
from slmpack.sim.timing import StepCostModel
from slmpack.sim.vllm import VllmSimConfig, start_servers, stop_servers

SCHEMA_VERSION = 1
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: Output lengths spread +-50% around the mean in the fixed-length mix: enough to keep requests
#: that start together from finishing (and refilling) in lockstep (docs/sim.md).
OUTPUT_SPREAD_RATIO = 0.5
#: A configuration is KV-bound when predict's batch is under 99% of max_num_seqs.
KV_BOUND_RATIO = 0.99
#: Replication gains the paper reports: (model, numerator, denominator) as (replicas, batch).
REPLICATION_GAINS = (
    ("opt-1.3b", (2, 256), (1, 768)),
    ("opt-1.3b", (4, 256), (2, 256)),
    ("opt-1.3b", (2, 96), (1, 256)),
    ("opt-2.7b", (2, 256), (1, 384)),
    ("opt-2.7b", (2, 128), (1, 128)),
)
#: Short-output configurations: (output tokens, mode, replicas, max_num_seqs) of OPT-1.3B on
#: an 80 GB H100 with 111-token prompts. 32 is the demo's workload; Packed 6x256 and
#: Exclusive 1x512 are what the operator plans for it.
SHORT_OUTPUT_GPU = "NVIDIA-H100-80GB-HBM3"
SHORT_OUTPUT_CONFIGS = (
    (32, SharingMode.EXCLUSIVE, 1, 512),
    (32, SharingMode.EXCLUSIVE, 1, 128),
    (32, SharingMode.PACKED, 6, 256),
    (32, SharingMode.MPS, 2, 256),
    (8, SharingMode.EXCLUSIVE, 1, 512),
    (8, SharingMode.PACKED, 4, 256),
)
OVERHEAD_MODEL = "facebook/opt-1.3b"
OVERHEAD_GPU = "NVIDIA-H100-80GB-HBM3"
OVERHEAD_SPEEDUP = 4.0
OVERHEAD_OUTPUT_TOKENS = 128
OVERHEAD_INPUT_TOKENS = 111


# --- 1 and 2: the paper's configurations in virtual time ----------------------------------------


@dataclass(frozen=True)
class Config:
    model: str
    mode: SharingMode
    replicas: int
    max_num_seqs: int


def engine_settings(targets: Targets, seqs: int) -> EngineSettings:
    # The paper's vLLM 0.5 runs: FP16, --max-model-len 2048, chunked prefill off, so a prompt
    # is admitted whole (the batched-token budget is at least the context).
    return EngineSettings(
        max_num_seqs=seqs,
        max_model_len=targets.max_model_len,
        max_num_batched_tokens=max(2048, targets.max_model_len),
        weight_dtype="fp16",
    )


def kv_blocks(targets: Targets, config: Config) -> int:
    """KV blocks of each replica as vllm-sim grants them at `0.9 / replicas` of the GPU.

    Each replica requests its own share; what the others hold only decides whether it fits,
    and the paper's splits fit.
    """
    gpu = default_gpu_catalog().get(targets.gpu)
    model = default_model_catalog().get(config.model)
    engine = engine_settings(targets, config.max_num_seqs)
    util = targets.memory_utilisation_total / config.replicas
    return grant_memory(model, engine, gpu.memory_bytes, 0, util, None).num_blocks


def sim_lognormal(
    targets: Targets,
    config: Config,
    params: PerfParams,
    horizon_s: float,
    warmup_s: float,
    seed: int = 0,
) -> tuple[float, float]:
    """(output tokens/s of all replicas, mean step s): the sim's engine fed ShareGPT-like
    lengths by closed-loop clients, in virtual time.

    The loop of `slmpack.sim.offline.closed_loop_throughput`, with lengths drawn from the
    load generator's distributions instead of a uniform spread.
    """
    gpu = default_gpu_catalog().get(targets.gpu)
    model = default_model_catalog().get(config.model)
    engine = engine_settings(targets, config.max_num_seqs)
    inputs, outputs = sharegpt_input(), sharegpt_output()
    rng = random.Random(seed)
    cost = StepCostModel(model, engine, Device.whole(gpu), params, config.mode)
    scheduler = Scheduler(
        engine.max_num_seqs, engine.max_num_batched_tokens, kv_blocks(targets, config)
    )
    serial = 0

    def submit(now: float) -> None:
        nonlocal serial
        serial += 1
        prompt = inputs.sample(rng)
        output = min(outputs.sample(rng), engine.max_model_len - prompt)
        scheduler.add(SimRequest(str(serial), prompt, output, now))

    for _ in range(engine.max_num_seqs):
        submit(0.0)
    now, tokens, steps = 0.0, 0, 0
    while now < horizon_s:
        batch = scheduler.schedule(now)
        step = cost.step(
            batch.scheduled_seqs,
            batch.decode_seqs,
            batch.decode_context_tokens,
            batch.prefill_chunks,
        )
        engines = config.replicas
        slowdown = cost.slowdown(step, [cost.duty(step)] * (engines - 1)) if engines > 1 else 1.0
        now += cost.cycle_s(step, slowdown)
        outcome = scheduler.complete(batch, now)
        if now > warmup_s:
            tokens += outcome.generated_tokens
            steps += 1
        for _ in outcome.finished:
            submit(now)
    window = horizon_s - warmup_s
    return config.replicas * tokens / window, window / max(1, steps)


def paper_configurations(targets: Targets, quick: bool) -> list[tuple[Config, TargetPoint | None]]:
    seen: dict[Config, TargetPoint | None] = {}
    for point in targets.points:
        config = Config(point.model, point.mode, point.replicas, point.max_num_seqs)
        if config not in seen:
            seen[config] = point
    for model, *pairs in REPLICATION_GAINS:
        for replicas, seqs in pairs:
            mode = SharingMode.MPS if replicas > 1 else SharingMode.EXCLUSIVE
            seen.setdefault(Config(model, mode, replicas, seqs), None)
    items = list(seen.items())
    if quick:
        items = [(c, p) for c, p in items if c.max_num_seqs in (1, 128, 256, 768, 384)]
    return items


def virtual_time_results(targets: Targets, params: PerfParams, quick: bool) -> list[dict[str, Any]]:
    rows = []
    factor = targets.workload.tokens_per_request / targets.workload.mean_output_tokens
    for config, point in paper_configurations(targets, quick):
        predicted = predict_target(
            targets, config.model, config.mode, config.replicas, config.max_num_seqs, params
        )
        # Measure over several request lifetimes after the first batch has turned over twice.
        lifetime_s = targets.workload.mean_output_tokens * predicted.step_s
        horizon_s = max(40.0, (3 if quick else 8) * lifetime_s)
        warmup_s = max(8.0, 2 * lifetime_s)
        engine = engine_settings(targets, config.max_num_seqs)
        gpu = default_gpu_catalog().get(targets.gpu)
        model = default_model_catalog().get(config.model)
        uniform = closed_loop_throughput(
            model,
            engine,
            Device.whole(gpu),
            params,
            num_blocks=kv_blocks(targets, config),
            prompt_tokens=targets.workload.mean_input_tokens,
            output_tokens=targets.workload.mean_output_tokens,
            engines=config.replicas,
            mode=config.mode,
            output_spread_ratio=OUTPUT_SPREAD_RATIO,
            horizon_s=horizon_s,
            warmup_s=warmup_s,
        )
        sharegpt_tps, sharegpt_step_s = sim_lognormal(
            targets, config, params, horizon_s * 1.5, warmup_s * 1.5
        )
        kv_bound = predicted.effective_batch_per_replica < KV_BOUND_RATIO * config.max_num_seqs
        row: dict[str, Any] = {
            "model": config.model,
            "mode": config.mode.value,
            "replicas": config.replicas,
            "max_num_seqs": config.max_num_seqs,
            "kv_bound": kv_bound,
            "predict_batch_per_replica": round(predicted.effective_batch_per_replica, 1),
            "predict_output_tokens_per_s": round(predicted.output_tokens_per_s, 1),
            "predict_total_tokens_per_s": round(predicted.total_tokens_per_s, 1),
            "predict_step_ms": round(predicted.step_s * 1e3, 2),
            "sim_output_tokens_per_s": round(uniform.output_tokens_per_s, 1),
            "sim_total_tokens_per_s": round(uniform.output_tokens_per_s * factor, 1),
            "sim_step_ms": round(uniform.mean_step_s * 1e3, 2),
            "sim_preemptions": uniform.preemptions,
            "sim_vs_predict_ratio": round(
                uniform.output_tokens_per_s / predicted.output_tokens_per_s - 1, 4
            ),
            "sim_sharegpt_total_tokens_per_s": round(sharegpt_tps * factor, 1),
            "sim_sharegpt_step_ms": round(sharegpt_step_s * 1e3, 2),
        }
        if point is not None:
            row |= {
                "paper_total_tokens_per_s": point.tokens_per_s,
                "paper_itl_ms": round(point.itl_s * 1e3, 2),
                "sim_vs_paper_ratio": round(
                    row["sim_total_tokens_per_s"] / point.tokens_per_s - 1, 4
                ),
                "sim_sharegpt_vs_paper_ratio": round(
                    row["sim_sharegpt_total_tokens_per_s"] / point.tokens_per_s - 1, 4
                ),
                "predict_vs_paper_ratio": round(
                    predicted.total_tokens_per_s / point.tokens_per_s - 1, 4
                ),
                "source": point.source,
            }
        rows.append(row)
        print(
            f"  {config.model} {config.mode.value} {config.replicas}x{config.max_num_seqs}: "
            f"sim {row['sim_total_tokens_per_s']:.0f} tok/s, predict "
            f"{row['predict_total_tokens_per_s']:.0f}, "
            f"paper {row.get('paper_total_tokens_per_s', '-')}",
            flush=True,
        )
    return rows


def short_output_results(params: PerfParams, quick: bool) -> list[dict[str, Any]]:
    """The sim's engine vs `predict` with short outputs, on the planner's own packings."""
    gpu = default_gpu_catalog().get(SHORT_OUTPUT_GPU)
    model = default_model_catalog().get("opt-1.3b")
    configs = SHORT_OUTPUT_CONFIGS[::2] if quick else SHORT_OUTPUT_CONFIGS
    rows = []
    for output_tokens, mode, replicas, seqs in configs:
        workload = Workload(111, output_tokens)
        request = PlanRequest(
            model,
            gpu,
            modes=(mode,),
            workload=workload,
            max_model_len=2048,
            replicas_per_gpu=replicas,
            max_num_seqs_options=(seqs,),
        )
        candidate = enumerate_candidates(request, params)[0]
        predicted = candidate.perf
        lifetime_s = output_tokens * predicted.step_s
        sim = closed_loop_throughput(
            model,
            candidate.engine,
            Device.whole(gpu),
            params,
            num_blocks=candidate.memory.kv_cache_bytes // block_bytes(model, candidate.engine),
            prompt_tokens=workload.mean_input_tokens,
            output_tokens=output_tokens,
            engines=replicas,
            mode=mode,
            output_spread_ratio=OUTPUT_SPREAD_RATIO,
            horizon_s=max(10.0, 40 * lifetime_s),
            warmup_s=max(2.0, 8 * lifetime_s),
        )
        row = {
            "model": model.name,
            "gpu": SHORT_OUTPUT_GPU,
            "mode": mode.value,
            "replicas": replicas,
            "max_num_seqs": seqs,
            "max_num_batched_tokens": candidate.engine.max_num_batched_tokens,
            "input_tokens": workload.mean_input_tokens,
            "output_tokens": output_tokens,
            "predict_batch_per_replica": round(predicted.effective_batch_per_replica, 1),
            "predict_output_tokens_per_s": round(predicted.output_tokens_per_s, 1),
            "predict_step_ms": round(predicted.step_s * 1e3, 2),
            "sim_output_tokens_per_s": round(sim.output_tokens_per_s, 1),
            "sim_step_ms": round(sim.mean_step_s * 1e3, 2),
            "sim_vs_predict_ratio": round(
                sim.output_tokens_per_s / predicted.output_tokens_per_s - 1, 4
            ),
            "sim_vs_predict_step_ratio": round(sim.mean_step_s / predicted.step_s - 1, 4),
        }
        rows.append(row)
        print(
            f"  {mode.value} {replicas}x{seqs}, {output_tokens} out: sim "
            f"{row['sim_output_tokens_per_s']:.0f} tok/s, predict "
            f"{row['predict_output_tokens_per_s']:.0f}",
            flush=True,
        )
    return rows


def replication_gains(rows: list[dict[str, Any]], targets: Targets) -> list[dict[str, Any]]:
    def find(model: str, replicas: int, seqs: int) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in rows
                if r["model"] == model and r["replicas"] == replicas and r["max_num_seqs"] == seqs
            ),
            None,
        )

    gains = []
    for model, (n_rep, n_seqs), (d_rep, d_seqs) in REPLICATION_GAINS:
        num, den = find(model, n_rep, n_seqs), find(model, d_rep, d_seqs)
        if num is None or den is None:
            continue
        gain: dict[str, Any] = {
            "model": model,
            "packing": f"{n_rep}x{n_seqs} over {d_rep}x{d_seqs}",
            "sim": round(num["sim_total_tokens_per_s"] / den["sim_total_tokens_per_s"], 3),
            "sim_sharegpt": round(
                num["sim_sharegpt_total_tokens_per_s"] / den["sim_sharegpt_total_tokens_per_s"], 3
            ),
            "predict": round(
                num["predict_total_tokens_per_s"] / den["predict_total_tokens_per_s"], 3
            ),
        }
        if "paper_total_tokens_per_s" in num and "paper_total_tokens_per_s" in den:
            gain["paper"] = round(
                num["paper_total_tokens_per_s"] / den["paper_total_tokens_per_s"], 3
            )
        gains.append(gain)
    return gains


# --- 2b: the same over HTTP --------------------------------------------------------------------


async def http_check(
    targets: Targets, params: PerfParams, config: Config, speedup: float, lifetimes: float
) -> dict[str, Any]:
    """One configuration served by in-process sim servers under the load generator.

    Clients keep 1.5x the batch in flight, so a queue waits at each server and the batch stays
    full however slowly the host answers; the rate is tokens over the engine's charged time.
    """
    util = targets.memory_utilisation_total / config.replicas
    # Co-located engines find each other through a shared state directory.
    state_dir = Path(tempfile.mkdtemp(prefix="sim-fidelity-")) if config.replicas > 1 else None
    configs = [
        VllmSimConfig(
            model=config.model,
            sim_model=config.model,
            host="127.0.0.1",
            port=0,
            max_num_seqs=config.max_num_seqs,
            max_model_len=targets.max_model_len,
            max_num_batched_tokens=max(2048, targets.max_model_len),
            gpu_memory_utilization=util,
            dtype="float16",
            sim_gpu=targets.gpu,
            sim_mode=config.mode,
            sim_state_dir=state_dir,
            sim_speedup=speedup,
            sim_seed=i,
        )
        for i in range(config.replicas)
    ]
    predicted = predict_target(
        targets, config.model, config.mode, config.replicas, config.max_num_seqs, params
    )
    lifetime_s = targets.workload.mean_output_tokens * predicted.step_s  # simulated
    servers = await start_servers(configs, params)
    try:
        urls = [s.url for s in servers]
        mean_out = targets.workload.mean_output_tokens
        spread = round(mean_out * OUTPUT_SPREAD_RATIO)
        per_server = math.ceil(1.5 * config.max_num_seqs)
        requests = per_server * len(urls) * math.ceil(4 + lifetimes * 2)
        plan = plan_requests(
            Schedule((Phase(0, burst=requests),)),
            Fixed(targets.workload.mean_input_tokens),
            Uniform(mean_out - spread, mean_out + spread),
            urls,
            seed=5,
        )
        driver = DriverConfig(
            model=config.model, max_concurrency=per_server * len(urls), time_scale=speedup
        )
        load = asyncio.create_task(run_load(plan, driver))
        await asyncio.sleep(2 * lifetime_s / speedup)
        start = [s.runner.totals() for s in servers if s.runner is not None]
        await asyncio.sleep(lifetimes * lifetime_s / speedup)
        end = [s.runner.totals() for s in servers if s.runner is not None]
        load.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await load
    finally:
        await stop_servers(servers)
    rates = [
        (b.generated_tokens - a.generated_tokens) / (b.busy_s - a.busy_s)
        for a, b in zip(start, end, strict=True)
    ]
    batches = [
        (b.scheduled_seqs - a.scheduled_seqs) / max(1, b.steps - a.steps)
        for a, b in zip(start, end, strict=True)
    ]
    lag = sum(b.lag_skipped_s - a.lag_skipped_s for a, b in zip(start, end, strict=True))
    total_rate = sum(rates)
    return {
        "model": config.model,
        "mode": config.mode.value,
        "replicas": config.replicas,
        "max_num_seqs": config.max_num_seqs,
        "speedup": speedup,
        "http_sim_output_tokens_per_s": round(total_rate, 1),
        "mean_batch_per_replica": round(sum(batches) / len(batches), 1),
        "lag_skipped_s": round(lag, 3),
        "predict_output_tokens_per_s": round(predicted.output_tokens_per_s, 1),
        "http_sim_vs_predict_ratio": round(total_rate / predicted.output_tokens_per_s - 1, 4),
    }


# --- 3: overhead --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5), in clock ticks.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _generated_tokens(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    prefix = mn.GENERATION_TOKENS.series + "{"
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


@contextlib.contextmanager
def sim_process(max_num_seqs: int) -> Iterator[tuple[int, str]]:
    port = _free_port()
    argv = [
        sys.executable, "-m", "slmpack.sim.vllm", "--model", OVERHEAD_MODEL,
        "--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", str(max_num_seqs),
        "--max-model-len", "2048", "--gpu-memory-utilization", "0.5",
        "--sim-gpu", OVERHEAD_GPU, "--sim-speedup", str(OVERHEAD_SPEEDUP),
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("vllm-sim did not start") from None
                time.sleep(0.2)
        yield process.pid, url
    finally:
        process.terminate()
        process.wait(timeout=15)


async def overhead(rates_tok_s: list[float], seconds: float) -> dict[str, Any]:
    """CPU per streamed token of a sim process, and of the generator feeding it."""
    rows = []
    with sim_process(max_num_seqs=512) as (pid, url):
        await asyncio.sleep(1.0)  # past start-up work
        cpu0, wall0 = _cpu_seconds(pid), time.perf_counter()
        await asyncio.sleep(seconds)
        idle_cpu_per_s = (_cpu_seconds(pid) - cpu0) / (time.perf_counter() - wall0)
        for rate in rates_tok_s:
            requests_per_s = rate / OVERHEAD_OUTPUT_TOKENS
            plan = plan_requests(
                Schedule((Phase(seconds, requests_per_s),)),
                Fixed(OVERHEAD_INPUT_TOKENS),
                Fixed(OVERHEAD_OUTPUT_TOKENS),
                [url],
                seed=int(rate),
            )
            tokens0, cpu0 = _generated_tokens(url), _cpu_seconds(pid)
            own0, wall0 = time.process_time(), time.perf_counter()
            run = await run_load(plan, DriverConfig(model=OVERHEAD_MODEL, seed=int(rate)))
            wall = time.perf_counter() - wall0
            own = time.process_time() - own0
            cpu = _cpu_seconds(pid) - cpu0
            tokens = _generated_tokens(url) - tokens0
            report = summarize(run.records, run.duration_wall_s)
            tok_per_s = tokens / wall
            rows.append(
                {
                    "offered_tokens_per_s": rate,
                    "wall_s": round(wall, 2),
                    "tokens_per_s": round(tok_per_s, 1),
                    "errors": report.failed,
                    "peak_in_flight": run.peak_in_flight,
                    "sim_cpu_per_s": round(cpu / wall, 4),
                    "sim_cpu_s_per_1k_tokens_per_s": round(
                        (cpu / wall - idle_cpu_per_s) / (tok_per_s / 1000), 5
                    ),
                    "loadgen_cpu_per_s": round(own / wall, 4),
                    "loadgen_cpu_s_per_1k_tokens_per_s": round(own / wall / (tok_per_s / 1000), 5),
                }
            )
            print(f"  {rate:.0f} tok/s offered: {rows[-1]}", flush=True)
    return {"idle_sim_cpu_per_s": round(idle_cpu_per_s, 4), "rates": rows}


# --- the document --------------------------------------------------------------------------------


def summary_figures(
    rows: list[dict[str, Any]], http: list[dict[str, Any]], short: list[dict[str, Any]]
) -> dict[str, Any]:
    def worst(values: list[float]) -> float:
        return max(values, key=abs) if values else math.nan

    free = [r for r in rows if not r["kv_bound"]]
    with_paper = [r for r in rows if "paper_total_tokens_per_s" in r]
    return {
        "sim_vs_predict_max_abs_ratio": worst([r["sim_vs_predict_ratio"] for r in rows]),
        "sim_vs_predict_max_abs_ratio_kv_not_binding": worst(
            [r["sim_vs_predict_ratio"] for r in free]
        ),
        "http_sim_vs_predict_max_abs_ratio": worst([h["http_sim_vs_predict_ratio"] for h in http]),
        "short_output_sim_vs_predict_max_abs_ratio": worst(
            [r["sim_vs_predict_ratio"] for r in short]
        ),
        "short_output_sim_vs_predict_step_max_abs_ratio": worst(
            [r["sim_vs_predict_step_ratio"] for r in short]
        ),
        "sim_vs_paper_max_abs_ratio": worst([r["sim_vs_paper_ratio"] for r in with_paper]),
        "sim_vs_paper_mean_abs_ratio": round(
            sum(abs(r["sim_vs_paper_ratio"]) for r in with_paper) / max(1, len(with_paper)), 4
        ),
        "sim_sharegpt_vs_paper_mean_abs_ratio": round(
            sum(abs(r["sim_sharegpt_vs_paper_ratio"]) for r in with_paper)
            / max(1, len(with_paper)),
            4,
        ),
        "predict_vs_paper_mean_abs_ratio": round(
            sum(abs(r["predict_vs_paper_ratio"]) for r in with_paper) / max(1, len(with_paper)), 4
        ),
    }


def pct(value: float) -> str:
    return f"{value:+.1%}"


def markdown(doc: dict[str, Any]) -> str:
    res = doc["results"]
    s = res["summary"]
    hw = doc["hardware"]
    lines = [
        "# vllm-sim fidelity and overhead",
        "",
        f"`bench/sim_fidelity.py`, commit `{doc['git_sha'][:12]}`, {hw['cpu_count']} CPUs "
        f"({hw['cpu_model']}). Wall time {res['wall_s']:.0f} s"
        + (" (--quick)" if doc["parameters"]["quick"] else "")
        + f"; host load average {res['load_average_1m'][0]:g} at the start, "
        f"{res['load_average_1m'][1]:g} at the end.",
        "",
        "## Summary",
        "",
    ]
    lines += table(
        ["figure", "value"],
        [
            ["sim vs `predict`, output tok/s, largest difference",
             pct(s["sim_vs_predict_max_abs_ratio"])],
            ["the same where the KV cache does not bind",
             pct(s["sim_vs_predict_max_abs_ratio_kv_not_binding"])],
            ["sim over HTTP vs `predict`, largest difference",
             pct(s["http_sim_vs_predict_max_abs_ratio"])],
            ["short outputs: sim vs `predict`, output tok/s / step, largest differences",
             f"{pct(s['short_output_sim_vs_predict_max_abs_ratio'])} / "
             f"{pct(s['short_output_sim_vs_predict_step_max_abs_ratio'])}"],
            ["sim vs paper, total tok/s, mean / largest difference",
             f"{s['sim_vs_paper_mean_abs_ratio']:.1%} / {pct(s['sim_vs_paper_max_abs_ratio'])}"],
            ["sim with ShareGPT-like lengths vs paper, mean difference",
             f"{s['sim_sharegpt_vs_paper_mean_abs_ratio']:.1%}"],
            ["`predict` vs paper, mean difference", f"{s['predict_vs_paper_mean_abs_ratio']:.1%}"],
        ],
    )  # fmt: skip
    lines += [
        "",
        "## Throughput vs batch and replication (64 GB H100, 111 in / 292 out)",
        "",
        "Total tokens/s. Sim: its engine in virtual time, closed loop, output lengths 292 +- 50%; "
        "ShareGPT: the same with the load generator's lognormal lengths. Step: the sim's mean "
        "step beside the paper's mean ITL (ms). KV: `predict`'s batch is limited by the KV cache.",
        "",
    ]
    rows = []
    for r in res["virtual_time"]:
        paper = r.get("paper_total_tokens_per_s")
        rows.append(
            [
                r["model"],
                f"{r['mode']} {r['replicas']}x{r['max_num_seqs']}",
                "-" if paper is None else f"{paper:.0f}",
                f"{r['sim_total_tokens_per_s']:.0f}",
                "-" if paper is None else pct(r["sim_vs_paper_ratio"]),
                f"{r['sim_sharegpt_total_tokens_per_s']:.0f}",
                f"{r['predict_total_tokens_per_s']:.0f}",
                pct(r["sim_vs_predict_ratio"]),
                f"{r['sim_step_ms']:.1f} / {r.get('paper_itl_ms', '-')}",
                "bound" if r["kv_bound"] else "",
            ]
        )
    header = ["model", "packing", "paper", "sim", "sim vs paper", "ShareGPT", "predict"]
    lines += table([*header, "sim vs predict (output)", "step ms sim / paper", "KV"], rows)
    lines += ["", "Replication gains (throughput ratio):", ""]
    lines += table(
        ["model", "packing", "paper", "sim", "sim, ShareGPT", "predict"],
        [
            [g["model"], g["packing"], str(g.get("paper", "-")), str(g["sim"]),
             str(g["sim_sharegpt"]), str(g["predict"])]
            for g in res["replication_gains"]
        ],
    )  # fmt: skip
    lines += [
        "",
        "## Over HTTP",
        "",
        "In-process sim servers under the load generator (1.5x the batch in flight); output "
        "tokens per second of the engines' charged time.",
        "",
    ]
    lines += table(
        ["model", "packing", "speedup", "sim tok/s", "mean batch", "predict", "difference"],
        [
            [h["model"], f"{h['mode']} {h['replicas']}x{h['max_num_seqs']}", f"{h['speedup']:g}",
             f"{h['http_sim_output_tokens_per_s']:.0f}", str(h["mean_batch_per_replica"]),
             f"{h['predict_output_tokens_per_s']:.0f}", pct(h["http_sim_vs_predict_ratio"])]
            for h in res["http"]
        ],
    )  # fmt: skip
    lines += [
        "",
        "## Short outputs (80 GB H100, 111 in)",
        "",
        "OPT-1.3B with the planner's memory split and `--max-num-batched-tokens` 2048, output "
        "lengths +- 50%. With short outputs every step admits many new prompts: the batch is "
        "capped by the token budget (B x (1 + in / out) <= budget) and part of each step is "
        "prefill, which `predict` prices in its steady state.",
        "",
    ]
    lines += table(
        ["packing", "out", "predict batch", "predict tok/s", "sim tok/s", "difference",
         "step ms predict / sim"],
        [
            [f"{r['mode']} {r['replicas']}x{r['max_num_seqs']}", str(r["output_tokens"]),
             f"{r['predict_batch_per_replica']:.0f}", f"{r['predict_output_tokens_per_s']:.0f}",
             f"{r['sim_output_tokens_per_s']:.0f}", pct(r["sim_vs_predict_ratio"]),
             f"{r['predict_step_ms']:.1f} / {r['sim_step_ms']:.1f}"]
            for r in res["short_outputs"]
        ],
    )  # fmt: skip
    o = res["overhead"]
    lines += [
        "",
        "## Overhead",
        "",
        f"A vllm-sim process ({OVERHEAD_MODEL}, {OVERHEAD_GPU}, speedup {OVERHEAD_SPEEDUP:g}) "
        f"streams {OVERHEAD_OUTPUT_TOKENS}-token answers to the load generator (this process) "
        f"at Poisson rates for {doc['parameters']['overhead_seconds']:g} s each. The idle sim's "
        f"{o['idle_sim_cpu_per_s']:.4f} CPU-s/s, measured in the same run, is subtracted. "
        '"per 1k tok/s" is CPU seconds per second for each 1,000 streamed tokens per second, '
        "that is CPU seconds per 1,000 tokens. Where served falls well short of offered, other "
        "work stalled the host during that run; CPU per token is still what the sim spent.",
        "",
    ]
    lines += table(
        ["offered tok/s", "served tok/s", "sim CPU-s/s", "sim per 1k tok/s", "loadgen CPU-s/s",
         "loadgen per 1k tok/s", "peak in flight"],
        [
            [f"{r['offered_tokens_per_s']:.0f}", f"{r['tokens_per_s']:.0f}",
             str(r["sim_cpu_per_s"]), str(r["sim_cpu_s_per_1k_tokens_per_s"]),
             str(r["loadgen_cpu_per_s"]), str(r["loadgen_cpu_s_per_1k_tokens_per_s"]),
             str(r["peak_in_flight"])]
            for r in o["rates"]
        ],
    )  # fmt: skip
    lines += [
        "",
        "The ShareGPT column feeds the same engine lognormal lengths with the same means. It is a "
        "sensitivity check, not a like-for-like one: the parameters were fitted with mean "
        "lengths, and in a closed loop heavy-tailed outputs fill the running batch with long "
        "requests (a request stays in the batch in proportion to its length), so contexts and "
        "KV reads per step grow and throughput falls.",
        "",
        "Where the sim and `predict` part: when the KV cache binds, `predict` sizes the batch as "
        "if every running sequence held its whole prompt and output, while the sim (like vLLM) "
        "allocates blocks as contexts grow and preempts when they run out, so it runs a larger "
        "batch. Where it does not bind, the sim's batches are the ones `predict` assumes.",
        "",
    ]
    return "\n".join(lines)


async def http_checks(targets: Targets, params: PerfParams, quick: bool) -> list[dict[str, Any]]:
    checks = [
        (Config("opt-1.3b", SharingMode.EXCLUSIVE, 1, 32), 1.0),
        (Config("opt-1.3b", SharingMode.EXCLUSIVE, 1, 128), 1.0),
    ]
    if not quick:
        checks.append((Config("opt-1.3b", SharingMode.MPS, 2, 64), 1.0))
    out = []
    for config, speedup in checks:
        out.append(await http_check(targets, params, config, speedup, 2.0 if quick else 3.0))
        print(f"  HTTP {out[-1]}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    # Wall-clock figures (the overhead table, the HTTP runs' pace) suffer on a shared host;
    # the load average says how shared it was.
    load_before = os.getloadavg()[0]
    targets, params = load_targets(), default_perf_params()
    overhead_seconds = 4.0 if args.quick else 8.0
    overhead_rates = [1000.0, 4000.0] if args.quick else [1000.0, 2500.0, 5000.0, 10000.0]
    print("Virtual time:", flush=True)
    rows = virtual_time_results(targets, params, args.quick)
    print("Short outputs:", flush=True)
    short = short_output_results(params, args.quick)
    print("Over HTTP:", flush=True)
    http = asyncio.run(http_checks(targets, params, args.quick))
    print("Overhead:", flush=True)
    cost = asyncio.run(overhead(overhead_rates, overhead_seconds))
    doc = {
        "schema_version": SCHEMA_VERSION,
        "git_sha": git_sha(),
        "hardware": hardware(),
        "parameters": {
            "quick": args.quick,
            "gpu": targets.gpu,
            "max_model_len": targets.max_model_len,
            "memory_utilisation_total": targets.memory_utilisation_total,
            "mean_input_tokens": targets.workload.mean_input_tokens,
            "mean_output_tokens": targets.workload.mean_output_tokens,
            "output_spread_ratio": OUTPUT_SPREAD_RATIO,
            "sharegpt_input": sharegpt_input().describe(),
            "sharegpt_output": sharegpt_output().describe(),
            "overhead_model": OVERHEAD_MODEL,
            "overhead_gpu": OVERHEAD_GPU,
            "overhead_speedup": OVERHEAD_SPEEDUP,
            "overhead_seconds": overhead_seconds,
            "overhead_offered_tokens_per_s": overhead_rates,
        },
        "results": {
            "summary": summary_figures(rows, http, short),
            "virtual_time": rows,
            "short_outputs": short,
            "replication_gains": replication_gains(rows, targets),
            "http": http,
            "overhead": cost,
            "wall_s": round(time.perf_counter() - started, 1),
            "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    name = "sim_fidelity"
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (RESULTS_DIR / f"{name}.md").write_text(markdown(doc))
    print(json.dumps(doc["results"]["summary"], indent=2))


if __name__ == "__main__":
    main()
