"""Where the pinned control-plane binaries live, and how to build the missing ones.

Versions come from `hack/versions.env`, the single list of pins shared with
`hack/build-tools.sh`; a binary is cached as `$SLMPACK_CACHE/bin/<name>-<version>`.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from slmpack.devcluster.errors import DevClusterError

#: Tool name -> the key of its version in hack/versions.env.
VERSION_KEYS: dict[str, str] = {
    "etcd": "ETCD_VERSION",
    "kube-apiserver": "KUBERNETES_VERSION",
    "kube-controller-manager": "KUBERNETES_VERSION",
    "kube-scheduler": "KUBERNETES_VERSION",
    "kubectl": "KUBERNETES_VERSION",
    "kwok": "KWOK_VERSION",
    "helm": "HELM_VERSION",
}

#: The binaries a running dev cluster needs (kubectl and helm are for people and tests).
CONTROL_PLANE_TOOLS: tuple[str, ...] = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
)


def cache_dir() -> Path:
    """`$SLMPACK_CACHE`, by default `~/.cache/slmpack` (the Makefile uses the same default)."""
    configured = os.environ.get("SLMPACK_CACHE", "")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "slmpack"


def repo_root() -> Path:
    """The checkout holding `hack/versions.env`.

    The dev cluster is a tool of the source tree, so it looks next to this package (editable
    install) and then upwards from the working directory. `SLMPACK_REPO_ROOT` overrides both.
    """
    configured = os.environ.get("SLMPACK_REPO_ROOT", "")
    candidates = [Path(configured)] if configured else []
    candidates += [Path(__file__).resolve().parents[3]]
    cwd = Path.cwd().resolve()
    candidates += [cwd, *cwd.parents]
    for candidate in candidates:
        if (candidate / "hack" / "versions.env").is_file():
            return candidate
    raise DevClusterError(
        "Cannot find hack/versions.env: run this from a slmpack checkout "
        "or set SLMPACK_REPO_ROOT to the checkout's path."
    )


def parse_versions_env(text: str) -> dict[str, str]:
    """Parse the KEY=VALUE lines of versions.env (comments and blank lines skipped)."""
    versions: dict[str, str] = {}
    for line_number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            raise DevClusterError(
                f"versions.env line {line_number} is not KEY=VALUE: {raw_line!r}; fix that line."
            )
        versions[key.strip()] = value.strip().strip("'\"")
    return versions


def load_versions(root: Path | None = None) -> dict[str, str]:
    """The pins of hack/versions.env."""
    path = (root or repo_root()) / "hack" / "versions.env"
    return parse_versions_env(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Tool:
    """One pinned binary and where its cached build lives."""

    name: str
    version: str
    path: Path

    @property
    def is_built(self) -> bool:
        return self.path.is_file() and os.access(self.path, os.X_OK)


def resolve_tools(names: tuple[str, ...] = CONTROL_PLANE_TOOLS) -> dict[str, Tool]:
    """Map each tool name to its versioned binary path (built or not)."""
    versions = load_versions()
    bin_dir = cache_dir() / "bin"
    tools: dict[str, Tool] = {}
    for name in names:
        key = VERSION_KEYS[name]
        if key not in versions:
            raise DevClusterError(f"hack/versions.env has no {key}; add the pin for {name}.")
        version = versions[key]
        tools[name] = Tool(name=name, version=version, path=bin_dir / f"{name}-{version}")
    return tools


def missing_tools(tools: dict[str, Tool]) -> list[Tool]:
    return [tool for tool in tools.values() if not tool.is_built]


def require_built(tools: dict[str, Tool]) -> None:
    """Raise with the fix (`make tools`) when a binary has not been built yet."""
    missing = missing_tools(tools)
    if missing:
        listed = ", ".join(f"{tool.name} {tool.version}" for tool in missing)
        raise DevClusterError(
            f"Not built yet: {listed}. Run `make tools` (builds from source, several minutes "
            "the first time) or pass --build."
        )


def build_missing(tools: dict[str, Tool]) -> None:
    """Run hack/build-tools.sh for the missing binaries; its progress goes to our stdout."""
    missing = missing_tools(tools)
    if not missing:
        return
    script = repo_root() / "hack" / "build-tools.sh"
    env = {**os.environ, "SLMPACK_CACHE": str(cache_dir())}
    result = subprocess.run(
        ["bash", str(script), *(tool.name for tool in missing)], env=env, check=False
    )
    if result.returncode != 0:
        raise DevClusterError(
            f"{script} failed (exit {result.returncode}); its output above names the log file."
        )
