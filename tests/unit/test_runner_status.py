"""The status the runner reports for its nodes and pods, and its add-on bookkeeping (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmpack.devcluster import kubelet_status, launcher, processes
from slmpack.devcluster.kubelet_status import ContainerRun, Terminated, pod_status_patch
from slmpack.devcluster.podexec import ContainerView, HttpProbe, PodView

T0 = 1_790_000_000.0


def _pod(restart_policy: str = "Always") -> PodView:
    container = ContainerView(
        name="vllm",
        image="vllm/vllm-openai:test",
        argv=("python3", "-m", "vllm.entrypoints.openai.api_server"),
        env=(),
        ports={"http": 8000},
        limits={"nvidia.com/gpu": "1"},
        readiness=HttpProbe("/health", 8000),
    )
    return PodView(
        uid="uid-1",
        name="chat-0",
        namespace="ns",
        node_name="run-0",
        labels={},
        annotations={},
        deleting=False,
        grace_seconds=30,
        restart_policy=restart_policy,
        phase="Pending",
        pod_ip="",
        containers=(container,),
    )


def _patch(run: ContainerRun, restart_policy: str = "Always") -> dict[str, Any]:
    return pod_status_patch(
        _pod(restart_policy),
        run,
        pod_ip="127.64.0.2",
        host_ip="127.64.0.1",
        start_time=T0,
        ready_changed_at=T0 + 3,
    )


def _conditions(patch: dict[str, Any]) -> dict[str, str]:
    status = patch["status"]
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_a_ready_container_makes_a_ready_running_pod_with_its_address() -> None:
    patch = _patch(ContainerRun(started_at=T0 + 1, ready=True, pid=4242))

    status = patch["status"]
    assert patch["metadata"] == {"uid": "uid-1"}  # never lands on a new pod of that name
    assert status["phase"] == "Running"
    assert (status["podIP"], status["hostIP"]) == ("127.64.0.2", "127.64.0.1")
    assert status["podIPs"] == [{"ip": "127.64.0.2"}]
    assert _conditions(patch)["Ready"] == "True"
    assert _conditions(patch)["ContainersReady"] == "True"
    (container,) = status["containerStatuses"]
    assert container["state"] == {"running": {"startedAt": "2026-09-21T14:13:21Z"}}
    assert container["containerID"] == "slmpack-runner://4242"
    assert container["ready"] is True


def test_a_crashing_container_waits_in_back_off_with_its_last_exit() -> None:
    last = Terminated(1, "Error", T0, T0 + 2)
    patch = _patch(
        ContainerRun(
            started_at=None,
            ready=False,
            restart_count=2,
            waiting_reason="CrashLoopBackOff",
            waiting_message="back-off 2s restarting failed container",
            last_terminated=last,
        )
    )

    status = patch["status"]
    assert status["phase"] == "Running"  # as the kubelet reports CrashLoopBackOff
    assert _conditions(patch)["Ready"] == "False"
    (container,) = status["containerStatuses"]
    assert container["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert container["lastState"]["terminated"]["exitCode"] == 1
    assert container["restartCount"] == 2


def test_a_container_that_will_not_restart_ends_the_pod() -> None:
    done = Terminated(0, "Completed", T0, T0 + 5)
    failed = Terminated(3, "Error", T0, T0 + 5)

    def phase(run: ContainerRun) -> str:
        return str(_patch(run, "Never")["status"]["phase"])

    assert phase(ContainerRun(None, False, terminated=done)) == "Succeeded"
    assert phase(ContainerRun(None, False, terminated=failed)) == "Failed"
    assert phase(ContainerRun(None, False)) == "Pending"


def test_node_status_reports_ready_and_its_loopback_address() -> None:
    patch = kubelet_status.node_status_patch("run-0", "127.64.0.1", T0 + 60, T0)

    status = patch["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert ready["lastHeartbeatTime"] == "2026-09-21T14:14:20Z"
    assert ready["lastTransitionTime"] == "2026-09-21T14:13:20Z"
    assert {"type": "InternalIP", "address": "127.64.0.1"} in status["addresses"]
    assert status["nodeInfo"]["kubeletVersion"] == kubelet_status.RUNNER_VERSION


def test_the_lease_is_owned_by_its_node_and_renewed_in_micro_time() -> None:
    lease = kubelet_status.node_lease("run-0", "node-uid", T0 + 0.25)

    assert lease["metadata"]["namespace"] == "kube-node-lease"
    assert lease["metadata"]["ownerReferences"][0]["uid"] == "node-uid"
    assert lease["spec"]["renewTime"] == "2026-09-21T14:13:20.250000Z"
    assert lease["spec"]["leaseDurationSeconds"] == 40


def test_add_ons_recorded_beside_a_cluster_are_found_for_down(tmp_path: Path) -> None:
    ref = processes.ProcessRef("runner", 123, Path("/venv/bin/python"), tmp_path / "runner")
    launcher.write_addon(tmp_path / "runner" / launcher.ADDON_FILE, ref)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / launcher.ADDON_FILE).write_text("{not json")

    assert launcher.addon_refs(tmp_path) == [ref]
