"""Server-sent events of an OpenAI streaming response, parsed incrementally (pure).

A chunk read from the socket may hold several events or part of one; `SseDecoder` keeps the
remainder. `classify` says what one `data:` payload means for the measurements: a token chunk
(times TTFT and ITL), the usage chunk (the server's token counts), the end, or an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from slmpack.loadgen.workload import Api

DONE = b"[DONE]"


class SseDecoder:
    """Splits a byte stream into the `data:` payloads of its events."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        if b"\r" in chunk or b"\r" in self._pending:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events = (self._pending + chunk).split(b"\n\n")
        self._pending = events.pop()
        payloads = []
        for event in events:
            data = [line for line in event.split(b"\n") if line.startswith(b"data:")]
            if data:
                # Lines starting with ':' are comments (keep-alives) and carry no data.
                payloads.append(b"\n".join(line[5:].lstrip(b" ") for line in data))
        return payloads

    @property
    def pending(self) -> bytes:
        """Bytes of an unfinished event (empty once a stream ended cleanly)."""
        return self._pending


@dataclass(frozen=True)
class StreamEvent:
    tokens: int = 0  # 1 for a chunk that carries generated output, else 0
    prompt_tokens: int | None = None  # from the usage chunk
    completion_tokens: int | None = None  # from the usage chunk
    done: bool = False
    error: str | None = None


NOTHING = StreamEvent()
END = StreamEvent(done=True)


def classify(payload: bytes, api: Api) -> StreamEvent:
    """What one `data:` payload means.

    A completions chunk with a choice counts as a token even when its text is empty (a special
    token decodes to nothing, but it was generated). A chat chunk counts when its delta has
    content; the first chunk, which only announces the assistant role, does not.
    """
    if payload == DONE:
        return END
    try:
        body = json.loads(payload)
    except ValueError:
        return StreamEvent(error="invalid_json")
    if not isinstance(body, dict):
        return StreamEvent(error="invalid_json")
    if "error" in body:
        err = body["error"]
        detail = err.get("message") if isinstance(err, dict) else err
        return StreamEvent(error=f"stream_error: {detail}")
    tokens = 0
    choices = body.get("choices")
    if choices and isinstance(choices, list) and isinstance(choices[0], dict):
        if api == "completions":
            tokens = 1
        else:
            delta = choices[0].get("delta") or {}
            tokens = 1 if delta.get("content") or delta.get("reasoning_content") else 0
    usage = body.get("usage")
    if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
        return StreamEvent(
            tokens, _int_or_none(usage.get("prompt_tokens")), int(usage["completion_tokens"])
        )
    return StreamEvent(tokens) if tokens else NOTHING


def _int_or_none(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) else None
