"""A local Kubernetes control plane with simulated (kwok) GPU nodes, for development and tests.

Everything runs as plain processes built from source by `hack/build-tools.sh`: etcd,
kube-apiserver, kube-controller-manager, kube-scheduler and the kwok controller. The node
builders in `gpu_nodes` are pure; `node_apply` sends their output to a cluster.
"""
