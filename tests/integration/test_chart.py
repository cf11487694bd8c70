"""The Helm chart against a real control plane: server-side validation of what it renders and
of examples/, install into a namespace that enforces the restricted Pod Security Standard,
the operator running with exactly the chart's RBAC (cluster-wide and namespaced) through a full
SLMDeployment lifecycle, requests outside that RBAC refused, GitOps applies without drift, a
CRD change across `helm upgrade`, and `helm uninstall` keeping CRDs and SLMDeployments.

The chart's pods run on kwok nodes, so no image is pulled; the operator itself runs in the
test's process tree (OperatorProcess) with a token of the chart's ServiceAccount.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slmpack.devcluster import binaries, node_apply
from slmpack.devcluster.launcher import free_port
from slmpack.devcluster.operator_process import OperatorProcess

from .conftest import LiveCluster
from .kube_helpers import wait_for, wait_for_default_service_account

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "slmpack"
CRDS = REPO / "crds"
EXAMPLES = sorted((REPO / "examples").glob("slmdeployment-*.yaml"))
GROUP, VERSION, PLURAL = "slmpack.dev", "v1alpha1", "slmdeployments"
RELEASE = "slmpack-it"
#: Unique per session: an external test cluster may hold other peering objects.
PEERING = f"slmpack-it-{uuid.uuid4().hex[:6]}"
H100 = "NVIDIA-H100-80GB-HBM3"
#: Operator log lines that mean its RBAC fell short: the authorizer's denial, and kopf's
#: warning when it cannot list or watch what it scans.
PERMISSION_PROBLEMS = re.compile(r"system:serviceaccount:\S+ cannot|Not enough permissions")


@dataclass(frozen=True)
class Tools:
    helm: Path
    kubectl: Path
    kubeconfig: Path
    #: The cluster's version, for `helm template` (which never asks the cluster).
    kube_version: str

    def run(
        self, tool: str, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        path = self.helm if tool == "helm" else self.kubectl
        result = subprocess.run(
            [str(path), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{tool} {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stderr}{result.stdout}"
            )
        return result


@pytest.fixture(scope="module")
def tools(kubeconfig_path: Path, api_client: client.ApiClient) -> Tools:
    found = binaries.resolve_tools(("helm", "kubectl"))
    missing = [tool for tool in found.values() if not tool.is_built]
    if missing:
        pytest.fail(
            f"Not built: {', '.join(f'{t.name} {t.version}' for t in missing)}; run `make tools`.",
            pytrace=False,
        )
    version = client.VersionApi(api_client).get_code().git_version
    return Tools(found["helm"].path, found["kubectl"].path, kubeconfig_path, version)


def create_namespace(api_client: client.ApiClient, prefix: str, **labels: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": name, "labels": labels}})

    wait_for_default_service_account(core, name)
    return name


RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
}


@pytest.fixture(scope="module")
def release_namespace(api_client: client.ApiClient) -> Iterator[str]:
    name = create_namespace(api_client, "slmpack-system", **RESTRICTED)
    yield name
    client.CoreV1Api(api_client).delete_namespace(name)


@dataclass
class Release:
    name: str
    namespace: str
    installed: bool = True


@pytest.fixture(scope="module")
def release(tools: Tools, release_namespace: str) -> Iterator[Release]:
    tools.run(
        "helm",
        "install",
        RELEASE,
        str(CHART),
        "-n",
        release_namespace,
        "--set",
        f"peering.name={PEERING}",
        "--wait",
        "--timeout",
        "120s",
    )
    installed = Release(RELEASE, release_namespace)
    yield installed
    if installed.installed:
        tools.run("helm", "uninstall", RELEASE, "-n", release_namespace, "--wait", check=False)


def service_account_kubeconfig(
    live_cluster: LiveCluster, namespace: str, account: str, path: Path
) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount, with a TokenRequest token."""
    core = client.CoreV1Api(live_cluster.api_client)
    request = {"spec": {"expirationSeconds": 3600}}
    token = core.create_namespaced_service_account_token(account, namespace, request).status.token
    config = yaml.safe_load(live_cluster.kubeconfig.read_text())
    config["users"] = [{"name": account, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = account
    path.write_text(yaml.safe_dump(config))
    return path


def custom(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


def create_slmd(
    api_client: client.ApiClient, namespace: str, name: str, spec: dict[str, Any]
) -> dict[str, Any]:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SLMDeployment", "metadata": {"name": name}}
    created: dict[str, Any] = custom(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, {**body, "spec": spec}
    )
    return created


def get_slmd(api_client: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    got: dict[str, Any] = custom(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return got


def wait_ready(
    api_client: client.ApiClient,
    namespace: str,
    name: str,
    ready_replicas: int | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = get_slmd(api_client, namespace, name)
        status = obj.get("status") or {}
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)
        generation = obj["metadata"]["generation"]
        if not ready or ready["status"] != "True" or ready["observedGeneration"] != generation:
            return None
        if ready_replicas is not None and status.get("readyReplicas") != ready_replicas:
            return None
        return obj

    return wait_for(probe, f"{namespace}/{name} Ready", timeout)


def wait_gone(read: Callable[[], Any], what: str, timeout: float = 60) -> None:
    def gone() -> bool:
        try:
            read()
        except ApiException as err:
            if err.status == 404:
                return True
            raise
        return False

    wait_for(gone, f"{what} to be deleted", timeout)


def contains(have: Any, want: Any) -> bool:
    """`want` is a part of `have` (the apiserver adds defaults, never drops what was sent)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(contains(have.get(k), v) for k, v in want.items())
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(have) == len(want)
            and all(contains(h, w) for h, w in zip(have, want, strict=True))
        )
    return bool(have == want)


def crd_documents(folder: Path) -> list[dict[str, Any]]:
    return [
        d for p in sorted(folder.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d
    ]


def assert_no_permission_problems(operator: OperatorProcess) -> None:
    log = operator.log_path.read_text(errors="replace")
    problems = [line for line in log.splitlines() if PERMISSION_PROBLEMS.search(line)]
    assert not problems, "the operator hit its RBAC limits:\n" + "\n".join(problems[:10])


# --- validation on the real apiserver ---------------------------------------------------------


def test_every_example_validates_against_the_crd(
    tools: Tools, release: Release, namespace: str
) -> None:
    assert len(EXAMPLES) >= 5
    for example in EXAMPLES:
        result = tools.run(
            "kubectl", "apply", "--dry-run=server", "-n", namespace, "-f", str(example)
        )
        assert "created (server dry run)" in result.stdout, example.name
        kinds = {d["kind"] for d in yaml.safe_load_all(example.read_text()) if d}
        assert kinds == {"SLMDeployment"}, example.name


NODE_AGENT_HOST_PID_WARNING = (
    'Warning: would violate PodSecurity "restricted:latest": host namespaces (hostPID=true)'
)


@pytest.mark.parametrize(
    "values_file", sorted((CHART / "ci").glob("*-values.yaml")), ids=lambda p: p.name[:-12]
)
def test_rendered_chart_passes_server_side_dry_run(
    tools: Tools,
    release: Release,
    api_client: client.ApiClient,
    namespace: str,
    values_file: Path,
) -> None:
    # Warn and enforce the restricted Pod Security Standard on what lands here.
    client.CoreV1Api(api_client).patch_namespace(namespace, {"metadata": {"labels": RESTRICTED}})
    # Roles go to namespaces that exist; the peering object must not clash with ours.
    sets = ["--set", f"peering.name=dry-{uuid.uuid4().hex[:6]}"]
    if "namespaced" in values_file.name:
        sets += ["--set", f"watchNamespaces={{{namespace}}}"]
    template = ("template", "dry", str(CHART), "-n", namespace, "-f", str(values_file))
    template += ("--kube-version", tools.kube_version)
    rendered = tools.run("helm", *template, *sets).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    # No Prometheus Operator CRDs in this cluster: those kinds are checked by the unit tests.
    checked = [d for d in docs if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert checked
    stream = yaml.safe_dump_all(checked)
    result = tools.run(
        "kubectl", "apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=stream
    )
    assert result.stdout.count("(server dry run)") == len(checked), result.stdout
    violations = {line for line in result.stderr.splitlines() if "PodSecurity" in line}
    if "node-agent" in values_file.name:
        # hostPID is the node agent's one privilege; nothing else may break "restricted".
        assert violations == {NODE_AGENT_HOST_PID_WARNING}, result.stderr
    else:
        assert not violations, result.stderr


def test_node_agent_daemonset_runs_on_gpu_nodes_only(
    tools: Tools, api_client: client.ApiClient
) -> None:
    """The agent's objects applied for real, in a namespace that allows hostPID (its one
    privilege): the DaemonSet is admitted and schedules one pod on each GPU node, none on the
    CPU-only ones."""
    namespace = create_namespace(
        api_client, "node-agent", **{"pod-security.kubernetes.io/enforce": "privileged"}
    )
    agent: list[dict[str, Any]] = []
    try:
        template = ("template", "agent", str(CHART), "-n", namespace)
        template += ("--kube-version", tools.kube_version, "--set", "nodeAgent.enabled=true")
        template += ("--set", f"peering.name=agent-{uuid.uuid4().hex[:6]}")
        docs = [d for d in yaml.safe_load_all(tools.run("helm", *template).stdout) if d]
        agent = [d for d in docs if "node-agent" in d["metadata"]["name"]]
        assert {d["kind"] for d in agent} >= {"DaemonSet", "ServiceAccount", "ClusterRole"}
        # The NVIDIA GPU Operator installs this RuntimeClass; pods naming a missing one are
        # refused at admission.
        runtime_class = {
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": {"name": "nvidia"},
            "handler": "nvidia",
        }
        stream = yaml.safe_dump_all([runtime_class, *agent])
        tools.run("kubectl", "apply", "-n", namespace, "-f", "-", stdin=stream)
        nodes = client.CoreV1Api(api_client).list_node().items
        gpu_nodes = {
            n.metadata.name
            for n in nodes
            if (n.metadata.labels or {}).get("nvidia.com/gpu.present") == "true"
        }
        assert gpu_nodes, "the test cluster has GPU nodes"
        assert len(gpu_nodes) < len(nodes), "and CPU-only ones"
        (daemonset,) = [d for d in agent if d["kind"] == "DaemonSet"]
        apps = client.AppsV1Api(api_client)

        def scheduled() -> Any:
            got = apps.read_namespaced_daemon_set(daemonset["metadata"]["name"], namespace)
            wanted = got.status.desired_number_scheduled if got.status else 0
            return got if wanted == len(gpu_nodes) else None

        wait_for(scheduled, "the node agent DaemonSet to target every GPU node", 30)

        def pods_on() -> set[str] | None:
            pods = client.CoreV1Api(api_client).list_namespaced_pod(namespace).items
            found = {p.spec.node_name for p in pods if p.spec and p.spec.node_name}
            return found if len(found) == len(gpu_nodes) else None

        try:
            assert wait_for(pods_on, "an agent pod on every GPU node", 60) == gpu_nodes
        except AssertionError:
            events = client.CoreV1Api(api_client).list_namespaced_event(namespace).items
            print("\n".join(f"{e.reason}: {e.message}" for e in events[-20:]))
            raise
    finally:
        client.CoreV1Api(api_client).delete_namespace(namespace)
        rbac = client.RbacAuthorizationV1Api(api_client)
        for doc in agent:
            if doc["kind"] == "ClusterRole":
                rbac.delete_cluster_role(doc["metadata"]["name"])
            elif doc["kind"] == "ClusterRoleBinding":
                rbac.delete_cluster_role_binding(doc["metadata"]["name"])
        with contextlib.suppress(ApiException):
            client.NodeV1Api(api_client).delete_runtime_class("nvidia")


# --- install -------------------------------------------------------------------------------------


def test_install_creates_the_crds_and_a_restricted_operator(
    tools: Tools, release: Release, api_client: client.ApiClient
) -> None:
    ext = client.ApiextensionsV1Api(api_client)
    for crd in crd_documents(CRDS):
        live = ext.read_custom_resource_definition(crd["metadata"]["name"])
        live_spec = api_client.sanitize_for_serialization(live.spec)
        assert contains(live_spec, crd["spec"]), f"{crd['metadata']['name']} differs from crds/"
        assert any(c.type == "Established" and c.status == "True" for c in live.status.conditions)
    apps = client.AppsV1Api(api_client)
    deployment = apps.read_namespaced_deployment(f"{RELEASE}", release.namespace)
    assert deployment.status.ready_replicas == 2  # admitted under enforce=restricted
    custom(api_client).get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", PEERING)
    status = tools.run("helm", "status", RELEASE, "-n", release.namespace, "-o", "json").stdout
    assert '"status":"deployed"' in status.replace(" ", "")


@pytest.fixture(scope="module")
def chart_operator(
    live_cluster: LiveCluster,
    release: Release,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    folder = tmp_path_factory.mktemp("chart-operator")
    kubeconfig = service_account_kubeconfig(
        live_cluster, release.namespace, RELEASE, folder / "kubeconfig"
    )
    operator = OperatorProcess(kubeconfig, folder / "operator.log", {"SLMPACK_PEERING": PEERING})
    operator.start()
    yield operator
    operator.stop()


@pytest.fixture(scope="module")
def operator_client(chart_operator: OperatorProcess) -> Iterator[client.ApiClient]:
    """An API client with the same credentials as the chart's operator."""
    api_client = node_apply.new_api_client(str(chart_operator.kubeconfig))
    yield api_client
    node_apply.close_api_client(api_client)


@pytest.fixture(autouse=True)
def _print_operator_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "chart_operator" in request.fixturenames:
        operator: OperatorProcess = request.getfixturevalue("chart_operator")
        print(f"--- operator log ---\n{operator.log_tail()}")


def test_namespaced_release_serves_its_namespaces_with_roles_only(
    tools: Tools,
    live_cluster: LiveCluster,
    api_client: client.ApiClient,
    release: Release,
    namespace: str,
    tmp_path: Path,
) -> None:
    home = create_namespace(api_client, "slmpack-teams", **RESTRICTED)
    other = create_namespace(api_client, "slmpack-other")
    peering = f"teams-{uuid.uuid4().hex[:6]}"
    tools.run(
        "helm",
        "install",
        "teams",
        str(CHART),
        "-n",
        home,
        "--set",
        f"watchNamespaces={{{namespace}}}",
        "--set",
        f"peering.name={peering}",
        "--wait",
    )
    try:
        kubeconfig = service_account_kubeconfig(
            live_cluster, home, "teams-slmpack", tmp_path / "kc"
        )
        env = {"SLMPACK_NAMESPACES": namespace, "SLMPACK_PEERING": peering}
        operator = OperatorProcess(kubeconfig, tmp_path / "operator.log", env)
        operator.start()
        try:
            spec = {"model": {"uri": "hf://facebook/opt-125m"}, "gpu": {"products": [H100]}}
            create_slmd(api_client, namespace, "scoped", spec)
            wait_ready(api_client, namespace, "scoped")
            assert_no_permission_problems(operator)
        finally:
            operator.stop()
        scoped = node_apply.new_api_client(str(kubeconfig))
        try:
            with pytest.raises(ApiException) as refused:
                client.AppsV1Api(scoped).list_namespaced_deployment(other)
            assert refused.value.status == 403
            with pytest.raises(ApiException) as refused:
                client.AppsV1Api(scoped).list_deployment_for_all_namespaces()
            assert refused.value.status == 403
        finally:
            node_apply.close_api_client(scoped)
    finally:
        tools.run("helm", "uninstall", "teams", "-n", home, "--wait")
        for name in (home, other):
            client.CoreV1Api(api_client).delete_namespace(name)


def test_operator_with_the_chart_rbac_runs_a_full_lifecycle(
    api_client: client.ApiClient, namespace: str, chart_operator: OperatorProcess
) -> None:
    spec = {
        "model": {"uri": "hf://facebook/opt-125m"},
        "gpu": {"products": [H100], "sharing": "Exclusive"},
        "replicas": 1,
    }
    create_slmd(api_client, namespace, "life", spec)
    wait_ready(api_client, namespace, "life", ready_replicas=1)
    custom(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "life", {"spec": {"replicas": 3}}
    )
    wait_ready(api_client, namespace, "life", ready_replicas=3)
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    assert apps.read_namespaced_deployment("life", namespace).spec.replicas == 3
    events = core.list_namespaced_event(namespace).items  # events.k8s.io ones show here too
    assert any(e.reason == "Planned" and e.involved_object.name == "life" for e in events)
    custom(api_client).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "life")
    wait_gone(lambda: apps.read_namespaced_deployment("life", namespace), "Deployment life")
    wait_gone(lambda: core.read_namespaced_service("life", namespace), "Service life")
    policy = client.PolicyV1Api(api_client)
    wait_gone(lambda: policy.read_namespaced_pod_disruption_budget("life", namespace), "PDB life")
    assert chart_operator.writes() > 0
    assert_no_permission_problems(chart_operator)


def error_status(call: Callable[[], Any]) -> int:
    with pytest.raises(ApiException) as err:
        call()
    return int(err.value.status or 0)


def test_requests_outside_the_chart_rbac_are_refused(
    operator_client: client.ApiClient, api_client: client.ApiClient, namespace: str
) -> None:
    core, apps = client.CoreV1Api(operator_client), client.AppsV1Api(operator_client)
    rbac = client.RbacAuthorizationV1Api(operator_client)
    secret = {"metadata": {"name": "stolen"}, "stringData": {"k": "v"}}
    node = client.CoreV1Api(api_client).list_node().items[0].metadata.name
    create_slmd(api_client, namespace, "spec-owner", {"model": {"uri": "hf://facebook/opt-125m"}})
    dry = {"dry_run": "All"}  # refused before it could matter; harmless if it were allowed
    assert error_status(lambda: core.create_namespaced_secret(namespace, secret, **dry)) == 403
    assert error_status(lambda: core.list_secret_for_all_namespaces()) == 403
    assert error_status(lambda: core.delete_node(node, **dry)) == 403
    assert error_status(lambda: apps.delete_namespaced_deployment("x", namespace, **dry)) == 403
    assert error_status(lambda: core.delete_namespace(namespace, **dry)) == 403
    role = {"metadata": {"name": "escalate"}, "rules": []}
    assert error_status(lambda: rbac.create_cluster_role(role, **dry)) == 403
    # The operator writes status only; the spec belongs to the user or the GitOps tool.
    patch = {"spec": {"replicas": 9}}
    api = custom(operator_client)
    assert (
        error_status(
            lambda: api.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "spec-owner", patch, **dry
            )
        )
        == 403
    )


def test_helm_test_check_passes_only_against_a_live_operator(
    tools: Tools, release: Release, chart_operator: OperatorProcess
) -> None:
    # kwok never completes a bare pod, so `helm test` cannot finish here: run the hook pod's
    # own command in this process tree against the running operator instead.
    only = ("--show-only", "templates/tests/healthz-test.yaml")
    version = ("--kube-version", tools.kube_version)
    rendered = tools.run("helm", "template", RELEASE, str(CHART), *only, *version).stdout
    pod = yaml.safe_load(rendered)
    command = pod["spec"]["containers"][0]["command"]
    assert command[0] == "python"
    assert command[-1].endswith(":8081/healthz")
    live = f"http://127.0.0.1:{chart_operator.health_port}/healthz"
    ok = subprocess.run([sys.executable, *command[1:-1], live], capture_output=True, check=False)
    assert ok.returncode == 0, ok.stderr
    dead = f"http://127.0.0.1:{free_port()}/healthz"
    failed = subprocess.run(
        [sys.executable, *command[1:-1], dead], capture_output=True, check=False
    )
    assert failed.returncode != 0


# --- GitOps -------------------------------------------------------------------------------------


def wait_settled(api_client: client.ApiClient, namespace: str, name: str) -> str:
    """The resourceVersion once the operator has stopped writing status."""
    last = ""
    quiet_since = time.monotonic()

    def settled() -> str | None:
        nonlocal last, quiet_since
        version = str(get_slmd(api_client, namespace, name)["metadata"]["resourceVersion"])
        if version != last:
            last, quiet_since = version, time.monotonic()
            return None
        return version if time.monotonic() - quiet_since > 2 else None

    return wait_for(settled, f"{namespace}/{name} status to settle", 30)


def test_gitops_apply_twice_changes_nothing_and_the_operator_owns_only_status(
    tools: Tools, api_client: client.ApiClient, namespace: str, chart_operator: OperatorProcess
) -> None:
    example = REPO / "examples" / "slmdeployment-packed.yaml"
    name = yaml.safe_load(example.read_text())["metadata"]["name"]
    apply = ("apply", "--server-side", "--field-manager=argocd-controller", "-n", namespace)
    tools.run("kubectl", *apply, "-f", str(example))
    wait_ready(api_client, namespace, name)
    before = wait_settled(api_client, namespace, name)
    diff_args = ("diff", "--server-side", "--field-manager=argocd-controller", "-n", namespace)
    diff = tools.run("kubectl", *diff_args, "-f", str(example), check=False)
    assert diff.returncode == 0, f"drift seen by a GitOps diff:\n{diff.stdout}"
    second = tools.run("kubectl", *apply, "-f", str(example))
    assert "serverside-applied" in second.stdout
    time.sleep(1)  # the operator would react to a change within this
    obj = get_slmd(api_client, namespace, name)
    assert obj["metadata"]["resourceVersion"] == before, "the second apply changed the object"
    managed = obj["metadata"]["managedFields"]
    gitops = [m for m in managed if m["manager"] == "argocd-controller"]
    assert [m["operation"] for m in gitops] == ["Apply"]
    assert "f:spec" in gitops[0]["fieldsV1"]
    ours = [m for m in managed if m["manager"] == "slmpack-operator"]
    assert ours
    assert all(m.get("subresource") == "status" for m in ours), ours
    others_on_spec = [
        m["manager"]
        for m in managed
        if m["manager"] != "argocd-controller" and "f:spec" in m["fieldsV1"]
    ]
    assert not others_on_spec


# --- upgrade and uninstall ----------------------------------------------------------------------


@pytest.fixture
def restore_crds(tools: Tools) -> Iterator[None]:
    yield
    tools.run("kubectl", "apply", "--server-side", "--force-conflicts", "-f", str(CRDS))


def test_helm_upgrade_across_a_crd_change_keeps_slmdeployments(
    tools: Tools,
    release: Release,
    api_client: client.ApiClient,
    namespace: str,
    chart_operator: OperatorProcess,
    tmp_path: Path,
    restore_crds: None,
) -> None:
    create_slmd(api_client, namespace, "kept", {"model": {"uri": "hf://facebook/opt-125m"}})
    uid = wait_ready(api_client, namespace, "kept")["metadata"]["uid"]
    # The next chart version: same CRDs but for one description, as a release would change.
    chart = tmp_path / "slmpack"
    shutil.copytree(CHART, chart, symlinks=False)  # the copy holds the CRD files themselves
    crd_file = chart / "crds" / "slmpack.dev_slmdeployments.yaml"
    marker = "Changed by the upgrade test."
    crd = yaml.safe_load(crd_file.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["description"] = f"{schema['description']} {marker}"
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    (chart / "Chart.yaml").write_text(yaml.safe_dump({**meta, "version": "0.1.1"}))
    ext = client.ApiextensionsV1Api(api_client)

    def live_description() -> str:
        live = ext.read_custom_resource_definition("slmdeployments.slmpack.dev")
        return str(live.spec.versions[0].schema.open_apiv3_schema.description)

    upgrade = ("upgrade", RELEASE, str(chart), "-n", release.namespace, "--reuse-values", "--wait")
    tools.run("helm", *upgrade)
    assert marker not in live_description(), "Helm does not upgrade crds/ (docs/install.md)"
    # The documented upgrade path: that version's crds/ first, then helm upgrade.
    tools.run("kubectl", "apply", "--server-side", "--force-conflicts", "-f", str(chart / "crds"))
    tools.run("helm", *upgrade)
    assert marker in live_description()
    obj = wait_ready(api_client, namespace, "kept")
    assert obj["metadata"]["uid"] == uid
    history = tools.run("helm", "history", RELEASE, "-n", release.namespace, "-o", "yaml").stdout
    assert [r["chart"] for r in yaml.safe_load(history)][-1] == "slmpack-0.1.1"
    assert_no_permission_problems(chart_operator)


def test_helm_uninstall_keeps_crds_and_slmdeployments(
    tools: Tools,
    release: Release,
    api_client: client.ApiClient,
    namespace: str,
    chart_operator: OperatorProcess,
) -> None:
    create_slmd(api_client, namespace, "survivor", {"model": {"uri": "hf://facebook/opt-125m"}})
    wait_ready(api_client, namespace, "survivor")
    chart_operator.stop()  # its RBAC goes with the release
    tools.run("helm", "uninstall", RELEASE, "-n", release.namespace, "--wait")
    release.installed = False
    apps, rbac = client.AppsV1Api(api_client), client.RbacAuthorizationV1Api(api_client)
    cluster_name = f"{RELEASE}-{release.namespace}"
    wait_gone(lambda: apps.read_namespaced_deployment(RELEASE, release.namespace), RELEASE)
    for read in (
        lambda: rbac.read_cluster_role(cluster_name),
        lambda: rbac.read_cluster_role_binding(cluster_name),
        lambda: client.CoreV1Api(api_client).read_namespaced_service_account(
            RELEASE, release.namespace
        ),
        lambda: custom(api_client).get_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", PEERING
        ),
    ):
        assert error_status(read) == 404
    ext = client.ApiextensionsV1Api(api_client)
    for crd in crd_documents(CRDS):
        ext.read_custom_resource_definition(crd["metadata"]["name"])  # still there
    survivor = get_slmd(api_client, namespace, "survivor")
    assert survivor["status"]["readyReplicas"] >= 1
    # Its workload keeps serving without the operator.
    assert apps.read_namespaced_deployment("survivor", namespace).status.ready_replicas >= 1
