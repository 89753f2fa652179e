"""The OpenAI chat-completions wire format: request validation and response bodies.

Field names are OpenAI's (``max_tokens``/``max_completion_tokens``, ``n``, ``stop``, ``seed``,
``logprobs``/``top_logprobs``, ``stream``/``stream_options``); ``return_token_ids`` is vLLM's
extension (``prompt_token_ids`` on the response, ``token_ids`` on each choice). Errors use
OpenAI's body ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass

import numpy as np

from persona_guard.io import loads_strict
from persona_guard.rows import RowError, check_prompt, parse_messages

MAX_TOP_LOGPROBS = 20
MAX_N = 16
MAX_STOP = 4
#: deepest nesting of arrays and objects a request body may have (a chat request needs about 6)
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


class RequestError(Exception):
    """A client error: answered with ``status`` and an OpenAI-style error body naming ``param``."""

    def __init__(
        self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error"
    ) -> None:
        super().__init__(message)
        self.param = param
        self.status = status
        self.kind = kind


def parse_json_body(data: bytes, content_type: str | None = None):
    """A request body as strict JSON (RFC 8259), or :class:`RequestError` (400; 415 for a non-JSON
    ``content_type``): not UTF-8 or not JSON, nested deeper than :data:`MAX_JSON_DEPTH` (checked on the
    bytes, before parsing, so a 9000-deep body cannot exhaust the parser's recursion), ``NaN`` /
    ``Infinity`` literals, numbers beyond float range (``1e999``) or too long to parse. A missing
    content type is read as JSON (as OpenAI's clients always send ``application/json``)."""
    if content_type:
        media = content_type.split(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise RequestError(f"content type {media!r} is not supported; send application/json", status=415)
    levels = np.frombuffer(_JSON_STRING.sub(b"", data), dtype=np.uint8)
    steps = np.isin(levels, (ord("["), ord("{"))).astype(np.int64) - np.isin(levels, (ord("]"), ord("}")))
    if steps.size and int(np.cumsum(steps).max()) > MAX_JSON_DEPTH:
        raise RequestError(f"the request body is nested deeper than {MAX_JSON_DEPTH} levels")

    try:
        return loads_strict(data.decode("utf-8") or "null")
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RequestError(f"the request body is not valid JSON ({error})".splitlines()[0][:200]) from None


def error_body(
    message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | int | None = None
) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class ChatParams:
    """A validated chat-completions request."""

    messages: tuple[dict, ...]
    max_tokens: int
    temperature: float
    top_p: float  # nucleus mass in (0, 1], as vLLM's SamplingParams (1: no filter)
    seed: int | None
    n: int
    stop: tuple[str, ...]
    logprobs: bool
    top_logprobs: int
    stream: bool
    include_usage: bool
    return_token_ids: bool
    monitor: bool
    conversation_id: str | None


def _number(body: dict, key: str, default, kind, low, high):
    value = body.get(key, default)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not float(value).is_integer())
    ):
        raise RequestError(f"'{key}' must be {'an integer' if kind is int else 'a number'}", key)
    if not low <= value <= high:
        raise RequestError(f"'{key}' must be between {low} and {high}, got {value}", key)
    return kind(value)


def _top_p(body: dict) -> float:
    """``top_p`` in (0, 1] as vLLM requires (OpenAI's range is 0-1, but 0 keeps no token)."""
    value = _number(body, "top_p", 1.0, float, 0.0, 1.0)
    if value <= 0:
        raise RequestError(f"'top_p' must be in (0, 1], got {value}", "top_p")
    return value


def _flag(body: dict, key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"'{key}' must be true or false", key)
    return value


def parse_request(body, *, model_name: str, max_tokens_cap: int, allow_unmonitored: bool = False) -> ChatParams:
    """Validate a chat-completions body; raise :class:`RequestError` naming the bad field."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    if body.get("model") not in (None, model_name):
        raise RequestError(f"unknown model {body.get('model')!r}; this server serves {model_name!r}", "model")
    try:  # the one row model (persona_guard.rows): typed text parts, tool calls and tool turns, bad text
        messages = check_prompt(parse_messages(body.get("messages"), "messages"), "messages")
    except RowError as error:
        raise RequestError(str(error), error.field) from None
    logprobs = _flag(body, "logprobs")
    top = _number(body, "top_logprobs", 0, int, 0, MAX_TOP_LOGPROBS)
    if top and not logprobs:
        raise RequestError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(f"'stop' must be a non-empty string or a list of up to {MAX_STOP} of them", "stop")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", "stream_options")
    extra = body.get("persona_guard") or {}
    if not isinstance(extra, dict):
        raise RequestError("'persona_guard' must be an object", "persona_guard")
    monitor = extra.get("monitor", True)
    if monitor is not True and not (monitor is False and allow_unmonitored):
        raise RequestError(
            "'persona_guard.monitor' can only be turned off on a server started with --allow-unmonitored",
            "persona_guard",
        )
    metadata = body.get("metadata") or {}
    conversation = metadata.get("conversation_id") if isinstance(metadata, dict) else None
    default_max = _number(body, "max_completion_tokens", min(256, max_tokens_cap), int, 1, max_tokens_cap)
    return ChatParams(
        messages=tuple(dict(m) for m in messages),
        max_tokens=_number(body, "max_tokens", default_max, int, 1, max_tokens_cap),
        temperature=_number(body, "temperature", 1.0, float, 0.0, 2.0),
        top_p=_top_p(body),
        seed=_number(body, "seed", None, int, -(2**63), 2**63 - 1),
        n=_number(body, "n", 1, int, 1, MAX_N),
        stop=tuple(stop),
        logprobs=logprobs,
        top_logprobs=top,
        stream=_flag(body, "stream"),
        include_usage=bool(options.get("include_usage")),
        return_token_ids=_flag(body, "return_token_ids"),
        monitor=bool(monitor),
        conversation_id=str(conversation) if conversation is not None else None,
    )


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def logprob_entry(entry, top_logprobs: int) -> dict:
    """One ``choices[i].logprobs.content`` item from a :class:`~persona_guard.llm_client.TokenLogprobs`."""
    return {
        "token": entry.token,
        "logprob": entry.logprob,
        "bytes": list(entry.token.encode()),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in entry.top[:top_logprobs]],
    }


def completion_body(completion_id: str, model_name: str, choices: list[dict], usage: dict) -> dict:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": choices,
        "usage": usage,
    }


def chunk_body(completion_id: str, model_name: str, choices: list[dict], **extra) -> dict:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model_name,
        "choices": choices,
        **extra,
    }


def usage_of(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
