"""Flagging quality of projection-difference screening on the bundled contaminated mixes.

For each ``TRAIT=DATA.jsonl[@LAYER]`` (rows with ``"label": 0|1`` and a ``"source"`` naming the
kind of row: benign rows with trait-laden ones mixed in) the trait's vector is extracted the way
``persona-guard extract --source exemplars`` and the demo do (teacher-forced written exemplars),
the data is screened at LAYER, and AUROC (with a bootstrap 95% interval for exact dP) and
precision@k (k = number of injected rows) against the labels are printed for: exact dP (base
answers), the fast proxy (no generation), response-only projection, embedding similarity to the
trait description and random order; plus exact-dP AUROC per injected kind (e.g. severe vs mild).

    python benchmarks/screening_quality.py \\
        --pair evil=persona_guard/bundled_data/contaminated/evil.jsonl@20 \\
        --pair sycophantic=persona_guard/bundled_data/contaminated/sycophantic.jsonl@20 \\
        --pair hallucinating=persona_guard/bundled_data/contaminated/hallucinating.jsonl@15

The layers are the ones ``select-layer`` chose by steering for each trait on SmolLM2
(benchmarks/trait_extraction_report.py). Base answers are cached (the demo's settings: greedy,
48 tokens), so a rerun only costs the forward passes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from persona_guard.extraction import ExtractionConfig, extract_vector
from persona_guard.metrics import auroc, auroc_by_group, auroc_interval
from persona_guard.models import load_model
from persona_guard.screening import BaseAnswerSettings, Screener, ScreeningConfig
from persona_guard.screening.baselines import embedding_similarity, random_scores
from persona_guard.screening.report import compare_methods, labels_of
from persona_guard.traits import load_trait
from persona_guard.vectors import PersonaVector


def parse_pair(text: str, default_layer: int) -> tuple[str, Path, int]:
    trait, _, rest = text.partition("=")
    path, _, layer = rest.partition("@")
    return trait, Path(path), int(layer) if layer else default_layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", action="append", required=True, help="TRAIT=contaminated.jsonl[@LAYER] (repeatable)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", type=int, default=20, help="layer for pairs that name none")
    parser.add_argument("--extra-layers", default="",
                        help="comma-separated layers also scored (same forward pass), e.g. 15,18")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--answer-cache", default=None)
    parser.add_argument("--generation-dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="dtype base answers are generated in (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default="runs/screening_quality", help="extracted vectors go here")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    loaded = load_model(args.model, device="cpu")
    results = {}
    for pair in args.pair:
        trait_name, data_path, layer = parse_pair(pair, args.layer)
        trait = load_trait(trait_name)
        vector = extract_vector(loaded, trait, Path(args.work_dir) / trait.name,
                                config=ExtractionConfig(source="exemplars", seed=args.seed), plots=False).vector
        vector.default_layer = layer
        extra = [int(value) for value in args.extra_layers.split(",") if value.strip()]
        probes = [PersonaVector(f"{trait.name}@{probe}", vector.model_id, vector.directions, default_layer=probe)
                  for probe in extra]
        config = ScreeningConfig(batch_size=args.batch_size, answer_cache=args.answer_cache,
                                 base_answers=BaseAnswerSettings(max_new_tokens=args.max_new_tokens, seed=args.seed,
                                                                 batch_size=args.batch_size,
                                                                 dtype=args.generation_dtype))
        screener = Screener(loaded, [vector, *probes], config)
        started = time.perf_counter()
        result = screener.score(data_path)
        seconds = time.perf_counter() - started
        labels = labels_of(result.rows, "label")
        scores = result.traits[trait.name]
        table = compare_methods({
            "exact dP (base answers)": scores.dp,
            "fast proxy (--no-generate)": scores.fast_dp,
            "response-only projection": scores.projection,
            "embedding similarity": embedding_similarity([r.response for r in result.rows], trait.description),
            "random order": random_scores(len(labels), args.seed),
        }, 0, labels)
        interval = auroc_interval(scores.dp, labels, seed=args.seed)
        by_kind = auroc_by_group(scores.dp, labels, [str(r.data.get("source", "injected")) for r in result.rows])
        k = int(labels.sum())
        entry = {"layer": layer, "rows": len(labels), "positives": k, "skipped": len(result.skipped),
                 "generated_prompts": result.generated_prompts, "screen_seconds": round(seconds, 1),
                 "exact_auroc_95ci": interval, "exact_auroc_by_kind": by_kind, "methods": table}
        print(f"\n{trait.name}: {len(labels)} rows, {k} injected, {len(result.skipped)} skipped, layer {layer}, "
              f"{result.generated_prompts} base answers generated, screening took {seconds:.0f} s")
        print(f"  {'method':<30} {'AUROC':>7} {'P@' + str(k):>7} {'Spearman vs dP':>15}")
        for name, row in table.items():
            print(f"  {name:<30} {row['auroc']:>7.3f} {row['precision_at_k']:>7.3f} {row['spearman_vs_dp']:>15.3f}")
        print(f"  exact dP AUROC 95% bootstrap interval: {interval[0]:.3f}-{interval[1]:.3f}")
        print("  exact dP AUROC by injected kind: "
              + ", ".join(f"{kind} {value:.3f}" for kind, value in by_kind.items()))
        for probe in probes:
            other = result.traits[probe.trait]
            entry[f"layer_{probe.default_layer}"] = {
                "exact_auroc": auroc(other.dp, labels), "fast_auroc": auroc(other.fast_dp, labels),
                "response_only_auroc": auroc(other.projection, labels)}
            print(f"  layer {probe.default_layer}: AUROC exact {auroc(other.dp, labels):.3f}, fast "
                  f"{auroc(other.fast_dp, labels):.3f}, response-only {auroc(other.projection, labels):.3f}")
        results[trait.name] = entry
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
