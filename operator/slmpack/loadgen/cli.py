"""`python -m slmpack.loadgen`: drive OpenAI-compatible servers with an open-loop load.

    python -m slmpack.loadgen --base-url http://127.0.0.1:8001 --rate 20 --duration-s 60 \\
        --input-len sharegpt --output-len sharegpt --slo-ttft-ms 500 --slo-itl-ms 50 --json -

See docs/loadgen.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from slmpack.loadgen.arrivals import PROCESSES, Phase, Schedule, parse_phase
from slmpack.loadgen.driver import DEFAULT_REQUEST_TIMEOUT_S, DriverConfig, RunResult, run_load
from slmpack.loadgen.lengths import parse_length
from slmpack.loadgen.stats import ITL_STATS, Report, Slo, format_report, summarize
from slmpack.loadgen.workload import APIS, PROMPT_FORMATS, plan_requests

#: Version of the JSON document `--json` writes.
SCHEMA_VERSION = 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m slmpack.loadgen",
        description="Open-loop load generator for OpenAI-compatible (vLLM) servers.",
        allow_abbrev=False,
    )
    target = p.add_argument_group("target")
    target.add_argument(
        "--base-url",
        action="append",
        required=True,
        help="server base URL; repeat (or separate by commas) for round robin over several",
    )
    target.add_argument("--model", default=None, help="default: the first of /v1/models")
    target.add_argument("--api", choices=APIS, default="completions")
    target.add_argument(
        "--prompt-format",
        choices=PROMPT_FORMATS,
        default="text",
        help="text: one 4-character word per token; tokens: token ids (completions only)",
    )
    target.add_argument("--token-id-range", default="10:500", help="LOW:HIGH ids for tokens")
    load = p.add_argument_group("arrivals")
    load.add_argument("--rate", type=float, default=None, help="requests/s, one Poisson phase")
    load.add_argument("--duration-s", type=float, default=None, help="length of --rate's phase")
    load.add_argument("--process", choices=PROCESSES, default="poisson", help="for --rate")
    load.add_argument(
        "--num-requests",
        type=int,
        default=None,
        help="stop after this many; alone, send them all at once (a burst)",
    )
    load.add_argument(
        "--phase",
        action="append",
        default=[],
        help="a phase: rate=R|A..B,duration=S,burst=N,process=poisson|uniform (repeatable)",
    )
    load.add_argument("--max-concurrency", type=int, default=None)
    load.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="server seconds per wall second (vllm-sim's --sim-speedup): phases and the "
        "report are in server time",
    )
    lengths = p.add_argument_group("lengths")
    lengths.add_argument(
        "--input-len",
        default="sharegpt",
        help="N | uniform:LO:HI | lognormal:MEAN:SIGMA[:MIN:MAX] | sharegpt",
    )
    lengths.add_argument("--output-len", default="sharegpt", help="as --input-len")
    lengths.add_argument("--max-model-len", type=int, default=2048)
    lengths.add_argument("--seed", type=int, default=0)
    slo = p.add_argument_group("SLO (goodput)")
    slo.add_argument("--slo-ttft-ms", type=float, default=None)
    slo.add_argument("--slo-itl-ms", type=float, default=None)
    slo.add_argument(
        "--slo-itl-stat",
        choices=ITL_STATS,
        default="p99",
        help="which of a request's inter-token gaps must meet --slo-itl-ms",
    )
    out = p.add_argument_group("output")
    out.add_argument("--json", default=None, help="write the JSON document here ('-': stdout)")
    out.add_argument("--save-requests", type=Path, default=None, help="per-request JSON lines")
    out.add_argument("--request-timeout-s", type=float, default=DEFAULT_REQUEST_TIMEOUT_S)
    out.add_argument("--quiet", action="store_true", help="no summary on stderr")
    return p


def build_schedule(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Schedule:
    phases: list[Phase] = []
    try:
        phases = [parse_phase(text) for text in args.phase]
    except ValueError as err:
        parser.error(str(err))
    if args.rate is not None:
        if math.isinf(args.rate):
            if args.num_requests is None:
                parser.error("--rate inf needs --num-requests")
            phases.append(Phase(burst=args.num_requests))
        else:
            duration = args.duration_s
            if duration is None and args.num_requests is not None and args.rate > 0:
                # Long enough for the requests asked for; --num-requests stops the run.
                duration = 2 * args.num_requests / args.rate + 10
            if duration is None:
                parser.error("--rate needs --duration-s or --num-requests")
            phases.append(Phase(duration, args.rate, None, 0, args.process))
    elif args.duration_s is not None:
        parser.error("--duration-s goes with --rate")
    if not phases:
        if args.num_requests is None:
            parser.error("give --rate, --phase or --num-requests")
        phases.append(Phase(burst=args.num_requests))
    try:
        return Schedule(tuple(phases), args.num_requests)
    except ValueError as err:
        parser.error(str(err))


async def _served_model(url: str) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url.rstrip('/')}/v1/models") as response,
    ):
        response.raise_for_status()
        body = await response.json()
    return str(body["data"][0]["id"])


def _urls(values: Sequence[str]) -> list[str]:
    return [u.strip().rstrip("/") for v in values for u in v.split(",") if u.strip()]


def result_document(
    args: argparse.Namespace, model: str, schedule: Schedule, run: RunResult, report: Report
) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "slmpack.loadgen",
        "started_unix": run.started_unix,
        "parameters": {
            "base_urls": _urls(args.base_url),
            "model": model,
            "api": args.api,
            "prompt_format": args.prompt_format,
            "phases": [vars(p) for p in schedule.phases],
            "max_requests": schedule.max_requests,
            "max_concurrency": args.max_concurrency,
            "time_scale": args.time_scale,
            "input_len": parse_length(args.input_len, "input").describe(),
            "output_len": parse_length(args.output_len, "output").describe(),
            "max_model_len": args.max_model_len,
            "seed": args.seed,
        },
        "results": report.to_dict(),
    }


def load_main(argv: Sequence[str] | None = None) -> int:
    """Run one load test; 0 when at least one request succeeded, 1 when none did."""
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    schedule = build_schedule(args, parser)
    try:
        inputs = parse_length(args.input_len, "input")
        outputs = parse_length(args.output_len, "output")
        low, _, high = args.token_id_range.partition(":")
        token_ids = (int(low), int(high))
    except ValueError as err:
        parser.error(str(err))
    if args.api == "chat" and args.prompt_format == "tokens":
        parser.error("--api chat takes --prompt-format text only")
    urls = _urls(args.base_url)
    slo = (
        Slo(
            None if args.slo_ttft_ms is None else args.slo_ttft_ms / 1e3,
            None if args.slo_itl_ms is None else args.slo_itl_ms / 1e3,
            args.slo_itl_stat,
        )
        if args.slo_ttft_ms is not None or args.slo_itl_ms is not None
        else None
    )
    try:
        model = args.model or asyncio.run(_served_model(urls[0]))
    except (aiohttp.ClientError, OSError, KeyError, IndexError, ValueError) as err:
        print(f"ERROR: cannot read the model from {urls[0]}/v1/models: {err}", file=sys.stderr)
        return 1
    plan = plan_requests(schedule, inputs, outputs, urls, args.seed, args.max_model_len)
    config = DriverConfig(
        model=model,
        api=args.api,
        prompt_format=args.prompt_format,
        max_concurrency=args.max_concurrency,
        request_timeout_s=args.request_timeout_s,
        seed=args.seed,
        token_ids=token_ids,
        time_scale=args.time_scale,
    )
    if not args.quiet:
        print(
            f"Sending {len(plan)} requests to {len(urls)} server(s) over "
            f"{schedule.duration_s:g} s of schedule",
            file=sys.stderr,
        )
    started = time.monotonic()
    try:
        run = asyncio.run(run_load(plan, config))
    except KeyboardInterrupt:
        print("Interrupted; no report", file=sys.stderr)
        return 1
    report = summarize(
        run.records,
        run.duration_wall_s,
        slo=slo,
        time_scale=args.time_scale,
        peak_in_flight=run.peak_in_flight,
    )
    if not args.quiet:
        print(format_report(report), file=sys.stderr)
        print(f"(wall {time.monotonic() - started:.1f} s)", file=sys.stderr)
    if args.json is not None:
        text = json.dumps(result_document(args, model, schedule, run, report), indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            Path(args.json).write_text(text)
    if args.save_requests is not None:
        with args.save_requests.open("w") as f:
            for record in run.records:
                f.write(json.dumps(dataclasses.asdict(record)) + "\n")
    return 0 if report.completed > 0 else 1
