"""Continuous-batching scheduler of a simulated vLLM engine: pure, no clock, no I/O.

It follows vLLM V1's scheduler (``vllm/v1/core/sched/scheduler.py``) in the parts that shape
throughput and latency:

- One token budget per step (``max_num_batched_tokens``) shared by every scheduled request.
  Running requests go first, in admission order: a decoding request takes one token, a request
  still in its prompt takes the rest of the prompt up to the remaining budget (chunked prefill).
- Waiting requests are admitted in arrival order while the budget lasts, fewer than
  ``max_num_seqs`` requests run, and the KV cache has blocks for their first chunk.
- The KV cache is a pool of fixed-size blocks (16 tokens). A request holds
  ceil(tokens with KV / 16) blocks. When a running request needs a block and none is free, the
  most recently admitted running request is preempted: its blocks are freed and it goes back to
  the front of the queue to recompute its prompt and the tokens it already generated. No request
  is admitted in a step that preempted.
- A step that completes a request's known tokens samples one new token for it; a request
  finishes after exactly its target number of output tokens (``ignore_eos``), and the last
  token's KV is never computed.

Prefix caching, speculative decoding, priorities and LoRA are not modelled.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

#: vLLM's KV block size in tokens (its default for CUDA attention backends).
BLOCK_TOKENS = 16


def blocks_for(tokens: int) -> int:
    return -(-tokens // BLOCK_TOKENS)


@dataclass(eq=False)
class SimRequest:
    """One request's progress. Times are simulated seconds; None until the event happens."""

    request_id: str
    prompt_tokens: int
    output_tokens: int  # exactly this many are generated
    arrival_s: float
    max_tokens_param: int | None = None  # as the client sent it, for metrics
    generated: int = 0
    computed: int = 0  # tokens whose KV is in the cache
    blocks: int = 0
    preemptions: int = 0
    scheduled_s: float | None = None  # first admitted
    first_token_s: float | None = None
    last_token_s: float = 0.0
    finished_s: float | None = None
    aborted: bool = False
    # The server's wake-up slot for a waiting stream; the scheduler never reads it.
    waiter: Any = field(default=None, repr=False)

    @property
    def known_tokens(self) -> int:
        """Prompt plus tokens generated so far: what a recompute must process."""
        return self.prompt_tokens + self.generated

    @property
    def finished(self) -> bool:
        return self.finished_s is not None


@dataclass
class Batch:
    """What one step computes."""

    work: list[tuple[SimRequest, int]]  # (request, new tokens), in schedule order
    decode_seqs: int
    decode_context_tokens: int
    prefill_chunks: list[tuple[int, int]]  # (first position, tokens)
    preempted: list[SimRequest]

    @property
    def scheduled_seqs(self) -> int:
        return len(self.work)

    @property
    def prefill_tokens(self) -> int:
        return sum(n for _, n in self.prefill_chunks)


@dataclass
class StepOutcome:
    produced: list[SimRequest]  # got one token this step
    finished: list[SimRequest]
    first_tokens: list[SimRequest]  # produced their first token this step
    generated_tokens: int
    prompt_tokens: int  # prompts of requests that produced their first token
    inter_token_s: list[float]  # gap since the previous token, for every later token


class Scheduler:
    """Waiting queue, running batch and KV block pool of one engine."""

    def __init__(self, max_num_seqs: int, max_num_batched_tokens: int, num_blocks: int) -> None:
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be at least 1")
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.num_blocks = num_blocks
        self.free_blocks = num_blocks
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.preemptions_total = 0

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    @property
    def kv_usage_ratio(self) -> float:
        return 1.0 - self.free_blocks / self.num_blocks

    def add(self, request: SimRequest) -> None:
        if blocks_for(request.prompt_tokens + request.output_tokens - 1) > self.num_blocks:
            raise ValueError(
                f"request {request.request_id} needs more KV blocks than the cache holds"
            )
        self.waiting.append(request)

    def abort(self, request: SimRequest) -> None:
        """Drop a request the client gave up on (a no-op once it finished)."""
        if request.finished:
            return
        request.aborted = True
        if request in self.running:
            self.running.remove(request)
            self._free(request)
        else:
            with contextlib.suppress(ValueError):
                self.waiting.remove(request)

    def schedule(self, start_s: float) -> Batch:
        """Form the next step's batch; `start_s` (simulated seconds) stamps first admissions."""
        budget = self.max_num_batched_tokens
        work: list[tuple[SimRequest, int]] = []
        preempted: list[SimRequest] = []
        running = self.running
        index = 0
        while index < len(running) and budget > 0:
            request = running[index]
            new = min(request.known_tokens - request.computed, budget)
            if not self._grow(request, new, preempted):
                break  # it preempted itself: nothing after it is left to schedule
            work.append((request, new))
            budget -= new
            index += 1
        if not preempted:
            waiting = self.waiting
            while waiting and budget > 0 and len(running) < self.max_num_seqs:
                request = waiting[0]
                new = min(request.known_tokens, budget)
                need = blocks_for(new)
                if need > self.free_blocks:
                    break
                waiting.popleft()
                request.computed = 0
                request.blocks = need
                if request.scheduled_s is None:
                    request.scheduled_s = start_s
                self.free_blocks -= need
                running.append(request)
                work.append((request, new))
                budget -= new
        decode_seqs = 0
        decode_context = 0
        chunks: list[tuple[int, int]] = []
        for request, new in work:
            if new == 1 and request.computed > 0:
                decode_seqs += 1
                decode_context += request.computed + 1
            else:
                chunks.append((request.computed, new))
        return Batch(work, decode_seqs, decode_context, chunks, preempted)

    def complete(self, batch: Batch, end_s: float) -> StepOutcome:
        """Apply a scheduled step that ended at `end_s` (simulated seconds)."""
        produced: list[SimRequest] = []
        finished: list[SimRequest] = []
        first: list[SimRequest] = []
        gaps: list[float] = []
        prompt_tokens = 0
        for request, new in batch.work:
            if request.aborted:
                continue
            request.computed += new
            if request.computed < request.known_tokens:
                continue  # a prompt chunk that does not reach the end samples nothing
            request.generated += 1
            produced.append(request)
            if request.first_token_s is None:
                request.first_token_s = end_s
                first.append(request)
                prompt_tokens += request.prompt_tokens
            else:
                gaps.append(end_s - request.last_token_s)
            request.last_token_s = end_s
            if request.generated >= request.output_tokens:
                request.finished_s = end_s
                finished.append(request)
        if finished:
            for request in finished:
                self._free(request)
            self.running = [r for r in self.running if r.finished_s is None]
        return StepOutcome(produced, finished, first, len(produced), prompt_tokens, gaps)

    def _grow(self, request: SimRequest, new: int, preempted: list[SimRequest]) -> bool:
        """Give `request` blocks for `new` more tokens, preempting from the back if needed.

        False when the request itself had to be preempted.
        """
        need = blocks_for(request.computed + new) - request.blocks
        while need > self.free_blocks:
            victim = self.running.pop()
            self._preempt(victim)
            preempted.append(victim)
            if victim is request:
                return False
        request.blocks += need
        self.free_blocks -= need
        return True

    def _preempt(self, request: SimRequest) -> None:
        self._free(request)
        request.computed = 0
        request.preemptions += 1
        self.preemptions_total += 1
        self.waiting.appendleft(request)

    def _free(self, request: SimRequest) -> None:
        self.free_blocks += request.blocks
        request.blocks = 0
