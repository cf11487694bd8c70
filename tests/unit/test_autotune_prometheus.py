"""The Prometheus client and Snapshot collector against a tiny fake Prometheus."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import math
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from slmpack.autotune.model import Packing
from slmpack.autotune.policy import Observation, RunningConfig
from slmpack.autotune.prometheus import (
    PrometheusClient,
    PrometheusConfig,
    PrometheusRejectedError,
    PrometheusResponseError,
    PrometheusUnavailableError,
    collect_snapshot,
    parse_query_data,
)
from slmpack.autotune.signals import DeploymentRef, Signal
from slmpack.planner.types import SharingMode

REF = DeploymentRef("team-a", "chat")
AT_S = 1_700_000_000.0


def _vector(*items: tuple[dict[str, str], str]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": labels, "value": [AT_S, value]} for labels, value in items],
        },
    }


@dataclass
class FakePrometheus:
    """Answers /api/v1/query from `answer(query)`: (HTTP status, body, delay seconds)."""

    answer: Callable[[str], tuple[int, Any, float]]
    seen: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.seen.append(
            {k: str(v) for k, v in form.items()}
            | {"authorization": request.headers.get("Authorization", "")}
        )
        status, body, delay = self.answer(str(form["query"]))
        if delay:
            await asyncio.sleep(delay)
        text = body if isinstance(body, str) else json.dumps(body)
        return web.Response(status=status, text=text, content_type="application/json")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/v1/query", self.handle)
        return app


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    servers: list[TestServer] = []

    async def start(fake: FakePrometheus, **kwargs: Any) -> str:
        server = TestServer(fake.app(), **kwargs)
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


def _fixed(status: int, body: Any, delay: float = 0.0) -> Callable[[str], tuple[int, Any, float]]:
    return lambda _query: (status, body, delay)


async def test_a_vector_answer_becomes_samples(serve: Callable[..., Any]) -> None:
    fake = FakePrometheus(_fixed(200, _vector(({"UUID": "GPU-1"}, "412.5"), ({}, "NaN"))))
    url = await serve(fake)
    async with PrometheusClient(PrometheusConfig(url, bearer_token="s3cret")) as client:
        samples = await client.query("up", at_s=AT_S)
    assert samples[0].labels == {"UUID": "GPU-1"}
    assert samples[0].value == 412.5
    assert samples[0].timestamp_s == AT_S
    assert math.isnan(samples[1].value)
    request = fake.seen[0]
    assert request["query"] == "up"
    assert request["time"] == f"{AT_S:.3f}"
    assert request["timeout"] == "10s"
    assert request["authorization"] == "Bearer s3cret"


def test_a_scalar_answer_is_one_sample() -> None:
    (sample,) = parse_query_data({"resultType": "scalar", "result": [AT_S, "3"]})
    assert (sample.labels, sample.value) == ({}, 3.0)
    with pytest.raises(PrometheusResponseError):
        parse_query_data({"resultType": "matrix", "result": []})
    with pytest.raises(PrometheusResponseError):
        parse_query_data({"resultType": "vector", "result": [{"metric": {}, "value": [1]}]})


async def test_a_bad_query_is_rejected_with_prometheus_reason(serve: Callable[..., Any]) -> None:
    body = {"status": "error", "errorType": "bad_data", "error": "parse error at char 5"}
    url = await serve(FakePrometheus(_fixed(400, body)))
    async with PrometheusClient(PrometheusConfig(url)) as client:
        with pytest.raises(PrometheusRejectedError, match="bad_data: parse error") as caught:
            await client.query("sum(")
    assert caught.value.status == 400


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_an_overloaded_prometheus_is_unavailable(
    serve: Callable[..., Any], status: int
) -> None:
    url = await serve(FakePrometheus(_fixed(status, "overloaded")))
    async with PrometheusClient(PrometheusConfig(url)) as client:
        with pytest.raises(PrometheusUnavailableError, match=f"HTTP {status}"):
            await client.query("up")


async def test_a_slow_prometheus_times_out(serve: Callable[..., Any]) -> None:
    url = await serve(FakePrometheus(_fixed(200, _vector(), delay=2.0)))
    async with PrometheusClient(PrometheusConfig(url, timeout_s=0.2)) as client:
        with pytest.raises(PrometheusUnavailableError, match=r"within 0\.2s"):
            await client.query("up")


async def test_an_unreachable_prometheus_is_unavailable(serve: Callable[..., Any]) -> None:
    fake = FakePrometheus(_fixed(200, _vector()))
    url = await serve(fake)
    server_port = url.rsplit(":", 1)[1]
    dead = url.replace(server_port, "1")  # nothing listens on port 1
    async with PrometheusClient(PrometheusConfig(dead, timeout_s=2)) as client:
        with pytest.raises(PrometheusUnavailableError, match="cannot reach"):
            await client.query("up")


@pytest.mark.parametrize(
    "body",
    ["<html>proxy error</html>", {"status": "error", "error": "x"}, {"status": "success"}],
)
async def test_a_malformed_answer_is_a_response_error(serve: Callable[..., Any], body: Any) -> None:
    url = await serve(FakePrometheus(_fixed(200, body)))
    async with PrometheusClient(PrometheusConfig(url)) as client:
        with pytest.raises(PrometheusResponseError):
            await client.query("up")


async def test_the_token_file_is_read_on_every_request(
    serve: Callable[..., Any], tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    fake = FakePrometheus(_fixed(200, _vector()))
    url = await serve(fake)
    async with PrometheusClient(PrometheusConfig(url, bearer_token_file=token)) as client:
        await client.query("up")
        token.write_text("rotated")
        await client.query("up")
    assert [s["authorization"] for s in fake.seen] == ["Bearer first", "Bearer rotated"]


def test_config_rejects_a_url_without_scheme() -> None:
    with pytest.raises(ValueError, match="http"):
        PrometheusConfig("prometheus:9090")
    assert PrometheusConfig("http://p", insecure_skip_verify=True).ssl_setting() is False


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-prometheus")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_verifies_against_the_given_ca(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = web.AppRunner(FakePrometheus(_fixed(200, _vector(({}, "1")))).app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        port = runner.addresses[0][1]
        tls_url = f"https://127.0.0.1:{port}"
        async with PrometheusClient(PrometheusConfig(tls_url, ca_file=cert)) as client:
            assert (await client.query("up"))[0].value == 1.0
        async with PrometheusClient(PrometheusConfig(tls_url)) as client:
            with pytest.raises(PrometheusRejectedError, match="TLS"):
                await client.query("up")
        insecure = PrometheusConfig(tls_url, insecure_skip_verify=True)
        async with PrometheusClient(insecure) as client:
            assert (await client.query("up"))[0].value == 1.0
    finally:
        await runner.cleanup()


def _deployment_answer(query: str) -> tuple[int, Any, float]:
    """vLLM signals answer; DCGM profiling and util are absent, as on a MIG GPU."""
    if "DCGM_FI_DEV_GPU_UTIL" in query or "DCGM_FI_PROF" in query:
        return 200, _vector(), 0.0
    if query.startswith("histogram_quantile"):
        return 200, _vector(({}, "0.042")), 0.0
    if "finished_reason" in query:
        return (
            200,
            _vector(({"finished_reason": "stop"}, "3"), ({"finished_reason": "length"}, "1")),
            0.0,
        )
    if "UUID" in query and query.startswith("count("):
        return 200, _vector(({}, "1")), 0.0
    if "and on (UUID)" in query:
        return 200, _vector(({"UUID": "GPU-1"}, "300")), 0.0
    if query.startswith("count(vllm"):
        return 200, _vector(({}, "3")), 0.0
    return 200, _vector(({}, "12.5")), 0.0


async def test_a_snapshot_collects_every_signal_and_degrades_on_mig(
    serve: Callable[..., Any],
) -> None:
    fake = FakePrometheus(_deployment_answer)
    url = await serve(fake)
    async with PrometheusClient(PrometheusConfig(url)) as client:
        snapshot = await collect_snapshot(client, REF, at_s=AT_S)
    assert len(fake.seen) == len(Signal)
    assert {s["time"] for s in fake.seen} == {f"{AT_S:.3f}"}  # one instant for every query
    assert snapshot.evaluated_at_s == AT_S
    assert set(snapshot.missing) == {
        Signal.GPU_UTIL_RATIO,
        Signal.SM_ACTIVE_RATIO,
        Signal.DRAM_ACTIVE_RATIO,
    }
    assert snapshot.missing_required == ()
    assert snapshot.value(Signal.TTFT_P99_S) == 0.042
    assert snapshot.keyed[Signal.GPU_POWER_WATTS] == {"GPU-1": 300.0}
    assert snapshot.keyed[Signal.FINISHED_REQUESTS_PER_S] == {"stop": 3.0, "length": 1.0}
    assert snapshot.age_s(AT_S + 5) == 5

    running = RunningConfig(Packing(SharingMode.MPS, 3, 192), 3, 3)
    observation = Observation.from_snapshot(snapshot, running)
    assert observation.engines_reporting == 3
    assert observation.finished_requests_per_s == 4.0
    assert observation.attributed_watts == 12.5
    assert observation.missing_required() == ()


async def test_one_failing_query_fails_the_snapshot(serve: Callable[..., Any]) -> None:
    def answer(query: str) -> tuple[int, Any, float]:
        if "DCGM_FI_DEV_POWER_USAGE" in query:
            return 503, "unavailable", 0.0
        return _deployment_answer(query)

    url = await serve(FakePrometheus(answer))
    async with PrometheusClient(PrometheusConfig(url)) as client:
        with pytest.raises(PrometheusUnavailableError):
            await collect_snapshot(client, REF, at_s=AT_S)
