"""Shared state of the simulated engines on one node: a small file registry per simulated GPU.

Layout under the state directory (one directory per node)::

    gpu-<device id>/
        gpu.json              product, written by the first sim or dcgm-sim to use the GPU
        .lock                 flock(2) target; serialises memory reservations
        engine-<id>.json      one record per running engine, rewritten every ~100 ms

Why files: the engines are separate processes (often started by separate pods or test
fixtures), dcgm-sim must see them all, and nobody should have to start first. A record is
written to a temporary file and renamed over the old one, so readers never see half a record.
Reservations take an exclusive ``flock`` on ``.lock`` while they check the free memory and write
the record, so two engines starting together cannot both take the last free gigabytes.

A record stays valid while its process lives (same host: the pid is checked) or, for records
from another host sharing the directory, while it was updated within `RECORD_EXPIRY_S`. Its
activity fields only count while they are fresher than `ACTIVITY_EXPIRY_S`: a stalled engine
stops slowing its neighbours down but keeps its memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from slmpack.sim.errors import SimStartupError

#: A record from another host that has not been rewritten for this long is ignored.
RECORD_EXPIRY_S = 10.0
#: Activity older than this counts as idle (an engine rewrites its record every ~0.1 s).
ACTIVITY_EXPIRY_S = 2.0


@dataclass(frozen=True)
class Activity:
    """An engine's recent GPU use, in simulated (real-GPU-equivalent) time."""

    duty_ratio: float = 0.0  # share of time it wants the GPU: solo GPU phase / solo cycle
    busy_ratio: float = 0.0  # share of time its kernels ran, stretched by contention
    dram_bytes_per_s: float = 0.0
    flops_per_s: float = 0.0
    running: int = 0
    waiting: int = 0


@dataclass(frozen=True)
class EngineRecord:
    engine_id: str
    pid: int
    host: str
    port: int
    served_model_name: str
    model: str  # catalogue name
    mode: str  # SharingMode value
    reserved_bytes: int
    mig_profile: str | None = None
    mig_instance: int | None = None
    pod: str = ""
    namespace: str = ""
    container: str = ""
    started_unix: float = 0.0
    updated_unix: float = 0.0
    activity: Activity = Activity()

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> EngineRecord:
        data: dict[str, Any] = json.loads(text)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        activity = data.pop("activity", {}) or {}
        act_known = {f.name for f in fields(Activity)}
        act = Activity(**{k: v for k, v in activity.items() if k in act_known})
        return cls(activity=act, **data)

    @property
    def mig_device(self) -> tuple[str, int] | None:
        """The MIG instance the engine runs on, (profile, index), or None on a whole GPU.

        Instances are numbered per profile (the device plugin's `nvidia.com/mig-<profile>`
        units), so a 1g.10gb #0 and a 2g.20gb #0 on one GPU are two devices: the index alone
        does not name one.
        """
        if self.mig_instance is None:
            return None
        return (self.mig_profile or "", self.mig_instance)

    def fresh_activity(self, now_unix: float) -> Activity:
        if now_unix - self.updated_unix > ACTIVITY_EXPIRY_S:
            return Activity()
        return self.activity


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class GpuState:
    """The registry directory of one simulated GPU."""

    def __init__(self, state_dir: Path, device_id: str) -> None:
        self.state_dir = state_dir
        self.device_id = device_id
        self.path = state_dir / f"gpu-{device_id}"
        self.host = socket.gethostname()

    def ensure(self, product: str) -> str:
        """Create the directory; the first user fixes the product. Returns the recorded one."""
        self.path.mkdir(parents=True, exist_ok=True)
        info = self.path / "gpu.json"
        with self._locked():
            if info.exists():
                with contextlib.suppress(OSError, ValueError):
                    recorded = json.loads(info.read_text()).get("product")
                    if isinstance(recorded, str) and recorded:
                        return recorded
            self._write_atomic(info, json.dumps({"product": product}))
        return product

    def reserve(self, admit: Callable[[list[EngineRecord]], EngineRecord]) -> EngineRecord:
        """Publish the record `admit(current records)` returns; it raises to refuse.

        Both run under the GPU lock, so concurrent reservations see each other.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        with self._locked():
            record = admit(self.records())
            self.publish(record)
        return record

    def publish(self, record: EngineRecord) -> None:
        self._write_atomic(self._record_path(record.engine_id), record.to_json())

    def release(self, engine_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._record_path(engine_id).unlink()

    def records(self, exclude: str | None = None) -> list[EngineRecord]:
        """Valid records, oldest first; records of dead local processes are removed."""
        out: list[EngineRecord] = []
        now = time.time()
        try:
            names = sorted(os.listdir(self.path))
        except FileNotFoundError:
            return out
        for name in names:
            if not (name.startswith("engine-") and name.endswith(".json")):
                continue
            path = self.path / name
            try:
                record = EngineRecord.from_json(path.read_text())
            except (OSError, ValueError, TypeError):
                continue  # being replaced or foreign: skip this round
            if record.engine_id == exclude:
                continue
            if record.host == self.host:
                if not _pid_alive(record.pid):
                    with contextlib.suppress(OSError):
                        path.unlink()
                    continue
            elif now - record.updated_unix > RECORD_EXPIRY_S:
                continue
            out.append(record)
        out.sort(key=lambda r: (r.started_unix, r.engine_id))
        return out

    def _record_path(self, engine_id: str) -> Path:
        return self.path / f"engine-{engine_id}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.path / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _write_atomic(path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(text)}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def gpu_states(state_dir: Path) -> dict[str, GpuState]:
    """Every simulated GPU with a directory under `state_dir`, by device id."""
    out: dict[str, GpuState] = {}
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir(state_dir)):
            if name.startswith("gpu-") and (state_dir / name).is_dir():
                out[name[4:]] = GpuState(state_dir, name[4:])
    return out


def with_activity(record: EngineRecord, activity: Activity) -> EngineRecord:
    return replace(record, activity=activity, updated_unix=time.time())


def check_product(recorded: str, wanted: str, device_id: str) -> None:
    if recorded != wanted:
        raise SimStartupError(
            f"simulated GPU {device_id} is a {recorded}, not a {wanted}: another simulator "
            "registered it first; pass the same --sim-gpu or another --sim-device-id"
        )
