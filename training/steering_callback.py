"""Preventative steering during fine-tuning, as a ``transformers`` ``TrainerCallback``.

Chen et al. (2025) add ``coef * v`` to the residual stream *while training* on data that would
otherwise push the model along the trait direction ``v``: the optimiser no longer needs to move the
weights along ``v`` to fit the data, so the fine-tuned model (evaluated without steering) expresses
the trait less. ``operator="ablate"`` instead projects ``v`` out of the residual stream during
training (CAFT-style concept ablation).

The hooks come from :class:`persona_guard.steering.Steering` with ``only_in_training=True``: they act only
while the hooked block is in training mode, so evaluation and generation during or after training
see the plain model. They are pure functions of the block output, which makes them safe under
gradient-checkpoint recomputation and packed / padding-free batches (``positions="all"`` needs no
prompt boundary).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import nn
from transformers import TrainerCallback

from persona_guard.errors import PersonaGuardError
from persona_guard.models import DecoderLayers, model_device, unwrap_model
from persona_guard.schema import FieldError, bounds, check
from persona_guard.steering import COEF_BOUNDS, Operator, Steering
from persona_guard.vectors import PersonaVector

MultiLayerMode = Literal["incremental", "independent"]
TrainingPositions = Literal["all", "response"]
ScheduleKind = Literal["constant", "linear_warmup"]


@dataclass(frozen=True)
class SteeringSettings:
    """How :class:`PreventativeSteeringCallback` steers: its keyword arguments and a recipe's
    ``steering:`` section (plus ``vector``), declared once here and checked by :mod:`persona_guard.schema`.

    ``layers``: one layer or several (``hidden_states`` indices, see :mod:`persona_guard.models`);
    ``None`` steers the vector's ``default_layer``, so state a layer only to override the vector's.
    ``coef`` with ``schedule``: ``constant`` (the paper's setting) or ``linear_warmup``, a ramp
    from 0 to ``coef`` over ``warmup_steps`` optimiser steps (or ``warmup_ratio`` of the run), then
    held. ``operator``, ``positions`` and ``multi_layer``: see the callback.
    """

    layers: tuple[int, ...] | int | None = field(default=None, metadata=bounds(ge=0))
    coef: float = field(default=5.0, metadata=COEF_BOUNDS)
    schedule: ScheduleKind = "constant"
    warmup_steps: int = field(default=0, metadata=bounds(ge=0))
    warmup_ratio: float = field(default=0.0, metadata=bounds(ge=0, le=1))
    operator: Operator = "add"
    positions: TrainingPositions = "all"
    multi_layer: MultiLayerMode = "incremental"

    def __post_init__(self) -> None:
        check(self)
        if self.layers == ():
            raise FieldError("layers", "preventative steering needs at least one layer")

    def coefficient(self, step: int, max_steps: int) -> float:
        """The coefficient at optimiser ``step`` of ``max_steps`` (0-based; the schedule above)."""
        if self.schedule == "constant":
            return self.coef
        warmup = self.warmup_steps or int(round(self.warmup_ratio * max(max_steps, 0)))
        if warmup <= 0:
            return self.coef
        return self.coef * min(1.0, (step + 1) / warmup)


def incremental_directions(vector: PersonaVector, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """Per-layer increments for multi-layer steering (paper appendix J.3).

    Adding ``coef * v[l]`` at every layer would compound: the residual stream carries everything
    added upstream. Adding ``v[l] - v[previous steered layer]`` instead (the first layer gets
    ``v[l]`` itself) makes the stream carry exactly ``coef * v[l]`` at each steered depth.
    """
    increments: dict[int, torch.Tensor] = {}
    previous: torch.Tensor | None = None
    for layer in sorted(set(layers)):
        direction = vector.direction(layer)
        increments[layer] = direction if previous is None else direction - previous
        previous = direction
    return increments


class PreventativeSteeringCallback(TrainerCallback):
    """Steer the decoder layer(s) of the model being trained, for the duration of ``train()``.

    Works with ``transformers.Trainer`` and TRL's ``SFTTrainer`` through PEFT, DDP, DeepSpeed and
    FSDP wrappers (:func:`persona_guard.models.decoder_layers` unwraps them). Hooks are attached in
    ``on_train_begin`` and removed in ``on_train_end``; ``train()`` can also raise, so wrap it in
    :func:`train_with_cleanup` (or ``with callback: trainer.train()``) to be sure no hook survives.

    ``layers``: one layer or several; with several, ``multi_layer="incremental"`` (default) adds
    ``coef * (v[l] - v[l_prev])`` so each depth carries ``coef * v[l]``, ``"independent"`` adds
    ``coef * v[l]`` at each layer. ``ablate`` always removes each layer's own direction.

    ``positions="response"`` steers the tokens that carry loss (``labels != -100``: the completion,
    with TRL's completion-only loss), read from each training batch, and the position before each
    run of them, which predicts the first answer token (the rule of :mod:`persona_guard.steering`);
    it needs no prompt length, so packed / padding-free batches work. ``"all"`` (the paper's
    setting) steers every token.
    """

    def __init__(self, vector: PersonaVector, settings: SteeringSettings | None = None, *,
                 layers_path: str | None = None, **options: Any) -> None:
        """``settings`` (default :class:`SteeringSettings`), with ``options`` (its field names, e.g.
        ``layers=20, coef=4.0``) replacing single fields; ``layers_path``: where the decoder layers
        are, for architectures :func:`persona_guard.models.decoder_layers` does not find (as in
        :func:`~persona_guard.models.load_model`); they are located at each attach."""
        try:
            settings = replace(settings or SteeringSettings(), **options)
        except TypeError as error:
            raise PersonaGuardError(f"PreventativeSteeringCallback: {error}") from None
        layers = settings.layers
        layer_list = [vector.resolve_layer(None)] if layers is None else (
            [layers] if isinstance(layers, int) else list(layers))
        for layer in layer_list:
            vector.resolve_layer(layer)
        self.vector = vector
        self.settings = settings
        self.layers = sorted(set(layer_list))
        self.layers_path = layers_path
        self.steering: Steering | None = None
        #: Forward passes of decoder blocks that were steered (all steered layers counted); lets
        #: tests and multi-process runs confirm that steering really happened on this rank.
        self.steered_calls = 0
        #: The coefficient of the latest training step (None before training); after a warm-up
        #: this is ``settings.coef``.
        self.coef: float | None = None
        self._extra_handles: list = []

    @property
    def operator(self) -> Operator:
        return self.settings.operator

    def directions(self) -> dict[int, torch.Tensor]:
        """What each steered layer adds (or ablates), before the coefficient."""
        if self.operator == "add" and self.settings.multi_layer == "incremental":
            return incremental_directions(self.vector, self.layers)
        return {layer: self.vector.direction(layer) for layer in self.layers}

    @property
    def active(self) -> bool:
        return self.steering is not None and self.steering.attached

    def attach(self, model: nn.Module, step: int = 0, max_steps: int = 0) -> None:
        """Hook ``model`` (any wrapper), its decoder layers located once here; replaces hooks from
        an earlier attach."""
        self.remove()
        layers = DecoderLayers.locate(model, self.layers_path)
        self.vector.check_compatible(unwrap_model(model).config.hidden_size, len(layers))
        n_layers = len(layers)
        if self.operator == "add" and self.settings.multi_layer == "incremental" and len(self.layers) > 1 \
                and n_layers in self.layers:
            raise PersonaGuardError(
                f"incremental multi-layer steering cannot include layer {n_layers}: the final norm sits "
                "between it and the layers below and rescales what they added; use "
                "multi_layer='independent' or leave out the last layer")
        device = model_device(model)
        directions = {layer: v.to(device) for layer, v in self.directions().items()}
        self.coef = self.settings.coefficient(step, max_steps)
        self.steering = Steering(layers, directions, coef=self.coef, operator=self.operator,
                                 positions=self.settings.positions, only_in_training=True).attach()
        if self.settings.positions == "response":
            self._extra_handles.append(unwrap_model(model).register_forward_pre_hook(
                self._read_labels, with_kwargs=True))
        for layer in self.layers:  # the block that runs for each steered layer (block 0 for layer 0)
            self._extra_handles.append(layers.blocks[max(layer - 1, 0)].register_forward_hook(self._count))

    def _read_labels(self, module: nn.Module, args, kwargs) -> None:
        # Runs before every forward of the causal LM; the mask stays set through the backward
        # pass, so checkpoint recomputation sees the same positions.
        if not module.training:
            return
        labels = kwargs.get("labels")
        if labels is None:
            raise PersonaGuardError(
                "preventative steering with positions='response' needs labels in the training batch "
                "(tokens with labels != -100 are steered); use positions='all' otherwise")
        self.steering.set_response_mask(labels != -100)

    def _count(self, module: nn.Module, args, output) -> None:
        if module.training:
            self.steered_calls += 1

    def remove(self) -> None:
        """Remove every hook this callback added (idempotent)."""
        if self.steering is not None:
            self.steering.detach()
            self.steering = None
        for handle in self._extra_handles:
            handle.remove()
        self._extra_handles = []

    # TrainerCallback events -------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise PersonaGuardError("PreventativeSteeringCallback: the trainer passed no model")
        self.attach(model, state.global_step, state.max_steps)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.steering is not None:
            self.coef = self.steering.coef = self.settings.coefficient(state.global_step, state.max_steps)

    def on_train_end(self, args, state, control, **kwargs):
        self.remove()

    # Exception safety ------------------------------------------------------------------------
    def __enter__(self) -> PreventativeSteeringCallback:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def train_with_cleanup(trainer, **train_kwargs):
    """``trainer.train(**train_kwargs)``, removing every steering hook even if training raises."""
    steering = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, PreventativeSteeringCallback)]
    try:
        return trainer.train(**train_kwargs)
    finally:
        for callback in steering:
            callback.remove()
