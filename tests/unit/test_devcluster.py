"""The dev cluster's launcher parts that need no control plane: pins, PKI, kubeconfigs, kwok
stages, command lines, pid handling and the CLI's error paths."""

from __future__ import annotations

import base64
import datetime
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from slmpack.cli.main import app
from slmpack.devcluster import binaries, certs, kubeconfig, kwok_stages, launcher, processes
from slmpack.devcluster.errors import DevClusterError

REPO_ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SLMPACK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_versions_env_pins_every_tool() -> None:
    versions = binaries.load_versions(REPO_ROOT)

    for tool, key in binaries.VERSION_KEYS.items():
        assert versions[key].startswith("v"), f"{key} (for {tool}) should be a v-prefixed tag"


def test_versions_env_parser_skips_comments_and_rejects_junk() -> None:
    assert binaries.parse_versions_env("# pins\n\nA_VERSION=v1\nB='v2'\n") == {
        "A_VERSION": "v1",
        "B": "v2",
    }
    with pytest.raises(DevClusterError, match="line 2 is not KEY=VALUE"):
        binaries.parse_versions_env("A=v1\nnot a pin\n")


def test_tools_resolve_to_versioned_files_in_the_cache(cache: Path) -> None:
    tools = binaries.resolve_tools(("kube-apiserver", "etcd"))
    versions = binaries.load_versions(REPO_ROOT)

    assert tools["kube-apiserver"].path == (
        cache / "bin" / f"kube-apiserver-{versions['KUBERNETES_VERSION']}"
    )
    assert tools["etcd"].path.name == f"etcd-{versions['ETCD_VERSION']}"
    with pytest.raises(DevClusterError, match=r"Run `make tools`"):
        binaries.require_built(tools)


def test_pki_serving_cert_covers_loopback_and_clients_carry_their_groups() -> None:
    pki = certs.new_cluster_pki(NOW)
    ca = x509.load_pem_x509_certificate(pki.ca.cert_pem)
    serving = x509.load_pem_x509_certificate(pki.apiserver.cert_pem)
    admin = x509.load_pem_x509_certificate(pki.admin.cert_pem)
    scheduler = x509.load_pem_x509_certificate(pki.scheduler.cert_pem)

    serving.verify_directly_issued_by(ca)
    admin.verify_directly_issued_by(ca)
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1",
        "10.96.0.1",
    ]
    usages = serving.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages
    organizations = admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [attr.value for attr in organizations] == ["system:masters"]
    common_name = scheduler.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == "system:kube-scheduler"
    assert not scheduler.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)


def test_written_private_keys_are_owner_only(tmp_path: Path) -> None:
    files = certs.write_pki(certs.new_cluster_pki(NOW), tmp_path / "pki")

    assert files.ca_key.stat().st_mode & 0o777 == 0o600
    assert files.service_account_private_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY")


def test_kubeconfig_embeds_credentials_and_selects_its_context(tmp_path: Path) -> None:
    pki = certs.new_cluster_pki(NOW)
    document = kubeconfig.build_kubeconfig(
        "dev", "https://127.0.0.1:6443", pki.ca.cert_pem, pki.admin, "slmpack-admin"
    )
    path = kubeconfig.write_kubeconfig(document, tmp_path / "kubeconfig")

    loaded = yaml.safe_load(path.read_text())
    assert loaded["current-context"] == "slmpack-dev"
    assert loaded["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    user = loaded["users"][0]["user"]
    assert base64.b64decode(user["client-certificate-data"]) == pki.admin.cert_pem
    assert path.stat().st_mode & 0o777 == 0o600


def test_kwok_config_has_node_and_pod_stages() -> None:
    stages = list(yaml.safe_load_all(kwok_stages.render_kwok_config()))

    assert {stage["kind"] for stage in stages} == {"Stage"}
    kinds = [stage["spec"]["resourceRef"]["kind"] for stage in stages]
    assert kinds.count("Node") >= 1
    assert kinds.count("Pod") >= 2
    names = [stage["metadata"]["name"] for stage in stages]
    assert len(names) == len(set(names))
    assert any(stage["spec"]["next"].get("delete") for stage in stages)


def test_component_command_lines_bind_loopback_and_enable_rbac(tmp_path: Path) -> None:
    layout = launcher.Layout(tmp_path)
    ports = launcher.Ports(2379, 2380, 6443, 10257, 10259, 10247)
    pki = certs.write_pki(certs.new_cluster_pki(NOW), tmp_path / "pki")

    def argv(component: str) -> list[str]:
        return launcher.component_argv(
            component, Path(f"/bin/{component}"), layout, ports, pki, "dev"
        )

    apiserver = argv("kube-apiserver")
    assert "--authorization-mode=Node,RBAC" in apiserver
    assert "--etcd-servers=http://127.0.0.1:2379" in apiserver
    assert "--bind-address=127.0.0.1" in apiserver
    assert "--listen-client-urls=http://127.0.0.1:2379" in argv("etcd")
    kwok = argv("kwok")
    assert "--manage-all-nodes=false" in kwok
    assert "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake" in kwok
    assert "--leader-elect=false" in argv("kube-scheduler")
    assert "--use-service-account-credentials=true" in argv("kube-controller-manager")
    # Every component names the state dir, which is how its pid is recognised later.
    for component in launcher.COMPONENTS:
        assert any(str(tmp_path) in arg for arg in argv(component)), component


def test_a_port_in_use_is_refused_with_the_fix() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        with pytest.raises(DevClusterError, match=rf"Port {port} .* --apiserver-port"):
            launcher.allocate_ports(apiserver_port=port)


def test_allocated_ports_are_distinct() -> None:
    ports = launcher.allocate_ports()

    values = [getattr(ports, name) for name in ports.__dataclass_fields__]
    assert len(set(values)) == len(values)


def test_cluster_names_are_checked(cache: Path) -> None:
    with pytest.raises(DevClusterError, match="not valid"):
        launcher.cluster_dir("../etc")


def _alive(pid: int) -> bool:
    processes.reap(pid)
    return processes.pid_owner_description(pid) != "no process"


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[int]:
    """The pid of a process started like a component: its command line names `tmp_path`."""
    argv = [sys.executable, "-c", "import time; time.sleep(60)", str(tmp_path)]
    ref = processes.spawn("sleeper", argv, tmp_path / "sleeper.log", tmp_path)
    yield ref.pid
    if _alive(ref.pid):
        os.kill(ref.pid, signal.SIGKILL)
        os.waitpid(ref.pid, 0)


def test_a_pid_counts_as_ours_only_with_the_same_binary_and_state_dir(
    tmp_path: Path, sleeper: int
) -> None:
    ours = processes.ProcessRef("x", sleeper, Path(sys.executable), tmp_path)
    reused = processes.ProcessRef("x", sleeper, Path("/bin/etcd"), tmp_path)
    other_dir = processes.ProcessRef("x", sleeper, Path(sys.executable), tmp_path / "b")

    assert processes.is_ours(ours)
    assert not processes.is_ours(reused)
    assert not processes.is_ours(other_dir)


def test_stop_leaves_a_reused_pid_alone_and_stops_our_process(tmp_path: Path, sleeper: int) -> None:
    reused = processes.ProcessRef("x", sleeper, Path("/bin/etcd"), tmp_path)

    assert processes.stop([reused], grace_seconds=1) == {"x": "not running"}
    assert _alive(sleeper)

    ours = processes.ProcessRef("x", sleeper, Path(sys.executable), tmp_path)
    assert processes.stop([ours], grace_seconds=5) == {"x": "stopped"}
    assert not _alive(sleeper)


def test_stale_pid_files_are_reported_and_never_signalled(cache: Path) -> None:
    layout = launcher.Layout(launcher.cluster_dir("stale"))
    for component in ("etcd", "kube-apiserver"):
        layout.pid_file(component).parent.mkdir(parents=True, exist_ok=True)
    # This test process stands in for a program that later got the apiserver's old pid.
    layout.pid_file("kube-apiserver").write_text(f"{os.getpid()}\n")
    layout.pid_file("etcd").write_text("999999999\n")

    current = launcher.status("stale")

    details = {c.name: c.detail for c in current.components}
    assert "belongs to another program" in details["kube-apiserver"]
    assert details["etcd"] == "exited (stale pid file)"
    assert current.none_running
    assert launcher.down("stale") is True  # removes the state; this process survives it
    assert not layout.root.exists()


def test_cli_status_of_a_missing_cluster_exits_1(cache: Path) -> None:
    result = CliRunner().invoke(app, ["dev-cluster", "status", "--name", "nothing"])

    assert result.exit_code == 1
    assert "is not running" in result.output


def test_cli_nodes_with_a_bad_fleet_explains_the_problem(tmp_path: Path, cache: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("pools:\n  - {name: l4, count: 1, gpuProduct: NVIDIA-L4, gpusPerNode: 0}\n")

    result = CliRunner().invoke(app, ["dev-cluster", "nodes", "--fleet", str(fleet)])

    assert result.exit_code == 1
    assert "gpusPerNode must be at least 1" in result.output


def test_the_runner_starts_a_node_agent_over_the_simulated_gpus(tmp_path: Path) -> None:
    from slmpack.devcluster import runner
    from slmpack.devcluster.gpu_devices import node_gpus
    from slmpack.devcluster.podexec import (
        RUNNER_DIR_ENV,
        RUNNER_POD_ENV,
        EngineKind,
        EngineSettings,
    )
    from slmpack.nodeagent.app import DEFAULT_PORT, build_parser

    labels = {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB",
        "nvidia.com/gpu.count": "2",
        "nvidia.com/mig.config": "all-3g.20gb",
    }
    gpus = node_gpus(labels, {"nvidia.com/gpu": "2", "nvidia.com/mig-3g.20gb": "4"})
    assert gpus is not None
    config = runner.RunnerConfig(
        kubeconfig=tmp_path / "kubeconfig",
        state_dir=tmp_path / "runner",
        engine=EngineSettings(EngineKind.SIM, python="/venv/bin/python", sim_speedup=5.0),
        base_env={"PATH": "/bin"},
        node_agent=True,
    )

    command = runner.node_agent_command(
        "a100-0", gpus, "127.64.3.1", tmp_path / "sim", 40000, config
    )

    assert command.argv[:3] == ("/venv/bin/python", "-m", "slmpack.nodeagent")
    args = build_parser().parse_args(list(command.argv[3:]))
    assert (args.node_name, args.host, args.port) == ("a100-0", "127.64.3.1", DEFAULT_PORT)
    assert runner.NODE_AGENT_PORT == DEFAULT_PORT
    assert (args.nvml_sim, args.sim_gpu, args.sim_gpu_count) == (
        tmp_path / "sim",
        "NVIDIA-A100-SXM4-40GB",
        2,
    )
    assert (args.sim_speedup, args.sim_memory_mib) == (5.0, 40000)
    assert args.kubeconfig == str(tmp_path / "kubeconfig")
    assert args.annotate is True
    assert args.sim_mig_device == [f"{g}:3g.20gb:{i}" for g in (0, 1) for i in (0, 1)]
    # Marked as the runner's, so a later runner stops it; not a pod's process.
    assert command.env[RUNNER_DIR_ENV] == str(tmp_path / "runner")
    assert command.env[RUNNER_POD_ENV] == "node:a100-0"
    # Opt-in: existing worlds keep their processes and their CPU budget.
    default = runner.RunnerConfig(config.kubeconfig, config.state_dir, config.engine)
    assert default.node_agent is False
