"""The sampling loop: read NVML, map processes to pods, attribute energy, refresh the metrics
and, when the hardware changed, the node annotation.

Nothing NVML or the API server does stops the loop: a failed NVML call leaves its metric out
and counts the error, NVML being unusable is retried with backoff (and /healthz says why),
and a failed annotation write is retried with backoff on later passes.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from slmpack.nodeagent.attribution import (
    EnergyLedger,
    GpuKey,
    ProcessOnGpu,
    Slot,
    energy_delta_joules,
    window_shares,
)
from slmpack.nodeagent.cgroups import ContainerRef, parse_proc_cgroup
from slmpack.nodeagent.inventory import ANNOTATION_KEY, annotation_value, inventory_from_reading
from slmpack.nodeagent.metrics import ReplicaSample, Snapshot, SnapshotCollector
from slmpack.nodeagent.nvml import GpuBackend, NvmlUnavailableError
from slmpack.nodeagent.pods import PodResolver
from slmpack.nodeagent.readings import CallError, GpuReading, NodeReading

logger = logging.getLogger("slmpack.nodeagent")

Clock = Callable[[], float]
CgroupReader = Callable[[int], "str | None"]
#: A pid's pod and container; by default parsed from its cgroup (`CgroupReader`). The local
#: world, whose processes sit in no kubepods cgroup, passes the runner's marker lookup.
ContainerLocator = Callable[[int], "ContainerRef | None"]


@dataclass(frozen=True)
class AgentConfig:
    node_name: str
    #: Seconds between passes. Energy is split per pass, so shorter is finer but costs CPU.
    interval_seconds: float = 10.0
    #: Seconds an attributed-energy series lives on without new energy (its pod is gone).
    retention_seconds: float = 900.0
    #: Longest wait between retries of NVML initialisation or of an annotation write.
    max_backoff_seconds: float = 300.0


class Backoff:
    """Doubling delays from ``base`` up to ``maximum``; `reset` after a success."""

    def __init__(self, base: float, maximum: float) -> None:
        self.base = base
        self.maximum = maximum
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        return float(min(self.maximum, self.base * 2 ** (self.failures - 1)))

    def reset(self) -> None:
        self.failures = 0


class AnnotationWriter(Protocol):
    def apply_annotation(self, key: str, value: str) -> None:
        """Set one annotation on this node (server-side apply, field manager
        slmpack-node-agent)."""
        ...


class AnnotationPublisher:
    """Writes the inventory annotation when its value differs from the last one written,
    never more often than the backoff allows after a failure."""

    def __init__(self, writer: AnnotationWriter, clock: Clock, backoff: Backoff) -> None:
        self._writer = writer
        self._clock = clock
        self._backoff = backoff
        self._written: str | None = None
        self._next_try = 0.0
        self.writes = 0
        self.failures = 0

    def publish(self, value: str) -> bool:
        """True when this call wrote the annotation."""
        now = self._clock()
        if value == self._written or now < self._next_try:
            return False
        try:
            self._writer.apply_annotation(ANNOTATION_KEY, value)
        except Exception as err:  # API errors of every kind: retried later, never fatal
            self.failures += 1
            delay = self._backoff.next_delay()
            self._next_try = now + delay
            logger.warning(
                "Could not write the %s annotation (retry in %.0fs): %s", ANNOTATION_KEY, delay, err
            )
            return False
        self._written = value
        self._backoff.reset()
        self.writes += 1
        logger.info("Applied the %s annotation", ANNOTATION_KEY)
        return True


class Health:
    """What /healthz answers: healthy while passes keep coming and NVML answers."""

    def __init__(self, clock: Clock, stale_after_seconds: float) -> None:
        self._clock = clock
        self._stale_after = stale_after_seconds
        self._lock = threading.Lock()
        self._last_pass: float | None = None
        self._problem: str | None = "no sampling pass yet"

    def passed(self) -> None:
        with self._lock:
            self._last_pass = self._clock()
            self._problem = None

    def failed(self, problem: str) -> None:
        with self._lock:
            self._last_pass = self._clock()  # the loop runs; NVML is what is wrong
            self._problem = problem

    def status(self) -> tuple[bool, str]:
        with self._lock:
            if self._problem:
                return False, self._problem
            assert self._last_pass is not None
            age = self._clock() - self._last_pass
        if age > self._stale_after:
            return False, f"no sampling pass for {age:.0f}s"
        return True, "ok"


class NodeAgent:
    """One node's agent; `run_once` is a whole pass, `run` repeats it until stopped."""

    def __init__(
        self,
        config: AgentConfig,
        backend: GpuBackend,
        cgroups: CgroupReader,
        collector: SnapshotCollector,
        health: Health,
        clock: Clock,
        wall_clock: Clock,
        pods: PodResolver | None = None,
        publisher: AnnotationPublisher | None = None,
        locate: ContainerLocator | None = None,
    ) -> None:
        self.config = config
        self._backend = backend
        self._cgroups = cgroups
        self._locate = locate or self._from_cgroup
        self._collector = collector
        self._health = health
        self._clock = clock
        self._wall_clock = wall_clock
        self._pods = pods
        self._publisher = publisher
        self._ledger = EnergyLedger(config.retention_seconds)
        self._previous_energy_mj: dict[str, int] = {}
        self._nvml_errors: Counter[tuple[str, str]] = Counter()
        self._seen_errors: set[CallError] = set()
        self._nvml_backoff = Backoff(config.interval_seconds, config.max_backoff_seconds)
        self._nvml_up = False
        self._last_pass_wall: float | None = None

    # --- one pass ------------------------------------------------------------------------------

    def run_once(self) -> float:
        """One pass; returns the seconds to wait before the next."""
        try:
            reading = self._backend.read()
        except NvmlUnavailableError as err:
            return self._nvml_unavailable(err)
        if not self._nvml_up:
            logger.info("NVML answered: %d GPU(s)", len(reading.gpus))
        self._nvml_up = True
        self._nvml_backoff.reset()
        self._count_errors(reading.errors)
        now = self._clock()
        replicas = [r for gpu in reading.gpus for r in self._account_gpu(gpu, now)]
        self._ledger.prune(now)
        if self._publisher is not None:
            self._publisher.publish(annotation_value(inventory_from_reading(reading)))
        self._last_pass_wall = self._wall_clock()
        self._collector.update(self._snapshot(reading, tuple(replicas)))
        self._health.passed()
        return self.config.interval_seconds

    def _nvml_unavailable(self, err: NvmlUnavailableError) -> float:
        self._nvml_errors[(err.call, err.error)] += 1
        delay = self._nvml_backoff.next_delay()
        if self._nvml_up or self._nvml_backoff.failures == 1:
            logger.error("%s; retrying in %.0fs", err, delay)
        self._nvml_up = False
        self._previous_energy_mj.clear()  # the counter may restart with the driver
        self._health.failed(str(err))
        self._collector.update(self._snapshot(None, ()))
        return delay

    def _count_errors(self, errors: tuple[CallError, ...]) -> None:
        for error in errors:
            self._nvml_errors[(error.call, error.error)] += 1
            if error not in self._seen_errors:
                self._seen_errors.add(error)  # log each kind once; the counter keeps counting
                logger.warning(
                    "NVML %s failed on GPU %s with %s; its metric is left out",
                    error.call,
                    error.gpu or "-",
                    error.error,
                )

    def _from_cgroup(self, pid: int) -> ContainerRef | None:
        text = self._cgroups(pid)
        return parse_proc_cgroup(text) if text is not None else None

    def _slot(self, pid: int, gpu_instance_id: int | None) -> Slot | None:
        ref = self._locate(pid)
        if ref is None or self._pods is None:
            return None
        workload = self._pods.resolve(ref)
        if workload is None:
            return None
        instance = "" if gpu_instance_id is None else str(gpu_instance_id)
        return Slot(workload=workload, gpu_instance=instance)

    def _account_gpu(self, gpu: GpuReading, now: float) -> list[ReplicaSample]:
        key = GpuKey(index=str(gpu.index), uuid=gpu.uuid)
        processes = [
            ProcessOnGpu(p.pid, self._slot(p.pid, p.gpu_instance_id), p.used_memory_bytes)
            for p in gpu.processes
        ]
        shares = window_shares(processes, gpu.utilization_samples)
        delta = energy_delta_joules(self._previous_energy_mj.get(gpu.uuid), gpu.energy_mj)
        if delta is not None:
            self._ledger.add(key, delta, shares, now)
        if gpu.energy_mj is not None:
            self._previous_energy_mj[gpu.uuid] = gpu.energy_mj

        memory: dict[Slot, int | None] = {}
        for proc in processes:
            if proc.slot is None:
                continue
            held = memory.get(proc.slot)
            if proc.used_memory_bytes is not None:
                held = (held or 0) + proc.used_memory_bytes
            memory[proc.slot] = held
        with_samples = gpu.utilization_samples is not None
        return [
            ReplicaSample(
                gpu=key,
                slot=slot,
                memory_bytes=held,
                sm_utilization_ratio=shares.sm_utilization.get(slot, 0.0) if with_samples else None,
            )
            for slot, held in sorted(memory.items())
        ]

    def _snapshot(
        self, reading: NodeReading | None, replicas: tuple[ReplicaSample, ...]
    ) -> Snapshot:
        api_errors: dict[str, int] = {}
        if self._pods is not None and self._pods.failures:
            api_errors["list_pods"] = self._pods.failures
        if self._publisher is not None and self._publisher.failures:
            api_errors["apply_annotation"] = self._publisher.failures
        return Snapshot(
            reading=reading,
            replicas=replicas,
            replica_energy=tuple(self._ledger.replicas()),
            unattributed_energy=tuple(self._ledger.unattributed()),
            nvml_errors=dict(self._nvml_errors),
            api_errors=api_errors,
            annotation_writes=self._publisher.writes if self._publisher is not None else 0,
            nvml_up=self._nvml_up,
            last_pass_timestamp_seconds=self._last_pass_wall,
        )

    # --- the loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Passes until ``stop`` is set. A bug in one pass is logged, not fatal: /healthz
        goes stale if every pass fails, and the kubelet restarts the pod."""
        while not stop.is_set():
            started = self._clock()
            try:
                delay = self.run_once()
            except Exception:
                logger.exception("Sampling pass failed")
                delay = self.config.interval_seconds
            stop.wait(max(0.0, delay - (self._clock() - started)))
