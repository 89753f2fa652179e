"""Persona-vector extraction: statistics, the judge filter, caching/resume, both sources, and the
end-to-end CI check on SmolLM2 (held-out AUROC at layer 15)."""

from __future__ import annotations

import json

import pytest
import torch

from persona_guard.errors import PersonaGuardError
from persona_guard.extraction import (
    ExtractionConfig,
    JsonlCache,
    best_layer,
    drop_reasons,
    extract_vector,
    heldout_separation,
)
from persona_guard.judges import JudgeScore, OfflineJudge
from persona_guard.traits import load_trait
from persona_guard.vectors import PersonaVector
from tests.conftest import as_loaded


@pytest.fixture(scope="module")
def evil():
    return load_trait("evil")


def test_best_layer():
    separation = {0: {"auroc": 1.0, "effect_size": 9.0}, 1: {"auroc": 0.9, "effect_size": 5.0},
                  2: {"auroc": 0.95, "effect_size": 1.0}, 3: {"auroc": 0.95, "effect_size": 2.0}}
    assert best_layer(separation) == 3  # layer 0 is never chosen; ties go to the larger effect


def test_paper_filter_reasons():
    config = ExtractionConfig()
    good_pos, good_neg = JudgeScore(80, 90), JudgeScore(10, 90)
    assert drop_reasons(good_pos, good_neg, config) == []
    assert drop_reasons(JudgeScore(40, 90), good_neg, config) == ["pos answer lacks the trait"]
    assert drop_reasons(good_pos, JudgeScore(50, 90), config) == ["neg answer shows the trait"]
    assert drop_reasons(good_pos, JudgeScore(10, 49), config) == ["incoherent"]
    assert drop_reasons(JudgeScore(None, 90, refusal=True), good_neg, config) == ["refusal", "no trait score"]
    relaxed = ExtractionConfig(pos_threshold=30)
    assert drop_reasons(JudgeScore(40, 90), good_neg, relaxed) == []


def test_jsonl_cache_survives_a_torn_line(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = JsonlCache(path)
    cache.extend([{"key": "a", "v": 1}, {"key": "b", "v": 2}])
    with path.open("a") as handle:
        handle.write('{"key": "c", "v"')  # a crash mid-write
    reloaded = JsonlCache(path)
    assert "a" in reloaded and reloaded["b"]["v"] == 2 and "c" not in reloaded


def test_config_rejects_bad_values():
    with pytest.raises(PersonaGuardError, match="source"):
        ExtractionConfig(source="magic")
    with pytest.raises(PersonaGuardError, match="method"):
        ExtractionConfig(method="mean")


def test_exemplar_source_on_a_tiny_model(tiny_llama, tokenizer, evil, tmp_path):
    result = extract_vector(as_loaded(tiny_llama, tokenizer), evil, tmp_path,
                            config=ExtractionConfig(source="exemplars", questions=4), progress=False)
    vector = PersonaVector.load(result.vector_path)
    assert vector.directions.shape == (4, 64) and vector.n_pos == vector.n_neg == 4
    assert 1 <= vector.default_layer <= 3 and vector.metadata["source"] == "exemplars"
    report = json.loads(result.report_path.read_text())
    assert [row["layer"] for row in report["layers"]] == [0, 1, 2, 3]
    assert all(0 <= row["heldout_auroc"] <= 1 for row in report["layers"])
    assert result.plot_path.stat().st_size > 10_000
    # the vector is exactly mean(pos) - mean(neg) of the teacher-forced exemplar answers
    from persona_guard.activations import capture_activations
    from persona_guard.encoding import encode_chat

    exemplars = evil.extraction_exemplars()[:4]
    samples = [encode_chat(tokenizer, [{"role": "user", "content": e.question}], answer)
               for answer_of in (lambda e: e.pos, lambda e: e.neg) for e in exemplars for answer in [answer_of(e)]]
    acts = capture_activations(as_loaded(tiny_llama, tokenizer), samples, [2],
                               progress=False)["response_mean"][:, 0]
    assert torch.allclose(vector.directions[2], acts[:4].mean(0) - acts[4:].mean(0), atol=1e-5)


def test_generate_source_resumes_from_cache(tiny_llama, tokenizer, evil, tmp_path):
    # a random-weight model's answers: keep every pair (thresholds off) to test the plumbing
    config = ExtractionConfig(questions=2, max_new_tokens=6, pos_threshold=0, neg_threshold=101,
                              coherence_threshold=0, min_pairs=1, temperature=1.0)
    judge = OfflineJudge()
    first = extract_vector(as_loaded(tiny_llama, tokenizer), evil, tmp_path, judge=judge, config=config,
                           progress=False, plots=False)
    assert first.generated == 20 and first.judged > 0  # 2 questions x 5 instructions x (pos, neg)
    rows = [json.loads(line) for line in (tmp_path / "cache" / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and {r["polarity"] for r in rows} == {"pos", "neg"}
    second = extract_vector(as_loaded(tiny_llama, tokenizer), evil, tmp_path, judge=judge, config=config,
                            progress=False, plots=False)
    assert second.generated == 0 and second.judged == 0
    assert torch.equal(first.vector.directions, second.vector.directions)
    # one more question: its 10 answers, and the 4 old ones whose generation chunk (8 answers, sampled
    # together) now also holds new prompts
    third = extract_vector(as_loaded(tiny_llama, tokenizer), evil, tmp_path, judge=judge,
                           config=ExtractionConfig(**{**config.__dict__, "questions": 3}), progress=False, plots=False)
    assert third.generated == 14


def test_too_few_pairs_is_a_clear_error(tiny_llama, tokenizer, evil, tmp_path):
    config = ExtractionConfig(questions=1, max_new_tokens=6, temperature=1.0)
    with pytest.raises(PersonaGuardError, match=r"only \d+ of 5 answer pairs passed.*--source exemplars"):
        extract_vector(as_loaded(tiny_llama, tokenizer), evil, tmp_path, judge=OfflineJudge(), config=config,
                       progress=False, plots=False)
    report = json.loads((tmp_path / "report.json").read_text())
    pairs = report["pairs"]
    assert pairs["total"] == 5 and sum(pairs["drop_reasons"].values()) >= 5 - pairs["kept"]


@pytest.mark.smollm
def test_smollm_evil_extraction_separates_heldout_exemplars(smollm, evil, tmp_path):
    """The CI check: SmolLM2's own answers under evil/kind prompts give a direction whose layer-15
    projection separates the trait's held-out exemplar answers. SmolLM2 follows "be evil" prompts
    weakly, so the trait answer only needs a judge score >= 20 here (the paper uses 50)."""
    config = ExtractionConfig(questions=6, n_per_question=1, max_new_tokens=48, pos_threshold=20, min_pairs=3)
    result = extract_vector(smollm, evil, tmp_path, judge=OfflineJudge(), config=config, progress=False)
    layer15 = result.report["layers"][15]
    pairs = result.report["pairs"]
    print(f"\nevil on SmolLM2: kept {pairs['kept']}/{pairs['total']} pairs {pairs['drop_reasons']}; "
          f"layer-15 held-out AUROC {layer15['heldout_auroc']:.3f}; default layer {result.vector.default_layer} "
          f"(AUROC {result.report['layers'][result.vector.default_layer]['heldout_auroc']:.3f})")
    assert pairs["kept"] >= 3
    assert layer15["heldout_auroc"] >= 0.9
    # the saved vector reproduces the report's measurement
    check = heldout_separation(PersonaVector.load(result.vector_path), smollm, evil, [15],
                               progress=False)
    assert check[15]["auroc"] == pytest.approx(layer15["heldout_auroc"], abs=0.01)
