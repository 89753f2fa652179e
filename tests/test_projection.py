"""Projector: named persona vectors, each read at its own layer."""

from __future__ import annotations

import pytest
import torch

from persona_guard.errors import PersonaGuardError
from persona_guard.projection import Projector
from persona_guard.vectors import PersonaVector


def vector(trait: str, layer: int, seed: int) -> PersonaVector:
    directions = torch.randn(5, 8, generator=torch.Generator().manual_seed(seed))
    return PersonaVector(trait, "tiny", directions, default_layer=layer)


def test_each_vector_is_projected_at_its_layer():
    evil, kind = vector("evil", 3, 0), vector("kind", 1, 1)
    projector = Projector.of({"evil": evil, "kind": kind}, {"kind": 4})
    assert projector.layers == {"evil": 3, "kind": 4} and projector.capture_layers == [3, 4]
    hidden = torch.randn(6, 2, 8, generator=torch.Generator().manual_seed(2))
    projected = projector.project(hidden)
    unit = evil.directions[3] / evil.directions[3].norm()
    torch.testing.assert_close(projected["evil"], hidden[:, 0] @ unit)
    torch.testing.assert_close(projected["kind"], kind.project(hidden[:, 1], 4))


def test_projector_errors_name_the_problem():
    evil = vector("evil", 3, 0)
    with pytest.raises(PersonaGuardError, match="unknown trait\\(s\\): kind"):
        Projector.of({"evil": evil}, {"kind": 2})
    with pytest.raises(PersonaGuardError, match="layer 9 out of range 0..4"):
        Projector.of({"evil": evil}, {"evil": 9})
    with pytest.raises(PersonaGuardError, match=r"expected hidden states \[n, 1, d\] for layers \[3\]"):
        Projector.of({"evil": evil}).project(torch.zeros(2, 2, 8))
