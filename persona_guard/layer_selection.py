"""Choosing a vector's layer by steering (the paper's criterion) with a cheap heuristic beside it.

For every layer x coefficient, the model answers the trait's evaluation questions while steered
(``coef * v`` added at that layer) and a judge scores trait and coherence. The chosen layer is the
one whose steering raises the trait score most over the unsteered answers while the mean
coherence stays >= a threshold. Beside it, the heuristic needs no generation: the held-out AUROC
of projections of the trait's held-out exemplars, per layer.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from persona_guard.errors import PersonaGuardError
from persona_guard.extraction import heldout_separation
from persona_guard.files import atomic_path, write_text_atomic
from persona_guard.generation import GenerationConfig, generate_responses
from persona_guard.judges import Judge
from persona_guard.metrics import mean_or_none
from persona_guard.models import LoadedModel
from persona_guard.schema import FieldError, bounds, check
from persona_guard.steering import COEF_BOUNDS, Steering
from persona_guard.traits import Trait
from persona_guard.vectors import PersonaVector, check_same_trait


@dataclass(frozen=True)
class LayerSelectionConfig:
    """The grid and generation settings of :func:`select_layer`; each field is also a flag of
    ``persona-guard select-layer`` (checked by :mod:`persona_guard.schema`)."""

    layers: tuple[int, ...] = field(default=(8, 12, 15, 20), metadata=bounds(
        ge=0, help="layers to try (hidden_states indices)"))
    coefs: tuple[float, ...] = field(default=(0.0, 2.0, 4.0, 8.0), metadata={
        **COEF_BOUNDS, "help": "steering coefficients to try"})
    questions: int | None = field(default=5, metadata=bounds(ge=1, help="first K eval questions (None: all)"))
    max_new_tokens: int = field(default=48, metadata=bounds(ge=1, help="tokens per steered answer"))
    #: greedy: every cell answers the same way but for the steering
    temperature: float = field(default=0.0, metadata=bounds(ge=0))
    batch_size: int = field(default=8, metadata=bounds(ge=1, help="prompts generated together"))
    seed: int = field(default=0, metadata=bounds(ge=0))
    coherence_threshold: float = field(default=50.0, metadata=bounds(
        ge=0, le=100, help="a layer counts only if the mean coherence (0-100) stays >= this"))

    def __post_init__(self) -> None:
        check(self)
        if not self.layers:
            raise FieldError("layers", "no layers to try")
        if not any(c > 0 for c in self.coefs):
            raise FieldError("coefs", "must include a positive steering coefficient: the chosen layer is where "
                             "adding +coef * v raises the trait most")


@dataclass(frozen=True)
class Cell:
    layer: int
    coef: float
    trait: float | None  # mean judge trait score over the questions
    coherence: float | None
    effect: float | None  # trait - unsteered trait
    heldout_auroc: float | None
    scored: int  # answers with a trait score


@dataclass
class LayerSelection:
    cells: list[Cell]
    baseline_trait: float | None
    chosen_layer: int
    rule: str
    heuristic_layer: int | None
    table_csv: Path
    table_md: Path
    heatmap: Path
    chosen_cell: Cell | None = None  # the steered cell behind the choice (None: held-out fallback)


def select_layer(loaded: LoadedModel, vector: PersonaVector, trait: Trait, judge: Judge, out_dir: str | Path,
                 config: LayerSelectionConfig, *, progress: bool = True) -> LayerSelection:
    """Steer at each layer x coef, judge, choose (:func:`choose_layer`); write CSV + Markdown tables and
    a heat map. Errors, before anything is written: ``trait`` is not the vector's trait, a layer out of
    range, or no acceptable choice (see :func:`choose_layer`)."""
    check_same_trait(vector, trait)
    vector.check_model(loaded)
    model, tokenizer = loaded.model, loaded.tokenizer
    for layer in config.layers:
        if not 0 <= layer <= vector.num_layers:
            raise PersonaGuardError(f"layer {layer} cannot be steered; choose from 0..{vector.num_layers}")
    out_dir = Path(out_dir)  # created by the first file written into it
    questions = list(trait.eval_questions[:config.questions])
    prompts = [[{"role": "user", "content": q}] for q in questions]
    generation = GenerationConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                  batch_size=config.batch_size, seed=config.seed)

    def measure(answers: list[str]) -> tuple[float | None, float | None, int]:
        scores = judge.score(trait, list(zip(questions, answers)))
        return mean_or_none([s.trait for s in scores]), mean_or_none([s.coherence for s in scores]), \
            sum(s.trait is not None for s in scores)

    baseline = measure(generate_responses(model, tokenizer, prompts, generation, progress=False))
    heuristic = {}
    if trait.heldout_exemplars():
        heuristic = heldout_separation(vector, loaded, trait, config.layers, batch_size=config.batch_size,
                                       progress=False)
    cells = []
    steered_cells = [(l, c) for l in config.layers for c in config.coefs if c != 0]
    with tqdm(total=len(steered_cells), desc=f"steering {trait.name}", disable=not progress, unit="cell") as bar:
        for layer in config.layers:
            auroc = heuristic.get(layer, {}).get("auroc")
            for coef in config.coefs:
                if coef == 0:
                    trait_score, coherence, scored = baseline
                else:
                    with Steering(loaded.layers, vector, layers=layer, coef=coef):
                        answers = generate_responses(model, tokenizer, prompts, generation, progress=False)
                    trait_score, coherence, scored = measure(answers)
                    bar.update(1)
                effect = None if trait_score is None or baseline[0] is None else trait_score - baseline[0]
                cells.append(Cell(layer, float(coef), trait_score, coherence, effect, auroc, scored))
    heuristic_layer = max(heuristic, key=lambda l: heuristic[l]["auroc"]) if heuristic else None
    chosen, rule, best = choose_layer(cells, heuristic_layer, config.coherence_threshold)
    stem = selection_stem(out_dir, vector.trait)
    table_csv, table_md = write_tables(cells, stem)
    heatmap = plot_heatmap(cells, config, stem.with_suffix(".png"), vector.trait, chosen)
    return LayerSelection(cells, baseline[0], chosen, rule, heuristic_layer, table_csv, table_md, heatmap, best)


def choose_layer(cells: Sequence[Cell], heuristic_layer: int | None,
                 coherence_threshold: float) -> tuple[int, str, Cell | None]:
    """The paper's criterion: the layer whose steering with a positive coefficient raises the judged
    trait most over the unsteered answers, among cells with mean coherence >= ``coherence_threshold``.
    Returns ``(layer, rule, cell)``; with no coherent steered cell, the best held-out AUROC layer
    (``cell`` None). Errors: coherent cells exist but none raises the trait (adding ``+v`` lowers it or
    changes nothing: the vector points the wrong way or does not carry the trait at these layers), or
    nothing coherent and no heuristic."""
    coherent = [c for c in cells if c.coef > 0 and c.effect is not None and c.coherence is not None
                and c.coherence >= coherence_threshold]
    if coherent:
        best = max(coherent, key=lambda c: c.effect or 0.0)
        if best.effect is None or best.effect <= 0:
            raise PersonaGuardError(
                f"steering with +v never raised the trait score (best effect {best.effect:+.1f} at layer "
                f"{best.layer}, coef {best.coef:g}); refusing to choose a layer: the vector may point the "
                "wrong way or not carry the trait at these layers (try other --layers)")
        return best.layer, (f"largest trait increase ({best.effect:+.1f} at coef {best.coef:g}) "
                            f"with coherence >= {coherence_threshold:g}"), best
    if heuristic_layer is not None:
        return heuristic_layer, (f"no steered cell kept coherence >= {coherence_threshold:g}; "
                                 "fell back to the best held-out AUROC"), None
    raise PersonaGuardError(f"no steered cell kept coherence >= {coherence_threshold:g} and the trait "
                            "has no held-out exemplars; try smaller --coefs")


def selection_stem(out_dir: str | Path, trait: str) -> Path:
    """``<out_dir>/<trait>_layer_selection``: the tables get ``.csv``/``.md``, the heat map ``.png``."""
    return Path(out_dir) / f"{trait}_layer_selection"


def store_choice(vector: PersonaVector, selection: LayerSelection, path: str | Path) -> Path:
    """Save the vector back with the chosen default layer and the evidence in its metadata."""
    vector.default_layer = selection.chosen_layer
    vector.metadata = {**vector.metadata, "layer_selection": {
        "chosen_layer": selection.chosen_layer, "rule": selection.rule,
        "heuristic_layer": selection.heuristic_layer, "baseline_trait": selection.baseline_trait,
        "cells": [asdict(c) for c in selection.cells]}}
    return vector.save(path)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}" if abs(value) <= 1 and value != 0 else f"{value:.1f}"


def write_tables(cells: Sequence[Cell], stem: Path) -> tuple[Path, Path]:
    columns = ["layer", "coef", "trait", "coherence", "effect", "heldout_auroc", "scored"]
    table_csv = stem.with_suffix(".csv")
    with atomic_path(table_csv) as staging, staging.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for cell in cells:
            writer.writerow(asdict(cell))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for cell in cells:
        row = asdict(cell)
        lines.append("| " + " | ".join(str(row[c]) if c in ("layer", "scored") else
                                       f"{row[c]:g}" if c == "coef" else _fmt(row[c]) for c in columns) + " |")
    table_md = stem.with_suffix(".md")
    write_text_atomic(table_md, "\n".join(lines) + "\n")
    return table_csv, table_md


def plot_heatmap(cells: Sequence[Cell], config: LayerSelectionConfig, path: Path, trait: str, chosen: int) -> Path:
    """Mean trait score per layer x coef (colour), annotated ``trait / coherence``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    layers, coefs = list(config.layers), list(config.coefs)
    grid = np.full((len(layers), len(coefs)), np.nan)
    figure, axis = plt.subplots(figsize=(1.6 * len(coefs) + 2, 0.6 * len(layers) + 1.8))
    for cell in cells:
        i, j = layers.index(cell.layer), coefs.index(cell.coef)
        grid[i, j] = np.nan if cell.trait is None else cell.trait
        label = f"{_fmt(cell.trait) or '-'} / {_fmt(cell.coherence) or '-'}"
        axis.text(j, i, label, ha="center", va="center", fontsize=8)
    image = axis.imshow(grid, cmap="magma_r", vmin=0, vmax=100, aspect="auto")
    axis.set_xticks(range(len(coefs)), [f"{c:g}" for c in coefs])
    axis.set_yticks(range(len(layers)), [f"{l}{' *' if l == chosen else ''}" for l in layers])
    axis.set(xlabel="steering coefficient", ylabel="layer (* chosen)",
             title=f"{trait}: judge trait score / coherence when steered")
    figure.colorbar(image, ax=axis, label="trait score")
    figure.tight_layout()
    with atomic_path(path) as staging:
        figure.savefig(staging, dpi=110)
    plt.close(figure)
    return path
