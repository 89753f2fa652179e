"""Watching trait expression drift while a model trains.

Every ``every_steps`` optimiser steps, :class:`TraitDriftCallback` projects a fixed probe set (by
default the trait's held-out eval questions) onto each watched persona vector and logs
``trait/<name>/prompt_last`` (mean last-prompt-token projection: the paper's finetuning-shift
predictor) and, with ``answer_tokens > 0``, ``trait/<name>/response_mean`` (mean response
projection of short greedy answers). The probe runs in eval mode, where preventative-steering hooks
(``only_in_training``) are inactive, so the numbers describe the plain model being trained.

Metrics go through ``trainer.log``, so they reach every reporter the Trainer uses (W&B,
TensorBoard, console) and ``state.log_history``; bind the callback with :meth:`bind`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from persona_guard.activations import capture_activations
from persona_guard.encoding import encode_chat
from persona_guard.errors import PersonaGuardError
from persona_guard.generation import GenerationConfig, generate_responses
from persona_guard.models import LoadedModel, unwrap_model
from persona_guard.projection import Projector
from persona_guard.schema import bounds, check
from persona_guard.vectors import PersonaVector


def generation_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DeepSpeed ``.module`` wrappers (which have no ``generate``), keeping PEFT."""
    while not hasattr(model, "generate") and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


@dataclass(frozen=True)
class ProbeSettings:
    """How :class:`TraitDriftCallback` probes: its keyword arguments and the probe fields of a
    recipe's ``drift:`` section, declared once here (checked by :mod:`persona_guard.schema`).

    ``every_steps``: optimiser steps between probes (plus one before training). ``answer_tokens`` > 0
    also generates greedy answers of that many tokens and logs their mean response projection
    (slower: generation on every probe). ``batch_size``: probe prompts per forward pass.
    """

    every_steps: int = field(default=50, metadata=bounds(ge=1))
    answer_tokens: int = field(default=0, metadata=bounds(ge=0))
    batch_size: int = field(default=8, metadata=bounds(ge=1))

    def __post_init__(self) -> None:
        check(self)


class TraitDriftCallback(TrainerCallback):
    """Log probe-set projections onto persona vectors every ``every_steps`` steps (and at step 0).

    ``vectors`` maps a metric name to ``(vector, layer)`` (``layer=None``: the vector's default).
    ``questions`` are user prompts. ``settings`` (default :class:`ProbeSettings`), with ``options``
    (its field names, e.g. ``every_steps=25``) replacing single fields.
    """

    def __init__(self, vectors: dict[str, tuple[PersonaVector, int | None]], questions: Sequence[str],
                 settings: ProbeSettings | None = None, *, system_prompt: str | None = None,
                 layers_path: str | None = None, **options: Any) -> None:
        if not vectors:
            raise PersonaGuardError("TraitDriftCallback needs at least one vector to watch")
        if not questions:
            raise PersonaGuardError("TraitDriftCallback needs at least one probe question")
        try:
            self.settings = replace(settings or ProbeSettings(), **options)
        except TypeError as error:
            raise PersonaGuardError(f"TraitDriftCallback: {error}") from None
        self.projector = Projector.of_pairs(vectors)
        prefix = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self.prompts = [[*prefix, {"role": "user", "content": q}] for q in questions]
        self.layers_path = layers_path
        self.trainer = None
        self.tokenizer = None
        self.loaded: LoadedModel | None = None  # the trainer's model, its layers located at train begin

    def bind(self, trainer) -> TraitDriftCallback:
        """Register with ``trainer`` and keep a reference to it for ``trainer.log``."""
        self.trainer = trainer
        self.tokenizer = trainer.processing_class
        trainer.add_callback(self)
        return self

    @torch.no_grad()
    def measure(self, loaded: LoadedModel) -> dict[str, float]:
        """Mean projections of the probe set, e.g. ``{"trait/evil/prompt_last": 3.1}``."""
        model, tokenizer = loaded.model, loaded.tokenizer
        samples = [encode_chat(tokenizer, prompt) for prompt in self.prompts]
        reductions = {"prompt_last": samples}
        if self.settings.answer_tokens > 0:
            config = GenerationConfig(max_new_tokens=self.settings.answer_tokens, batch_size=self.settings.batch_size)
            answers = generate_responses(generation_model(model), tokenizer, self.prompts, config, progress=False)
            answered = [encode_chat(tokenizer, prompt, answer or " ") for prompt, answer in zip(self.prompts, answers)]
            reductions["response_mean"] = answered
        metrics: dict[str, float] = {}
        for reduction, encoded in reductions.items():
            hidden = capture_activations(loaded, encoded, self.projector.capture_layers, (reduction,),
                                         batch_size=self.settings.batch_size, progress=False)[reduction]
            for name, projection in self.projector.project(hidden).items():
                metrics[f"trait/{name}/{reduction}"] = round(float(projection.mean()), 4)
        return metrics

    def _log(self, control) -> None:
        from transformers import Trainer

        if self.trainer is None or self.loaded is None:
            raise PersonaGuardError(
                "TraitDriftCallback is not bound to a trainer: call callback.bind(trainer) "
                "instead of passing it in callbacks=[...]")
        # Every rank runs the probe (sharded models need all ranks in the forward); the Trainer's
        # reporters only write on the main process. Two details of Trainer.log matter here:
        # its on_log clears control.should_log, which would swallow the loss row due at this
        # step, so the flag is restored; and SFTTrainer.log folds its running token metrics
        # into whatever is logged, so the base method is called to leave those on the loss row.
        should_log = control.should_log
        Trainer.log(self.trainer, self.measure(self.loaded))
        control.should_log = should_log

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.loaded = LoadedModel(model, self.tokenizer, unwrap_model(model).config.name_or_path, self.layers_path)
        self._log(control)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.settings.every_steps == 0:
            self._log(control)
