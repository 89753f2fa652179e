"""``persona-guard steer``: answer a prompt with and without steering, side by side."""

from __future__ import annotations

import shutil
import textwrap

from persona_guard.commands.common import add_model_arguments, finite_float, preflight
from persona_guard.generation import GenerationConfig, generate_responses
from persona_guard.models import load_model
from persona_guard.steering import OPERATORS, POSITIONS, Steering
from persona_guard.vectors import PersonaVector


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
    preflight(model=args.model)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, layers_path=args.layers_path)
    vector.check_model(loaded)
    layer = vector.resolve_layer(args.layer)
    prompt = []
    if args.system:
        prompt.append({"role": "system", "content": args.system})
    prompt.append({"role": "user", "content": args.prompt})
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              batch_size=1, seed=args.seed)
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
    parser.add_argument("--layer", type=int, default=None, help="default: the vector's default layer")
    parser.add_argument("--coef", type=finite_float, default=4.0, help="steering strength; negative suppresses")
    parser.add_argument("--operator", choices=OPERATORS, default="add")
    parser.add_argument("--positions", choices=POSITIONS, default="all")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--system", default=None, help="optional system prompt")
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--temperature", type=finite_float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)
