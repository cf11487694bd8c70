"""The dev cluster is a real Kubernetes control plane: scheduling against GPU resources,
RBAC, garbage collection, CEL validation and admission policies all behave as in production.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .kube_helpers import wait_for

pytestmark = pytest.mark.cluster

GPU = "nvidia.com/gpu"
#: Never started on kwok nodes; on kind it is already on every node (the sandbox image).
IMAGE = "registry.k8s.io/pause:3.10.2"
MIG_1G_5GB = "nvidia.com/mig-1g.5gb"


def _pod(
    name: str, limits: dict[str, int], node_selector: dict[str, str] | None = None
) -> dict[str, Any]:
    """A pod that tolerates the GPU taint and asks for `limits` (requests default to them)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "tolerations": [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}],
            "nodeSelector": node_selector or {},
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "resources": {"limits": {k: str(v) for k, v in limits.items()}},
                }
            ],
        },
    }


def _running_pod(core: client.CoreV1Api, namespace: str, name: str) -> Callable[[], Any]:
    def probe() -> Any:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status and pod.status.phase == "Running" else None

    return probe


def _absent(read: Callable[[], Any]) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            read()
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    return probe


def _nodes_advertising(core: client.CoreV1Api, resource: str) -> set[str]:
    return {
        node.metadata.name
        for node in core.list_node().items
        if int((node.status.allocatable or {}).get(resource, "0")) > 0
    }


def test_pod_asking_for_two_gpus_is_bound_to_a_node_that_has_them_and_runs(
    api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_pod(namespace, _pod("two-gpus", {GPU: 2}))

    pod = wait_for(_running_pod(core, namespace, "two-gpus"), "pod two-gpus to be Running")

    node = core.read_node(pod.spec.node_name)
    assert int(node.status.allocatable[GPU]) >= 2
    assert node.metadata.labels["nvidia.com/gpu.present"] == "true"
    ready = {c.type: c.status for c in pod.status.conditions}
    assert ready["Ready"] == "True"


def test_pod_asking_for_more_gpus_than_any_node_has_fails_scheduling(
    api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    most = max(
        int((node.status.allocatable or {}).get(GPU, "0")) for node in core.list_node().items
    )
    core.create_namespaced_pod(namespace, _pod("too-many", {GPU: most + 1}))

    def failed_scheduling() -> Any:
        events = core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=too-many"
        ).items
        return next((e for e in events if e.reason == "FailedScheduling"), None)

    event = wait_for(failed_scheduling, "a FailedScheduling event for pod too-many")

    assert f"Insufficient {GPU}" in event.message
    assert core.read_namespaced_pod("too-many", namespace).spec.node_name is None


def test_pods_asking_for_a_mig_slice_land_only_on_mig_nodes(
    api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    mig_nodes = _nodes_advertising(core, MIG_1G_5GB)
    assert mig_nodes, f"the fleet has no node advertising {MIG_1G_5GB}"
    names = [f"mig-slice-{index}" for index in range(3)]
    for name in names:
        core.create_namespaced_pod(namespace, _pod(name, {MIG_1G_5GB: 1}))

    for name in names:
        pod = wait_for(_running_pod(core, namespace, name), f"pod {name} to be Running")
        assert pod.spec.node_name in mig_nodes
        node = core.read_node(pod.spec.node_name)
        assert node.metadata.labels["nvidia.com/mig.strategy"] == "mixed"


def test_time_sliced_gpu_replicas_are_schedulable_as_whole_gpus(
    api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    shared = {"nvidia.com/gpu.product": "NVIDIA-L4-SHARED"}
    # One L4 shared four ways advertises 4 nvidia.com/gpu; asking for all of them fits.
    core.create_namespaced_pod(namespace, _pod("four-replicas", {GPU: 4}, node_selector=shared))

    pod = wait_for(_running_pod(core, namespace, "four-replicas"), "pod four-replicas Running")

    labels = core.read_node(pod.spec.node_name).metadata.labels
    assert labels["nvidia.com/gpu.sharing-strategy"] == "time-slicing"
    assert labels["nvidia.com/gpu.replicas"] == "4"


def test_service_account_with_a_narrow_role_is_denied_everything_else(
    api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    rbac = client.RbacAuthorizationV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "configmap-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "configmap-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    token_request = core.create_namespaced_service_account_token(
        "reader", namespace, {"spec": {"expirationSeconds": 600}}
    )
    configuration = copy.deepcopy(api_client.configuration)
    configuration.cert_file = None
    configuration.key_file = None
    configuration.api_key = {"authorization": f"Bearer {token_request.status.token}"}
    reader = client.CoreV1Api(client.ApiClient(configuration))

    def can_list_configmaps() -> bool:
        try:
            reader.list_namespaced_config_map(namespace)
        except ApiException as exc:
            if exc.status == 403:  # the RBAC cache has not seen the binding yet
                return False
            raise
        return True

    wait_for(can_list_configmaps, "the reader ServiceAccount to list configmaps")
    attempts: list[Callable[[], Any]] = [
        lambda: reader.list_namespaced_secret(namespace),
        lambda: reader.create_namespaced_config_map(namespace, {"metadata": {"name": "nope"}}),
        lambda: reader.list_pod_for_all_namespaces(),
    ]
    for attempt in attempts:
        with pytest.raises(ApiException) as denied:
            attempt()
        assert denied.value.status == 403
        assert f"system:serviceaccount:{namespace}:reader" in denied.value.body


def test_deleting_an_owner_garbage_collects_its_dependants(
    api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {
                "name": "dependant",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "owner",
                        "uid": owner.metadata.uid,
                    }
                ],
            }
        },
    )

    core.delete_namespaced_config_map("owner", namespace)

    wait_for(
        _absent(lambda: core.read_namespaced_config_map("dependant", namespace)),
        "the garbage collector to delete ConfigMap dependant",
    )


def test_deployment_pods_run_on_simulated_nodes_and_are_collected_with_it(
    api_client: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(api_client)
    core = client.CoreV1Api(api_client)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {"name": "web", "image": IMAGE, "imagePullPolicy": "IfNotPresent"}
                        ]
                    },
                },
            },
        },
    )

    def available() -> bool:
        status = apps.read_namespaced_deployment("web", namespace).status
        return status is not None and status.available_replicas == 2

    wait_for(available, "Deployment web to have 2 available replicas")
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    assert [pod.status.phase for pod in pods] == ["Running", "Running"]
    # Untolerated, the pods must avoid the GPU taint.
    for pod in pods:
        assert not core.read_node(pod.spec.node_name).spec.taints

    apps.delete_namespaced_deployment("web", namespace, propagation_policy="Background")

    wait_for(
        lambda: (
            not apps.list_namespaced_replica_set(namespace).items
            and not core.list_namespaced_pod(namespace).items
        ),
        "the ReplicaSet and its pods to be garbage collected",
    )


def test_crd_cel_rule_rejects_an_invalid_object_with_the_rule_message(
    api_client: client.ApiClient, namespace: str
) -> None:
    extensions = client.ApiextensionsV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    group = f"t{uuid.uuid4().hex[:8]}.tests.slmpack.io"
    plural = "replicaranges"
    message = "minReplicas must not exceed maxReplicas"
    crd_name = f"{plural}.{group}"
    extensions.create_custom_resource_definition(
        {
            "metadata": {"name": crd_name},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": plural, "singular": "replicarange", "kind": "ReplicaRange"},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {
                                    "spec": {
                                        "type": "object",
                                        "properties": {
                                            "minReplicas": {"type": "integer"},
                                            "maxReplicas": {"type": "integer"},
                                        },
                                        "x-kubernetes-validations": [
                                            {
                                                "rule": "self.minReplicas <= self.maxReplicas",
                                                "message": message,
                                            }
                                        ],
                                    }
                                },
                            }
                        },
                    }
                ],
            },
        }
    )
    try:

        def create(name: str, low: int, high: int) -> Any:
            body = {
                "apiVersion": f"{group}/v1",
                "kind": "ReplicaRange",
                "metadata": {"name": name},
                "spec": {"minReplicas": low, "maxReplicas": high},
            }
            return custom.create_namespaced_custom_object(group, "v1", namespace, plural, body)

        def valid_object_accepted() -> bool:
            try:
                create("valid", 1, 3)
            except ApiException as exc:
                if exc.status == 404:  # the new API is not served yet
                    return False
                raise
            return True

        wait_for(valid_object_accepted, f"the {crd_name} API to accept a valid object")
        with pytest.raises(ApiException) as rejected:
            create("invalid", 5, 2)
        assert rejected.value.status == 422
        assert message in rejected.value.body
    finally:
        extensions.delete_custom_resource_definition(crd_name)


def test_validating_admission_policy_denies_matching_requests(
    api_client: client.ApiClient, namespace: str
) -> None:
    admission = client.AdmissionregistrationV1Api(api_client)
    core = client.CoreV1Api(api_client)
    policy_name = f"team-label-{uuid.uuid4().hex[:8]}"
    message = "ConfigMaps need a team label"
    admission.create_validating_admission_policy(
        {
            "metadata": {"name": policy_name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["configmaps"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": "'team' in object.metadata.?labels.orValue({})",
                        "message": message,
                    }
                ],
            },
        }
    )
    admission.create_validating_admission_policy_binding(
        {
            "metadata": {"name": policy_name},
            "spec": {
                "policyName": policy_name,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                },
            },
        }
    )
    try:

        def unlabelled_denied() -> ApiException | None:
            name = f"unlabelled-{uuid.uuid4().hex[:6]}"
            try:
                core.create_namespaced_config_map(namespace, {"metadata": {"name": name}})
            except ApiException as exc:
                return exc
            return None  # the policy is not active yet

        denied = wait_for(unlabelled_denied, "the admission policy to take effect")
        assert denied.status == 422
        assert message in denied.body
        core.create_namespaced_config_map(
            namespace, {"metadata": {"name": "labelled", "labels": {"team": "inference"}}}
        )
    finally:
        admission.delete_validating_admission_policy_binding(policy_name)
        admission.delete_validating_admission_policy(policy_name)
