"""``persona-guard demo``: the whole method end to end on the embedded default model."""

from __future__ import annotations

from pathlib import Path

from persona_guard.commands.common import add_force_argument, finite_float, preflight
from persona_guard.demo import DemoConfig, run_demo
from persona_guard.files import refuse_overwrite
from persona_guard.judges import JudgeEndpoint


def run(args) -> int:
    overrides = {key: value for key, value in (
        ("out_dir", args.out), ("seed", args.seed), ("prevent_coef", args.prevent_coef),
        ("inference_coef", args.inference_coef), ("train_rows", args.train_rows),
        ("learning_rate", args.learning_rate)) if value is not None}
    config = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
    refuse_overwrite([config.out_dir], args.force)
    # Every stage's needs, before the first one starts (evaluation uses the offline judge).
    preflight(model=config.model, judge=("offline", JudgeEndpoint()), outputs=[Path(config.out_dir)],
              packages=[("peft", "demo fine-tuning"), ("trl", "demo fine-tuning"), ("matplotlib", "demo plots")])
    run_demo(config, quick=args.quick)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="extract -> screen -> fine-tune three arms -> evaluate, on the embedded SmolLM2 (CPU)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the whole path in minutes")
    parser.add_argument("--out", default=None, help="output dir (default: runs/demo)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--prevent-coef", type=finite_float, default=None, help="preventative steering coefficient")
    parser.add_argument("--inference-coef", type=finite_float, default=None, help="inference steering coefficient")
    parser.add_argument("--train-rows", type=int, default=None, help="fine-tuning rows per arm")
    parser.add_argument("--learning-rate", type=finite_float, default=None)
    add_force_argument(parser)
    parser.set_defaults(func=run)
