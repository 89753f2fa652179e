"""A small OpenAI-compatible HTTP server for a transformers model (``persona-guard serve``).

It exists so that anything speaking ``/v1/chat/completions`` (our judges and trait generator,
other tools) can use a local model, including per-token ``logprobs``/``top_logprobs``. Standard
library only: a ``ThreadingHTTPServer`` accepts connections concurrently while one lock keeps
generation to one request at a time (a model on one device gains nothing from interleaving).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from persona_guard.errors import PersonaGuardError
from persona_guard.llm_client import generate_with_logprobs, render_messages
from persona_guard.rows import RowError, parse_messages

MAX_TOP_LOGPROBS = 20


class RequestError(Exception):
    """A client error, answered with HTTP 400 and an OpenAI-style error body."""


def _number(body: dict, key: str, default, kind, low, high):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            kind is int and not float(value).is_integer()):
        raise RequestError(f"'{key}' must be {'an integer' if kind is int else 'a number'}")
    if not low <= value <= high:
        raise RequestError(f"'{key}' must be between {low} and {high}, got {value}")
    return kind(value)


def parse_request(body) -> dict:
    """Validate a chat-completions body; raise :class:`RequestError` naming the bad field."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    try:
        messages = parse_messages(body.get("messages"), "messages")
    except RowError as error:
        raise RequestError(str(error)) from None
    if body.get("n", 1) != 1:
        raise RequestError("only n=1 is supported")
    if body.get("stream"):
        raise RequestError("streaming is not supported")
    logprobs = body.get("logprobs", False)
    if not isinstance(logprobs, bool):
        raise RequestError("'logprobs' must be true or false")
    top = _number(body, "top_logprobs", 0, int, 0, MAX_TOP_LOGPROBS)
    if top and not logprobs:
        raise RequestError("'top_logprobs' needs 'logprobs': true")
    return {
        "messages": messages,
        "max_tokens": _number(body, "max_tokens", _number(body, "max_completion_tokens", 256, int, 1, 8192),
                              int, 1, 8192),
        "temperature": _number(body, "temperature", 1.0, float, 0.0, 2.0),
        "seed": _number(body, "seed", None, int, -2**63, 2**63 - 1),
        "logprobs": logprobs,
        "top_logprobs": top,
    }


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, model, tokenizer, model_name: str) -> None:
        super().__init__(address, ChatHandler)
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.generation_lock = threading.Lock()

    def chat(self, request: dict) -> dict:
        want = request["top_logprobs"] or (1 if request["logprobs"] else None)
        with self.generation_lock:
            try:
                text, entries = generate_with_logprobs(
                    self.model, self.tokenizer, request["messages"], max_tokens=request["max_tokens"],
                    temperature=request["temperature"], seed=request["seed"], top_logprobs=want)
            except PersonaGuardError as error:
                raise RequestError(str(error)) from None
        prompt_tokens = len(self.tokenizer(render_messages(self.tokenizer, request["messages"]),
                                           add_special_tokens=False)["input_ids"])
        choice: dict = {"index": 0, "message": {"role": "assistant", "content": text},
                        "finish_reason": "length" if len(entries) >= request["max_tokens"] else "stop",
                        "logprobs": None}
        if request["logprobs"]:
            choice["logprobs"] = {"content": [
                {"token": e.token, "logprob": e.logprob, "bytes": list(e.token.encode()),
                 "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                                  for t, lp in e.top[:request["top_logprobs"]]]}
                for e in entries]}
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                "created": int(time.time()), "model": self.model_name, "choices": [choice],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(entries),
                          "total_tokens": prompt_tokens + len(entries)}}


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:  # quiet: one line per request on stderr is noise in tests
        pass

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._send(status, {"error": {"message": message, "type": kind, "code": status}})

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send(200, {"object": "list", "data": [
                {"id": self.server.model_name, "object": "model", "owned_by": "persona-guard"}]})
        elif self.path.rstrip("/") in ("/health", ""):
            self._send(200, {"status": "ok"})
        else:
            self._error(404, f"no route GET {self.path}")

    def do_POST(self) -> None:
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"no route POST {self.path}")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length).decode() or "null")
        except (ValueError, UnicodeDecodeError):
            self._error(400, "the request body is not valid JSON")
            return
        try:
            request = parse_request(body)
            if isinstance(body, dict) and body.get("model") not in (None, self.server.model_name):
                raise RequestError(f"unknown model {body.get('model')!r}; this server serves "
                                   f"{self.server.model_name!r}")
            self._send(200, self.server.chat(request))
        except RequestError as error:
            self._error(400, str(error))
        except Exception as error:  # a server must answer, not die: report it as a 500
            self._error(500, f"{type(error).__name__}: {error}", "server_error")


def make_server(model, tokenizer, model_name: str, host: str = "127.0.0.1", port: int = 8000) -> ChatServer:
    return ChatServer((host, port), model, tokenizer, model_name)
