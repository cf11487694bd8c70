"""The requests of a run, decided before it starts, and their OpenAI request bodies.

Everything here is a pure function of the schedule, the length distributions and the seed, so
two runs with the same inputs send the same requests at the same offsets.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from slmpack.loadgen.arrivals import Schedule, arrival_times
from slmpack.loadgen.lengths import LengthDistribution

Api = Literal["completions", "chat"]
PromptFormat = Literal["text", "tokens"]
APIS: tuple[Api, ...] = ("completions", "chat")
PROMPT_FORMATS: tuple[PromptFormat, ...] = ("text", "tokens")

#: Four-character words, each one token in common BPE vocabularies (GPT-2, Llama) and exactly
#: one under vllm-sim's four-characters-per-token rule, so a text prompt of n words is n tokens.
PROMPT_WORDS = (
    " the", " and", " for", " are", " but", " not", " you", " all", " any", " can", " had",
    " her", " was", " one", " our", " out", " day", " get", " has", " him", " his", " how",
    " man", " new", " now", " old", " see", " two", " way", " who", " did", " its", " let",
    " put", " say", " she", " too", " use",
)  # fmt: skip
#: Token ids of `tokens` prompts: inside any vocabulary of 500 or more (the e2e tier's tiny
#: model has 702), clear of the special tokens at the bottom.
DEFAULT_TOKEN_IDS = (10, 500)

PATHS: dict[Api, str] = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


@dataclass(frozen=True)
class PlannedRequest:
    """One request: when to send it (seconds from the start), its lengths, and where."""

    index: int
    send_at_s: float
    prompt_tokens: int
    output_tokens: int
    base_url: str


def plan_requests(
    schedule: Schedule,
    input_lengths: LengthDistribution,
    output_lengths: LengthDistribution,
    base_urls: Sequence[str],
    seed: int,
    max_model_len: int | None = None,
) -> tuple[PlannedRequest, ...]:
    """Arrivals with lengths drawn per request, spread over `base_urls` round robin.

    With `max_model_len`, a prompt is cut to leave room for one output token and the output to
    what fits after the prompt, as a server would cap it, so every request is one it accepts.
    """
    if not base_urls:
        raise ValueError("at least one base URL is needed")
    urls = [u.rstrip("/") for u in base_urls]
    rng = random.Random(f"{seed}/lengths")
    planned = []
    for i, at in enumerate(arrival_times(schedule, seed)):
        prompt = input_lengths.sample(rng)
        output = output_lengths.sample(rng)
        if max_model_len is not None:
            prompt = min(prompt, max_model_len - 1)
            output = min(output, max_model_len - prompt)
        planned.append(PlannedRequest(i, at, prompt, output, urls[i % len(urls)]))
    return tuple(planned)


def prompt_text(tokens: int, rng: random.Random) -> str:
    return "".join(rng.choices(PROMPT_WORDS, k=tokens))


def prompt_token_ids(
    tokens: int, rng: random.Random, id_range: tuple[int, int] = DEFAULT_TOKEN_IDS
) -> list[int]:
    low, high = id_range
    return [rng.randrange(low, high) for _ in range(tokens)]


def request_body(
    request: PlannedRequest,
    api: Api,
    model: str,
    prompt_format: PromptFormat,
    seed: int,
    token_ids: tuple[int, int] = DEFAULT_TOKEN_IDS,
) -> dict[str, Any]:
    """A streaming request for exactly `output_tokens` tokens.

    `ignore_eos` (a vLLM extension) keeps generating past the end-of-text token, so the output
    length is what the plan says and runs compare token for token. The final usage chunk
    (`stream_options.include_usage`) gives the server's own token counts.
    """
    rng = random.Random(f"{seed}/prompt/{request.index}")
    common: dict[str, Any] = {
        "model": model,
        "max_tokens": request.output_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if api == "chat":
        if prompt_format != "text":
            raise ValueError("chat requests take text prompts only")
        content = prompt_text(request.prompt_tokens, rng)
        # vLLM reads max_completion_tokens first; older servers know only max_tokens.
        return {
            **common,
            "messages": [{"role": "user", "content": content}],
            "max_completion_tokens": request.output_tokens,
        }
    prompt: str | list[int] = (
        prompt_text(request.prompt_tokens, rng)
        if prompt_format == "text"
        else prompt_token_ids(request.prompt_tokens, rng, token_ids)
    )
    return {**common, "prompt": prompt}
