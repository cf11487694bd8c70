"""The running side of a simulated engine: one asyncio task steps the scheduler in simulated time.

Each step: form the batch, price it (`StepCostModel`, stretched by the current neighbours),
sleep until the step's end in wall time (simulated time / speedup), then apply it and wake the
streams that got a token. One task serves every request of the engine, so a thousand streams
cost a thousand wake-ups per step, not a thousand timers.

If the host cannot keep up (too many engines or streams for its CPUs), steps run back to back
and simulated time falls behind the wall clock; past `MAX_LAG_WALL_S` the engine skips ahead to
the wall clock and counts the skipped time in `lag_skipped_s`, so the sim is then slower than
the GPU it stands for, never faster. The activity it publishes leaves skipped time out, so
neighbours and dcgm-sim still see the GPU as busy as the steps make it.

`EngineRunner.totals()` reports what the engine did in simulated time: the step durations it
charged, the tokens they produced and the co-location stretch it applied. Rates over charged
time depend only on the model, the batches and the neighbours, not on how fast the host runs,
so fidelity checks measure with them rather than with the wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from slmpack.planner.perf import EngineStep
from slmpack.sim.engine_metrics import EngineMetrics
from slmpack.sim.registry import Activity
from slmpack.sim.scheduler import Scheduler, SimRequest
from slmpack.sim.timing import StepCostModel

logger = logging.getLogger(__name__)

#: Wall-clock lag behind which the engine stops catching up and jumps to the present.
MAX_LAG_WALL_S = 1.0
#: The contention factor is recomputed when the batch size moves by more than this share.
SLOWDOWN_REFRESH_RATIO = 0.1
#: Activity is averaged over this many publish windows (about half a second at 0.1 s each).
ACTIVITY_WINDOWS = 5


class SimClock:
    """Simulated seconds since start: wall (event-loop) time multiplied by `speedup`."""

    def __init__(self, speedup: float = 1.0, wall: Callable[[], float] = time.monotonic) -> None:
        if speedup <= 0:
            raise ValueError("speedup must be positive")
        self.speedup = speedup
        self._wall = wall
        self._origin = wall()

    def now(self) -> float:
        return (self._wall() - self._origin) * self.speedup

    def wall_delay(self, sim_s: float) -> float:
        """Wall seconds from now until simulated time `sim_s` (negative when it has passed)."""
        return sim_s / self.speedup - (self._wall() - self._origin)


@dataclass
class _Window:
    start_s: float
    solo_gpu_s: float = 0.0
    solo_cycle_s: float = 0.0
    active_s: float = 0.0
    gpu_phase_s: float = 0.0
    bytes_moved: float = 0.0
    flops: float = 0.0
    skipped_s: float = 0.0


class ActivityMeter:
    """Rolling sums of what the engine did on the GPU, for its neighbours and for dcgm-sim."""

    def __init__(self, start_s: float, windows: int = ACTIVITY_WINDOWS) -> None:
        self._closed: deque[_Window] = deque(maxlen=windows)
        self._open = _Window(start_s)

    def add_step(
        self, solo_gpu_s: float, solo_cycle_s: float, gpu_phase_s: float, cycle_s: float,
        bytes_moved: float, flops: float,
    ) -> None:  # fmt: skip
        w = self._open
        w.solo_gpu_s += solo_gpu_s
        w.solo_cycle_s += solo_cycle_s
        w.gpu_phase_s += gpu_phase_s
        w.active_s += cycle_s
        w.bytes_moved += bytes_moved
        w.flops += flops

    def add_skip(self, skipped_s: float) -> None:
        """Time the engine jumped over because the host fell behind.

        It is left out of the averages: the engine had work all along, so the GPU it stands for
        was as busy as in the steps around it. Counting the gap as idle would let a slow host
        shrink the engine's duty, and with it the slowdown its neighbours see and the power
        dcgm-sim reports.
        """
        self._open.skipped_s += skipped_s

    def roll(self, now_s: float, running: int = 0, waiting: int = 0) -> Activity:
        """Close the current window at `now_s` and return the average over the recent ones."""
        self._closed.append(self._open)
        self._open = _Window(now_s)
        elapsed = now_s - self._closed[0].start_s - sum(w.skipped_s for w in self._closed)
        if elapsed <= 0:
            return Activity(running=running, waiting=waiting)
        solo_gpu = sum(w.solo_gpu_s for w in self._closed)
        solo_cycle = sum(w.solo_cycle_s for w in self._closed)
        active = min(1.0, sum(w.active_s for w in self._closed) / elapsed)
        duty = solo_gpu / solo_cycle * active if solo_cycle > 0 else 0.0
        return Activity(
            duty_ratio=duty,
            busy_ratio=min(1.0, sum(w.gpu_phase_s for w in self._closed) / elapsed),
            dram_bytes_per_s=sum(w.bytes_moved for w in self._closed) / elapsed,
            flops_per_s=sum(w.flops for w in self._closed) / elapsed,
            running=running,
            waiting=waiting,
        )


@dataclass(frozen=True)
class EngineTotals:
    """What one engine did since it started. Times are simulated seconds.

    Tokens over `busy_s` is the engine's output rate while it runs, which is what the planner
    predicts for a full batch; `busy_s / solo_busy_s` is the mean stretch its neighbours caused.
    """

    clock_s: float  # end of the last step, or the clock's reading when the engine woke up
    busy_s: float  # step durations charged, co-location stretch included
    solo_busy_s: float  # the same steps priced alone on the device
    steps: int
    scheduled_seqs: int  # summed over steps: scheduled_seqs / steps is the mean batch
    generated_tokens: int
    lag_skipped_s: float  # jumped over because the host fell behind (no step ran in it)
    slowdown: float  # GPU-phase stretch applied to the last step (1 = no neighbour in the way)


class EngineRunner:
    """Steps one engine's scheduler in simulated time and wakes the streams it serves."""

    def __init__(
        self,
        scheduler: Scheduler,
        cost: StepCostModel,
        clock: SimClock,
        metrics: EngineMetrics | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.cost = cost
        self.clock = clock
        self.metrics = metrics
        self.time_s = clock.now()  # end of the last step, simulated
        self.meter = ActivityMeter(self.time_s)
        self.lag_skipped_s = 0.0
        self.busy_s = 0.0
        self.solo_busy_s = 0.0
        self.steps = 0
        self.scheduled_seqs = 0
        self.generated_tokens = 0
        self.last_slowdown = 1.0
        self._wake = asyncio.Event()
        self._neighbour_duties: tuple[float, ...] = ()
        self._slowdown = 1.0
        self._slowdown_seqs = -1
        self._slowdown_valid = False
        self._task: asyncio.Task[None] | None = None
        if metrics is not None:
            metrics.bind_scheduler_state(
                lambda: len(scheduler.running),
                lambda: len(scheduler.waiting),
                lambda: scheduler.kv_usage_ratio,
            )

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for request in [*self.scheduler.running, *self.scheduler.waiting]:
            self.abort(request)

    # --- requests --------------------------------------------------------------------------

    def submit(self, request: SimRequest) -> None:
        self.scheduler.add(request)
        if self.metrics is not None:
            self.metrics.record_arrival(request)
        self._wake.set()

    def abort(self, request: SimRequest) -> None:
        if request.finished or request.aborted:
            return
        self.scheduler.abort(request)
        if self.metrics is not None:
            self.metrics.record_finished(request, "abort")
        self._notify(request)

    async def wait_progress(self, request: SimRequest, seen_tokens: int) -> None:
        """Return once `request` has more than `seen_tokens` tokens, finished or was aborted."""
        while request.generated <= seen_tokens and not request.finished and not request.aborted:
            waiter = request.waiter
            if waiter is None or waiter.done():
                waiter = asyncio.get_running_loop().create_future()
                request.waiter = waiter
            await waiter

    # --- co-location -----------------------------------------------------------------------

    def set_neighbour_duties(self, duties: tuple[float, ...]) -> None:
        if duties != self._neighbour_duties:
            self._neighbour_duties = duties
            self._slowdown_valid = False

    def totals(self) -> EngineTotals:
        return EngineTotals(
            clock_s=self.time_s,
            busy_s=self.busy_s,
            solo_busy_s=self.solo_busy_s,
            steps=self.steps,
            scheduled_seqs=self.scheduled_seqs,
            generated_tokens=self.generated_tokens,
            lag_skipped_s=self.lag_skipped_s,
            slowdown=self.last_slowdown,
        )

    def activity(self) -> Activity:
        now = self.time_s if not self.scheduler.idle else max(self.time_s, self.clock.now())
        return self.meter.roll(now, len(self.scheduler.running), len(self.scheduler.waiting))

    # --- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        scheduler, cost = self.scheduler, self.cost
        # Requests submitted before the loop first ran must not be served in the past.
        self.time_s = max(self.time_s, self.clock.now())
        while True:
            if scheduler.idle:
                self._wake.clear()
                await self._wake.wait()
                self.time_s = max(self.time_s, self.clock.now())
                continue
            behind = -self.clock.wall_delay(self.time_s)
            if behind > MAX_LAG_WALL_S:
                skipped = behind * self.clock.speedup
                self.lag_skipped_s += skipped
                self.time_s += skipped
                self.meter.add_skip(skipped)
                if self.lag_skipped_s == skipped:  # first time only: the counter tells the rest
                    logger.warning(
                        "Simulated engine fell %.1f s behind the wall clock; the host is too "
                        "slow for this load at speedup %g",
                        behind,
                        self.clock.speedup,
                    )
            start = self.time_s
            batch = scheduler.schedule(start)
            if not batch.work:
                # Only possible if every running request was preempted at once: retry next tick.
                await asyncio.sleep(0)
                continue
            step = cost.step(
                batch.scheduled_seqs,
                batch.decode_seqs,
                batch.decode_context_tokens,
                batch.prefill_chunks,
            )
            slowdown = self._slowdown_for(step, batch.scheduled_seqs)
            solo_cycle = cost.cycle_s(step)
            cycle = solo_cycle if slowdown == 1.0 else cost.cycle_s(step, slowdown)
            end = start + cycle
            delay = self.clock.wall_delay(end)
            await asyncio.sleep(delay if delay > 0 else 0)
            self.time_s = end
            outcome = scheduler.complete(batch, end)
            self.busy_s += cycle
            self.solo_busy_s += solo_cycle
            self.steps += 1
            self.scheduled_seqs += batch.scheduled_seqs
            self.generated_tokens += outcome.generated_tokens
            self.last_slowdown = slowdown
            self.meter.add_step(
                step.gpu_s, solo_cycle, step.gpu_s * slowdown, cycle, step.bytes_moved, step.flops
            )
            if self.metrics is not None:
                self.metrics.record_step(batch, outcome, start)
            for request in outcome.produced:
                waiter = request.waiter
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

    def _slowdown_for(self, step: EngineStep, seqs: int) -> float:
        if not self._neighbour_duties:
            return 1.0
        moved = abs(seqs - self._slowdown_seqs) > SLOWDOWN_REFRESH_RATIO * max(1, seqs)
        if not self._slowdown_valid or moved:
            self._slowdown = self.cost.slowdown(step, self._neighbour_duties)
            self._slowdown_seqs = seqs
            self._slowdown_valid = True
        return self._slowdown

    @staticmethod
    def _notify(request: SimRequest) -> None:
        waiter = request.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
