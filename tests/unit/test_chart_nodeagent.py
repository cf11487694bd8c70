"""The chart's node agent: off by default; when on, a DaemonSet on GPU nodes only, with exactly
the permissions the agent uses and no privilege beyond hostPID."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from slmpack.nodeagent import app, kube
from slmpack.nodeagent.inventory import ANNOTATION_KEY

from .test_chart import (
    CHART,
    DNS_LABEL,
    NAMESPACE,
    RELEASE,
    STANDARD_LABELS,
    find,
    helm,
    kube_version,
    render,
    rules_of,
)

ON = {"nodeAgent.enabled": "true"}
AGENT_KINDS = {"DaemonSet", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "PodMonitor"}


def agent_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        d
        for d in docs
        if (d["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "node-agent"
        or d["metadata"]["name"].endswith("node-agent")
    ]


def agent_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = find(docs, "DaemonSet")["spec"]["template"]["spec"]
    return pod


def agent_role(docs: list[dict[str, Any]]) -> dict[str, Any]:
    roles = [d for d in agent_docs(docs) if d["kind"] == "ClusterRole"]
    assert len(roles) == 1
    return roles[0]


def test_disabled_by_default() -> None:
    docs = render()
    assert not agent_docs(docs)
    assert "DaemonSet" not in {d["kind"] for d in docs}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["nodeAgent"]["enabled"] is False
    # The PodMonitor needs the agent itself.
    assert not agent_docs(render(**{"nodeAgent.podMonitor.enabled": "true"}))


def test_enabled_renders_the_daemonset_account_and_role() -> None:
    docs = render(**ON)
    kinds = {d["kind"] for d in agent_docs(docs)}
    assert kinds == AGENT_KINDS - {"PodMonitor"}
    for doc in agent_docs(docs):
        labels = doc["metadata"]["labels"]
        assert all(k in labels for k in STANDARD_LABELS), doc["metadata"]["name"]
        assert labels["app.kubernetes.io/component"] == "node-agent"
    result = helm(
        "lint",
        "--strict",
        str(CHART),
        "--kube-version",
        kube_version(),
        "--set",
        "nodeAgent.enabled=true",
    )
    assert "[WARNING]" not in result.stdout, result.stdout


def test_runs_on_gpu_nodes_only_and_tolerates_their_taint() -> None:
    pod = agent_pod(render(**ON))
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]


def test_gets_the_gpus_through_the_nvidia_runtime_without_taking_one() -> None:
    pod = agent_pod(render(**ON))
    assert pod["runtimeClassName"] == "nvidia"
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    resources = container["resources"]
    for section in ("requests", "limits"):
        assert not any(k.startswith("nvidia.com/") for k in resources.get(section, {}))
    # Empty runtimeClassName: the nodes' default runtime is NVIDIA's.
    pod = agent_pod(render(**ON, **{"nodeAgent.runtimeClassName": ""}))
    assert "runtimeClassName" not in pod


def test_hostpid_is_the_only_privilege() -> None:
    pod = agent_pod(render(**ON))
    assert pod["hostPID"] is True
    assert not pod.get("hostNetwork")
    assert not pod.get("hostIPC")
    assert all("hostPath" not in v for v in pod.get("volumes", []))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    ctx = container["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert not ctx.get("privileged")
    assert all("hostPort" not in p for p in container["ports"])


def test_container_runs_the_agent_with_its_flags_and_probes() -> None:
    pod = agent_pod(render(**ON, **{"nodeAgent.port": "9500", "nodeAgent.intervalSeconds": "5"}))
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "slmpack.nodeagent"]
    assert container["args"] == ["--port=9500", "--interval=5", "--annotate"]
    parsed = app.build_parser().parse_args(container["args"])
    assert (parsed.port, parsed.interval, parsed.annotate) == (9500, 5.0, True)
    assert container["ports"] == [{"name": "metrics", "containerPort": 9500, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert pod["serviceAccountName"] == "rel-slmpack-node-agent"
    ds = find(render(**ON), "DaemonSet")
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert (
        yaml.safe_load((CHART / "values.yaml").read_text())["nodeAgent"]["port"] == app.DEFAULT_PORT
    )


def test_rbac_is_exactly_what_the_agent_uses() -> None:
    docs = render(**ON)
    assert rules_of(agent_role(docs)) == {
        ("", "pods", "list", ()),  # kube.NodeApi.list_pods
        ("", "nodes", "patch", ()),  # kube.NodeApi.apply_annotation (server-side apply)
    }
    binding = next(d for d in agent_docs(docs) if d["kind"] == "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == agent_role(docs)["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rel-slmpack-node-agent", "namespace": NAMESPACE}
    ]
    # The code makes those two requests and no other.
    source = Path(kube.__file__).read_text()
    assert re.findall(r'self\._call\("(\w+)", ([^,)]+)', source) == [
        ("GET", '"/api/v1/pods"'),
        ("PATCH", "path"),
    ]
    assert 'f"/api/v1/nodes/' in source


def test_without_annotate_the_agent_cannot_write_nodes() -> None:
    docs = render(**ON, **{"nodeAgent.annotate": "false"})
    assert rules_of(agent_role(docs)) == {("", "pods", "list", ())}
    (container,) = agent_pod(docs)["containers"]
    assert "--no-annotate" in container["args"]


def test_rbac_and_account_can_be_brought_by_the_user() -> None:
    docs = render(
        **ON,
        **{
            "rbac.create": "false",
            "nodeAgent.serviceAccount.create": "false",
            "nodeAgent.serviceAccount.name": "platform-gpu-agent",
        },
    )
    assert {d["kind"] for d in agent_docs(docs)} == {"DaemonSet"}
    assert agent_pod(docs)["serviceAccountName"] == "platform-gpu-agent"
    result = helm(
        "template",
        RELEASE,
        str(CHART),
        "--kube-version",
        kube_version(),
        "--set",
        "nodeAgent.enabled=true",
        "--set",
        "nodeAgent.serviceAccount.create=false",
        check=False,
    )
    assert result.returncode != 0
    assert "nodeAgent.serviceAccount.name is required" in result.stderr


def test_pod_monitor_keeps_the_replica_labels_and_adds_the_node() -> None:
    docs = render(**ON, **{"nodeAgent.podMonitor.enabled": "true"})
    monitor = next(d for d in docs if d["kind"] == "PodMonitor")
    ds = find(docs, "DaemonSet")
    assert monitor["spec"]["selector"]["matchLabels"] == ds["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["honorLabels"] is True
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"} in endpoint[
        "relabelings"
    ]


@pytest.mark.parametrize(
    ("release", "sets"),
    [("a" * 53, {}), ("r", {"fullnameOverride": "f" * 63})],
    ids=["long-release", "long-fullname"],
)
def test_names_fit_63_characters(release: str, sets: dict[str, str]) -> None:
    docs = render(release=release, **ON, **sets, **{"nodeAgent.podMonitor.enabled": "true"})
    assert len(docs) == len({(d["kind"], d["metadata"]["name"]) for d in docs})
    for doc in agent_docs(docs):
        name = doc["metadata"]["name"]
        assert len(name) <= 63, name
        assert DNS_LABEL.match(name), name


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"nodeAgent.port": "0"}, "at '/nodeAgent/port': minimum"),
        ({"nodeAgent.intervalSeconds": "0"}, "at '/nodeAgent/intervalSeconds'"),
        ({"nodeAgent.podMonitor.interval": "often"}, "at '/nodeAgent/podMonitor/interval'"),
        ({"nodeAgent.unknown": "1"}, "additional properties 'unknown' not allowed"),
    ],
)
def test_schema_rejects_bad_node_agent_values(sets: dict[str, str], message: str) -> None:
    args = ["template", RELEASE, str(CHART), "--kube-version", kube_version()]
    for key, value in {**ON, **sets}.items():
        args += ["--set", f"{key}={value}"]
    result = helm(*args, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_docs_name_the_annotation_and_field_manager() -> None:
    docs = (CHART.parents[1] / "docs" / "nodeagent.md").read_text()
    assert ANNOTATION_KEY in docs
    assert kube.FIELD_MANAGER in docs
