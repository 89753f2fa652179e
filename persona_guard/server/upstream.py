"""Monitor a model served elsewhere (vLLM, llama.cpp's server, Ollama, another ``persona-guard serve``).

Requests are forwarded to the upstream's ``/chat/completions``; the readings come from the local copy
of the same model by one teacher-forced forward over prompt + answer
(:func:`persona_guard.activations.capture_activations`, ``prompt_last`` and ``response_mean``), which
gives the numbers a local server reads during generation for the same tokens. The answer's tokens
are the upstream's own ids when it returns them (``--upstream-token-ids``: vLLM's
``return_token_ids``, less the EOS that ends them, which a local reading never counts), else the
answer text re-tokenized (a token boundary may then differ from the one generated). ``block`` reads
the forecast first, from a forward over the prompt, and never forwards a blocked request; ``steer``
needs the local model's forward passes and is refused here.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Sequence

import httpx

from persona_guard.activations import capture_activations
from persona_guard.encoding import EncodedSample
from persona_guard.errors import PersonaGuardError
from persona_guard.llm_client import TokenLogprobs, render_messages
from persona_guard.models import LoadedModel, eos_token_ids
from persona_guard.projection import Projector
from persona_guard.server.app import ChoiceOutcome, MonitorService, ServerConfig, blocked_outcome, forecast_actions
from persona_guard.server.observe import Metrics
from persona_guard.server.policy import Policy
from persona_guard.server.protocol import ChatParams, RequestError


def _entry(item: dict) -> TokenLogprobs:
    return TokenLogprobs(
        item.get("token", ""),
        float(item.get("logprob", 0.0)),
        [(t.get("token", ""), float(t.get("logprob", 0.0))) for t in item.get("top_logprobs") or []],
    )


class UpstreamBackend:
    """Forward requests to ``url``; read ``projector``'s vectors (None: no readings) with ``loaded``,
    the local copy of the upstream's model."""

    def __init__(
        self,
        loaded: LoadedModel,
        projector: Projector | None,
        policy: Policy,
        *,
        url: str,
        upstream_model: str,
        api_key: str | None = None,
        token_ids: bool = False,
        timeout: float = 600.0,
    ) -> None:
        steering = [t for t, p in policy.traits.items() if p.action == "steer"]
        if steering:
            raise PersonaGuardError(
                f"--upstream cannot steer ({', '.join(steering)}): the upstream's forward passes "
                "are out of reach; use block, alert or log"
            )
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.projector = projector
        self.policy = policy
        self.upstream_model = upstream_model
        self.token_ids = token_ids
        self.stop_ids = frozenset(eos_token_ids(loaded.model, loaded.tokenizer))
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=url.rstrip("/") + "/", timeout=timeout, headers=headers)
        self._lock = threading.Lock()  # one local forward at a time

    @property
    def traits(self) -> dict[str, int]:
        return dict(self.projector.layers) if self.projector is not None else {}

    def prompt_ids(self, messages: Sequence[dict]) -> list[int]:
        return self.tokenizer(render_messages(self.tokenizer, messages), add_special_tokens=False)["input_ids"]

    def read(
        self, prompt_ids: Sequence[int], answers: Sequence[Sequence[int]] | None
    ) -> list[tuple[dict[str, float], dict[str, float | None]]]:
        """(prompt_last, response_mean) per answer; ``answers=None`` reads the prompt alone."""
        answers = [[]] if answers is None else answers
        if self.projector is None:
            return [({}, {}) for _ in answers]
        samples = [EncodedSample(tuple(prompt_ids) + tuple(ids), len(prompt_ids)) for ids in answers]
        layers = self.projector.capture_layers
        with_response = [i for i, ids in enumerate(answers) if ids]
        with self._lock:
            prompt = self.projector.project(
                capture_activations(self.loaded, samples, layers, ("prompt_last",), progress=False)["prompt_last"]
            )
            response = (
                self.projector.project(
                    capture_activations(
                        self.loaded, [samples[i] for i in with_response], layers, ("response_mean",), progress=False
                    )["response_mean"]
                )
                if with_response
                else {}
            )
        return [
            (
                {trait: float(values[index]) for trait, values in prompt.items()},
                {
                    trait: float(values[with_response.index(index)]) if index in with_response else None
                    for trait, values in response.items()
                }
                if response
                else dict.fromkeys(prompt),
            )
            for index in range(len(samples))
        ]

    def _payload(self, params: ChatParams) -> dict:
        payload: dict = {
            "model": self.upstream_model,
            "messages": list(params.messages),
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": params.n,
            "stream": params.stream,
        }
        for key, value in (("seed", params.seed), ("stop", list(params.stop) or None)):
            if value is not None:
                payload[key] = value
        if params.logprobs:
            payload["logprobs"] = True
            payload["top_logprobs"] = params.top_logprobs
        if self.token_ids:
            payload["return_token_ids"] = True
        return payload

    async def run(self, params: ChatParams, prompt_ids: list[int]) -> AsyncIterator[tuple]:
        """Same events as :meth:`persona_guard.server.app.LocalBackend.run`."""
        if params.monitor and any(p.action == "block" for p in self.policy.traits.values()):
            [(prompt_last, _)] = await asyncio.to_thread(self.read, prompt_ids, None)
            action, _, reasons = forecast_actions(self.policy, prompt_last)
            if action == "block":
                yield ("done", [blocked_outcome(prompt_last, reasons) for _ in range(params.n)])
                return
        texts = [""] * params.n
        ids: list[list[int] | None] = [None] * params.n
        finish = ["stop"] * params.n
        logprobs: list[list[TokenLogprobs]] = [[] for _ in range(params.n)]
        try:
            if params.stream:
                async with self.client.stream("POST", "chat/completions", json=self._payload(params)) as reply:
                    if reply.status_code != 200:
                        await reply.aread()
                        self._raise(reply)
                    async for line in reply.aiter_lines():
                        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                            continue
                        for choice in json.loads(line[5:]).get("choices") or []:
                            index = choice.get("index", 0)
                            text = (choice.get("delta") or {}).get("content") or ""
                            entries = [_entry(e) for e in ((choice.get("logprobs") or {}).get("content") or [])]
                            texts[index] += text
                            logprobs[index] += entries
                            if choice.get("token_ids") is not None:
                                ids[index] = (ids[index] or []) + list(choice["token_ids"])
                            if choice.get("finish_reason"):
                                finish[index] = choice["finish_reason"]
                            if text or entries:
                                yield ("delta", index, text, entries[0] if entries else None)
            else:
                reply = await self.client.post("chat/completions", json=self._payload(params))
                if reply.status_code != 200:
                    self._raise(reply)
                for choice in reply.json().get("choices") or []:
                    index = choice.get("index", 0)
                    texts[index] = (choice.get("message") or {}).get("content") or ""
                    finish[index] = choice.get("finish_reason") or "stop"
                    logprobs[index] = [_entry(e) for e in ((choice.get("logprobs") or {}).get("content") or [])]
                    if choice.get("token_ids") is not None:
                        ids[index] = list(choice["token_ids"])
        except httpx.HTTPError as error:
            raise RequestError(
                f"upstream unreachable: {type(error).__name__}", status=502, kind="upstream_error"
            ) from None
        answers = [self._answer_ids(ids[i], texts[i]) for i in range(params.n)]
        readings = await asyncio.to_thread(self.read, prompt_ids, answers) if params.monitor else [({}, {})] * params.n
        yield (
            "done",
            [ChoiceOutcome(texts[i], answers[i], finish[i], logprobs[i], *readings[i]) for i in range(params.n)],
        )

    def _answer_ids(self, ids: list[int] | None, text: str) -> list[int]:
        """The answer's tokens as the local engine counts them: vLLM's ``token_ids`` end with the EOS
        that stopped the answer, which a local reading never includes."""
        if ids is None:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[:-1] if ids and ids[-1] in self.stop_ids else ids

    @staticmethod
    def _raise(reply: httpx.Response) -> None:
        try:
            message = reply.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = reply.text[:300]
        status = reply.status_code if 400 <= reply.status_code < 500 else 502
        raise RequestError(
            f"upstream answered HTTP {reply.status_code}: {message}",
            status=status,
            kind="invalid_request_error" if status < 500 else "upstream_error",
        )


def upstream_service(
    loaded: LoadedModel,
    projector: Projector | None,
    policy: Policy,
    config: ServerConfig,
    *,
    url: str,
    upstream_model: str | None = None,
    api_key: str | None = None,
    token_ids: bool = False,
) -> MonitorService:
    backend = UpstreamBackend(
        loaded,
        projector,
        policy,
        url=url,
        upstream_model=upstream_model or config.model_name,
        api_key=api_key,
        token_ids=token_ids,
    )
    return MonitorService(backend, policy, config, Metrics())
