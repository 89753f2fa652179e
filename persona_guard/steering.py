"""Adding or ablating persona directions in the residual stream, as a context manager.

Steering at layer ``l`` edits ``hidden_states[l]``, exactly where a vector's ``directions[l]`` was
measured (see :mod:`persona_guard.models`): layer 0 edits the input of the first decoder block (the
embedding output, after any embedding scaling), ``1 <= l < n_layers`` the output of block ``l - 1``,
and ``n_layers`` the output of the final norm (what the LM head reads). Hooks are pure functions of
their input: they never write in place, keep no per-call state (so they behave the same when
gradient checkpointing re-runs a block), and accept blocks that return a tensor or a tuple.

Positions (``positions="prompt"|"response"``) follow one rule: a position is *response* if the
token it predicts is a response token or it is a response token. That is every response token and
also the last prompt token, which predicts the first answer token (the paper's steerer steers the
last position of every forward for "response"). During ``generate`` with a KV cache, that is the
last position of every forward: the prefill's last position, then each new token. ``prompt`` is the
complement, so ``prompt`` and ``response`` together are ``all``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from persona_guard.errors import PersonaGuardError
from persona_guard.models import DecoderLayers
from persona_guard.schema import bounds
from persona_guard.vectors import PersonaVector

Operator = Literal["add", "ablate"]
Positions = Literal["all", "prompt", "response"]
OPERATORS = ("add", "ablate")
POSITIONS = ("all", "prompt", "response")

#: The largest |coefficient| any steering flag, recipe or policy accepts. The paper steers with
#: 0.5-2.5, persona-guard's recipes with up to 8; a thousand already swamps every hidden state, and
#: far beyond (around 1e18 / ||v||) the hidden states' squared norms overflow and the answer decodes
#: to nothing, so larger values are refused as typos rather than run.
MAX_ABS_COEF = 1000.0
#: field metadata (:func:`persona_guard.schema.bounds`) of every steering coefficient
COEF_BOUNDS = bounds(ge=-MAX_ABS_COEF, le=MAX_ABS_COEF,
                     help="steering strength: the vector times this is added (negative suppresses the trait)")

DirectionsLike = PersonaVector | torch.Tensor | Mapping[int, torch.Tensor]


def per_layer_directions(directions: DirectionsLike, layers: int | Sequence[int] | None) -> dict[int, torch.Tensor]:
    """Normalise the accepted inputs to ``{layer: direction [d]}``.

    A :class:`PersonaVector` or a ``[layers, d]`` tensor is indexed by layer (default: the vector's
    default layer); a ``[d]`` tensor is used at every given layer; a mapping is taken as is.
    """
    if isinstance(layers, int):
        layers = [layers]
    if isinstance(directions, Mapping):
        chosen = dict(directions) if layers is None else {l: directions[l] for l in layers}
    elif isinstance(directions, PersonaVector):
        layers = [directions.resolve_layer(None)] if layers is None else layers
        chosen = {l: directions.direction(l) for l in layers}
    elif isinstance(directions, torch.Tensor) and directions.ndim == 1:
        if layers is None:
            raise PersonaGuardError("a single direction needs explicit layers")
        chosen = {l: directions for l in layers}
    elif isinstance(directions, torch.Tensor) and directions.ndim == 2:
        if layers is None:
            raise PersonaGuardError("a [layers, d] tensor needs explicit layers")
        chosen = {l: directions[l] for l in layers}
    else:
        raise PersonaGuardError(f"cannot steer with {type(directions).__name__}")
    if not chosen:
        raise PersonaGuardError("no layers to steer")
    return {int(l): v.detach().float() for l, v in chosen.items()}


def steering_delta(hidden: torch.Tensor, direction: torch.Tensor, coef: float, operator: str) -> torch.Tensor:
    """What the hook adds to ``hidden [..., d]``: ``coef * v`` for ``add``; minus the component along
    ``v`` for ``ablate`` (``coef`` is ignored there: the component is removed entirely)."""
    direction = direction.to(device=hidden.device, dtype=hidden.dtype)
    if operator == "add":
        return (coef * direction).expand_as(hidden)
    unit = direction / direction.norm().clamp(min=1e-12)
    return -(hidden @ unit).unsqueeze(-1) * unit


class Steering:
    """Steer a model while attached: ``with Steering(loaded.layers, vector, layers=12, coef=-4): ...``.

    ``decoder``: the model's located :class:`~persona_guard.models.DecoderLayers` (``loaded.layers``
    of a :class:`~persona_guard.models.LoadedModel`, or ``DecoderLayers.locate(model)``).

    ``positions`` restricts the edit to ``prompt`` or ``response`` positions (rule in the module
    docstring). Without a mask, the last position of each forward is the response one, which is
    exact for ``generate`` (prefill, then one token per step; speculative decoding, which feeds
    several new tokens per step, is not supported). For a teacher-forced forward over prompt +
    response, call :meth:`set_response_mask` with the ``[batch, seq]`` mask of response tokens
    first; the position before each row's first response token is steered as well.

    ``only_in_training`` makes the hooks act only while the hooked module is in training mode,
    which is what preventative steering needs: evaluation and generation see the plain model.
    """

    def __init__(self, decoder: DecoderLayers, directions: DirectionsLike, *,
                 layers: int | Sequence[int] | None = None, coef: float = 1.0,
                 operator: Operator = "add", positions: Positions = "all",
                 only_in_training: bool = False) -> None:
        if operator not in OPERATORS:
            raise PersonaGuardError(f"unknown operator {operator!r}; choose from {', '.join(OPERATORS)}")
        if positions not in POSITIONS:
            raise PersonaGuardError(f"unknown positions {positions!r}; choose from {', '.join(POSITIONS)}")
        self.decoder = decoder
        self.directions = per_layer_directions(directions, layers)
        self.coef = float(coef)
        self.operator = operator
        self.positions = positions
        self.only_in_training = only_in_training
        self.response_mask: torch.Tensor | None = None
        self._handles: list = []
        hidden_size = next(iter(self.directions.values())).shape[-1]
        for layer, direction in self.directions.items():
            if not 0 <= layer <= len(decoder):
                raise PersonaGuardError(
                    f"cannot steer layer {layer}: layers are 0..{len(decoder)} (hidden_states index)")
            if direction.shape != (hidden_size,):
                raise PersonaGuardError(f"direction for layer {layer} has shape {tuple(direction.shape)}")
            if not bool(torch.isfinite(self.coef * direction.float()).all()):
                raise PersonaGuardError(f"coef {self.coef:g} times the direction for layer {layer} is not finite "
                                        "(NaN, or too large for float32)")

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def set_response_mask(self, mask: torch.Tensor | None) -> None:
        """Mark the response tokens ``[batch, seq]`` of teacher-forced forwards of that shape."""
        self.response_mask = None if mask is None else mask.bool()

    def _position_mask(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """``[batch, seq, 1]`` weights of the positions to edit, or None for all of them."""
        if self.positions == "all":
            return None
        if self.response_mask is not None and self.response_mask.shape == hidden.shape[:2]:
            tokens = self.response_mask.to(hidden.device)
            response = tokens.clone()
            response[:, :-1] |= tokens[:, 1:]  # the position that predicts the first response token
        else:  # generate(): the last position of each forward predicts the next answer token
            response = torch.zeros(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
            response[:, -1] = True
        keep = response if self.positions == "response" else ~response
        return keep.unsqueeze(-1).to(hidden.dtype)

    def _make_hook(self, direction: torch.Tensor):
        def edit(module: nn.Module, hidden: torch.Tensor) -> torch.Tensor | None:
            if self.only_in_training and not module.training:
                return None
            delta = steering_delta(hidden, direction, self.coef, self.operator)
            mask = self._position_mask(hidden)
            return hidden + (delta if mask is None else delta * mask)
        return edit

    def attach(self) -> Steering:
        if self._handles:
            raise PersonaGuardError("steering is already attached")
        try:
            for layer, direction in self.directions.items():
                self._handles.append(self.decoder.hook(layer, self._make_hook(direction)))
        except BaseException:
            self.detach()
            raise
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> Steering:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()
