"""What every benchmark records next to its numbers: the commit and the machine."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def git_sha() -> str:
    """HEAD's SHA, with -dirty when the work tree has changes (such figures are not final)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no commit yet)"
    sha = out.stdout.strip()
    return f"{sha}-dirty" if dirty else sha


def hardware() -> dict[str, Any]:
    model_name = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model_name,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines, for the results' .md files."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
