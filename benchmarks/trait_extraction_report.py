"""Per bundled trait on one model: kept pairs, chosen layer and steering effect (offline judge).

For each trait: (1) the paper's generate-and-judge extraction on the first ``--questions``
extraction questions (all 5 instruction pairs), reporting how many answer pairs pass the paper's
filter and why the others were dropped; (2) a teacher-forced vector from the trait's written
exemplars (the source that works on small models); (3) ``select_layer`` on that vector: steer at
each ``--layers`` x ``--coefs`` cell on ``--eval-questions`` eval questions and judge, which gives
the chosen layer and the steering effect (trait score steered vs unsteered, coherence).

    python benchmarks/trait_extraction_report.py --out runs/trait-report
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from persona_guard.errors import PersonaGuardError
from persona_guard.extraction import ExtractionConfig, extract_vector
from persona_guard.judges import make_judge
from persona_guard.layer_selection import LayerSelectionConfig, select_layer
from persona_guard.models import DEFAULT_MODEL, load_model
from persona_guard.traits import bundled_trait_names, load_trait


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--traits", default=None, help="comma-separated (default: every bundled trait)")
    parser.add_argument("--questions", type=int, default=4, help="extraction questions for generate-and-judge")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--layers", type=ints, default=(15, 20))
    parser.add_argument("--coefs", type=floats, default=(0.0, 4.0, 8.0))
    parser.add_argument("--eval-questions", type=int, default=5)
    parser.add_argument("--out", default="runs/trait-report")
    args = parser.parse_args()

    loaded = load_model(args.model, device="cpu")
    judge = make_judge("offline")
    traits = args.traits.split(",") if args.traits else bundled_trait_names()
    rows = []
    for name in traits:
        trait = load_trait(name)
        out = Path(args.out) / name
        generated = ExtractionConfig(source="generate", questions=args.questions, max_new_tokens=args.max_new_tokens,
                                     min_pairs=1)
        try:
            pairs = extract_vector(loaded, trait, out / "generate", judge=judge, config=generated,
                                   plots=False).report["pairs"]
        except PersonaGuardError as error:  # no pair passed: the report still says why
            pairs = json.loads((out / "generate" / "report.json").read_text())["pairs"] \
                if (out / "generate" / "report.json").is_file() else {"error": str(error)}
        vector = extract_vector(loaded, trait, out / "exemplars", config=ExtractionConfig(source="exemplars"),
                                plots=False).vector
        selection = select_layer(loaded, vector, trait, judge, out / "layers",
                                 LayerSelectionConfig(layers=args.layers, coefs=args.coefs,
                                                      questions=args.eval_questions,
                                                      max_new_tokens=args.max_new_tokens))
        # the cell behind the choice; without a coherent one, the strongest at the fallback layer
        best = selection.chosen_cell or max(
            (c for c in selection.cells if c.layer == selection.chosen_layer and c.coef != 0),
            key=lambda c: c.trait or 0.0)
        rows.append({"trait": name, "pairs": pairs, "chosen_layer": selection.chosen_layer, "rule": selection.rule,
                     "heuristic_layer": selection.heuristic_layer, "unsteered": selection.baseline_trait,
                     "steered": best.trait, "steer_coef": best.coef, "steered_coherence": best.coherence,
                     "coherent": selection.chosen_cell is not None})
        print(json.dumps(rows[-1]), flush=True)

    print(f"\n{args.model}; generate-and-judge on {args.questions} questions x 5 pairs, paper thresholds (50/50/50); "
          f"exemplar vector steered on {args.eval_questions} eval questions\n")
    print("| trait | kept pairs | top drop reason | chosen layer (rule) | trait score unsteered -> steered (coef) "
          "| coherence |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        pairs = row["pairs"]
        reasons = pairs.get("drop_reasons") or {}
        top = max(reasons, key=reasons.get) if reasons else "-"
        basis = "steering" if row["coherent"] else "held-out AUROC"
        print(f"| {row['trait']} | {pairs.get('kept', 0)}/{pairs.get('total', '?')} | {top} | "
              f"{row['chosen_layer']} ({basis}) | {row['unsteered']:.1f} -> {row['steered']:.1f} "
              f"({row['steer_coef']:+g}) | {row['steered_coherence']:.0f} |")
    (Path(args.out) / "summary.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
