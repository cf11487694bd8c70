"""Start, find and stop the control-plane processes by pid, without touching anything else.

A pid file alone is not proof: after a reboot or a long time the pid may belong to another
program. A pid counts as ours only while `/proc/<pid>/cmdline` still starts with the binary
we launched and names this cluster's state directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: How often the stop loop checks whether a process has exited.
POLL_INTERVAL_SECONDS = 0.05
#: Longest wait for a new process's command line to appear in /proc.
EXEC_SETTLE_SECONDS = 2.0


@dataclass(frozen=True)
class ProcessRef:
    """A started component: its pid and what its command line must look like."""

    component: str
    pid: int
    binary: Path
    state_dir: Path


def _read_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    # The state letter follows the parenthesised command name, which may contain spaces.
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def reap(pid: int) -> None:
    """Collect the exit status if the process is our own child (else it stays a zombie)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def is_ours(ref: ProcessRef) -> bool:
    """True while `ref.pid` is alive and is still the process we started."""
    reap(ref.pid)
    cmdline = _read_cmdline(ref.pid)
    if not cmdline or _is_zombie(ref.pid):
        return False
    return cmdline[0] == str(ref.binary) and any(str(ref.state_dir) in arg for arg in cmdline)


def pid_owner_description(pid: int) -> str:
    """What runs under `pid` now, for messages about stale pid files."""
    cmdline = _read_cmdline(pid)
    if not cmdline or _is_zombie(pid):
        return "no process"
    return " ".join(cmdline)[:120]


def rss_bytes(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process in bytes, from /proc/<pid>/status; (0, 0) if gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0, 0
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024  # reported in kB
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def spawn(
    component: str,
    argv: Sequence[str],
    log_path: Path,
    state_dir: Path,
    env: dict[str, str] | None = None,
) -> ProcessRef:
    """Start a component in its own session, so it outlives the CLI that launched it and a
    Ctrl-C in that terminal does not reach it; output goes to its log file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=state_dir,
        )
    ref = ProcessRef(component, process.pid, Path(argv[0]), state_dir)
    # Popen returns as soon as exec has begun, a moment before the kernel shows the new
    # command line in /proc; wait for it so `is_ours` is reliable from here on.
    deadline = time.monotonic() + EXEC_SETTLE_SECONDS
    while not is_ours(ref) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    return ref


def stop(refs: Sequence[ProcessRef], grace_seconds: float) -> dict[str, str]:
    """SIGTERM every process that is still ours, wait up to `grace_seconds`, then SIGKILL.

    Returns component -> what happened, for the caller to report.
    """
    outcome: dict[str, str] = {}
    pending: list[ProcessRef] = []
    for ref in refs:
        if not is_ours(ref):
            outcome[ref.component] = "not running"
            continue
        try:
            os.kill(ref.pid, signal.SIGTERM)
            pending.append(ref)
        except ProcessLookupError:
            outcome[ref.component] = "not running"
    deadline = time.monotonic() + grace_seconds
    while pending and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL_SECONDS)
        still = [ref for ref in pending if is_ours(ref)]
        for ref in pending:
            if ref not in still:
                outcome[ref.component] = "stopped"
        pending = still
    for ref in pending:
        try:
            os.kill(ref.pid, signal.SIGKILL)
            outcome[ref.component] = f"killed after {grace_seconds:g} s"
        except ProcessLookupError:
            outcome[ref.component] = "stopped"
    for ref in pending:
        _wait_gone(ref, timeout_seconds=5.0)
    return outcome


def _wait_gone(ref: ProcessRef, timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while is_ours(ref) and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL_SECONDS)
