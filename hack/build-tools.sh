#!/usr/bin/env bash
# Build the pinned dev-cluster binaries from Go module sources into $SLMPACK_CACHE/bin.
#
#   hack/build-tools.sh                 # every tool
#   hack/build-tools.sh etcd kubectl    # only these
#
# Each binary is cached as <name>-<version>; a cached one is never rebuilt, so changing a pin in
# hack/versions.env is what triggers a rebuild. <name> is a symlink to the current version.
# Binaries are built into a temporary file and renamed, so an interrupted build leaves no
# half-written binary behind. Needs only Go and the Go module proxy (no prebuilt downloads).
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${HACK_DIR}/versions.env"

SLMPACK_CACHE="${SLMPACK_CACHE:-${HOME}/.cache/slmpack}"
BIN_DIR="${SLMPACK_CACHE}/bin"
LOG_DIR="${SLMPACK_CACHE}/logs"
ALL_TOOLS=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm)

die() {
  echo "build-tools: $*" >&2
  exit 1
}

command -v go >/dev/null 2>&1 || die "Go is not installed or not on PATH; install Go 1.26 or newer."

# Kubernetes version stamps, as the upstream build sets them (hack/lib/version.sh), so that
# `kubectl version --client` and `kube-apiserver --version` report the real release.
kube_minor="${KUBERNETES_VERSION#v1.}"
kube_minor="${kube_minor%%.*}"
kube_ldflags=""
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  kube_ldflags+=" -X ${pkg}.gitVersion=${KUBERNETES_VERSION}"
  kube_ldflags+=" -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${kube_minor}"
  kube_ldflags+=" -X ${pkg}.gitTreeState=clean"
done

# tool -> "version|module dir|package|extra ldflags"
spec_of() {
  case "$1" in
    etcd) echo "${ETCD_VERSION}|${HACK_DIR}/tools|go.etcd.io/etcd/server/v3|" ;;
    kube-apiserver | kube-controller-manager | kube-scheduler | kubectl)
      echo "${KUBERNETES_VERSION}|${HACK_DIR}/tools|k8s.io/kubernetes/cmd/$1|${kube_ldflags}"
      ;;
    kwok)
      echo "${KWOK_VERSION}|${HACK_DIR}/tools/kwok|sigs.k8s.io/kwok/cmd/kwok|-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
      ;;
    helm)
      echo "${HELM_VERSION}|${HACK_DIR}/tools/helm|helm.sh/helm/v3/cmd/helm|-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
      ;;
    *) die "unknown tool '$1'; choose from: ${ALL_TOOLS[*]}" ;;
  esac
}

tmp_file=""
cleanup() {
  if [[ -n "${tmp_file}" ]]; then rm -f "${tmp_file}"; fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# Point <name> at <name>-<version>; the rename makes the switch atomic.
link_current() {
  local name="$1" version="$2"
  ln -sfn "${name}-${version}" "${BIN_DIR}/.${name}.link.$$"
  mv -Tf "${BIN_DIR}/.${name}.link.$$" "${BIN_DIR}/${name}"
}

build_one() {
  local index="$1" total="$2" name="$3"
  local version module_dir pkg ldflags
  IFS='|' read -r version module_dir pkg ldflags <<<"$(spec_of "${name}")"
  local target="${BIN_DIR}/${name}-${version}"
  local log="${LOG_DIR}/build-${name}-${version}.log"
  if [[ -x "${target}" ]]; then
    echo ">> [${index}/${total}] ${name} ${version}: cached (${target})"
    link_current "${name}" "${version}"
    return 0
  fi
  echo ">> [${index}/${total}] ${name} ${version}: building ${pkg} (log: ${log})"
  local started=${SECONDS}
  tmp_file="$(mktemp "${BIN_DIR}/.${name}-${version}.XXXXXX")"
  # -trimpath and -buildvcs=false keep the binary independent of this checkout's path and state.
  if ! (cd "${module_dir}" && CGO_ENABLED=0 go build -mod=readonly -trimpath -buildvcs=false \
    -ldflags "-s -w ${ldflags}" -o "${tmp_file}" "${pkg}") >"${log}" 2>&1; then
    echo "!! ${name} ${version}: build failed after $((SECONDS - started)) s; last lines of ${log}:" >&2
    tail -n 40 "${log}" >&2
    exit 1
  fi
  chmod 0755 "${tmp_file}"
  mv -f "${tmp_file}" "${target}"
  tmp_file=""
  link_current "${name}" "${version}"
  echo "   ${name} ${version}: built in $((SECONDS - started)) s ($(du -m "${target}" | cut -f1) MB)"
}

main() {
  local tools=("$@")
  if [[ ${#tools[@]} -eq 0 ]]; then tools=("${ALL_TOOLS[@]}"); fi
  for name in "${tools[@]}"; do spec_of "${name}" >/dev/null; done
  mkdir -p "${BIN_DIR}" "${LOG_DIR}"
  local started=${SECONDS} i=0
  for name in "${tools[@]}"; do
    i=$((i + 1))
    build_one "${i}" "${#tools[@]}" "${name}"
  done
  echo ">> tools ready in ${BIN_DIR} ($((SECONDS - started)) s)"
}

main "$@"
