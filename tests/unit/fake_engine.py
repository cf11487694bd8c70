"""A stand-in for one vLLM OpenAI server, run as a real subprocess by the launcher tests.

    python tests/unit/fake_engine.py --port 8001 --name e0 [knobs]

It imitates what the launcher relies on: /health, /v1/models, /v1/completions and
/v1/chat/completions (JSON, or SSE ending in `data: [DONE]` when "stream" is true) and a
vLLM-shaped /metrics (the fixture file, with vLLM's own `engine="0"` label). Each response
names the engine that produced it, so a test can see where the router sent a request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from aiohttp import web

METRICS_FIXTURE = Path(__file__).parent / "data" / "vllm_metrics_sample.txt"
MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


def _record(events_file: Path | None, name: str, event: str) -> None:
    if events_file is None:
        return
    with events_file.open("a") as f:
        f.write(json.dumps({"name": name, "event": event, "time": time.time()}) + "\n")


def build_app(args: argparse.Namespace) -> web.Application:
    served = 0
    in_flight = 0

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=503 if args.unhealthy else 200)

    async def models(_: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": args.name}]}
        )

    async def metrics(_: web.Request) -> web.Response:
        text = METRICS_FIXTURE.read_text()
        text += (
            "# HELP fake:requests_served_total Requests this fake engine answered.\n"
            "# TYPE fake:requests_served_total counter\n"
            f'fake:requests_served_total{{engine="0",model_name="{MODEL}"}} {served}.0\n'
        )
        return web.Response(text=text, content_type="text/plain")

    async def completions(request: web.Request) -> web.StreamResponse:
        nonlocal served, in_flight
        body = await request.json()
        if args.die_on_request:
            os._exit(3)  # dies before sending response headers
        in_flight += 1
        try:
            served += 1
            rid = f"cmpl-{args.name}-{served}"
            headers = {"X-Fake-Engine": args.name}
            if not body.get("stream"):
                await asyncio.sleep(args.delay_seconds)
                return web.json_response(
                    {
                        "id": rid,
                        "object": "text_completion",
                        "model": MODEL,
                        "system_fingerprint": args.name,
                        "choices": [{"index": 0, "text": "hello", "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    },
                    headers=headers,
                )
            response = web.StreamResponse(
                headers={
                    **headers,
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                }
            )
            await response.prepare(request)
            for i in range(args.chunks):
                chunk = {
                    "id": rid,
                    "object": "text_completion",
                    "model": MODEL,
                    "system_fingerprint": args.name,
                    "choices": [{"index": 0, "text": f"tok{i}", "finish_reason": None}],
                }
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                await asyncio.sleep(args.delay_seconds)
                if args.die_mid_stream:
                    os._exit(3)  # after headers and one chunk
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        finally:
            in_flight -= 1

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", completions)
    return app


async def main(args: argparse.Namespace) -> None:
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _record(args.events_file, args.name, "start")
    print(f"INFO fake engine {args.name} loading", flush=True)
    # vLLM binds its port only once the model is loaded: until then, connections are refused.
    await asyncio.sleep(args.startup_seconds)
    runner = web.AppRunner(build_app(args), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    _record(args.events_file, args.name, "listening")
    print(f"INFO fake engine {args.name} listening on {args.port}", flush=True)
    await asyncio.Event().wait()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--startup-seconds", type=float, default=0.0)
    p.add_argument("--delay-seconds", type=float, default=0.0, help="per response or SSE chunk")
    p.add_argument("--chunks", type=int, default=3)
    p.add_argument("--unhealthy", action="store_true", help="/health always answers 503")
    p.add_argument("--die-on-request", action="store_true", help="exit on a completion request")
    p.add_argument("--die-mid-stream", action="store_true", help="exit after one SSE chunk")
    p.add_argument("--events-file", type=Path, default=None)
    p.add_argument("--ignore-sigterm", action="store_true", help="only SIGKILL stops it")
    # Accepted and ignored, like a real engine's memory flag, so the launcher's Auto startup
    # policy sees it.
    p.add_argument("--kv-cache-memory-bytes", type=int, default=None)
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args(sys.argv[1:])))
