"""vllm-sim's `/metrics` has the shape of the real vLLM's: names, types, labels and buckets.

Dashboards, the autotuner and the launcher's metrics merge are written against one shape; a
sim that drifts from the real engine would let them pass tests and then fail in a cluster.
Label values (model names, config values) and sample values differ by design and are ignored.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import PLANNED_MAX_MODEL_LEN
from .vllm_server import VllmServer, free_port

pytestmark = pytest.mark.e2e

SIM_MODEL = "facebook/opt-1.3b"
#: Families the real engine exports and the sim does not. vLLM 0.32 registers its MFU
#: estimates even with enable_mfu_metrics=False, where they stay at 0; the sim counts no FLOPs
#: or bytes, so it leaves them out. vLLM names these counters with `_total` itself, so the
#: exposition also carries their `_created` series as separate gauge families.
NOT_IN_SIM = frozenset(
    f"vllm:estimated_{what}_per_gpu{suffix}"
    for what in ("flops", "read_bytes", "write_bytes")
    for suffix in ("", "_created")
)
#: Families whose labels the sim only partly carries: it may leave labels out, never add any.
#: cache_config_info has one label per CacheConfig field (dozens, changing between vLLM
#: versions); the sim emits those slmpack reads (`slmpack.metricnames.CACHE_CONFIG_INFO`).
SUBSET_LABELS = frozenset({"vllm:cache_config_info"})
#: Sample labels that belong to the exposition format, not to the family.
FORMAT_LABELS = frozenset({"le", "quantile"})
SIM_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class FamilyShape:
    type: str
    label_names: frozenset[str]
    #: Histogram upper bounds (`le`), sorted, +Inf included.
    buckets: tuple[float, ...]


def _shapes(text: str) -> dict[str, FamilyShape]:
    shapes: dict[str, FamilyShape] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("vllm:"):
            continue
        labels = {n for s in family.samples for n in s.labels if n not in FORMAT_LABELS}
        bounds = {float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")}
        shapes[family.name] = FamilyShape(family.type, frozenset(labels), tuple(sorted(bounds)))
    return shapes


def _differences(real: dict[str, FamilyShape], sim: dict[str, FamilyShape]) -> list[str]:
    diff: list[str] = []
    for name in sorted(real.keys() - sim.keys() - NOT_IN_SIM):
        diff.append(f"{name}: only the real vLLM exports it ({real[name].type})")
    for name in sorted(sim.keys() - real.keys()):
        diff.append(f"{name}: only vllm-sim exports it ({sim[name].type})")
    for name in sorted(real.keys() & sim.keys()):
        want, got = real[name], sim[name]
        if want.type != got.type:
            diff.append(f"{name}: type {got.type} in the sim, {want.type} in vLLM")
        if name in SUBSET_LABELS:
            if not got.label_names <= want.label_names:
                extra = sorted(got.label_names - want.label_names)
                diff.append(f"{name}: labels only in the sim {extra}")
        elif want.label_names != got.label_names:
            diff.append(
                f"{name}: labels only in vLLM {sorted(want.label_names - got.label_names)}, "
                f"only in the sim {sorted(got.label_names - want.label_names)}"
            )
        if want.buckets != got.buckets:
            diff.append(f"{name}: buckets {list(got.buckets)} in the sim, {list(want.buckets)}")
    return diff


def _sim(url: str, body: dict[str, object] | None = None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, response.read().decode()


def _completion(model: str, prompt: str) -> dict[str, object]:
    return {"model": model, "prompt": prompt, "max_tokens": 4, "ignore_eos": True}


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # vLLM sizes the token-count histograms' buckets by max_model_len, so both servers match.
    port = free_port()
    log: Path = tmp_path_factory.mktemp("conformance-sim") / "vllm-sim.log"
    argv = [
        sys.executable, "-m", "slmpack.sim.vllm", "--model", SIM_MODEL,
        "--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", "8",
        "--max-model-len", str(PLANNED_MAX_MODEL_LEN), "--gpu-memory-utilization", "0.3",
        "--sim-speedup", "20",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SIM_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"vllm-sim exited ({process.returncode}):\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                pytest.fail(f"vllm-sim did not answer /health:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_sim_metrics_have_the_real_vllm_shape(vllm_server: VllmServer, sim_url: str) -> None:
    # Histograms and labelled counters only show their full shape once requests finished.
    for prompt in ("Metrics conformance", "Second request"):
        status, body = vllm_server.post_json(
            "/v1/completions", _completion(vllm_server.served_model_name, prompt)
        )
        assert status == 200, body
        status, text = _sim(f"{sim_url}/v1/completions", _completion(SIM_MODEL, prompt))
        assert status == 200, text

    status, real_text = vllm_server.get("/metrics")
    assert status == 200
    status, sim_text = _sim(f"{sim_url}/metrics")
    assert status == 200
    real, sim = _shapes(real_text), _shapes(sim_text)

    assert real, "the real vLLM exported no vllm: families"
    diff = _differences(real, sim)
    assert not diff, "vllm-sim's /metrics differs from the real vLLM's:\n" + "\n".join(diff)
