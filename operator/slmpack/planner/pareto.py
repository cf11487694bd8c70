"""Pareto front over throughput per GPU, tokens per joule and tail latency; pick per objective."""

from __future__ import annotations

from collections.abc import Sequence

from slmpack.planner.types import Candidate, Objective, Slo

#: Candidates within this share of the best primary score count as tied; the secondary decides.
TIE_RATIO = 0.99


def latency_score(candidate: Candidate, slo: Slo) -> float:
    """Tail latency as a share of the SLO (worst of TTFT and ITL); raw ITL p99 without an SLO."""
    ratios: list[float] = []
    if slo.itl_p99_s:
        ratios.append(candidate.perf.itl_p99_s / slo.itl_p99_s)
    if slo.ttft_p99_s:
        ratios.append(candidate.perf.ttft_p99_s / slo.ttft_p99_s)
    return max(ratios) if ratios else candidate.perf.itl_p99_s


def dominates(a: Candidate, b: Candidate, slo: Slo) -> bool:
    """a is at least as good as b on every axis and better on one."""
    a_axes = (a.perf.total_tokens_per_s, a.perf.tokens_per_joule, -latency_score(a, slo))
    b_axes = (b.perf.total_tokens_per_s, b.perf.tokens_per_joule, -latency_score(b, slo))
    return all(x >= y for x, y in zip(a_axes, b_axes, strict=True)) and a_axes != b_axes


def pareto_front(candidates: Sequence[Candidate], slo: Slo) -> tuple[Candidate, ...]:
    """Non-dominated candidates, sorted by throughput per GPU (highest first)."""
    front = [c for c in candidates if not any(dominates(o, c, slo) for o in candidates)]
    front.sort(key=lambda c: (-c.perf.total_tokens_per_s, latency_score(c, slo), c.key))
    return tuple(front)


def _simplest(c: Candidate) -> tuple[int, int, str]:
    # Among ties, fewer processes and smaller batches are cheaper to run and to reason about.
    return (c.replicas_per_gpu, c.engine.max_num_seqs, c.key)


def pick(candidates: Sequence[Candidate], objective: Objective) -> Candidate | None:
    """The candidate that best serves the objective; only SLO-meeting candidates are eligible."""
    eligible = [c for c in candidates if c.meets_slo]
    if not eligible:
        return None
    best_tps = max(c.perf.total_tokens_per_s for c in eligible)
    best_tpj = max(c.perf.tokens_per_joule for c in eligible)

    def throughput(c: Candidate) -> float:
        return c.perf.total_tokens_per_s / best_tps

    def energy(c: Candidate) -> float:
        return c.perf.tokens_per_joule / best_tpj

    if objective is Objective.THROUGHPUT:
        primary, secondary = throughput, energy
    elif objective is Objective.ENERGY:
        primary, secondary = energy, throughput
    else:

        def primary(c: Candidate) -> float:
            return throughput(c) * energy(c)

        secondary = throughput
    top = max(primary(c) for c in eligible)
    shortlist = [c for c in eligible if primary(c) >= TIE_RATIO * top]
    best_secondary = max(secondary(c) for c in shortlist)
    finalists = [c for c in shortlist if secondary(c) >= TIE_RATIO * best_secondary]
    return min(finalists, key=_simplest)
