#!/usr/bin/env bash
# Fetch the pinned Prometheus binary from Debian's package into
# $SLMPACK_CACHE/prometheus-<PROMETHEUS_VERSION>/ (default cache: ~/.cache/slmpack).
#
#   hack/fetch-prometheus.sh
#
# `apt-get download` fetches the .deb without installing it, and `dpkg-deb -x` unpacks it into
# a temporary folder; only the binaries (and the package's copyright file) are kept. Nothing is
# installed on the system: no service, no user, no /etc/prometheus. A cached version is never
# fetched again, so changing PROMETHEUS_VERSION in hack/versions.env is what fetches another.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${HACK_DIR}/versions.env"

SLMPACK_CACHE="${SLMPACK_CACHE:-${HOME}/.cache/slmpack}"
DEST="${SLMPACK_CACHE}/prometheus-${PROMETHEUS_VERSION}"

die() {
  echo "fetch-prometheus: $*" >&2
  exit 1
}

if [[ -x "${DEST}/prometheus" ]]; then
  echo "fetch-prometheus: ${DEST}/prometheus is cached"
  exit 0
fi

command -v apt-get >/dev/null 2>&1 || die "apt-get is missing: this script needs a Debian 12 (bookworm) machine."
command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb is missing: install the dpkg package."

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
# apt drops to the _apt user to download; let it write the file into our temporary folder.
chmod 755 "${work}"
if id _apt >/dev/null 2>&1; then chown _apt "${work}" 2>/dev/null || true; fi

download() {
  (cd "${work}" && apt-get download -q "prometheus=${PROMETHEUS_VERSION}")
}

echo "fetch-prometheus: downloading Debian package prometheus=${PROMETHEUS_VERSION}"
if ! download; then
  echo "fetch-prometheus: not in apt's package lists; running apt-get update"
  apt-get update -q || die "apt-get update failed (it needs root and a reachable Debian mirror)."
  if ! download; then
    candidate="$(apt-cache policy prometheus 2>/dev/null | awk '/Candidate:/ {print $2}')"
    die "the mirror does not serve prometheus=${PROMETHEUS_VERSION} (its candidate: ${candidate:-none}); set PROMETHEUS_VERSION in hack/versions.env to the candidate."
  fi
fi

deb="$(find "${work}" -maxdepth 1 -name 'prometheus_*.deb' | head -n 1)"
[[ -n "${deb}" ]] || die "apt-get download left no prometheus_*.deb in ${work}."
got="$(dpkg-deb -f "${deb}" Version)"
[[ "${got}" == "${PROMETHEUS_VERSION}" ]] || die "downloaded version ${got}, expected ${PROMETHEUS_VERSION}."

echo "fetch-prometheus: unpacking $(basename "${deb}")"
dpkg-deb -x "${deb}" "${work}/root"
[[ -x "${work}/root/usr/bin/prometheus" ]] || die "the package holds no usr/bin/prometheus."

# Into a temporary folder, then renamed: an interrupted fetch leaves no half-filled cache.
staging="${DEST}.tmp.$$"
rm -rf "${staging}"
mkdir -p "${staging}"
install -m 0755 "${work}/root/usr/bin/prometheus" "${work}/root/usr/bin/promtool" "${staging}/"
install -m 0644 "${work}/root/usr/share/doc/prometheus/copyright" "${staging}/copyright"
"${staging}/prometheus" --version >/dev/null 2>&1 || {
  rm -rf "${staging}"
  die "the unpacked binary does not run on this machine (it needs glibc 2.34 or newer)."
}
rm -rf "${DEST}"
mv "${staging}" "${DEST}"
echo "fetch-prometheus: $("${DEST}/prometheus" --version 2>&1 | head -n 1)"
echo "fetch-prometheus: cached in ${DEST}"
