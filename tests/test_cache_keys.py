"""Every cache key covers every input that changes the cached value (issue 16, stale caches).

Extraction answers follow the instruction *texts* (not their positions) and the model's weights;
judgements follow the judge's scoring scheme; the model fingerprint sees a change in any weight
tensor, whatever the thread count; a converted built-in model follows its source package.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from persona_guard import models
from persona_guard.extraction import ExtractionConfig, extract_vector
from persona_guard.judges import OfflineJudge
from persona_guard.models import model_fingerprint
from persona_guard.traits import InstructionPair, load_trait
from tests.conftest import as_loaded, make_tiny_model

# a random-weight model: keep every pair (thresholds off); 1 question x 5 pairs x (pos, neg) = 10 answers,
# sampled in chunks of 4
CONFIG = ExtractionConfig(questions=1, max_new_tokens=6, batch_size=4, temperature=1.0, pos_threshold=0,
                          neg_threshold=101, coherence_threshold=0, min_pairs=1)


def extract(model, tokenizer, trait, out, judge):
    return extract_vector(as_loaded(model, tokenizer), trait, out, judge=judge, config=CONFIG,
                          progress=False, plots=False)


def test_changed_instruction_texts_are_regenerated_and_rejudged(tiny_llama, tokenizer, tmp_path):
    """The issue's case: same folder, instruction 0's texts rewritten -> its answers are new, and the
    result equals a fresh run's. Answers are sampled in chunks of 4 (batch size), so a changed prompt
    renews its whole chunk (its batch-mates' samples depend on it)."""
    trait, judge = load_trait("evil"), OfflineJudge()
    first = extract(tiny_llama, tokenizer, trait, tmp_path / "run", judge)
    assert first.generated == 10
    assert extract(tiny_llama, tokenizer, trait, tmp_path / "run", judge).generated == 0  # same inputs: cached
    pairs = list(trait.instructions)
    pairs[0] = InstructionPair(pairs[0].pos + " Be brief.", pairs[0].neg)
    rewritten = replace(trait, instructions=tuple(pairs))
    again = extract(tiny_llama, tokenizer, rewritten, tmp_path / "run", judge)
    assert again.generated == 4  # answer 0 (instruction 0, pos) and its chunk
    assert again.judged >= 1
    fresh = extract(tiny_llama, tokenizer, rewritten, tmp_path / "fresh", judge)
    assert torch.equal(again.vector.directions, fresh.vector.directions)
    assert again.report == fresh.report
    # swapping two instructions moves prompts between chunks: those chunks are renewed too
    pairs[1], pairs[2] = pairs[2], pairs[1]
    assert extract(tiny_llama, tokenizer, replace(trait, instructions=tuple(pairs)), tmp_path / "run",
                   judge).generated == 8  # answers 2-5: chunks 0 and 1


def test_other_weights_under_the_same_model_id_are_regenerated(tokenizer, tmp_path):
    trait, judge = load_trait("evil"), OfflineJudge()
    model = make_tiny_model("llama", len(tokenizer))
    assert extract(model, tokenizer, trait, tmp_path, judge).generated == 10
    with torch.no_grad():  # a change in one attention weight only, as a LoRA merge makes
        model.model.layers[1].self_attn.q_proj.weight.mul_(1.5)
    assert extract(model, tokenizer, trait, tmp_path, judge).generated == 10


def test_another_judge_scheme_rejudges(tiny_llama, tokenizer, tmp_path):
    trait = load_trait("evil")
    first = extract(tiny_llama, tokenizer, trait, tmp_path, OfflineJudge())
    assert first.judged > 0
    again = extract(tiny_llama, tokenizer, trait, tmp_path, OfflineJudge(window_words=20))
    assert again.generated == 0 and again.judged == first.judged


def test_model_fingerprint_sees_every_tensor_and_ignores_thread_count(tokenizer):
    model = make_tiny_model("llama", len(tokenizer))
    before = model_fingerprint(model, "m")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert model_fingerprint(model, "m") == before
    finally:
        torch.set_num_threads(threads)
    for name, parameter in model.named_parameters():
        flat = parameter.data.view(-1)
        old = flat[-1].clone()
        flat[-1] = old + 1.0  # the last element is always among the sampled ones
        assert model_fingerprint(model, "m") != before, name
        flat[-1] = old
    assert model_fingerprint(model, "m") == before
    assert model_fingerprint(model, "other") != before


@pytest.mark.parametrize("change, current", [({}, True), ({"package_version": "0.0.0"}, False),
                                             ({"gguf_bytes": 1}, False), ({"transformers": "1.0"}, False),
                                             ("old format", True), ("damaged", False)])
def test_converted_model_follows_its_source(tmp_path, change, current):
    name = models.DEFAULT_MODEL
    models.builtin_gguf_path(name)  # the package is installed (the tests need it anyway)
    record = {**models._conversion_source(name), "gguf": "/some/venv/model.gguf"}
    if change == "old format":  # written before the source was recorded in full
        record = {"builtin": name, "gguf": "/elsewhere/model.gguf"}
    elif change != "damaged":
        record.update(change)
    (tmp_path / models.SOURCE_RECORD).write_text("{not json" if change == "damaged" else json.dumps(record))
    (tmp_path / "config.json").write_text("{}")  # an intact (if tiny) model dir: only the record differs
    save_file({"w": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    assert (models._conversion_problem(name, tmp_path) is None) is current
