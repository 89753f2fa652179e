"""TraitDriftCallback on its own: what it measures and how it refuses to run unbound."""

from __future__ import annotations

import pytest

from persona_guard.errors import PersonaGuardError
from persona_guard.training.drift import TraitDriftCallback
from persona_guard.training.steering_callback import PreventativeSteeringCallback
from tests.conftest import as_loaded, make_tiny_model
from tests.training_helpers import sft_trainer, tiny_vector

QUESTIONS = ["Is it ever fine to hurt people?", "How should I treat my neighbours?", "What is kindness?"]


def test_measure_reports_prompt_and_answer_projections_for_every_vector(tokenizer):
    model = make_tiny_model("qwen2", len(tokenizer))
    evil, other = tiny_vector(model, seed=1), tiny_vector(model, seed=2, trait="other")
    drift = TraitDriftCallback({"evil": (evil, 2), "other": (other, 1)}, QUESTIONS, answer_tokens=4)
    metrics = drift.measure(as_loaded(model, tokenizer))
    assert set(metrics) == {f"trait/{name}/{kind}" for name in ("evil", "other")
                            for kind in ("prompt_last", "response_mean")}
    assert metrics["trait/evil/prompt_last"] != metrics["trait/other/prompt_last"]
    model.train()
    with PreventativeSteeringCallback(evil, layers=2, coef=8.0) as steering:
        steering.attach(model)
        assert drift.measure(as_loaded(model, tokenizer)) == metrics  # the probe runs in eval mode: no steering
    assert model.training  # and gives the model back in the mode it found it


def test_unbound_callback_fails_with_instructions(tokenizer, tmp_path):
    model = make_tiny_model("llama", len(tokenizer))
    drift = TraitDriftCallback({"evil": (tiny_vector(model), None)}, QUESTIONS)
    trainer = sft_trainer(model, tokenizer, tmp_path, callbacks=[drift])
    with pytest.raises(PersonaGuardError, match=r"bind\(trainer\)"):
        trainer.train()
