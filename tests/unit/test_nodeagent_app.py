"""The node agent's shell: command line, HTTP endpoints and the two API requests."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from slmpack.nodeagent.app import DEFAULT_PORT, build_parser, node_agent_main
from slmpack.nodeagent.kube import FIELD_MANAGER, NodeApi
from slmpack.nodeagent.metrics import Snapshot, SnapshotCollector
from slmpack.nodeagent.server import start_server

DATA = Path(__file__).parent / "data" / "nvml"


def test_defaults_and_node_name_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "gpu-node-7")
    args = build_parser().parse_args([])
    assert (args.node_name, args.port, args.interval, args.annotate) == (
        "gpu-node-7",
        DEFAULT_PORT,
        10.0,
        True,
    )
    assert DEFAULT_PORT != 9400  # dcgm-exporter's
    assert build_parser().parse_args(["--no-annotate"]).annotate is False


def test_interval_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--interval", "0"])
    assert "must be greater than 0" in capsys.readouterr().err


def test_annotating_needs_a_node_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    with pytest.raises(SystemExit, match="--node-name"):
        node_agent_main(["--nvml-fake", str(DATA / "l4.json"), "--passes", "1"])


def test_fake_device_file_passes_print_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    code = node_agent_main(
        [
            "--nvml-fake",
            str(DATA / "h100-80gb.json"),
            "--no-annotate",
            "--passes",
            "2",
            "--interval",
            "0.01",
        ]
    )
    assert code == 0
    families = {f.name: f for f in text_string_to_metric_families(capsys.readouterr().out)}
    energy = families["slmpack_replica_energy_joules"]
    assert energy.type == "counter"
    assert {s.labels["pod"] for s in energy.samples} == {
        "chat-7d9f8-abcde",
        "chat-7d9f8-fghij",
        "chat-packed-0",
    }
    assert families["slmpack_gpu_info"].samples[0].labels["product"] == "NVIDIA-H100-80GB-HBM3"


def test_python_dash_m_runs_the_agent() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "slmpack.nodeagent", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--nvml-fake" in result.stdout


def test_driver_not_loaded_still_prints_the_error_counter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["--nvml-fake", str(DATA / "driver-not-loaded.json"), "--no-annotate"]
    assert node_agent_main([*args, "--passes", "1"]) == 0
    out = capsys.readouterr().out
    assert (
        'slmpack_node_agent_nvml_errors_total{call="nvmlInit",error="DriverNotLoaded"} 1.0' in out
    )
    assert "slmpack_node_agent_nvml_up 0.0" in out


# --- HTTP ----------------------------------------------------------------------------------------


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_metrics_and_healthz_endpoints() -> None:
    collector = SnapshotCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    health: list[tuple[bool, str]] = [(False, "NVML is unavailable: nvmlInit failed")]
    server = start_server("127.0.0.1", 0, registry, lambda: health[0])
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert get(f"{base}/healthz") == (503, "NVML is unavailable: nvmlInit failed\n")
        health[0] = (True, "ok")
        assert get(f"{base}/healthz") == (200, "ok\n")
        collector.update(Snapshot(reading=None, nvml_up=True, nvml_errors={("c", "e"): 3}))
        status, body = get(f"{base}/metrics")
        assert status == 200
        assert "slmpack_node_agent_nvml_up 1.0" in body
        assert 'slmpack_node_agent_nvml_errors_total{call="c",error="e"} 3.0' in body
        assert get(f"{base}/other")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


# --- API requests --------------------------------------------------------------------------------


class FakeResponse:
    def __init__(self, body: dict[str, Any], status: int = 200) -> None:
        self.status = status
        self.data = json.dumps(body).encode()
        self.reason = "OK" if status < 400 else "Forbidden"
        self.headers: dict[str, str] = {}

    def read(self) -> bytes:
        return self.data


class RecordingClient(client.ApiClient):
    """The real client's request building, with the transport replaced."""

    def __init__(self, response: dict[str, Any], status: int = 200) -> None:
        super().__init__(client.Configuration(host="https://apiserver.invalid"))
        self.requests: list[dict[str, Any]] = []
        self._response = (response, status)

    def call_api(
        self,
        method: Any,
        url: Any,
        header_params: Any = None,
        body: Any = None,
        post_params: Any = None,
        _request_timeout: Any = None,
    ) -> Any:
        self.requests.append({"method": method, "url": url, "headers": header_params, "body": body})
        return FakeResponse(*self._response)


def test_pods_are_listed_for_this_node_only() -> None:
    api_client = RecordingClient({"items": [{"metadata": {"uid": "u"}}]})
    pods = NodeApi(api_client, "gpu-node-1").list_pods()
    assert pods == [{"metadata": {"uid": "u"}}]
    (request,) = api_client.requests
    assert request["method"] == "GET"
    assert request["url"] == (
        "https://apiserver.invalid/api/v1/pods?fieldSelector=spec.nodeName%3Dgpu-node-1"
    )


def test_annotation_is_server_side_applied_under_the_agent_field_manager() -> None:
    api_client = RecordingClient({})
    NodeApi(api_client, "gpu-node-1").apply_annotation("slmpack.dev/gpu-inventory", '{"x":1}')
    (request,) = api_client.requests
    assert request["method"] == "PATCH"
    assert request["url"] == (
        f"https://apiserver.invalid/api/v1/nodes/gpu-node-1?fieldManager={FIELD_MANAGER}&force=true"
    )
    assert FIELD_MANAGER == "slmpack-node-agent"
    assert request["headers"]["Content-Type"] == "application/apply-patch+yaml"
    body = request["body"]
    body = json.loads(body) if isinstance(body, str | bytes) else body
    assert body == {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "gpu-node-1", "annotations": {"slmpack.dev/gpu-inventory": '{"x":1}'}},
    }


def test_api_errors_raise() -> None:
    api_client = RecordingClient({"message": "forbidden"}, status=403)
    with pytest.raises(client.exceptions.ApiException):
        NodeApi(api_client, "gpu-node-1").list_pods()
