"""``persona-guard select-layer``: steer at several layers x coefficients, judge, store the best layer."""

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
from persona_guard.files import output_folder, refuse_overwrite
from persona_guard.layer_selection import LayerSelectionConfig, select_layer, selection_stem, store_choice
from persona_guard.models import load_model
from persona_guard.schema import add_arguments, from_args
from persona_guard.traits import load_trait
from persona_guard.vectors import PersonaVector, check_same_trait

#: library field -> command-line flag
SELECTION_FLAGS = {name: "--" + name.replace("_", "-") for name in (
    "layers", "coefs", "questions", "max_new_tokens", "batch_size", "seed", "coherence_threshold")}


def run(args) -> int:
    config = from_args(LayerSelectionConfig, args, SELECTION_FLAGS)
    vector = PersonaVector.load(args.vector)
    trait = load_trait(args.trait or vector.trait)
    check_same_trait(vector, trait)
    out = Path(args.out) if args.out else Path(args.vector).parent
    stem = selection_stem(out, vector.trait)
    refuse_overwrite([stem.with_suffix(suffix) for suffix in (".csv", ".md", ".png")], args.force)
    preflight(model=args.model or vector.model_id, judge=(args.judge, judge_endpoint(args)), outputs=[out])
    with output_folder(out):  # a failed selection leaves no folder behind
        loaded = load_model(args.model or vector.model_id, device=args.device, dtype=args.dtype,
                            layers_path=args.layers_path)
        selection = select_layer(loaded, vector, trait, judge_from_args(args), out, config)
    print(selection.table_md.read_text(encoding="utf-8"))
    print(f"unsteered trait score: {selection.baseline_trait}")
    print(f"chosen layer {selection.chosen_layer}: {selection.rule}")
    if selection.heuristic_layer is not None:
        print(f"held-out AUROC heuristic would pick layer {selection.heuristic_layer}")
    print(f"wrote {selection.table_csv}, {selection.table_md}, {selection.heatmap}")
    if not args.no_save:
        print(f"saved default_layer={selection.chosen_layer} to {store_choice(vector, selection, args.vector)}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("select-layer", help="choose a vector's layer by steering and judging")
    parser.add_argument("--vector", required=True, help="persona vector .safetensors (updated in place)")
    parser.add_argument("--trait", default=None, help="trait name or file (default: the vector's trait)")
    add_model_arguments(parser)
    parser.set_defaults(model=None)
    add_arguments(parser, LayerSelectionConfig, SELECTION_FLAGS)  # types, defaults, ranges, help: the dataclass's
    parser.add_argument("--out", default=None, help="where tables and the heat map go (default: the vector's dir)")
    parser.add_argument("--no-save", action="store_true", help="do not write the choice back into the vector")
    add_judge_arguments(parser)
    add_force_argument(parser)
    parser.set_defaults(func=run)
