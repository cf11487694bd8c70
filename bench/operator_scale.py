"""Operator scale benchmark: 1,000 SLMDeployments over 500 kwok GPU nodes on the local control
plane, with the operator running as its own process.

Writes bench/results/operator_scale.json and .md. It never passes or fails; goals sit next to
the figures.

    .venv/bin/python bench/operator_scale.py                 # full run (~15 min on 2 cores)
    .venv/bin/python bench/operator_scale.py --quick         # 100 over 50 nodes

Measured:
- time from the first create until every SLMDeployment is Planned, and until every one is Ready
  (all its pods scheduled and passing readiness on kwok);
- the same pods created directly as Deployments, without the operator, on the same cluster in
  the same run: the baseline that shows what the control plane itself costs (ratio reported);
- reconcile latency: per object, Planned's transition time minus creation time (p50/p99; the
  API stores seconds), and the operator's own reconcile-duration histogram (p50/p99);
- operator peak RSS (VmHWM), writes per SLMDeployment by kind (the operator's counters) and the
  apiserver's own count of writes to slmdeployments;
- writes during an idle window after convergence (goal: 0).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from benchinfo import git_sha, hardware
from slmpack.api.v1alpha1 import SLMDeploymentSpec
from slmpack.catalog.gpus import default_gpu_catalog
from slmpack.catalog.models import default_model_catalog
from slmpack.controller.decide import decide
from slmpack.controller.inventory import cluster_offers
from slmpack.devcluster import binaries, crd_apply, gpu_nodes, launcher, node_apply
from slmpack.devcluster.operator_process import OperatorProcess
from slmpack.render.workload import Owner, RenderDefaults, deployment

SCHEMA_VERSION = 1
RESULTS_DIR = Path(__file__).resolve().parent / "results"
CRD_PATH = Path(__file__).resolve().parents[1] / "crds" / "slmpack.dev_slmdeployments.yaml"
GROUP, VERSION, PLURAL = "slmpack.dev", "v1alpha1", "slmdeployments"
NAMESPACES = 10
H100 = "NVIDIA-H100-80GB-HBM3"
WHOLE_GPU_MODELS = ("opt-125m", "opt-1.3b", "qwen2.5-0.5b", "qwen2.5-1.5b", "llama-3.2-1b")
SMALL_MODELS = ("opt-125m", "qwen2.5-0.5b", "smollm2-360m", "smollm2-135m")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def fleet_yaml(nodes: int) -> str:
    """Mostly 8x H100 nodes; a fifth A100 MIG nodes and a fifth 4x L4 time-slicing nodes, so
    every sharing mode has room for both the baseline and the operator's pods."""
    mig = max(1, nodes // 5)
    sliced = max(1, nodes // 5)
    pools = [
        {"name": "h100", "count": nodes - mig - sliced, "profile": "h100-80gb-x8"},
        {"name": "a100-mig", "count": mig, "profile": "a100-40gb-mig"},
        {"name": "l4-ts", "count": sliced, "profile": "l4-time-slicing", "gpusPerNode": 4},
    ]
    return yaml.safe_dump({"pools": pools})


def specs(count: int, seed: int) -> list[dict[str, Any]]:
    """A mixed population: mostly whole-GPU nodes (Auto, Packed, Exclusive), some MIG and
    time-slicing, replica counts of one to four."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.15:
            model = rng.choice(SMALL_MODELS)
            gpu = {"sharing": "MIG"}
            replicas = rng.randint(1, 3)
        elif roll < 0.30:
            model = rng.choice(SMALL_MODELS)
            gpu = {"sharing": "TimeSlicing"}
            replicas = rng.randint(1, 2)
        else:
            model = rng.choice(WHOLE_GPU_MODELS)
            sharing = rng.choice(("Auto", "Packed", "Exclusive"))
            gpu = {"products": [H100], "sharing": sharing}
            replicas = rng.randint(1, 2) if sharing == "Exclusive" else rng.randint(1, 4)
        out.append(
            {
                "model": {"uri": f"hf://bench/{model}", "config": {"catalogName": model}},
                "gpu": gpu,
                "replicas": replicas,
            }
        )
    return out


def wait(probe: Callable[[], bool], what: str, timeout: float, every: float = 0.5) -> float:
    start = time.monotonic()
    while not probe():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - start


def create_namespaces(api: client.ApiClient, prefix: str) -> list[str]:
    core = client.CoreV1Api(api)
    names = [f"{prefix}-{i}" for i in range(NAMESPACES)]
    for name in names:
        core.create_namespace({"metadata": {"name": name}})
    for name in names:
        wait(lambda n=name: _has_default_sa(core, n), f"ServiceAccount in {name}", 60)
    return names


def _has_default_sa(core: client.CoreV1Api, namespace: str) -> bool:
    try:
        core.read_namespaced_service_account("default", namespace)
        return True
    except client.exceptions.ApiException:
        return False


def run_parallel(tasks: Iterable[Callable[[], object]], workers: int = 8) -> None:
    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(t) for t in tasks]:
            future.result()


def ready_deployments(api: client.ApiClient, namespaces: list[str]) -> tuple[int, int]:
    apps = client.AppsV1Api(api)
    total = ready = 0
    for ns in namespaces:
        for dep in apps.list_namespaced_deployment(ns).items:
            total += 1
            want = dep.spec.replicas or 0
            ready += int((dep.status.ready_replicas or 0) >= want and dep.status.replicas == want)
    return total, ready


def baseline(api: client.ApiClient, population: list[dict[str, Any]], nodes: list[Any]) -> float:
    """Create the operator's Deployments directly (rendered offline by the same pure code) and
    time them to Ready: what the control plane costs without the operator."""
    offers = cluster_offers(nodes)
    gpus, models = default_gpu_catalog(), default_model_catalog()
    defaults = RenderDefaults("vllm/vllm-openai:bench", "slmpack/launcher:bench")
    namespaces = create_namespaces(api, "base")
    manifests = []
    for i, raw in enumerate(population):
        spec = SLMDeploymentSpec.model_validate(raw)
        model = models.entry(spec.model.config.catalog_name or "").spec  # type: ignore[union-attr]
        decision = decide(spec, model, offers, gpus)
        obj = deployment(
            Owner(f"d{i}", namespaces[i % NAMESPACES], "none"), spec, decision, defaults
        )
        del obj["metadata"]["ownerReferences"]
        manifests.append(obj)
    apps = client.AppsV1Api(api)
    start = time.monotonic()
    run_parallel(
        lambda m=m: apps.create_namespaced_deployment(m["metadata"]["namespace"], m)
        for m in manifests
    )
    count = len(manifests)
    wait(lambda: ready_deployments(api, namespaces)[1] >= count, "baseline Ready", 1800, 2)
    return time.monotonic() - start


def apiserver_writes(api: client.ApiClient, resource: str) -> float:
    """The apiserver's own count of mutating requests on `resource`."""
    text = (
        api.call_api(*api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])[:3])
        .read()
        .decode()
    )  # type: ignore[no-untyped-call]
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != "apiserver_request_total":
                continue
            labels = sample.labels
            if labels.get("resource") == resource and labels.get("verb") in (
                "APPLY",
                "PATCH",
                "POST",
                "PUT",
                "DELETE",
                "CREATE",
                "UPDATE",
            ):
                total += sample.value
    return total


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus-style quantile from cumulative (upper bound, count) pairs."""
    total = buckets[-1][1]
    if total == 0:
        return math.nan
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            span = count - prev_count
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / span if span else 0)
        prev_bound, prev_count = bound, count
    return prev_bound


def reconcile_histogram(operator: OperatorProcess) -> list[tuple[float, float]]:
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "slmpack_operator_reconcile_duration_seconds_bucket":
                out.append((float(sample.labels["le"]), sample.value))
    return sorted(out)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def parse_time(text: str) -> float:
    return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--idle-seconds", type=float, default=120.0)
    parser.add_argument("--quick", action="store_true", help="100 SLMDeployments, 50 nodes")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.quick:
        args.deployments, args.nodes, args.idle_seconds = 100, 50, 30.0
    binaries.build_missing(binaries.resolve_tools())
    name = f"bench-{os.getpid()}"
    log(f"Starting control plane {name}")
    up = launcher.up(name, timeout_seconds=120)
    api = node_apply.new_api_client(up.state.kubeconfig)
    work = Path(tempfile.mkdtemp(prefix="slmpack-bench-"))
    operator = OperatorProcess(Path(up.state.kubeconfig), work / "operator.log")
    try:
        fleet = gpu_nodes.parse_fleet_yaml(fleet_yaml(args.nodes), "bench fleet")
        node_manifests = gpu_nodes.build_fleet_nodes(fleet)
        log(f"Adding {len(node_manifests)} kwok GPU nodes")
        names = node_apply.apply_nodes(api, node_manifests)
        node_apply.wait_nodes_ready(api, names, timeout_seconds=300)
        nodes = [api.sanitize_for_serialization(n) for n in client.CoreV1Api(api).list_node().items]
        crd_apply.apply_crd_file(api, CRD_PATH)
        population = specs(args.deployments, args.seed)
        log("Baseline: the same Deployments created directly")
        baseline_ready_s = baseline(api, population, nodes)
        log(f"Baseline Ready after {baseline_ready_s:.1f} s")

        operator.start()
        writes_before = apiserver_writes(api, "slmdeployments")
        namespaces = create_namespaces(api, "slmd")
        custom = client.CustomObjectsApi(api)
        log(f"Creating {args.deployments} SLMDeployments")
        start = time.monotonic()
        run_parallel(
            lambda i=i, s=s: custom.create_namespaced_custom_object(
                GROUP,
                VERSION,
                namespaces[i % NAMESPACES],
                PLURAL,
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "SLMDeployment",
                    "metadata": {"name": f"s{i}"},
                    "spec": s,
                },
            )
            for i, s in enumerate(population)
        )
        created_s = time.monotonic() - start
        planned_at = ready_at = None
        objects: list[dict[str, Any]] = []
        while ready_at is None:
            objects = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
            conds = [
                {c["type"]: c["status"] for c in (o.get("status") or {}).get("conditions") or []}
                for o in objects
            ]
            planned = sum(c.get("Planned") == "True" for c in conds)
            ready = sum(c.get("Ready") == "True" for c in conds)
            now = time.monotonic() - start
            if planned_at is None and planned >= args.deployments:
                planned_at = now
                log(f"All Planned after {now:.1f} s")
            if ready >= args.deployments:
                ready_at = now
                log(f"All Ready after {now:.1f} s")
            if now > 3600:
                raise TimeoutError(f"{ready}/{args.deployments} Ready after an hour")
            time.sleep(1)
        latencies = []
        for obj in objects:
            cond = next(c for c in obj["status"]["conditions"] if c["type"] == "Planned")
            latencies.append(
                parse_time(cond["lastTransitionTime"])
                - parse_time(obj["metadata"]["creationTimestamp"])
            )
        time.sleep(5)  # the last status writes' events settle
        op_writes = operator.metric_values("slmpack_operator_api_writes_total")
        writes_by_kind: dict[str, float] = {}
        for labels, value in op_writes.items():
            kind = dict(labels)["kind"]
            writes_by_kind[kind] = writes_by_kind.get(kind, 0.0) + value
        total_writes = sum(writes_by_kind.values())
        slmd_writes = apiserver_writes(api, "slmdeployments") - writes_before
        histogram = reconcile_histogram(operator)
        log(f"Idle window of {args.idle_seconds:.0f} s")
        idle_before = operator.writes()
        idle_api_before = apiserver_writes(api, "slmdeployments")
        time.sleep(args.idle_seconds)
        idle_writes = operator.writes() - idle_before
        idle_api = apiserver_writes(api, "slmdeployments") - idle_api_before
        per_minute = 60.0 / args.idle_seconds
        results = {
            "create_seconds": round(created_s, 2),
            "all_planned_seconds": round(planned_at or math.nan, 2),
            "all_ready_seconds": round(ready_at, 2),
            "baseline_all_ready_seconds": round(baseline_ready_s, 2),
            "ready_ratio_vs_baseline": round(ready_at / baseline_ready_s, 3),
            "planned_latency_p50_seconds": percentile(latencies, 0.5),
            "planned_latency_p99_seconds": percentile(latencies, 0.99),
            "reconcile_duration_p50_seconds": round(histogram_quantile(histogram, 0.5), 4),
            "reconcile_duration_p99_seconds": round(histogram_quantile(histogram, 0.99), 4),
            "reconciles": histogram[-1][1] if histogram else 0,
            "operator_peak_rss_mib": round(operator.peak_rss_bytes() / 2**20, 1),
            "operator_writes_per_slmdeployment": round(total_writes / args.deployments, 2),
            "operator_writes_by_kind_per_slmdeployment": {
                k: round(v / args.deployments, 2) for k, v in sorted(writes_by_kind.items())
            },
            "apiserver_slmdeployment_writes_per_slmdeployment": round(
                slmd_writes / args.deployments, 2
            ),
            "idle_operator_writes_per_minute": idle_writes * per_minute,
            "idle_apiserver_slmdeployment_writes_per_minute": idle_api * per_minute,
        }
    finally:
        operator.stop()
        node_apply.close_api_client(api)
        launcher.down(name)
    doc = {
        "schema_version": SCHEMA_VERSION,
        "benchmark": "operator_scale",
        "git_sha": git_sha(),
        "hardware": hardware(),
        "parameters": {
            "deployments": args.deployments,
            "nodes": args.nodes,
            "idle_seconds": args.idle_seconds,
            "seed": args.seed,
            "namespaces": NAMESPACES,
        },
        "results": results,
        "goals": {"idle_operator_writes_per_minute": 0},
    }
    suffix = "-quick" if args.quick else ""
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"operator_scale{suffix}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (RESULTS_DIR / f"operator_scale{suffix}.md").write_text(summary(doc))
    print(summary(doc))


def summary(doc: dict[str, Any]) -> str:
    r = doc["results"]
    p = doc["parameters"]
    kinds = ", ".join(f"{k} {v}" for k, v in r["operator_writes_by_kind_per_slmdeployment"].items())
    rows = [
        ("all Planned", f"{r['all_planned_seconds']} s"),
        ("all Ready", f"{r['all_ready_seconds']} s"),
        (
            "baseline: same Deployments created directly, all Ready",
            f"{r['baseline_all_ready_seconds']} s",
        ),
        ("Ready time vs baseline", f"x{r['ready_ratio_vs_baseline']}"),
        (
            "create to Planned, p50 / p99",
            f"{r['planned_latency_p50_seconds']} s / {r['planned_latency_p99_seconds']} s",
        ),
        (
            "reconcile duration, p50 / p99",
            f"{r['reconcile_duration_p50_seconds']} s / {r['reconcile_duration_p99_seconds']} s",
        ),
        ("reconcile passes", f"{r['reconciles']:.0f}"),
        ("operator peak RSS", f"{r['operator_peak_rss_mib']} MiB"),
        (
            "operator writes per SLMDeployment",
            f"{r['operator_writes_per_slmdeployment']} ({kinds})",
        ),
        (
            "apiserver writes to slmdeployments per SLMDeployment",
            f"{r['apiserver_slmdeployment_writes_per_slmdeployment']}",
        ),
        (
            "idle writes per minute (operator / apiserver, slmdeployments; goal 0)",
            f"{r['idle_operator_writes_per_minute']} / "
            f"{r['idle_apiserver_slmdeployment_writes_per_minute']}",
        ),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"""# Operator scale

{p["deployments"]} SLMDeployments over {p["nodes"]} kwok GPU nodes, operator as its own process,
local control plane on {doc["hardware"]["cpu_count"]} cores (`bench/operator_scale.py`,
commit `{doc["git_sha"][:12]}`).

| figure | value |
|---|---|
{table}

Create-to-Planned uses the API's one-second timestamps. The baseline shows what the control
plane (controller-manager, scheduler, kwok) needs for the same pods; the ratio is the
operator's added cost.
"""


if __name__ == "__main__":
    sys.exit(main())
