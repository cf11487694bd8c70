"""Prompt and output length distributions, in tokens, drawn from a seeded `random.Random`.

`sharegpt_input()` and `sharegpt_output()` stand in for the ShareGPT runs the planner is
calibrated on: lognormals whose means are the 111 input and 292 output tokens of 2,000
ShareGPT_V3 prompts in the reference runs (`planner/calibration_targets.yaml`). Only the
means are known, so the shape is an assumption: sigma = 1.0 (coefficient of variation
about 1.3, median about 0.6 x mean), the right-skewed, heavy-tailed look of chat lengths.
Both are clipped to [4, 1024] tokens, the bounds vLLM's ShareGPT sampler keeps (it drops
prompts or outputs under 4 tokens and prompts over 1024), and the location is solved so that the
*clipped* distribution has the stated mean exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

#: Published ShareGPT means of the calibration runs (tokens).
SHAREGPT_MEAN_INPUT_TOKENS = 111
SHAREGPT_MEAN_OUTPUT_TOKENS = 292
#: Assumed lognormal shape (the log-space standard deviation) of both lengths.
SHAREGPT_SIGMA = 1.0
#: vLLM's ShareGPT sampler drops sequences under 4 tokens and prompts over 1024.
SHAREGPT_MIN_TOKENS = 4
SHAREGPT_MAX_TOKENS = 1024


class LengthDistribution(Protocol):
    """A length in tokens per request."""

    @property
    def mean(self) -> float:
        """The distribution's mean (what a large sample averages to)."""
        ...

    def sample(self, rng: random.Random) -> int: ...

    def describe(self) -> dict[str, Any]:
        """Parameters for a result document."""
        ...


@dataclass(frozen=True)
class Fixed:
    tokens: int

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise ValueError(f"a length must be at least 1 token, got {self.tokens}")

    @property
    def mean(self) -> float:
        return float(self.tokens)

    def sample(self, rng: random.Random) -> int:
        return self.tokens

    def describe(self) -> dict[str, Any]:
        return {"kind": "fixed", "tokens": self.tokens}


@dataclass(frozen=True)
class Uniform:
    """Integers from `low` to `high`, both included."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not 1 <= self.low <= self.high:
            raise ValueError(f"need 1 <= low <= high, got {self.low}..{self.high}")

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)

    def describe(self) -> dict[str, Any]:
        return {"kind": "uniform", "low": self.low, "high": self.high}


@dataclass(frozen=True)
class LogNormal:
    """A lognormal with log-space deviation `sigma`, clipped to [min_tokens, max_tokens] and
    rounded, whose clipped mean is `mean_tokens`."""

    mean_tokens: float
    sigma: float
    min_tokens: int = 1
    max_tokens: int = SHAREGPT_MAX_TOKENS

    def __post_init__(self) -> None:
        if not 1 <= self.min_tokens < self.max_tokens:
            raise ValueError(f"need 1 <= min < max, got {self.min_tokens}..{self.max_tokens}")
        if not self.min_tokens < self.mean_tokens < self.max_tokens:
            raise ValueError(
                f"the mean {self.mean_tokens} must lie strictly between the clip bounds "
                f"{self.min_tokens} and {self.max_tokens}"
            )
        if not 0 < self.sigma <= 4:
            raise ValueError(f"sigma must be in (0, 4], got {self.sigma}")

    @property
    def mean(self) -> float:
        return float(self.mean_tokens)

    @property
    def mu(self) -> float:
        """Log-space location that gives the clipped distribution its mean."""
        return _solve_mu(self.mean_tokens, self.sigma, self.min_tokens, self.max_tokens)

    @property
    def median(self) -> float:
        return math.exp(self.mu)

    def sample(self, rng: random.Random) -> int:
        value = round(rng.lognormvariate(self.mu, self.sigma))
        return min(self.max_tokens, max(self.min_tokens, value))

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "lognormal",
            "mean_tokens": self.mean_tokens,
            "sigma": self.sigma,
            "mu": round(self.mu, 6),
            "min_tokens": self.min_tokens,
            "max_tokens": self.max_tokens,
        }


def sharegpt_input() -> LogNormal:
    return LogNormal(
        SHAREGPT_MEAN_INPUT_TOKENS, SHAREGPT_SIGMA, SHAREGPT_MIN_TOKENS, SHAREGPT_MAX_TOKENS
    )


def sharegpt_output() -> LogNormal:
    return LogNormal(
        SHAREGPT_MEAN_OUTPUT_TOKENS, SHAREGPT_SIGMA, SHAREGPT_MIN_TOKENS, SHAREGPT_MAX_TOKENS
    )


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def clipped_lognormal_mean(mu: float, sigma: float, low: float, high: float) -> float:
    """E[min(max(X, low), high)] for X ~ LogNormal(mu, sigma), in closed form."""
    a = (math.log(low) - mu) / sigma
    b = (math.log(high) - mu) / sigma
    inside = math.exp(mu + sigma * sigma / 2) * (_phi(b - sigma) - _phi(a - sigma))
    return low * _phi(a) + inside + high * (1.0 - _phi(b))


@cache
def _solve_mu(mean: float, sigma: float, low: int, high: int) -> float:
    # The clipped mean rises monotonically with mu from `low` to `high`: bisection.
    lo, hi = math.log(low) - 10 * sigma, math.log(high) + 10 * sigma
    for _ in range(200):
        mid = (lo + hi) / 2
        if clipped_lognormal_mean(mid, sigma, low, high) < mean:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2


def parse_length(text: str, side: str) -> LengthDistribution:
    """`N` (fixed), `uniform:LOW:HIGH`, `lognormal:MEAN:SIGMA[:MIN:MAX]` or `sharegpt`
    (the preset for `side`, "input" or "output")."""
    kind, _, rest = text.strip().partition(":")
    args = rest.split(":") if rest else []
    try:
        if kind.isdigit() and not args:
            return Fixed(int(kind))
        if kind == "sharegpt" and not args:
            return sharegpt_input() if side == "input" else sharegpt_output()
        if kind == "uniform" and len(args) == 2:
            return Uniform(int(args[0]), int(args[1]))
        if kind == "lognormal" and len(args) in (2, 4):
            bounds = (int(args[2]), int(args[3])) if len(args) == 4 else (1, SHAREGPT_MAX_TOKENS)
            return LogNormal(float(args[0]), float(args[1]), *bounds)
    except ValueError as err:
        raise ValueError(f"{side} length {text!r}: {err}") from None
    raise ValueError(
        f"{side} length {text!r}: expected N, uniform:LOW:HIGH, lognormal:MEAN:SIGMA[:MIN:MAX] "
        "or sharegpt"
    )
