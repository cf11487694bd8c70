"""A small async client for Prometheus' instant-query API, and the Snapshot collector.

The only module of `slmpack.autotune` that does I/O. Errors are typed so the caller can tell
an outage (retry later, and hold every decision meanwhile) from a request Prometheus refuses
(a missing recording rule, a bad token: only a person can fix it).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from slmpack.autotune.signals import RULE_WINDOW_S, DeploymentRef, Signal, deployment_queries
from slmpack.autotune.snapshot import Sample, Snapshot, snapshot_from_samples
from slmpack.errors import SlmpackError

QUERY_PATH = "/api/v1/query"


class PrometheusError(SlmpackError):
    """Prometheus gave no usable answer."""


class PrometheusUnavailableError(PrometheusError):
    """Unreachable, timed out, overloaded (5xx, 429): time will fix it."""


class PrometheusRejectedError(PrometheusError):
    """Prometheus refused the request (bad query, missing rules, auth) or its certificate did
    not verify: a person must fix it. `status` is None for TLS failures."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


class PrometheusResponseError(PrometheusError):
    """The answer is not the JSON the query API documents."""


@dataclass(frozen=True)
class PrometheusConfig:
    """Where and how to reach Prometheus."""

    url: str  # base URL, e.g. http://prometheus-operated.monitoring.svc:9090
    bearer_token: str | None = None
    #: Read on every request, because projected service-account tokens rotate.
    bearer_token_file: Path | None = None
    ca_file: Path | None = None  # PEM bundle that signs the server's certificate
    insecure_skip_verify: bool = False
    timeout_s: float = 10.0  # per query, client side; also sent as the server-side timeout

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"Prometheus URL {self.url!r} must start with http:// or https://")
        if self.timeout_s <= 0:
            raise ValueError("the Prometheus timeout must be positive")

    def authorization(self) -> str | None:
        token = self.bearer_token
        if self.bearer_token_file is not None:
            token = self.bearer_token_file.read_text().strip()
        return f"Bearer {token}" if token else None

    def ssl_setting(self) -> ssl.SSLContext | bool:
        if self.insecure_skip_verify:
            return False
        if self.ca_file is not None:
            return ssl.create_default_context(cafile=str(self.ca_file))
        return True


class PrometheusClient:
    """Instant queries against one Prometheus. Use as an async context manager, or pass in a
    session the caller owns."""

    def __init__(
        self, config: PrometheusConfig, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.config = config
        self._session = session
        self._owns_session = session is None
        self._ssl = config.ssl_setting()

    async def __aenter__(self) -> PrometheusClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def query(self, promql: str, at_s: float | None = None) -> tuple[Sample, ...]:
        """Evaluate `promql` at `at_s` (Prometheus' now when None); vector or scalar results."""
        form = {"query": promql, "timeout": f"{self.config.timeout_s:g}s"}
        if at_s is not None:
            form["time"] = f"{at_s:.3f}"
        headers = {"Accept": "application/json"}
        auth = self.config.authorization()
        if auth:
            headers["Authorization"] = auth
        url = self.config.url.rstrip("/") + QUERY_PATH
        try:
            # POST: the attribution queries outgrow some proxies' URL limits.
            async with self._client().post(
                url,
                data=form,
                headers=headers,
                ssl=self._ssl,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
            ) as response:
                status = response.status
                text = await response.text()
        except TimeoutError as err:
            raise PrometheusUnavailableError(
                f"Prometheus at {self.config.url} did not answer within {self.config.timeout_s:g}s"
            ) from err
        except aiohttp.ClientSSLError as err:
            raise PrometheusRejectedError(
                f"TLS with Prometheus at {self.config.url} failed ({err}); check the CA bundle",
                None,
            ) from err
        except aiohttp.ClientError as err:
            raise PrometheusUnavailableError(
                f"cannot reach Prometheus at {self.config.url}: {err}"
            ) from err
        return _parse_response(status, text, self.config.url)


def _error_text(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return text[:200]
    if isinstance(body, dict) and "error" in body:
        return f"{body.get('errorType', 'error')}: {body['error']}"
    return text[:200]


def _parse_response(status: int, text: str, url: str) -> tuple[Sample, ...]:
    if status == 429 or status >= 500:
        raise PrometheusUnavailableError(
            f"Prometheus at {url} answered HTTP {status} ({_error_text(text)})"
        )
    if status != 200:
        raise PrometheusRejectedError(
            f"Prometheus at {url} refused the query with HTTP {status} ({_error_text(text)})",
            status,
        )
    try:
        body = json.loads(text)
    except ValueError as err:
        raise PrometheusResponseError(f"Prometheus at {url} sent a body that is not JSON") from err
    if not isinstance(body, dict) or body.get("status") != "success":
        raise PrometheusResponseError(f"Prometheus at {url} reported {_error_text(text)}")
    return parse_query_data(body.get("data"))


def _number(pair: Any) -> tuple[float, float]:
    if not isinstance(pair, list) or len(pair) != 2:
        raise PrometheusResponseError(f"expected [timestamp, value], got {pair!r}")
    try:
        # Prometheus writes values as strings, including "NaN" and "+Inf".
        return float(pair[0]), float(pair[1])
    except (TypeError, ValueError) as err:
        raise PrometheusResponseError(f"unreadable sample {pair!r}") from err


def parse_query_data(data: Any) -> tuple[Sample, ...]:
    """The `data` member of an instant-query answer as Samples (vector or scalar)."""
    if not isinstance(data, dict):
        raise PrometheusResponseError("the answer has no data object")
    kind = data.get("resultType")
    result = data.get("result")
    if kind == "scalar":
        ts, value = _number(result)
        return (Sample({}, value, ts),)
    if kind != "vector" or not isinstance(result, list):
        raise PrometheusResponseError(f"expected a vector or scalar result, got {kind!r}")
    samples: list[Sample] = []
    for item in result:
        if not isinstance(item, dict) or not isinstance(item.get("metric"), dict):
            raise PrometheusResponseError(f"malformed vector element {item!r}")
        ts, value = _number(item.get("value"))
        labels = {str(k): str(v) for k, v in item["metric"].items()}
        samples.append(Sample(labels, value, ts))
    return tuple(samples)


async def collect_snapshot(
    client: PrometheusClient,
    deployment: DeploymentRef,
    *,
    window_s: int = RULE_WINDOW_S,
    recorded: bool = False,
    at_s: float | None = None,
    signals: Sequence[Signal] | None = None,
) -> Snapshot:
    """Evaluate every signal of `deployment` at one instant, concurrently.

    Raises the first PrometheusError of any query: a partial outage is an outage, and the
    policy holds on it. Signals whose query matches nothing are simply missing.
    """
    at = time.time() if at_s is None else at_s
    wanted = set(signals) if signals is not None else set(Signal)
    queries = [
        q for q in deployment_queries(deployment, window_s, recorded=recorded) if q.signal in wanted
    ]
    outcomes = await asyncio.gather(
        *(client.query(q.promql, at) for q in queries), return_exceptions=True
    )
    results: dict[Signal, tuple[Sample, ...]] = {}
    for query, outcome in zip(queries, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            raise outcome
        results[query.signal] = outcome
    return snapshot_from_samples(deployment, at, window_s, results)
