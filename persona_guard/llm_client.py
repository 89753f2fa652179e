"""Chat-completion clients: any OpenAI-compatible HTTP endpoint, or a local transformers model.

Judges and the trait generator only need :class:`ChatClient`: ``complete(messages, ...)`` returns the
text and, on request, the top log-probabilities of the *first* generated token (what logprob
judging reads). ``OpenAIChatClient`` speaks ``POST /v1/chat/completions`` with the standard library
only, so OpenAI, vLLM, llama.cpp's server, Ollama and ``persona-guard serve`` all work.

Prefill: a conversation whose last message has role ``assistant`` asks the model to *continue*
that message (vLLM calls it ``continue_final_message``). ``LocalChatClient`` and
``persona-guard serve`` support it; on other endpoints enable it with ``prefill=True`` only if the
server does. The logprob judge uses it to read multi-digit scores from tokenizers that split
numbers into digits.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm

from persona_guard.errors import PersonaGuardError
from persona_guard.files import write_text_atomic

Message = Mapping[str, str]
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Completion:
    text: str
    first_token_top_logprobs: dict[str, float] | None = None


@runtime_checkable
class ChatClient(Protocol):
    name: str
    #: True when a final assistant message is continued rather than answered (see module doc).
    supports_prefill: bool

    def complete(self, messages: Sequence[Message], *, max_tokens: int = 256, temperature: float = 0.0,
                 top_logprobs: int | None = None, seed: int | None = None) -> Completion: ...


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    max_tokens: int = 256
    temperature: float = 0.0
    top_logprobs: int | None = None
    seed: int | None = None


def complete_many(client: ChatClient, requests: Sequence[ChatRequest], *, concurrency: int = 4,
                  progress: bool = True, desc: str = "LLM requests") -> list[Completion]:
    """Run requests on a thread pool of ``concurrency`` workers; results come back in input order.

    Remote endpoints serve many requests at once; a local model serialises them itself, so its
    concurrency is irrelevant (pass 1).
    """
    def one(request: ChatRequest) -> Completion:
        return client.complete(request.messages, max_tokens=request.max_tokens,
                               temperature=request.temperature, top_logprobs=request.top_logprobs,
                               seed=request.seed)

    results: list[Completion] = []
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool, \
            tqdm(total=len(requests), desc=desc, disable=not progress, unit="req") as bar:
        for completion in pool.map(one, requests):
            results.append(completion)
            bar.update(1)
    return results


# ---- OpenAI-compatible HTTP ------------------------------------------------------------------


class JsonCache:
    """One JSON file per key under ``directory``; writes are atomic (rename), so parallel threads
    and processes never see half-written entries. A damaged entry (not JSON, undecodable, not an
    object) reads as a miss and is rewritten. Errors: ``directory`` is a file or cannot be created."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise PersonaGuardError(f"cache folder {self.directory} is a file; pass a folder")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise PersonaGuardError(f"cannot create cache folder {self.directory}: {error.strerror}") from None

    @staticmethod
    def key(payload: dict) -> str:
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        path = self.directory / f"{key}.json"
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):  # ValueError: bad JSON or undecodable bytes
            return None
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict) -> None:
        write_text_atomic(self.directory / f"{key}.json", json.dumps(value, ensure_ascii=False))


@dataclass
class OpenAIChatClient:
    """``POST {base_url}/chat/completions`` with retries on 429/5xx/connection errors.

    ``base_url`` ends in ``/v1`` (e.g. ``https://api.openai.com/v1``, ``http://127.0.0.1:8000/v1``).
    ``cache_dir`` stores every answer keyed by a hash of (base_url, model, messages, parameters),
    so reruns cost nothing.
    """

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 60.0
    max_retries: int = 4
    backoff: float = 1.0
    cache_dir: str | Path | None = None
    prefill: bool = False
    name: str = field(init=False)
    _cache: JsonCache | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self.name = f"openai:{self.model}"
        if self.cache_dir is not None:
            self._cache = JsonCache(self.cache_dir)

    @property
    def supports_prefill(self) -> bool:
        return self.prefill

    def _post(self, payload: dict) -> dict:
        data = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = f"{self.base_url}/chat/completions"
        last_error = ""
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method="POST")
            delay = self.backoff * 2 ** attempt
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode())
            except urllib.error.HTTPError as error:
                body = error.read().decode(errors="replace")[:300]
                if error.code not in RETRY_STATUS:
                    raise PersonaGuardError(f"{url}: HTTP {error.code}: {body}") from None
                last_error = f"HTTP {error.code}: {body}"
                retry_after = error.headers.get("Retry-After") if error.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    delay = max(delay, float(retry_after))
            except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
                last_error = str(getattr(error, "reason", error))
            if attempt < self.max_retries:
                time.sleep(delay)
        raise PersonaGuardError(f"{url}: no answer after {self.max_retries + 1} requests (the HTTP client's "
                                f"connection retries, max_retries={self.max_retries}) ({last_error})")

    def complete(self, messages: Sequence[Message], *, max_tokens: int = 256, temperature: float = 0.0,
                 top_logprobs: int | None = None, seed: int | None = None) -> Completion:
        payload: dict = {"model": self.model, "messages": [dict(m) for m in messages],
                         "max_tokens": max_tokens, "temperature": temperature}
        if seed is not None:
            payload["seed"] = seed
        if top_logprobs:
            payload["logprobs"] = True
            payload["top_logprobs"] = top_logprobs
        key = JsonCache.key({"base_url": self.base_url, **payload}) if self._cache else ""
        reply = self._cache.get(key) if self._cache else None
        if reply is None:
            reply = self._post(payload)
            if self._cache:
                self._cache.put(key, reply)
        return parse_chat_response(reply, wanted_logprobs=bool(top_logprobs), where=self.base_url)


def parse_chat_response(reply: dict, *, wanted_logprobs: bool, where: str) -> Completion:
    """Read the text and first-token top logprobs out of an OpenAI chat-completions response."""
    try:
        choice = reply["choices"][0]
        text = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        raise PersonaGuardError(f"{where}: unexpected response shape: {json.dumps(reply)[:200]}") from None
    top = None
    if wanted_logprobs:
        content = (choice.get("logprobs") or {}).get("content") or []
        if not content:
            raise PersonaGuardError(f"{where}: the endpoint returned no logprobs (does it support "
                                    "'logprobs'/'top_logprobs'?)")
        top = {}
        for entry in content[0].get("top_logprobs", []):
            token, logprob = entry["token"], float(entry["logprob"])
            # two token ids can decode to the same text: their probabilities add up
            top[token] = float(torch.logaddexp(torch.tensor(top[token]), torch.tensor(logprob))) \
                if token in top else logprob
    return Completion(text=text, first_token_top_logprobs=top)


# ---- local transformers model --------------------------------------------------------------


@dataclass(frozen=True)
class TokenLogprobs:
    token: str
    logprob: float
    top: list[tuple[str, float]]


def render_messages(tokenizer, messages: Sequence[Message]) -> str:
    """Chat-template text ready for generation; a final assistant message is continued (prefill)."""
    from persona_guard.encoding import render_prompt
    from persona_guard.rows import RowError, parse_messages

    messages = parse_messages(list(messages), "messages")
    if messages[-1]["role"] == "assistant":
        if messages[-1]["content"] is None:
            raise RowError(f"messages[{len(messages) - 1}].content", "a final assistant message to continue needs text")
        return render_prompt(tokenizer, messages[:-1]) + messages[-1]["content"]
    return render_prompt(tokenizer, messages)


def _merge_top(tokenizer, logprobs: torch.Tensor, k: int) -> list[tuple[str, float]]:
    values, ids = logprobs.topk(k)
    merged: dict[str, float] = {}
    for value, token_id in zip(values.tolist(), ids.tolist()):
        text = tokenizer.decode([token_id])
        merged[text] = float(torch.logaddexp(torch.tensor(merged[text]), torch.tensor(value))) \
            if text in merged else value
    return sorted(merged.items(), key=lambda item: -item[1])


@torch.no_grad()
def generate_with_logprobs(model, tokenizer, messages: Sequence[Message], *, max_tokens: int,
                           temperature: float = 0.0, seed: int | None = None,
                           top_logprobs: int | None = None) -> tuple[str, list[TokenLogprobs]]:
    """Generate one answer; per generated token, its logprob and the top-k alternatives (log-softmax
    of the raw logits, before temperature, as OpenAI reports them)."""
    from persona_guard.models import model_device

    text = render_messages(tokenizer, messages)
    batch = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model_device(model))
    if seed is not None:
        torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    output = model.generate(**batch, max_new_tokens=max(1, max_tokens), pad_token_id=tokenizer.pad_token_id,
                            output_logits=bool(top_logprobs), return_dict_in_generate=True, **sampling)
    new_ids = output.sequences[0, batch["input_ids"].shape[1]:]
    entries: list[TokenLogprobs] = []
    if top_logprobs:
        for step, token_id in enumerate(new_ids.tolist()):
            logprobs = output.logits[step][0].float().log_softmax(-1)
            entries.append(TokenLogprobs(tokenizer.decode([token_id]), float(logprobs[token_id]),
                                         _merge_top(tokenizer, logprobs, top_logprobs)))
    return tokenizer.decode(new_ids, skip_special_tokens=True), entries


class LocalChatClient:
    """A transformers model as a :class:`ChatClient` (greedy at temperature 0, else sampled).

    Calls are serialised by a lock: one generation at a time, safe under :func:`complete_many`.
    """

    supports_prefill = True

    def __init__(self, model, tokenizer, name: str = "local") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = f"local:{name}"
        self._lock = threading.Lock()

    @classmethod
    def load(cls, name_or_path: str, device: str | None = None, dtype: str | None = None) -> LocalChatClient:
        from persona_guard.models import load_model

        loaded = load_model(name_or_path, device=device, dtype=dtype)
        return cls(loaded.model, loaded.tokenizer, name_or_path)

    def complete(self, messages: Sequence[Message], *, max_tokens: int = 256, temperature: float = 0.0,
                 top_logprobs: int | None = None, seed: int | None = None) -> Completion:
        with self._lock:
            text, entries = generate_with_logprobs(self.model, self.tokenizer, messages, max_tokens=max_tokens,
                                                   temperature=temperature, seed=seed, top_logprobs=top_logprobs)
        top = dict(entries[0].top) if top_logprobs and entries else ({} if top_logprobs else None)
        return Completion(text=text, first_token_top_logprobs=top)


def check_reachable(url: str, what: str) -> None:
    """Preflight of an OpenAI-compatible endpoint: an http(s) URL whose host accepts a TCP connection
    within 5 s; otherwise one line naming ``what`` (e.g. "judge endpoint") and the URL."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PersonaGuardError(f"{what} {url!r} is not an http(s) URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname, port), timeout=5).close()
    except (OSError, ValueError) as error:
        raise PersonaGuardError(f"{what} {url} is unreachable ({error})") from None


def client_from_options(*, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                        local_model: str | None = None, cache_dir: str | None = None,
                        prefill: bool = False, base_url_env: str = "OPENAI_BASE_URL") -> ChatClient:
    """One place that turns CLI/env options into a client: ``local_model`` wins, else an
    OpenAI-compatible endpoint (``base_url`` or ``$base_url_env``; key from ``$OPENAI_API_KEY``)."""
    if local_model:
        return LocalChatClient.load(local_model)
    base_url = base_url or os.environ.get(base_url_env)
    if not base_url or not model:
        raise PersonaGuardError(f"need --local-model, or --base-url (or ${base_url_env}) and --model "
                                "for an OpenAI-compatible endpoint")
    check_reachable(base_url, "endpoint")  # fails in a second, not after the client's retries
    return OpenAIChatClient(base_url=base_url, model=model, api_key=api_key or os.environ.get("OPENAI_API_KEY"),
                            cache_dir=cache_dir, prefill=prefill)
