#!/usr/bin/env bash
# Run the cluster tests against a kind cluster whose workers are dressed as GPU nodes.
# Needs Docker and kind on PATH; `make test` never calls this (it uses the local control plane).
#
#   KIND_NODE_IMAGE=kindest/node:v1.36.3 hack/kind/test-kind.sh   # override the node image
#   KEEP_KIND_CLUSTER=1 hack/kind/test-kind.sh                     # leave the cluster running
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_ROOT="$(cd "${HACK_DIR}/.." && pwd)"
# shellcheck source=../versions.env
source "${HACK_DIR}/versions.env"

CLUSTER_NAME="${KIND_CLUSTER_NAME:-slmpack}"
NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:${KUBERNETES_VERSION}}"
SLMPACK_CACHE="${SLMPACK_CACHE:-${HOME}/.cache/slmpack}"
KUBECONFIG_PATH="${SLMPACK_CACHE}/kind/${CLUSTER_NAME}.kubeconfig"
PYTHON="${REPO_ROOT}/.venv/bin/python"

for tool in docker kind; do
  if ! command -v "${tool}" >/dev/null 2>&1; then
    echo "test-kind: ${tool} is not on PATH; install it, or use \`make test\` (no Docker needed)." >&2
    exit 1
  fi
done

mkdir -p "$(dirname "${KUBECONFIG_PATH}")"
if kind get clusters 2>/dev/null | grep -qx "${CLUSTER_NAME}"; then
  echo ">> reusing kind cluster ${CLUSTER_NAME}"
  kind get kubeconfig --name "${CLUSTER_NAME}" >"${KUBECONFIG_PATH}"
else
  echo ">> creating kind cluster ${CLUSTER_NAME} (${NODE_IMAGE})"
  kind create cluster --name "${CLUSTER_NAME}" --image "${NODE_IMAGE}" \
    --config "${HACK_DIR}/kind/kind-config.yaml" --kubeconfig "${KUBECONFIG_PATH}" --wait 120s
fi
if [[ -z "${KEEP_KIND_CLUSTER:-}" ]]; then
  trap 'kind delete cluster --name "${CLUSTER_NAME}"' EXIT
fi

"${PYTHON}" "${HACK_DIR}/kind/dress_nodes.py" --kubeconfig "${KUBECONFIG_PATH}"
SLMPACK_TEST_KUBECONFIG="${KUBECONFIG_PATH}" "${PYTHON}" -m pytest "${REPO_ROOT}/tests/integration" -m cluster -q
