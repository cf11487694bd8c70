"""The pod's front door: one OpenAI-compatible endpoint spreading requests over the engines.

Requests go to the healthy engine with the fewest requests in flight. A request is retried on
another engine only when the first never produced response headers (connection refused, or
the engine died before answering); after headers it is bound to that engine, and a failure
cuts the response off visibly rather than ending it cleanly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from slmpack.launcher.config import LauncherConfig
from slmpack.launcher.metrics_merge import merge_engine_metrics
from slmpack.launcher.routing import EngineLoad, choose_engine
from slmpack.launcher.state import EngineState
from slmpack.launcher.telemetry import LauncherMetrics

log = logging.getLogger(__name__)

#: Prometheus text format as written by prometheus_client's generate_latest.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Request bodies are read whole (so a retry can resend them); chat requests with inline
#: images can be several MiB.
MAX_REQUEST_BYTES = 64 * 1024 * 1024
#: Idle keep-alive to an engine. Below uvicorn's 5 s default (vLLM's
#: VLLM_HTTP_TIMEOUT_KEEP_ALIVE) so the launcher, not the engine, closes idle connections and
#: a request never races the engine's close on a reused connection.
UPSTREAM_KEEPALIVE_SECONDS = 3.0

#: Failures that happen before the engine sent response headers; safe to retry elsewhere.
_RETRYABLE = (
    aiohttp.ClientConnectorError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
    aiohttp.ConnectionTimeoutError,
)
#: Headers that describe one connection, not the message (RFC 9110 section 7.6.1), plus those
#: aiohttp recomputes for the body it sends.
_NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def forwardable(headers: Mapping[str, str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _NOT_FORWARDED)


def openai_error(status: int, message: str, error_type: str) -> web.Response:
    """An error body in the OpenAI API's shape, which OpenAI clients know how to show."""
    body = {"error": {"message": message, "type": error_type, "param": None, "code": status}}
    return web.json_response(body, status=status)


class Router:
    """The aiohttp application on the front port."""

    def __init__(
        self,
        config: LauncherConfig,
        engines: Sequence[EngineState],
        metrics: LauncherMetrics,
        *,
        is_running: Callable[[], bool],
    ) -> None:
        self._config = config
        self._engines = engines
        self._metrics = metrics
        self._is_running = is_running
        self._last_chosen = -1
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    def application(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_get("/health", self.health)
        app.router.add_get("/live", self.live)
        app.router.add_get("/metrics", self.metrics)
        # /v1/completions, /v1/chat/completions, /v1/models and the rest of vLLM's /v1 API.
        app.router.add_route("*", "/v1/{tail:.*}", self.proxy)
        app.on_startup.append(self._open_client)
        app.on_cleanup.append(self._close_client)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.application(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._config.host, self._config.front_port)
        await site.start()
        log.info("Router listening on %s:%d", self._config.host, self._config.front_port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _open_client(self, _: web.Application) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self._config.connect_timeout_seconds,
            sock_connect=self._config.connect_timeout_seconds,
        )
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=UPSTREAM_KEEPALIVE_SECONDS)
        # Bytes pass through with the engine's own Content-Encoding; only the client's own
        # Accept-Encoding (forwarded) may ask the engine to compress.
        self._http = aiohttp.ClientSession(
            timeout=timeout,
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
        )

    async def _close_client(self, _: web.Application) -> None:
        if self._http is not None:
            await self._http.close()

    def _choose(self, excluded: set[int]) -> int | None:
        loads = [EngineLoad(e.index, e.healthy, e.in_flight_requests) for e in self._engines]
        index = choose_engine(loads, excluded, self._last_chosen)
        if index is not None:
            self._last_chosen = index
        return index

    def _url(self, index: int, path_qs: str) -> str:
        return f"http://{self._config.engine_host}:{self._engines[index].port}{path_qs}"

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = forwardable(request.headers)
        tried: set[int] = set()
        failures: dict[int, str] = {}
        while (index := self._choose(tried)) is not None:
            tried.add(index)
            state = self._engines[index]
            label = str(index)
            state.in_flight_requests += 1
            self._metrics.in_flight_requests.labels(label).inc()
            self._metrics.requests_routed.labels(label).inc()
            try:
                assert self._http is not None
                try:
                    upstream = await self._http.request(
                        request.method,
                        self._url(index, request.path_qs),
                        data=body,
                        headers=headers,
                        allow_redirects=False,
                    )
                except _RETRYABLE as exc:
                    failures[index] = f"{type(exc).__name__}: {exc}"
                    state.mark_unreachable()
                    self._metrics.retries.labels(label).inc()
                    log.warning(
                        "Engine %d failed before answering %s: %s", index, request.path, exc
                    )
                    continue
                except aiohttp.ClientError as exc:
                    message = f"Engine {index} sent an invalid response: {exc}"
                    return openai_error(502, message, "BadGatewayError")
                async with upstream:
                    return await self._relay(request, upstream, index)
            finally:
                state.in_flight_requests -= 1
                self._metrics.in_flight_requests.labels(label).dec()
        self._metrics.unavailable_responses.inc()
        return openai_error(503, self._unavailable_reason(failures), "ServiceUnavailableError")

    def _unavailable_reason(self, failures: Mapping[int, str]) -> str:
        parts = []
        for e in self._engines:
            if e.index in failures:
                parts.append(f"engine {e.index} failed: {failures[e.index]}")
            elif e.pid is None and e.last_exit_code is None:
                parts.append(f"engine {e.index} has not started yet")
            elif e.pid is None:
                parts.append(f"engine {e.index} exited with code {e.last_exit_code}")
            else:
                parts.append(f"engine {e.index} is not healthy yet")
        return "No engine in this pod can take the request: " + "; ".join(parts)

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse, index: int
    ) -> web.StreamResponse:
        """Pass the engine's response through chunk by chunk (SSE streams stay incremental)."""
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(forwardable(upstream.headers))
        if "Content-Length" in upstream.headers:
            response.content_length = int(upstream.headers["Content-Length"])
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            self._metrics.upstream_aborts.labels(str(index)).inc()
            log.warning("Engine %d failed mid-response to %s: %s", index, request.path, exc)
            # Closing without the final chunk lets the client see a truncated response
            # instead of a complete-looking one.
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    async def health(self, _: web.Request) -> web.Response:
        """Readiness: 200 only when every engine answers its /health."""
        engines = [e.summary() for e in self._engines]
        unhealthy = [e.index for e in self._engines if not e.healthy]
        if unhealthy:
            body: dict[str, Any] = {
                "status": "NotReady",
                "unhealthy_engines": unhealthy,
                "engines": engines,
            }
            return web.json_response(body, status=503)
        return web.json_response({"status": "Ready", "engines": engines})

    async def live(self, _: web.Request) -> web.Response:
        """Liveness: the launcher's event loop answers while the supervisor runs."""
        if not self._is_running():
            return web.json_response({"status": "Stopping"}, status=503)
        return web.json_response({"status": "Alive"})

    async def metrics(self, _: web.Request) -> web.Response:
        healthy = [e.index for e in self._engines if e.healthy]
        bodies = await asyncio.gather(*(self._scrape(i) for i in healthy))
        texts = {i: text for i, text in zip(healthy, bodies, strict=True) if text is not None}
        merged, parse_errors = merge_engine_metrics(texts)
        for index, why in parse_errors.items():
            self._metrics.metrics_scrape_errors.labels(str(index)).inc()
            log.warning("Dropped engine %d's metrics from the scrape: %s", index, why)
        payload = merged + self._metrics.exposition()
        return web.Response(body=payload.encode(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _scrape(self, index: int) -> str | None:
        assert self._http is not None
        timeout = aiohttp.ClientTimeout(total=self._config.metrics_timeout_seconds)
        try:
            async with self._http.get(self._url(index, "/metrics"), timeout=timeout) as resp:
                if resp.status == 200:
                    return await resp.text()
                why = f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        self._metrics.metrics_scrape_errors.labels(str(index)).inc()
        log.warning("Could not scrape engine %d's metrics: %s", index, why)
        return None
