"""The simulated engine's scheduler: token budget, batch cap, KV blocks and preemption."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slmpack.sim.scheduler import BLOCK_TOKENS, Scheduler, SimRequest, blocks_for


def request(name: str, prompt: int, output: int) -> SimRequest:
    return SimRequest(name, prompt, output, arrival_s=0.0)


def run_to_completion(scheduler: Scheduler, limit: int = 10_000) -> int:
    steps = 0
    while not scheduler.idle:
        batch = scheduler.schedule(float(steps))
        scheduler.complete(batch, float(steps + 1))
        steps += 1
        assert steps < limit, "the scheduler made no progress"
    return steps


def test_chunked_prefill_shares_the_token_budget() -> None:
    s = Scheduler(max_num_seqs=8, max_num_batched_tokens=2048, num_blocks=1000)
    for name in ("a", "b", "c"):
        s.add(request(name, 1500, 4))
    first = s.schedule(0.0)
    assert [(r.request_id, n) for r, n in first.work] == [("a", 1500), ("b", 548)]
    outcome = s.complete(first, 1.0)
    # b's chunk stops short of its prompt's end, so only a samples a token.
    assert [r.request_id for r in outcome.produced] == ["a"]
    second = s.schedule(1.0)
    assert [(r.request_id, n) for r, n in second.work] == [("a", 1), ("b", 952), ("c", 1095)]
    assert second.decode_seqs == 1
    assert second.decode_context_tokens == 1501
    assert second.prefill_chunks == [(548, 952), (0, 1095)]


def test_running_batch_is_capped_at_max_num_seqs() -> None:
    s = Scheduler(max_num_seqs=2, max_num_batched_tokens=10_000, num_blocks=1000)
    for i in range(5):
        s.add(request(f"r{i}", 10, 3))
    batch = s.schedule(0.0)
    assert len(batch.work) == 2
    assert len(s.waiting) == 3


def test_a_request_generates_exactly_its_output_tokens_then_frees_its_blocks() -> None:
    s = Scheduler(max_num_seqs=4, max_num_batched_tokens=512, num_blocks=100)
    r = request("r", 40, 3)
    s.add(r)
    produced = []
    for step in range(3):
        outcome = s.complete(s.schedule(float(step)), float(step + 1))
        produced.append(outcome.generated_tokens)
    assert produced == [1, 1, 1]  # the prefill step already samples the first token
    assert r.finished
    assert r.first_token_s == 1.0
    assert r.finished_s == 3.0
    assert r.generated == 3
    assert s.free_blocks == 100
    assert s.idle


def test_blocks_follow_the_tokens_in_cache() -> None:
    s = Scheduler(max_num_seqs=4, max_num_batched_tokens=512, num_blocks=100)
    r = request("r", BLOCK_TOKENS, 40)
    s.add(r)
    s.complete(s.schedule(0.0), 1.0)
    assert r.blocks == 1  # 16 prompt tokens fill one block
    s.complete(s.schedule(1.0), 2.0)
    assert r.computed == BLOCK_TOKENS + 1
    assert r.blocks == 2  # the first decode token needs a second block
    assert s.free_blocks == 98


def test_preemption_recomputes_the_newest_request_first_in_line() -> None:
    # 4 blocks hold 64 tokens; two requests of 16 + 40 tokens cannot both finish in place.
    s = Scheduler(max_num_seqs=4, max_num_batched_tokens=512, num_blocks=4)
    old, new = request("old", 16, 40), request("new", 16, 40)
    s.add(old)
    s.add(new)
    preempting_step = None
    step = 0
    while not s.idle:
        waiting_before = set(map(id, s.waiting))
        batch = s.schedule(float(step))
        if batch.preempted and preempting_step is None:
            preempting_step = step
            assert batch.preempted == [new]
            assert s.waiting[0] is new  # back at the front of the queue
            assert new.computed == 0
            assert new.blocks == 0
            # No admissions in a step that preempted.
            assert not any(id(r) in waiting_before for r, _ in batch.work)
        s.complete(batch, float(step + 1))
        step += 1
        assert step < 1000
    assert preempting_step is not None
    assert s.preemptions_total >= 1
    assert new.preemptions >= 1
    assert old.preemptions == 0
    assert old.generated == 40
    assert new.generated == 40
    assert s.free_blocks == 4


def test_a_recomputed_request_continues_after_the_tokens_it_had() -> None:
    s = Scheduler(max_num_seqs=4, max_num_batched_tokens=512, num_blocks=4)
    old, new = request("old", 16, 40), request("new", 16, 40)
    s.add(old)
    s.add(new)
    while not new.preemptions:
        s.complete(s.schedule(0.0), 0.0)
    had = new.generated
    assert had > 0
    # Its recompute covers prompt and generated tokens in one chunk.
    while s.waiting and s.waiting[0] is new:
        batch = s.schedule(0.0)
        s.complete(batch, 0.0)
    chunk = next(n for r, n in batch.work if r is new)
    assert chunk == 16 + had
    assert new.generated == had + 1


def test_a_request_larger_than_the_cache_is_refused() -> None:
    s = Scheduler(max_num_seqs=4, max_num_batched_tokens=512, num_blocks=2)
    with pytest.raises(ValueError, match="more KV blocks"):
        s.add(request("big", 30, 10))


def test_abort_frees_blocks_and_drops_the_request() -> None:
    s = Scheduler(max_num_seqs=4, max_num_batched_tokens=512, num_blocks=10)
    running, queued = request("running", 40, 10), request("queued", 40, 10)
    s.add(running)
    s.complete(s.schedule(0.0), 1.0)
    s.add(queued)
    s.abort(running)
    s.abort(queued)
    assert s.idle
    assert s.free_blocks == 10
    assert running.aborted


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.tuples(st.integers(1, 200), st.integers(1, 120)), min_size=1, max_size=12),
    extra_blocks=st.integers(0, 40),
    max_seqs=st.integers(1, 8),
    budget=st.integers(16, 600),
)
def test_block_accounting_holds_and_every_request_finishes(
    lengths: list[tuple[int, int]], extra_blocks: int, max_seqs: int, budget: int
) -> None:
    largest = max(blocks_for(p + o - 1) for p, o in lengths)
    s = Scheduler(max_seqs, budget, largest + extra_blocks)
    requests = [request(f"r{i}", p, o) for i, (p, o) in enumerate(lengths)]
    for r in requests:
        s.add(r)
    step = 0
    while not s.idle:
        batch = s.schedule(float(step))
        assert sum(n for _, n in batch.work) <= budget
        assert len(s.running) <= max_seqs
        s.complete(batch, float(step + 1))
        held = sum(r.blocks for r in s.running)
        assert s.free_blocks + held == s.num_blocks
        for r in s.running:
            assert r.blocks == blocks_for(r.computed)
        step += 1
        assert step < 20_000
    assert [r.generated for r in requests] == [o for _, o in lengths]
    assert s.free_blocks == s.num_blocks
