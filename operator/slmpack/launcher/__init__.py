"""The process inside a `Packed` pod: several vLLM engines on one GPU behind one port.

`config` (what to run), `supervisor` (child processes), `router` (the front port), the pure
`routing` choice and `metrics_merge`, and `app` wiring them together.
"""

from slmpack.launcher.app import Launcher, launcher_main

__all__ = ["Launcher", "launcher_main"]
