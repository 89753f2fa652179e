"""Projecting hidden states onto persona vectors, each at its own layer: one object for screening,
trait-drift monitoring (and serving).

The measure is the paper's scalar projection ``h_l . v_l / |v_l|`` (Chen et al. 2025, section 3),
:meth:`PersonaVector.project`; layers are ``hidden_states`` indices (:mod:`persona_guard.models`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from persona_guard.errors import PersonaGuardError
from persona_guard.vectors import PersonaVector


@dataclass(frozen=True)
class Projector:
    """Named persona vectors, each with the layer it is read at.

    Build with :meth:`of` (each vector's ``default_layer`` unless overridden); capture
    :attr:`capture_layers` (e.g. ``capture_activations(model, samples, projector.capture_layers)``)
    and pass the captured ``[n, len(capture_layers), d]`` tensor to :meth:`project`.
    """

    vectors: Mapping[str, PersonaVector]
    layers: Mapping[str, int]

    @classmethod
    def of(cls, vectors: Mapping[str, PersonaVector], overrides: Mapping[str, int | None] | None = None) -> Projector:
        """``overrides[name]``: a layer replacing that vector's default; unknown names are an error."""
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(vectors))
        if unknown:
            raise PersonaGuardError(f"layer override for unknown trait(s): {', '.join(unknown)}")
        if not vectors:
            raise PersonaGuardError("a projector needs at least one persona vector")
        return cls(dict(vectors), {name: vector.resolve_layer(overrides.get(name)) for name, vector in vectors.items()})

    @classmethod
    def of_pairs(cls, pairs: Mapping[str, tuple[PersonaVector, int | None]]) -> Projector:
        """From ``{name: (vector, layer)}``; ``layer`` None: the vector's default (see :meth:`of`)."""
        return cls.of({name: vector for name, (vector, _) in pairs.items()},
                      {name: layer for name, (_, layer) in pairs.items() if layer is not None})

    @property
    def capture_layers(self) -> list[int]:
        """The distinct layers to capture, ascending (the order :meth:`project` expects)."""
        return sorted(set(self.layers.values()))

    def project(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        """``hidden [n, len(capture_layers), d]`` -> ``{name: projections [n]}`` (float32)."""
        capture = self.capture_layers
        if hidden.ndim != 3 or hidden.shape[1] != len(capture):
            raise PersonaGuardError(f"expected hidden states [n, {len(capture)}, d] for layers {capture}, "
                                    f"got {tuple(hidden.shape)}")
        return {name: vector.project(hidden[:, capture.index(self.layers[name])], self.layers[name])
                for name, vector in self.vectors.items()}
