"""Batched generation that reads persona projections from its own forward passes.

One decode loop serves a batch of rows (a row is one choice of one request), left-padded, with a
KV cache. Hooks at the monitored layers see every forward of that loop:

* the prefill forward gives each row's **forecast**: the projection of the last prompt token
  (``prompt_last``, the paper's "before any token is generated" reading);
* every later forward feeds one generated token per row, so its hidden state at the vector's layer
  is exactly what a teacher-forced pass over prompt + answer would compute at that position; the
  **response projection** (``response_mean``) is the mean of those projections over the answer's
  tokens. A row that stops at ``max_tokens`` needs its last token fed once more: that forward is
  the loop's next step (shared with rows still generating), not a second pass over the text; when
  no row is still generating it stops right after the deepest monitored layer.

Per row: its own temperature, seed (a private ``torch.Generator``, so a seeded answer does not
depend on its batch-mates), stop strings, ``max_tokens`` and logprobs. Logprobs are the
log-softmax of the raw logits, before temperature, as OpenAI reports them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import TopPLogitsWarper

from persona_guard.activations import StopForward, capture_hooks, position_ids_from_mask
from persona_guard.errors import PersonaGuardError
from persona_guard.llm_client import TokenLogprobs, _merge_top
from persona_guard.models import LoadedModel, eos_token_ids, model_device
from persona_guard.projection import Projector

#: TopPLogitsWarper reads no input ids
_NO_INPUT_IDS = torch.empty((1, 0), dtype=torch.long)


@dataclass(frozen=True)
class RowSpec:
    """One answer to generate. ``top_logprobs=None``: no logprobs; 0: the chosen token's only."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None
    top_p: float = 1.0  # nucleus sampling: the smallest set of tokens holding this probability mass


@dataclass
class RowResult:
    """What one row produced. ``token_ids`` are the answer's tokens (no EOS, nothing past a stop
    string); ``response_sums[trait] / len(token_ids)`` is the response projection."""

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    prompt_last: dict[str, float] = field(default_factory=dict)
    response_sums: dict[str, float] = field(default_factory=dict)
    dropped: bool = False

    def response_mean(self, trait: str) -> float | None:
        """Mean projection over the answer's tokens; ``None`` for an empty answer."""
        return (
            self.response_sums[trait] / len(self.token_ids) if self.token_ids and trait in self.response_sums else None
        )


#: ``on_delta(row, text, logprob_entry)``: new text of a row as it becomes final (streaming).
DeltaCallback = Callable[[int, str, "TokenLogprobs | None"], None]
#: ``on_prefill(prompt_last)`` -> rows to drop before any token is sampled (block / steer elsewhere).
PrefillCallback = Callable[[list[dict[str, float]]], Sequence[int]]


class _Row:
    """Decode state of one row."""

    def __init__(self, spec: RowSpec, tokenizer, stop_ids: frozenset[int]) -> None:
        self.spec = spec
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.result = RowResult()
        self.active = True
        self.feed_counts = False  # the token fed at the next forward is one of the answer's
        self.emitted = 0  # characters of text already handed to on_delta
        self.generator = torch.Generator()
        if spec.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(spec.seed)

    def finish(self, reason: str) -> None:
        self.active = False
        self.result.finish_reason = reason

    def take(self, token_id: int, logits: torch.Tensor) -> None:
        """Accept a sampled token: EOS ends the row, a stop string truncates it."""
        spec, result = self.spec, self.result
        if spec.top_logprobs is not None:
            logprobs = logits.float().log_softmax(-1)
            entry = TokenLogprobs(
                self.tokenizer.decode([token_id]),
                float(logprobs[token_id]),
                _merge_top(self.tokenizer, logprobs, spec.top_logprobs) if spec.top_logprobs else [],
            )
        if token_id in self.stop_ids:
            self.feed_counts = False
            self.finish("stop")
            return
        text = self.tokenizer.decode(result.token_ids + [token_id], skip_special_tokens=True)
        hits = [i for i in (text.find(s, max(0, len(result.text) - len(s))) for s in spec.stop) if i >= 0]
        if hits:
            cut = min(hits)
            self.feed_counts = cut > len(result.text)  # the token put text before the stop string
            if self.feed_counts:
                result.token_ids.append(token_id)
                if spec.top_logprobs is not None:
                    result.logprobs.append(entry)
            result.text = text[:cut]
            self.finish("stop")
            return
        result.token_ids.append(token_id)
        if spec.top_logprobs is not None:
            result.logprobs.append(entry)
        result.text = text
        self.feed_counts = True
        if len(result.token_ids) >= spec.max_tokens:
            self.finish("length")

    def pending_text(self, final: bool) -> str:
        """Text safe to stream now: hold back a partial character and a possible stop-string start."""
        text = self.result.text
        end = len(text)
        if not final:
            if text.endswith("\ufffd"):
                end -= 1
            hold = max((len(s) - 1 for s in self.spec.stop), default=0)
            end = max(self.emitted, end - hold)
        chunk, self.emitted = text[self.emitted : end], max(self.emitted, end)
        return chunk


class Engine:
    """Generate batches of rows with ``loaded`` and read ``projector``'s vectors at their layers from
    the same forwards (``None``: no readings). Thread-compatible, not thread-safe: one caller at a
    time (the server's batching worker).
    """

    def __init__(self, loaded: LoadedModel, projector: Projector | None = None) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.projector = projector
        self.device = model_device(self.model)
        self.stop_ids = frozenset(eos_token_ids(loaded.model, loaded.tokenizer))

    @property
    def traits(self) -> dict[str, int]:
        """``{trait: layer}`` of the vectors read (empty without a projector)."""
        return dict(self.projector.layers) if self.projector is not None else {}

    @torch.no_grad()
    def generate(
        self,
        specs: Sequence[RowSpec],
        *,
        monitor: bool = True,
        on_delta: DeltaCallback | None = None,
        on_prefill: PrefillCallback | None = None,
    ) -> list[RowResult]:
        """Generate every row in one batch; readings only when ``monitor`` (and vectors exist)."""
        if not specs:
            return []
        rows = [_Row(spec, self.tokenizer, self.stop_ids) for spec in specs]
        pad = self.loaded.pad_token_id
        width = max(len(spec.prompt_ids) for spec in specs)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, spec in enumerate(specs):
            if not spec.prompt_ids:
                raise PersonaGuardError(f"row {index} has an empty prompt")
            input_ids[index, width - len(spec.prompt_ids) :] = torch.tensor(spec.prompt_ids)
            mask[index, width - len(spec.prompt_ids) :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        projector = self.projector if monitor else None
        layers = projector.capture_layers if projector is not None else []
        last_position: dict[int, torch.Tensor] = {}  # layer -> hidden [rows, d] at the last position
        state = {"last": False}

        def on_hidden(layer: int, hidden: torch.Tensor) -> None:
            last_position[layer] = hidden[:, -1]
            if state["last"] and layer == layers[-1]:
                raise StopForward

        def readings() -> dict[str, list[float]]:
            """The projections of the forward that just ran, at each row's last position."""
            if projector is None:
                return {}
            hidden = torch.stack([last_position.pop(layer) for layer in layers], 1)
            return {trait: values.cpu().tolist() for trait, values in projector.project(hidden).items()}

        was_training = self.model.training
        self.model.eval()
        try:
            with capture_hooks(self.loaded.layers, layers, on_hidden, stop_after_deepest=False) \
                    if layers else contextlib.nullcontext():
                position_ids = position_ids_from_mask(mask)
                output = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=True)
                for trait, values in readings().items():  # the forecast: the last prompt token
                    for row, value in zip(rows, values):
                        row.result.prompt_last[trait] = value
                        row.result.response_sums[trait] = 0.0
                cache, logits = output.cache, output.logits[:, -1]
                if on_prefill is not None:
                    for index in on_prefill([row.result.prompt_last for row in rows]):
                        rows[index].result.dropped = True
                        rows[index].finish("content_filter")
                next_position = position_ids[:, -1:]
                while True:
                    for index, row in enumerate(rows):
                        if not row.active:
                            continue
                        known = len(row.result.logprobs)
                        row.take(self._sample(row, logits[index]), logits[index])
                        if on_delta is not None:
                            chunk = row.pending_text(final=not row.active)
                            entry = row.result.logprobs[-1] if len(row.result.logprobs) > known else None
                            if chunk or entry is not None:
                                on_delta(index, chunk, entry)
                    if not any(row.feed_counts for row in rows):
                        break
                    if projector is None and not any(row.active for row in rows):
                        break
                    fed = torch.tensor(
                        [[row.result.token_ids[-1] if row.feed_counts else pad] for row in rows], device=self.device
                    )
                    mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=self.device)], 1)
                    next_position = next_position + 1
                    state["last"] = not any(row.active for row in rows)  # only finished rows' last tokens
                    try:
                        output = self.model(
                            input_ids=fed, attention_mask=mask, position_ids=next_position, cache=cache, use_cache=True
                        )
                    except StopForward:
                        output = None
                    for trait, values in readings().items():  # one answer token per row was fed
                        for row, value in zip(rows, values):
                            if row.feed_counts:
                                row.result.response_sums[trait] += value
                    if output is None:
                        break
                    cache, logits = output.cache, output.logits[:, -1]
                    for row in rows:  # a finished row's last token has now been fed
                        if not row.active:
                            row.feed_counts = False
        finally:
            self.model.train(was_training)
        return [row.result for row in rows]

    @staticmethod
    def _sample(row: _Row, logits: torch.Tensor) -> int:
        if row.spec.temperature <= 0:
            return int(logits.argmax())
        scores = logits.float()[None] / row.spec.temperature  # temperature, then top_p, as generate warps
        if row.spec.top_p < 1:
            scores = TopPLogitsWarper(row.spec.top_p)(_NO_INPUT_IDS, scores)
        return int(torch.multinomial(scores.softmax(-1)[0].cpu(), 1, generator=row.generator))
