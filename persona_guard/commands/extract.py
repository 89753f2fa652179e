"""``persona-guard extract``: build a persona vector for a trait (generate + judge + filter, or exemplars)."""

from __future__ import annotations

from pathlib import Path

from persona_guard.commands.common import (
    add_force_argument,
    add_judge_arguments,
    add_model_arguments,
    judge_endpoint,
    judge_from_args,
    preflight,
)
from persona_guard.extraction import ExtractionConfig, exemplar_pairs, extract_vector
from persona_guard.files import output_folder, refuse_overwrite
from persona_guard.models import load_model
from persona_guard.schema import add_arguments, from_args
from persona_guard.traits import load_trait

#: library field -> command-line flag
EXTRACTION_FLAGS = {name: "--" + name.replace("_", "-") for name in (
    "source", "method", "aggregator", "n_per_question", "questions", "max_new_tokens", "temperature",
    "batch_size", "seed", "pos_threshold", "neg_threshold", "coherence_threshold", "min_pairs")}


def run(args) -> int:
    config = from_args(ExtractionConfig, args, EXTRACTION_FLAGS)
    trait = load_trait(args.trait)
    if config.source == "exemplars":
        exemplar_pairs(trait, config)  # too few pairs fails before anything is loaded or created
    out = Path(args.out) if args.out else Path("vectors") / f"{trait.name}-{Path(args.model).name}"
    # A finished run is refused; an interrupted one (no vector yet) resumes from its caches.
    refuse_overwrite([out / f"{trait.name}.safetensors"], args.force)
    preflight(model=args.model, judge=(args.judge, judge_endpoint(args)) if args.source == "generate" else None,
              outputs=[out])
    with output_folder(out):  # a failure before any answer is cached leaves no folder
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
    add_arguments(parser, ExtractionConfig, EXTRACTION_FLAGS)  # types, defaults, ranges, help: the dataclass's
    add_judge_arguments(parser)
    add_force_argument(parser)
    parser.set_defaults(func=run)
