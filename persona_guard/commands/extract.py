"""``persona-guard extract``: build a persona vector for a trait (generate + judge + filter, or exemplars)."""

from __future__ import annotations

from pathlib import Path

from persona_guard.activations import REDUCTIONS
from persona_guard.commands.common import (
    add_force_argument,
    add_judge_arguments,
    add_model_arguments,
    finite_float,
    judge_endpoint,
    judge_from_args,
    preflight,
)
from persona_guard.extraction import SOURCES, ExtractionConfig, extract_vector
from persona_guard.files import refuse_overwrite
from persona_guard.models import load_model
from persona_guard.traits import load_trait


def run(args) -> int:
    trait = load_trait(args.trait)
    out = Path(args.out) if args.out else Path("vectors") / f"{trait.name}-{Path(args.model).name}"
    # A finished run is refused; an interrupted one (no vector yet) resumes from its caches.
    refuse_overwrite([out / f"{trait.name}.safetensors"], args.force)
    preflight(model=args.model, judge=(args.judge, judge_endpoint(args)) if args.source == "generate" else None,
              outputs=[out])
    config = ExtractionConfig(source=args.source, method=args.method, n_per_question=args.n_per_question,
                              questions=args.questions, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, batch_size=args.batch_size, seed=args.seed,
                              pos_threshold=args.pos_threshold, neg_threshold=args.neg_threshold,
                               coherence_threshold=args.coherence_threshold,
                              min_pairs=args.min_pairs)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, layers_path=args.layers_path)
    judge = judge_from_args(args) if args.source == "generate" else None
    result = extract_vector(loaded, trait, out, judge=judge, config=config)
    pairs = result.report["pairs"]
    print(f"{trait.name}: kept {pairs['kept']} of {pairs['total']} pairs"
          + (f" (dropped: {pairs['drop_reasons']})" if pairs["dropped"] else ""))
    layer = result.vector.default_layer
    row = result.report["layers"][layer]
    heldout = f", held-out AUROC {row['heldout_auroc']:.3f}" if "heldout_auroc" in row else ""
    print(f"default layer {layer} ({result.report['default_layer_rule']}){heldout}")
    print(f"wrote {result.vector_path}, {result.report_path}" + (f", {result.plot_path}" if result.plot_path else ""))
    if result.generated == 0 and result.judged == 0 and args.source == "generate":
        print("(all generations and judgements came from the cache)")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("extract", help="extract a persona vector for a trait")
    parser.add_argument("--trait", required=True, help="bundled trait name or trait file path")
    add_model_arguments(parser)
    parser.add_argument("--out", default=None, help="output dir (default: vectors/<trait>-<model>)")
    parser.add_argument("--source", choices=SOURCES, default="generate",
                        help="generate: the model answers under trait prompts (paper); exemplars: "
                             "teacher-force the trait's written exemplars")
    parser.add_argument("--method", choices=REDUCTIONS, default="response_mean")
    parser.add_argument("--n-per-question", type=int, default=1, help="samples per question and instruction pair")
    parser.add_argument("--questions", type=int, default=None, help="use the first K extraction questions")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=finite_float, default=0.7)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pos-threshold", type=finite_float, default=50.0,
                        help="keep a pair only if the trait answer's judge score is >= this (default 50)")
    parser.add_argument("--neg-threshold", type=finite_float, default=50.0,
                        help="... and the opposite answer's score is < this (default 50)")
    parser.add_argument("--coherence-threshold", type=finite_float, default=50.0,
                        help="... and both answers' coherence is >= this (default 50)")
    parser.add_argument("--min-pairs", type=int, default=3)
    add_judge_arguments(parser)
    add_force_argument(parser)
    parser.set_defaults(func=run)
