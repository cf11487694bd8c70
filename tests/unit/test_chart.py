"""The Helm chart, through the pinned helm binary: lint, render, labels, names, pod security,
RBAC, peering, monitoring objects, the values schema, and CRDs taken from crds/ unchanged.

No cluster: `helm template` renders for the Kubernetes version the test cluster runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from slmpack import metricnames
from slmpack.autotune import policy, signals
from slmpack.controller import tuning
from slmpack.controller.metrics import OperatorMetrics
from slmpack.controller.settings import load_settings
from slmpack.devcluster import binaries

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "slmpack"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE, NAMESPACE = "rel", "slmpack-system"
STANDARD_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: helm prints this on stderr for the crds/ symlink; it is expected, not a problem.
SYMLINK_NOTE = re.compile(r"^walk\.go:\d+: found symbolic link in path: .*$\n?", re.MULTILINE)


@cache
def helm_path() -> Path:
    tool = binaries.resolve_tools(("helm",))["helm"]
    if not tool.is_built:
        pytest.fail(
            f"helm {tool.version} is not built at {tool.path}: run `make tools` "
            "(or `bash hack/build-tools.sh helm`); `make test` builds it.",
            pytrace=False,
        )
    return tool.path


@cache
def kube_version() -> str:
    # helm's default is the version it was built against; pin the test cluster's instead.
    return binaries.load_versions()["KUBERNETES_VERSION"]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(helm_path()), *args], capture_output=True, text=True, check=False, cwd=REPO
    )
    result.stderr = SYMLINK_NOTE.sub("", result.stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}{result.stdout}")
    return result


def set_args(values: dict[str, str] | None) -> list[str]:
    return [arg for k, v in (values or {}).items() for arg in ("--set", f"{k}={v}")]


@cache
def _render(files: tuple[str, ...], sets: tuple[tuple[str, str], ...], release: str) -> str:
    args = ["template", release, str(CHART), "-n", NAMESPACE, "--kube-version", kube_version()]
    for f in files:
        args += ["-f", f]
    return helm(*args, *set_args(dict(sets))).stdout


def render(
    values_file: Path | None = None, release: str = RELEASE, **sets: str
) -> list[dict[str, Any]]:
    files = (str(values_file),) if values_file else ()
    text = _render(files, tuple(sorted(sets.items())), release)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, got {len(hits)}"
    return hits[0]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    container: dict[str, Any] = pod["containers"][0]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def scenario_ids() -> list[str]:
    return ["defaults", *(p.name.removesuffix("-values.yaml") for p in CI_VALUES)]


SCENARIOS: list[Path | None] = [None, *CI_VALUES]


# --- lint and render -----------------------------------------------------------------------


def test_ci_scenarios_exist() -> None:
    assert len(CI_VALUES) >= 4, "charts/slmpack/ci/ should hold the chart-testing value sets"


@pytest.mark.parametrize("values_file", SCENARIOS, ids=scenario_ids())
def test_lint_strict_passes(values_file: Path | None) -> None:
    args = ["lint", "--strict", str(CHART), "--kube-version", kube_version()]
    if values_file:
        args += ["-f", str(values_file)]
    result = helm(*args)
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout, result.stdout
    assert "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize("values_file", SCENARIOS, ids=scenario_ids())
def test_every_object_has_the_standard_labels(values_file: Path | None) -> None:
    docs = render(values_file)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert docs
    for doc in docs:
        labels = doc["metadata"].get("labels") or {}
        what = f"{doc['kind']} {doc['metadata']['name']}"
        missing = [k for k in STANDARD_LABELS if k not in labels]
        assert not missing, f"{what} lacks {missing}"
        assert labels["app.kubernetes.io/name"] == "slmpack"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "slmpack"
        assert labels["app.kubernetes.io/version"] == chart["appVersion"]
        assert labels["helm.sh/chart"] == f"slmpack-{chart['version']}"
        template = (doc.get("spec") or {}).get("template")
        if template:
            pod_labels = template["metadata"]["labels"]
            assert all(k in pod_labels for k in STANDARD_LABELS), f"pods of {what}"


def test_templates_render_no_crds() -> None:
    # CRDs come only from crds/; a template copy would be a second owner that can drift.
    for values_file in SCENARIOS:
        kinds = {d["kind"] for d in render(values_file)}
        assert "CustomResourceDefinition" not in kinds


@pytest.mark.parametrize(
    ("release", "sets"),
    [
        ("a" * 53, {}),  # Helm's longest release name
        ("r", {"fullnameOverride": "f" * 63, "watchNamespaces": "{team-a}"}),
        ("r", {"nameOverride": "n" * 63, "serviceMonitor.enabled": "true"}),
    ],
    ids=["long-release", "long-fullname", "long-name"],
)
def test_names_fit_63_characters(release: str, sets: dict[str, str]) -> None:
    sets = {**sets, "podMonitor.enabled": "true", "dashboard.enabled": "true"}
    docs = render(release=release, **sets)
    names = [d["metadata"]["name"] for d in docs]
    assert len(names) == len({(d["kind"], d["metadata"]["name"]) for d in docs})
    for name in names:
        assert len(name) <= 63, name
        assert DNS_LABEL.match(name), name
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert all(len(str(v)) <= 63 for v in labels.values()), labels


# --- the operator pod ------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", SCENARIOS, ids=scenario_ids())
def test_pods_meet_the_restricted_pod_security_standard(values_file: Path | None) -> None:
    docs = render(values_file)
    pods = [find(docs, "Deployment")["spec"]["template"]["spec"]]
    pods += [d["spec"] for d in docs if d["kind"] == "Pod"]
    for pod in pods:
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not pod.get("hostNetwork")
        assert not pod.get("hostPID")
        for container in pod["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["capabilities"]["drop"] == ["ALL"]
            assert "add" not in ctx["capabilities"]
            assert not ctx.get("privileged")


def test_operator_defaults_two_replicas_with_peering_and_spread() -> None:
    docs = render()
    deployment = find(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    env = env_of(operator_container(docs))
    assert env["SLMPACK_PEERING"] == "slmpack"
    for name in ("POD_ID", "SLMPACK_INSTANCE"):  # kopf's identity, our Events' instance
        assert env[name] == {"fieldRef": {"fieldPath": "metadata.name"}}
    peering = find(docs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "slmpack"
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    pdb = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] == 1


def test_probes_and_ports_match_the_operator_endpoints() -> None:
    docs = render()
    container = operator_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = env_of(container)
    assert (env["SLMPACK_METRICS_PORT"], env["SLMPACK_HEALTH_PORT"]) == ("8080", "8081")
    service = find(docs, "Service")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "metrics": "metrics",
        "health": "health",
    }
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]


@pytest.mark.parametrize("values_file", SCENARIOS, ids=scenario_ids())
def test_rendered_env_is_accepted_by_the_operator_settings(values_file: Path | None) -> None:
    env = env_of(operator_container(render(values_file)))
    settings_source = (REPO / "operator/slmpack/controller/settings.py").read_text()
    for name in env:
        if name.startswith("SLMPACK_"):
            assert f'"{name}"' in settings_source, f"the operator does not read {name}"
    literal = {k: v if isinstance(v, str) else "rel-slmpack-abc12" for k, v in env.items()}
    settings = load_settings(literal)  # raises SettingsError naming a bad variable
    values = yaml.safe_load(values_file.read_text()) if values_file else {}
    assert settings.namespaces == tuple((values or {}).get("watchNamespaces", ()))
    assert settings.instance == "rel-slmpack-abc12"


def test_single_replica_without_peering_runs_standalone() -> None:
    docs = render(CHART / "ci" / "03-single-replica-values.yaml")
    assert env_of(operator_container(docs))["SLMPACK_PEERING"] == ""
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ClusterKopfPeering", "KopfPeering", "PodDisruptionBudget", "Pod"}


def test_images_default_to_the_app_version_and_a_digest_pins_the_operator() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    container = operator_container(render())
    assert container["image"] == f"ghcr.io/slmpack/operator:{chart['appVersion']}"
    launcher = env_of(container)["SLMPACK_LAUNCHER_IMAGE"]
    assert launcher == f"ghcr.io/slmpack/launcher:{chart['appVersion']}"
    digest = "sha256:" + "ab" * 32
    pinned = operator_container(render(**{"image.digest": digest}))
    assert pinned["image"] == f"ghcr.io/slmpack/operator@{digest}"


# --- RBAC -------------------------------------------------------------------------------------


def rules_of(role: dict[str, Any]) -> set[tuple[str, str, str, tuple[str, ...]]]:
    """(group, resource, verb, resourceNames) for every permission a role grants."""
    return {
        (group, resource, verb, tuple(rule.get("resourceNames", ())))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def grants(*items: tuple[str, str, str]) -> set[tuple[str, str, str, tuple[str, ...]]]:
    return {
        (group, resource, verb, ()) for group, resource, verbs in items for verb in verbs.split(",")
    }


#: What the operator does in every namespace it serves (docs/install.md lists the reasons).
NAMESPACED = grants(
    ("slmpack.dev", "slmdeployments", "get,list,watch"),
    ("slmpack.dev", "slmdeployments/status", "patch"),
    ("slmpack.dev", "slmdeployments/finalizers", "update"),
    ("apps", "deployments", "get,list,watch,create,patch"),
    ("", "services", "get,list,watch,create,patch"),
    ("policy", "poddisruptionbudgets", "get,list,watch,create,patch"),
    ("", "pods", "get,list,watch"),
    ("", "configmaps", "get"),
    ("events.k8s.io", "events", "create"),
)
NODES = grants(("", "nodes", "get,list,watch"))
KOPF_CRDS = grants(("apiextensions.k8s.io", "customresourcedefinitions", "list,watch"))
KOPF_NAMESPACES = grants(("", "namespaces", "list,watch"))


def peering(resource: str, name: str) -> set[tuple[str, str, str, tuple[str, ...]]]:
    return grants(("kopf.dev", resource, "list,watch")) | {
        ("kopf.dev", resource, verb, (name,)) for verb in ("get", "patch")
    }


def test_cluster_wide_rbac_is_exactly_what_the_operator_uses() -> None:
    docs = render()
    role = find(docs, "ClusterRole")
    assert rules_of(role) == NAMESPACED | NODES | KOPF_CRDS | peering(
        "clusterkopfpeerings", "slmpack"
    )
    binding = find(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    account = find(docs, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding")]
    # A second release in another namespace must not collide on cluster-scoped names.
    assert NAMESPACE in role["metadata"]["name"]


def test_namespaced_rbac_grants_roles_per_namespace_and_only_reads_cluster_wide() -> None:
    docs = render(CHART / "ci" / "02-namespaced-values.yaml")
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert rules_of(role) == NAMESPACED | peering("kopfpeerings", "slmpack-teams")
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert rules_of(find(docs, "ClusterRole")) == NODES | KOPF_CRDS | KOPF_NAMESPACES
    peerings = [d for d in docs if d["kind"] == "KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    env = env_of(operator_container(docs))
    assert env["SLMPACK_NAMESPACES"] == "team-a,team-b"


def test_no_scenario_grants_secrets_wildcards_or_deletes() -> None:
    for values_file in SCENARIOS:
        for doc in render(values_file):
            if doc["kind"] not in ("Role", "ClusterRole"):
                continue
            for group, resource, verb, _ in rules_of(doc):
                assert "*" not in (group, resource, verb)
                assert resource != "secrets"
                assert verb not in ("delete", "deletecollection", "escalate", "bind", "impersonate")


def test_rbac_and_account_can_be_brought_by_the_user() -> None:
    docs = render(CHART / "ci" / "05-bring-your-own-values.yaml")
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role"}
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "platform-slmpack"


# --- monitoring, network policy, helm test ---------------------------------------------------


def known_metric_names() -> set[str]:
    names = {
        spec.name for spec in vars(metricnames).values() if isinstance(spec, metricnames.MetricSpec)
    }
    names |= {family.name for family in OperatorMetrics().registry.collect()}
    # The per-condition gauge the alerts read (1 for the current status and reason).
    names.add("slmpack_operator_condition")
    return names


#: Metric names in PromQL; slmpack_dev_* are labels (Kubernetes pod labels, relabelled).
METRIC = re.compile(r"\b(vllm:[a-z_:]+|DCGM_FI_[A-Z_]+|slmpack_(?!dev_)[a-z_]+)")
SUFFIXES = re.compile(r"(_bucket|_count|_sum|_total)$")


def metric_names_in(expr: str) -> set[str]:
    return {SUFFIXES.sub("", m) for m in METRIC.findall(expr)}


def test_monitoring_objects_render_and_query_known_metrics() -> None:
    docs = render(CHART / "ci" / "04-monitoring-values.yaml")
    known = known_metric_names()
    monitor = find(docs, "ServiceMonitor")
    service = find(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    pods = find(docs, "PodMonitor", "rel-slmpack-vllm")
    assert pods["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/managed-by": "slmpack",
    }
    assert pods["spec"]["namespaceSelector"] == {"any": True}
    groups = find(docs, "PrometheusRule")["spec"]["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    assert set(alerts) == {
        "SLMPackTTFTBudgetBurn",
        "SLMPackITLBudgetBurn",
        "SLMPackReplicasNotReady",
        "SLMPackAutotuneHolding",
        "SLMPackOperatorDown",
        "SLMPackGPUMemoryNearFull",
    }
    ttft = alerts["SLMPackTTFTBudgetBurn"]["expr"]
    assert 'vllm:time_to_first_token_seconds_bucket{le="1.0"}' in ttft
    assert f"by (namespace, {signals.DEPLOYMENT_LABEL})" in ttft
    anchors = troubleshooting_anchors()
    for alert in alerts.values():
        assert metric_names_in(alert["expr"]) <= known, alert["alert"]
        assert alert["labels"]["team"] == "inference"
        assert alert["annotations"]["runbook_url"].split("#")[1] in anchors
    dashboard = find(docs, "ConfigMap")
    board = json.loads(dashboard["data"]["slmpack-overview.json"])
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    for expr in exprs:
        assert metric_names_in(expr) <= known, expr
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_pod_monitor_labels_series_as_the_autotuner_queries_them() -> None:
    docs = render(**{"podMonitor.enabled": "true"})
    endpoint = find(docs, "PodMonitor")["spec"]["podMetricsEndpoints"][0]
    targets = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    source = ["__meta_kubernetes_pod_label_slmpack_dev_deployment"]
    assert targets[signals.DEPLOYMENT_LABEL] == source
    assert endpoint["port"] == "http"


def test_autotune_recording_rules_come_from_the_autotuner_unchanged() -> None:
    link = CHART / "files" / "autotune-recording-rules.yaml"
    assert link.is_symlink(), "the chart must link the autotuner's rules, not copy them"
    source = yaml.safe_load((REPO / "operator/slmpack/autotune/recording_rules.yaml").read_text())
    groups = find(render(**{"prometheusRule.enabled": "true"}), "PrometheusRule")["spec"]["groups"]
    recorded = [g for g in groups if any("record" in r for r in g["rules"])]
    assert recorded == source["groups"]
    off = {"prometheusRule.enabled": "true", "prometheusRule.autotuneRecordingRules": "false"}
    groups = find(render(**off), "PrometheusRule")["spec"]["groups"]
    assert not [g for g in groups if any("record" in r for r in g["rules"])]


def test_autotune_holding_alert_names_reasons_the_autotuner_has() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    reasons = values["prometheusRule"]["autotuneHoldingReasons"]
    operator_reasons = {tuning.PROMETHEUS_REJECTED, tuning.PROMETHEUS_NOT_CONFIGURED}
    assert set(reasons) <= {r.value for r in policy.Reason} | operator_reasons
    assert set(reasons) >= tuning.NOT_WORKING_REASONS, "every reason that sets Autotuned False"
    assert not {"Steady", "Settling"} & set(reasons)  # normal holds do not page


def troubleshooting_anchors() -> set[str]:
    text = (REPO / "docs" / "troubleshooting.md").read_text()
    headings = re.findall(r"^#+ (.+)$", text, re.MULTILINE)
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}


def test_namespaced_pod_monitor_scrapes_only_the_watched_namespaces() -> None:
    docs = render(CHART / "ci" / "02-namespaced-values.yaml", **{"podMonitor.enabled": "true"})
    selector = find(docs, "PodMonitor")["spec"]["namespaceSelector"]
    assert selector == {"matchNames": ["team-a", "team-b"]}


def test_network_policy_opens_only_metrics_health_dns_the_api_server_and_prometheus() -> None:
    policy = find(render(CHART / "ci" / "04-monitoring-values.yaml"), "NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    ingress_ports = {p["port"] for rule in spec["ingress"] for p in rule["ports"]}
    assert ingress_ports == {"metrics", "health"}
    egress_ports = {p["port"] for rule in spec["egress"] for p in rule["ports"]}
    assert egress_ports == {6443, 53, 9090}
    assert spec["egress"][0]["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]


def test_helm_test_pod_checks_healthz_through_the_service() -> None:
    docs = render()
    pod = find(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    service = find(docs, "Service")["metadata"]["name"]
    url = pod["spec"]["containers"][0]["command"][-1]
    assert url == f"http://{service}.{NAMESPACE}.svc:8081/healthz"
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "test"
    # Not selected by the operator's Service or PDB.
    selector = find(docs, "Service")["spec"]["selector"]
    assert not all(pod["metadata"]["labels"].get(k) == v for k, v in selector.items())


# --- values schema ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"replicaCount": "0"}, "at '/replicaCount': minimum: got 0, want 1"),
        ({"image.pullPolicy": "Sometimes"}, "at '/image/pullPolicy': value must be one of"),
        ({"replicaCont": "2"}, "additional properties 'replicaCont' not allowed"),
        ({"operator.workers": "many"}, "at '/operator/workers': got string, want integer"),
        ({"watchNamespaces": "{Team_A}"}, "at '/watchNamespaces/0': 'Team_A' does not match"),
        ({"prometheusRule.slo.ttftSeconds": "0.3"}, "at '/prometheusRule/slo/ttftSeconds'"),
        ({"image.digest": "latest"}, "at '/image/digest'"),
        ({"peering.lifetimeSeconds": "1"}, "at '/peering/lifetimeSeconds': minimum"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
)
def test_schema_rejects_bad_values_with_the_path(sets: dict[str, str], message: str) -> None:
    result = helm("template", RELEASE, str(CHART), *set_args(sets), check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"peering.enabled": "false"}, "replicaCount > 1 needs peering.enabled=true"),
        ({"metricsPort": "8081"}, "metricsPort and healthPort must differ"),
        (
            {"operator.backoffBaseSeconds": "10", "operator.backoffMaxSeconds": "1"},
            "backoffMaxSeconds must be at least operator.backoffBaseSeconds",
        ),
        (
            {"serviceAccount.create": "false"},
            "serviceAccount.name is required when serviceAccount.create is false",
        ),
    ],
    ids=["replicas-without-peering", "same-ports", "backoff-order", "account-without-name"],
)
def test_inconsistent_values_fail_with_a_clear_message(sets: dict[str, str], message: str) -> None:
    args = ["template", RELEASE, str(CHART), "--kube-version", kube_version()]
    result = helm(*args, *set_args(sets), check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


#: Values shaped as Kubernetes fields: the comment on the key itself covers its children.
KUBERNETES_SHAPED = {"resources", "livenessProbe", "readinessProbe"}


def test_every_value_has_a_comment_and_a_schema_entry() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z_][\w-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack]
        stack.append((indent, key))
        node = schema
        for part in path:
            node = node.get("properties", {}).get(part, {})
        if "properties" not in node or set(path) & KUBERNETES_SHAPED:
            continue  # a free-form map (labels, security contexts) or Kubernetes' own keys
        dotted = ".".join([*path, key])
        assert key in node["properties"], f"values.schema.json does not know {dotted}"
        assert lines[index - 1].lstrip().startswith("#"), f"{dotted} has no comment above it"


# --- CRDs: crds/ is the single source ---------------------------------------------------------


def crd_files() -> list[Path]:
    return sorted((REPO / "crds").glob("*.yaml"))


def test_chart_crds_folder_is_the_repository_crds_folder() -> None:
    link = CHART / "crds"
    assert link.is_symlink(), "charts/slmpack/crds must link to crds/, not copy it"
    assert link.resolve() == (REPO / "crds").resolve()


def test_helm_installs_exactly_the_crds_files() -> None:
    # `helm template --include-crds` prints what install creates: every document of every
    # crds/ file. (`helm show crds` glues files together without a separator, so it is not
    # used for upgrades; see docs/install.md.)
    args = ["template", RELEASE, str(CHART), "--include-crds", "--kube-version", kube_version()]
    rendered = [d for d in yaml.safe_load_all(helm(*args).stdout) if d]
    installed = [d for d in rendered if d["kind"] == "CustomResourceDefinition"]
    expected = [d for path in crd_files() for d in yaml.safe_load_all(path.read_text()) if d]
    assert installed == expected


@pytest.fixture(scope="module")
def packaged_chart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("package")
    helm("package", str(CHART), "-d", str(out))
    (archive,) = out.glob("slmpack-*.tgz")
    return archive


def test_packaged_chart_carries_the_linked_files_byte_for_byte(packaged_chart: Path) -> None:
    with tarfile.open(packaged_chart) as tar:
        members = {m.name: m for m in tar.getmembers()}
        packed = sorted(n for n in members if n.startswith("slmpack/crds/"))
        assert packed == [f"slmpack/crds/{p.name}" for p in crd_files()]
        for path in crd_files():
            member = members[f"slmpack/crds/{path.name}"]
            assert member.isfile(), "helm package must store the files, not the link"
            data = tar.extractfile(member)
            assert data is not None
            assert data.read() == path.read_bytes()
        rules = members["slmpack/files/autotune-recording-rules.yaml"]
        data = tar.extractfile(rules)
        assert data is not None
        source = REPO / "operator/slmpack/autotune/recording_rules.yaml"
        assert data.read() == source.read_bytes()
        assert not [n for n in members if n.startswith("slmpack/ci/")]


def test_packaged_chart_lints_and_renders_like_the_source(packaged_chart: Path) -> None:
    helm("lint", "--strict", str(packaged_chart), "--kube-version", kube_version())
    everything = str(CHART / "ci" / "04-monitoring-values.yaml")  # linked files in use
    args = ["template", RELEASE, str(packaged_chart), "-n", NAMESPACE, "-f", everything]
    packaged = helm(*args, "--kube-version", kube_version()).stdout
    assert packaged == _render((everything,), (), RELEASE)
