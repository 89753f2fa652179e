"""Flagging quality of projection-difference screening on contaminated datasets.

For each ``TRAIT=DATA.jsonl`` pair (rows with ``"label": 0|1``: benign rows with trait-laden rows
mixed in) a persona vector is built by teacher forcing the trait's exemplar answers (mean
response activation of the trait answers minus that of the opposite answers, every layer), the
data is screened, and AUROC / precision@k (k = number of injected rows) against the labels are
printed for: exact dP (with base answers), the fast proxy (no generation), the response-only
projection, embedding similarity to the trait description and random order.

    python benchmarks/screening_quality.py \\
        --pair evil=personas/bundled_data/contaminated/evil.jsonl \\
        --trait-dir personas/trait_data --limit 200 --max-new-tokens 48

Base answers are cached (``--answer-cache``), so a rerun only costs the forward passes.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from personas.activations import capture_activations
from personas.encoding import encode_chat
from personas.models import load_model
from personas.traits import load_trait
from personas.vectors import PersonaVector, mean_difference
from screening import BaseAnswerSettings, Screener, ScreeningConfig
from screening.baselines import SentenceEmbedder, random_scores
from screening.metrics import auroc, precision_at_k, spearman


def exemplar_vector(loaded, trait, layer: int, batch_size: int) -> PersonaVector:
    """Teacher-forced exemplar vector: ``mean_difference`` of response-mean activations, all layers."""
    tokenizer, model = loaded.tokenizer, loaded.model
    n_layers = model.config.num_hidden_layers
    def encode(side: str):
        return [encode_chat(tokenizer, [{"role": "user", "content": e.question}], getattr(e, side))
                for e in trait.exemplars]
    layers = list(range(n_layers + 1))
    pos = capture_activations(model, encode("pos"), layers, pad_token_id=tokenizer.pad_token_id,
                              batch_size=batch_size, desc="exemplars (trait)")["response_mean"]
    neg = capture_activations(model, encode("neg"), layers, pad_token_id=tokenizer.pad_token_id,
                              batch_size=batch_size, desc="exemplars (opposite)")["response_mean"]
    return PersonaVector(trait.name, loaded.model_id, mean_difference(pos, neg), default_layer=layer,
                         method="exemplar_response_mean", n_pos=len(pos), n_neg=len(neg))


def subsample(rows: list[dict], limit: int | None, seed: int) -> list[dict]:
    """At most ``limit`` rows keeping the positive/negative ratio (seeded)."""
    if not limit or limit >= len(rows):
        return rows
    rng = random.Random(seed)
    positives = [r for r in rows if int(r["label"]) == 1]
    negatives = [r for r in rows if int(r["label"]) == 0]
    n_pos = max(1, round(limit * len(positives) / len(rows)))
    picked = rng.sample(positives, min(n_pos, len(positives))) + rng.sample(negatives, min(limit - n_pos, len(negatives)))
    return sorted(picked, key=rows.index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", action="append", required=True, help="TRAIT=contaminated.jsonl (repeatable)")
    parser.add_argument("--trait-dir", default=None,
                        help="dir of <trait>.json files (default: the bundled traits)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--extra-layers", default="",
                        help="comma-separated layers also scored (same forward pass), e.g. 10,20")
    parser.add_argument("--limit", type=int, default=None, help="rows per dataset (stratified sample)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--answer-cache", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vector-dir", default=None,
                        help="reuse <trait>.safetensors vectors from here, saving the ones built")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    loaded = load_model(args.model, device="cpu")
    embedder = SentenceEmbedder()
    results = {}
    for pair in args.pair:
        trait_name, _, data_path = pair.partition("=")
        trait = load_trait(Path(args.trait_dir) / f"{trait_name}.json" if args.trait_dir else trait_name)
        rows = subsample([json.loads(line) for line in Path(data_path).read_text().splitlines() if line.strip()],
                         args.limit, args.seed)
        saved = Path(args.vector_dir) / f"{trait.name}.safetensors" if args.vector_dir else None
        if saved is not None and saved.exists():
            vector = PersonaVector.load(saved)
            vector.default_layer = args.layer
        else:
            vector = exemplar_vector(loaded, trait, args.layer, args.batch_size)
            if saved is not None:
                vector.save(saved)
        config = ScreeningConfig(batch_size=args.batch_size, answer_cache=args.answer_cache,
                                 base_answers=BaseAnswerSettings(max_new_tokens=args.max_new_tokens,
                                                                 batch_size=args.batch_size))
        extra = [int(layer) for layer in args.extra_layers.split(",") if layer.strip()]
        probes = [PersonaVector(f"{trait.name}@{layer}", vector.model_id, vector.directions, default_layer=layer)
                  for layer in extra]
        screener = Screener(loaded.model, loaded.tokenizer, [vector, *probes], config, model_id=loaded.model_id)
        started = time.perf_counter()
        result = screener.score(rows)
        seconds = time.perf_counter() - started
        labels = np.array([int(r.data["label"]) for r in result.rows])
        scores = result.traits[trait.name]
        methods = {
            "exact dP (base answers)": scores.dp,
            "fast proxy (--no-generate)": scores.fast_dp,
            "response-only projection": scores.projection,
            "embedding similarity": embedder.similarity([r.response for r in result.rows], trait.description),
            "random order": random_scores(len(labels), args.seed),
        }
        k = int(labels.sum())
        table = {name: {"auroc": auroc(s, labels), "precision_at_k": precision_at_k(s, labels, k)}
                 for name, s in methods.items()}
        rho = spearman(scores.dp, scores.fast_dp)
        sources = [str(r.data.get("source", "")) for r in result.rows]
        order = np.argsort(-scores.dp, kind="stable")
        missed = [(int(np.flatnonzero(order == i)[0]) + 1, sources[i]) for i in np.flatnonzero(labels)]
        results[trait.name] = {"injected_ranks_by_exact_dp": sorted(missed),"rows": len(labels), "positives": k, "skipped": len(result.skipped),
                               "generated_prompts": result.generated_prompts, "screen_seconds": round(seconds, 1),
                               "spearman_exact_vs_fast": rho, "methods": table}
        print(f"\n{trait.name}: {len(labels)} rows, {k} injected, {len(result.skipped)} skipped, layer {args.layer}, "
              f"{result.generated_prompts} base answers generated, screening took {seconds:.0f} s")
        print(f"  {'method':<30} {'AUROC':>7} {'P@' + str(k):>7}")
        for name, entry in table.items():
            print(f"  {name:<30} {entry['auroc']:>7.3f} {entry['precision_at_k']:>7.3f}")
        print(f"  Spearman(exact dP, fast proxy) = {rho:.3f}")
        print(f"  ranks of the injected rows by exact dP: {sorted(missed)}")
        for probe in probes:
            other = result.traits[probe.trait]
            results[trait.name][f"layer_{probe.default_layer}"] = {
                "exact_auroc": auroc(other.dp, labels), "fast_auroc": auroc(other.fast_dp, labels),
                "response_only_auroc": auroc(other.projection, labels)}
            print(f"  layer {probe.default_layer}: AUROC exact {auroc(other.dp, labels):.3f}, fast "
                  f"{auroc(other.fast_dp, labels):.3f}, response-only {auroc(other.projection, labels):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
