"""vLLM's OpenAI-compatible HTTP surface for one simulated engine (aiohttp).

Routes: POST /v1/completions, POST /v1/chat/completions (both with ``stream``), GET /v1/models,
GET /health, GET /version, GET /metrics.

What the simulator makes up, and how:

- Prompt length: the exact count when token ids are sent (``prompt`` as a list of ints, or the
  ``prompt_token_ids`` extension); otherwise ceil(characters / 4), the usual rule of thumb for
  BPE tokenizers on English text. Chat prompts count every message as ``role: content``.
- Output length: exactly ``max_tokens`` (``max_completion_tokens`` for chat), as with
  ``ignore_eos``, capped at ``max_model_len - prompt`` as vLLM caps it; the finish reason is
  always ``length``. Completions default to 16 tokens as in vLLM, chat to the cap.
- Token text: words from a fixed vocabulary in a per-request pseudo-random order.
- Only ``n = 1`` and one prompt per request; sampling parameters are accepted and ignored.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from slmpack.metricnames import VLLM_VERSION
from slmpack.sim.engine import EngineRunner
from slmpack.sim.engine_metrics import EngineMetrics
from slmpack.sim.scheduler import SimRequest

#: Characters per token when only text is given (OpenAI's rule of thumb for English).
CHARS_PER_TOKEN = 4
#: vLLM's CompletionRequest default for max_tokens.
COMPLETION_DEFAULT_MAX_TOKENS = 16

#: Words of the made-up output text (common English words).
_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there one all we their been has would when "
    "who will more no if out so said what up its about than into them can only other new "
    "some could time these two may then do first any my now such like our over man me"
)
_VOCABULARY = tuple(f" {w}" for w in _WORDS.split())


class ApiError(Exception):
    """An OpenAI-style error response."""

    def __init__(self, status: int, message: str, err_type: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type
        self.param = param

    def response(self) -> web.Response:
        body = {
            "error": {
                "message": self.message,
                "type": self.err_type,
                "param": self.param,
                "code": self.status,
            }
        }
        return web.json_response(body, status=self.status)


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "BadRequestError", param)


def count_text_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def prompt_length(body: dict[str, Any]) -> int:
    """Tokens of a /v1/completions prompt."""
    ids = body.get("prompt_token_ids")
    if ids is not None:
        if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids) or not ids:
            raise bad_request("prompt_token_ids must be a non-empty list of integers", "prompt")
        return len(ids)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return count_text_tokens(prompt)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) for t in prompt):
            return len(prompt)
        if len(prompt) == 1:
            only = prompt[0]
            if isinstance(only, str):
                return count_text_tokens(only)
            if isinstance(only, list) and only and all(isinstance(t, int) for t in only):
                return len(only)
        raise bad_request("the simulator serves one prompt per request", "prompt")
    raise bad_request("prompt must be a string or a list of token ids", "prompt")


def chat_prompt_length(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    chars = 0
    for message in messages:
        if not isinstance(message, dict):
            raise bad_request("each message must be an object", "messages")
        content = message.get("content") or ""
        if isinstance(content, list):
            content = "".join(
                str(part.get("text", "")) for part in content if isinstance(part, dict)
            )
        chars += len(str(message.get("role", ""))) + 2 + len(str(content)) + 1
    return max(1, math.ceil(chars / CHARS_PER_TOKEN))


def output_length(
    requested: Any, default: int | None, prompt_tokens: int, max_model_len: int
) -> tuple[int, int | None]:
    """(tokens to generate, the max_tokens parameter as sent) with vLLM's checks and cap."""
    if prompt_tokens >= max_model_len:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt contains {prompt_tokens} input tokens, which exceeds this limit even "
            "without any output tokens. Please reduce the length of the input prompt.",
            "input_tokens",
        )
    room = max_model_len - prompt_tokens
    if requested is None:
        return (min(default, room) if default is not None else room), None
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise bad_request(f"max_tokens must be at least 1, got {requested}.", "max_tokens")
    return min(requested, room), requested


@dataclass
class _Stream:
    """Pre-rendered pieces of one response's SSE chunks."""

    head: str
    tail_open: str
    tail_done: str

    def chunk(self, text: str, last: bool) -> str:
        return f"data: {self.head}{text}{self.tail_done if last else self.tail_open}\n\n"


class OpenAiApi:
    """Handlers of one simulated engine."""

    def __init__(
        self,
        runner: EngineRunner,
        metrics: EngineMetrics,
        served_model_name: str,
        model_root: str,
        max_model_len: int,
        seed: int = 0,
    ) -> None:
        self.runner = runner
        self.metrics = metrics
        self.served_model_name = served_model_name
        self.model_root = model_root
        self.max_model_len = max_model_len
        self._model_json = json.dumps(served_model_name)
        self._ids = itertools.count(1)
        self._id_prefix = f"{os.getpid():x}{seed:x}"
        self._created = int(time.time())

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/completions", self._wrap(self.completions))
        app.router.add_post("/v1/chat/completions", self._wrap(self.chat_completions))
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/version", self.version)
        app.router.add_get("/metrics", self.metrics_handler)

    # --- simple routes ---------------------------------------------------------------------

    async def health(self, _: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, _: web.Request) -> web.Response:
        return web.json_response({"version": VLLM_VERSION})

    async def models(self, _: web.Request) -> web.Response:
        card = {
            "id": self.served_model_name,
            "object": "model",
            "created": self._created,
            "owned_by": "vllm",
            "root": self.model_root,
            "parent": None,
            "max_model_len": self.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{self._id_prefix}",
                    "object": "model_permission",
                    "created": self._created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        return web.json_response({"object": "list", "data": [card]})

    async def metrics_handler(self, _: web.Request) -> web.Response:
        response = web.Response(body=self.metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    # --- generation ------------------------------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        prompt = prompt_length(body)
        out, param = output_length(
            body.get("max_tokens"), COMPLETION_DEFAULT_MAX_TOKENS, prompt, self.max_model_len
        )
        rid = f"cmpl-{self._id_prefix}{next(self._ids):x}"
        sim = self._submit(rid, prompt, out, param)
        created = int(time.time())
        if body.get("stream"):
            head = (
                f'{{"id":"{rid}","object":"text_completion","created":{created},'
                f'"model":{self._model_json},"choices":[{{"index":0,"text":"'
            )
            stream = _Stream(
                head,
                '","logprobs":null,"finish_reason":null,"stop_reason":null}]}',
                '","logprobs":null,"finish_reason":"length","stop_reason":null}]}',
            )
            usage_head = (
                f'{{"id":"{rid}","object":"text_completion","created":{created},'
                f'"model":{self._model_json},"choices":[],'
            )
            return await self._stream(request, sim, stream, "", usage_head, body)
        await self._finish(sim)
        choice = {
            "index": 0,
            "text": self._text(sim, 0, sim.generated),
            "logprobs": None,
            "finish_reason": "length",
            "stop_reason": None,
            "prompt_logprobs": None,
        }
        return web.json_response(
            {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": self.served_model_name,
                "choices": [choice],
                "usage": self._usage(sim),
            }
        )

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        prompt = chat_prompt_length(body)
        requested = body.get("max_completion_tokens", body.get("max_tokens"))
        out, param = output_length(requested, None, prompt, self.max_model_len)
        rid = f"chatcmpl-{self._id_prefix}{next(self._ids):x}"
        sim = self._submit(rid, prompt, out, param)
        created = int(time.time())
        if body.get("stream"):
            common = (
                f'{{"id":"{rid}","object":"chat.completion.chunk","created":{created},'
                f'"model":{self._model_json},"choices":[{{"index":0,'
            )
            stream = _Stream(
                common + '"delta":{"content":"',
                '"},"logprobs":null,"finish_reason":null}]}',
                '"},"logprobs":null,"finish_reason":"length","stop_reason":null}]}',
            )
            role = (
                f'data: {common}"delta":{{"role":"assistant","content":""}},'
                '"logprobs":null,"finish_reason":null}]}\n\n'
            )
            usage_head = (
                f'{{"id":"{rid}","object":"chat.completion.chunk","created":{created},'
                f'"model":{self._model_json},"choices":[],'
            )
            return await self._stream(request, sim, stream, role, usage_head, body)
        await self._finish(sim)
        choice = {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": self._text(sim, 0, sim.generated),
                "tool_calls": [],
            },
            "logprobs": None,
            "finish_reason": "length",
            "stop_reason": None,
        }
        return web.json_response(
            {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": self.served_model_name,
                "choices": [choice],
                "usage": self._usage(sim),
                "prompt_logprobs": None,
            }
        )

    # --- helpers ---------------------------------------------------------------------------

    def _wrap(
        self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except ApiError as err:
                return err.response()

        return wrapped

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise bad_request("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        model = body.get("model")
        if model and model != self.served_model_name:
            raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        n = body.get("n", 1)
        if n not in (None, 1):
            raise bad_request("the simulator supports n = 1 only", "n")
        return body

    def _submit(self, rid: str, prompt: int, out: int, param: int | None) -> SimRequest:
        sim = SimRequest(rid, prompt, out, self.runner.clock.now(), max_tokens_param=param)
        try:
            self.runner.submit(sim)
        except ValueError as err:
            raise bad_request(str(err)) from None
        return sim

    async def _finish(self, sim: SimRequest) -> None:
        try:
            while not sim.finished and not sim.aborted:
                await self.runner.wait_progress(sim, sim.generated)
        finally:
            if not sim.finished:
                self.runner.abort(sim)
        if sim.aborted:
            raise ApiError(503, "the engine stopped before the request finished", "ServerError")

    async def _stream(
        self,
        request: web.Request,
        sim: SimRequest,
        stream: _Stream,
        opening: str,
        usage_head: str,
        body: dict[str, Any],
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await response.prepare(request)
        sent = 0
        try:
            if opening:
                await response.write(opening.encode())
            while True:
                await self.runner.wait_progress(sim, sent)
                if sim.aborted:
                    break
                upto = sim.generated
                if upto > sent:
                    last = sim.output_tokens - 1
                    words = self._words(sim, sent, upto)
                    parts = [stream.chunk(w, sent + k == last) for k, w in enumerate(words)]
                    await response.write("".join(parts).encode())
                    sent = upto
                if sim.finished:
                    break
            options = body.get("stream_options") or {}
            tail = ""
            if isinstance(options, dict) and options.get("include_usage"):
                usage = json.dumps(self._usage(sim), separators=(",", ":"))
                tail = f'data: {usage_head}"usage":{usage}}}\n\n'
            await response.write(f"{tail}data: [DONE]\n\n".encode())
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away; the request is aborted below
        finally:
            if not sim.finished:
                self.runner.abort(sim)
        return response

    @staticmethod
    def _words(sim: SimRequest, start: int, end: int) -> list[str]:
        seed = hash(sim.request_id)
        size = len(_VOCABULARY)
        return [_VOCABULARY[(seed + i * 7919) % size] for i in range(start, end)]

    def _text(self, sim: SimRequest, start: int, end: int) -> str:
        return "".join(self._words(sim, start, end))

    @staticmethod
    def _usage(sim: SimRequest) -> dict[str, Any]:
        return {
            "prompt_tokens": sim.prompt_tokens,
            "total_tokens": sim.prompt_tokens + sim.generated,
            "completion_tokens": sim.generated,
            "prompt_tokens_details": None,
        }
