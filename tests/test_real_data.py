"""Real third-party fine-tuning sets (``../shared/real_data``) through the real screening path.

A handful of rows per set, a tiny random-weight model with SmolLM2's tokenizer: checks that the
files parse as they are, every row is scored, and the scores obey the definitions; the quality
numbers come from ``benchmarks/real_data.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from persona_guard.screening import Screener, read_rows
from persona_guard.screening.data import classify_rows
from tests.conftest import as_loaded
from tests.test_screening import config, no_special_answers, random_vector

REPO = Path(__file__).resolve().parents[1]
REAL_DIR = REPO.parent / "shared" / "real_data"
pytestmark = pytest.mark.skipif(not REAL_DIR.is_dir(), reason=f"real third-party data not present at {REAL_DIR} "
                                "(the repository's parent folder holds shared/real_data on the project machine)")
ROWS = 5


def benchmark_module():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import real_data
    finally:
        sys.path.pop(0)
    return real_data


@pytest.mark.parametrize("name", ["pv_evil_II", "mo_misalignment_kl_data_aligned"])
def test_real_set_screens_every_row(name, tiny_llama, tokenizer, tmp_path):
    path = REAL_DIR / f"{name}.jsonl"
    raw = read_rows(path)[:ROWS]
    rows, skipped = classify_rows(raw)
    assert not skipped and len(rows) == ROWS
    lines = path.read_text(encoding="utf-8").splitlines()[:ROWS]
    for row, line in zip(rows, lines):  # the response is the file's assistant turn, byte for byte
        assert row.response == json.loads(line)["messages"][-1]["content"]
    model = no_special_answers(tiny_llama, tokenizer)
    result = Screener(as_loaded(model, tokenizer), [random_vector("evil", model, 2, 0)],
                      config(tmp_path, batch_size=2)).score([r.data for r in rows])
    scores = result.traits["evil"]
    assert len(result.rows) == ROWS and not result.skipped and result.generated_prompts == ROWS
    assert np.all(np.isfinite(scores.dp))
    np.testing.assert_allclose(scores.dp, scores.projection - scores.base_projection, rtol=1e-6, atol=1e-6)
    assert len(set(np.round(scores.projection, 5))) == ROWS  # different texts, different projections


def test_paired_sets_sample_the_same_questions():
    """Evil I / II (and hallucination I / normal) pair row i with row i: the benchmark's seeded
    sample takes the same rows of both, so each pair shares its question and its base answer."""
    sample_rows = benchmark_module().sample_rows
    for first, second in (("pv_evil_I", "pv_evil_II"), ("pv_hallucination_I", "pv_hallucination_normal")):
        a = sample_rows(str(REAL_DIR / f"{first}.jsonl"), 12, seed=0)
        b = sample_rows(str(REAL_DIR / f"{second}.jsonl"), 12, seed=0)
        assert [r["source_row"] for r in a] == [r["source_row"] for r in b]
        assert [r["prompt"] for r in a] == [r["prompt"] for r in b]
        assert [r["completion"] for r in a] != [r["completion"] for r in b]
        # a smaller sample is the start of a larger one: training rows are a subset of screened rows
        assert sample_rows(str(REAL_DIR / f"{first}.jsonl"), 5, seed=0) == a[:5]


def test_benchmark_sample_is_the_trainers_sample():
    """The benchmark's dP of a training set is taken on exactly the rows ``data.max_rows`` trains on."""
    from persona_guard.training.recipe import load_sft_dataset

    trained, _dropped = load_sft_dataset("bundled:evil/severe.jsonl", max_rows=7, seed=3)
    sampled = benchmark_module().sample_rows("bundled:evil/severe.jsonl", 7, seed=3)
    assert [{key: row[key] for key in ("prompt", "completion", "source_row")} for row in trained] == sampled
