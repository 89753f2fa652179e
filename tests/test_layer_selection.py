"""Layer selection by steering + judging, with the held-out AUROC heuristic beside it."""

from __future__ import annotations

import csv

import pytest

from persona_guard.cli import main
from persona_guard.errors import PersonaGuardError
from persona_guard.extraction import ExtractionConfig, extract_vector
from persona_guard.judges import OfflineJudge
from persona_guard.layer_selection import LayerSelectionConfig, select_layer, store_choice
from persona_guard.traits import load_trait
from persona_guard.vectors import PersonaVector
from tests.conftest import as_loaded


@pytest.fixture(scope="module")
def evil():
    return load_trait("evil")


def tiny_vector(model, tokenizer, trait, tmp_path):
    return extract_vector(as_loaded(model, tokenizer), trait, tmp_path / "vec",
                          config=ExtractionConfig(source="exemplars", questions=3), progress=False, plots=False)


def test_select_layer_on_a_tiny_model_writes_tables_and_stores_the_choice(tiny_llama, tokenizer, evil, tmp_path):
    extracted = tiny_vector(tiny_llama, tokenizer, evil, tmp_path)
    config = LayerSelectionConfig(layers=(1, 3), coefs=(0, 4), questions=2, max_new_tokens=6, coherence_threshold=0)
    selection = select_layer(as_loaded(tiny_llama, tokenizer), extracted.vector, evil, OfflineJudge(), tmp_path, config,
                             progress=False)
    assert len(selection.cells) == 4 and selection.chosen_layer in (1, 3)
    steered = [c for c in selection.cells if c.coef == 4]
    assert selection.chosen_layer == max(steered, key=lambda c: c.effect).layer
    assert selection.chosen_cell == max(steered, key=lambda c: c.effect)
    baseline = [c for c in selection.cells if c.coef == 0]
    assert all(c.effect == 0 and c.trait == selection.baseline_trait for c in baseline)
    assert all(c.heldout_auroc is not None for c in selection.cells)
    rows = list(csv.DictReader(selection.table_csv.open()))
    assert [(int(r["layer"]), float(r["coef"])) for r in rows] == [(1, 0), (1, 4), (3, 0), (3, 4)]
    assert selection.table_md.read_text().startswith("| layer | coef | trait |")
    assert selection.heatmap.stat().st_size > 5_000
    path = store_choice(extracted.vector, selection, tmp_path / "chosen.safetensors")
    reloaded = PersonaVector.load(path)
    assert reloaded.default_layer == selection.chosen_layer
    assert reloaded.metadata["layer_selection"]["rule"] == selection.rule
    assert reloaded.metadata["source"] == "exemplars"  # earlier metadata kept


def test_incoherent_steering_falls_back_to_the_heuristic(tiny_llama, tokenizer, evil, tmp_path):
    extracted = tiny_vector(tiny_llama, tokenizer, evil, tmp_path)
    # a random model's answers are never fully (100) coherent: no steered cell is acceptable
    config = LayerSelectionConfig(layers=(1, 2), coefs=(0, 4), questions=1, max_new_tokens=4, coherence_threshold=100)
    selection = select_layer(as_loaded(tiny_llama, tokenizer), extracted.vector, evil, OfflineJudge(), tmp_path, config,
                             progress=False)
    assert "fell back" in selection.rule and selection.chosen_layer == selection.heuristic_layer
    assert selection.chosen_cell is None


def test_bad_layers_and_coefs(tiny_llama, tokenizer, evil, tmp_path):
    extracted = tiny_vector(tiny_llama, tokenizer, evil, tmp_path)
    beyond = extracted.vector.num_layers + 1  # layers 0..n are steerable (README, "Layer convention")
    with pytest.raises(PersonaGuardError, match="cannot be steered"):
        select_layer(as_loaded(tiny_llama, tokenizer), extracted.vector, evil, OfflineJudge(), tmp_path,
                     LayerSelectionConfig(layers=(beyond,)), progress=False)
    with pytest.raises(PersonaGuardError, match="positive"):
        LayerSelectionConfig(layers=(1,), coefs=(0,))


@pytest.mark.smollm
def test_select_layer_cli_on_smollm_steers_evil_up(smollm_dir, tmp_path, capsys):
    assert main(["extract", "--trait", "evil", "--source", "exemplars", "--questions", "10",
                 "--out", str(tmp_path), "--device", "cpu"]) == 0
    vector_path = tmp_path / "evil.safetensors"
    assert main(["select-layer", "--vector", str(vector_path), "--layers", "12,20", "--coefs", "0,8",
                 "--questions", "3", "--max-new-tokens", "32", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    print(out)
    vector = PersonaVector.load(vector_path)
    selection = vector.metadata["layer_selection"]
    assert vector.default_layer == selection["chosen_layer"] in (12, 20)
    chosen = [c for c in selection["cells"] if c["layer"] == vector.default_layer and c["coef"] == 8][0]
    assert chosen["effect"] > 0  # steering with +8 v makes the answers read more evil to the offline judge
    assert (tmp_path / "evil_layer_selection.png").is_file() and "chosen layer" in out
