"""``persona-guard steer``: answer a prompt with and without steering, side by side."""

from __future__ import annotations

import shutil
import textwrap

from persona_guard.commands.common import add_model_arguments, non_empty_text, preflight
from persona_guard.generation import GenerationConfig, generate_responses
from persona_guard.models import load_model
from persona_guard.schema import add_arguments, bounds, flag_type, from_args
from persona_guard.steering import COEF_BOUNDS, OPERATORS, POSITIONS, Steering
from persona_guard.vectors import PersonaVector

#: library field -> command-line flag
GENERATION_FLAGS = {"max_new_tokens": "--max-new-tokens", "temperature": "--temperature", "seed": "--seed"}


def side_by_side(left_title: str, left: str, right_title: str, right: str, width: int) -> str:
    column = max(20, (width - 3) // 2)
    left_lines = [left_title, "-" * len(left_title), *(textwrap.wrap(left, column) or [""])]
    right_lines = [right_title, "-" * len(right_title), *(textwrap.wrap(right, column) or [""])]
    height = max(len(left_lines), len(right_lines))
    left_lines += [""] * (height - len(left_lines))
    right_lines += [""] * (height - len(right_lines))
    return "\n".join(f"{a:<{column}} | {b}" for a, b in zip(left_lines, right_lines))


def run(args) -> int:
    vector = PersonaVector.load(args.vector)
    layer = vector.resolve_layer(args.layer)  # a layer the vector lacks fails before the model loads
    preflight(model=args.model)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, layers_path=args.layers_path)
    vector.check_model(loaded)
    prompt = []
    if args.system:
        prompt.append({"role": "system", "content": args.system})
    prompt.append({"role": "user", "content": args.prompt})
    config = from_args(GenerationConfig, args, GENERATION_FLAGS, batch_size=1)
    steering = Steering(loaded.layers, vector, layers=layer, coef=args.coef, operator=args.operator,
                        positions=args.positions)  # checked before generating
    plain = generate_responses(loaded.model, loaded.tokenizer, [prompt], config, progress=False)[0]
    with steering:
        steered = generate_responses(loaded.model, loaded.tokenizer, [prompt], config, progress=False)[0]
    width = shutil.get_terminal_size((120, 20)).columns
    print(side_by_side("unsteered", plain,
                       f"{args.operator} {vector.trait} @ layer {layer}, coef {args.coef:+g}", steered, width))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("steer", help="compare unsteered and steered answers to a prompt")
    add_model_arguments(parser)
    parser.add_argument("--vector", required=True, help="persona vector .safetensors (or paper .pt)")
    parser.add_argument("--layer", type=flag_type("layer", int, bounds(ge=0)), default=None,
                        help="hidden_states index (default: the vector's default layer)")
    parser.add_argument("--coef", type=flag_type("coef", float, COEF_BOUNDS), default=4.0,
                        help=f"{COEF_BOUNDS['help']} (|coef| <= {COEF_BOUNDS['le']:g}, default 4)")
    parser.add_argument("--operator", choices=OPERATORS, default="add")
    parser.add_argument("--positions", choices=POSITIONS, default="all")
    parser.add_argument("--prompt", required=True, type=non_empty_text, help="the user message")
    parser.add_argument("--system", default=None, help="optional system prompt")
    add_arguments(parser, GenerationConfig, GENERATION_FLAGS)
    parser.set_defaults(func=run)
