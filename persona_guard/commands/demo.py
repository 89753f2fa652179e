"""``persona-guard demo``: the whole method end to end on the embedded default model."""

from __future__ import annotations

from pathlib import Path

from persona_guard.commands.common import add_force_argument, preflight
from persona_guard.demo import DemoConfig, run_demo
from persona_guard.files import output_folder, refuse_overwrite
from persona_guard.judges import JudgeEndpoint
from persona_guard.schema import add_arguments, values_from_args

#: library field -> command-line flag (defaults: DemoConfig's, or DemoConfig.quick's with --quick)
DEMO_FLAGS = {"out_dir": "--out", "seed": "--seed", "prevent_coef": "--prevent-coef",
              "inference_coef": "--inference-coef", "train_rows": "--train-rows", "learning_rate": "--learning-rate"}


def run(args) -> int:
    overrides = values_from_args(args, DEMO_FLAGS)  # only the flags given
    config = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
    refuse_overwrite([config.out_dir], args.force)
    # Every stage's needs, before the first one starts (evaluation uses the offline judge).
    preflight(model=config.model, judge=("offline", JudgeEndpoint()), outputs=[Path(config.out_dir)],
              packages=[("peft", "demo fine-tuning"), ("trl", "demo fine-tuning"), ("matplotlib", "demo plots")])
    with output_folder(config.out_dir):  # a failure before the first result leaves no folder
        run_demo(config, quick=args.quick)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="extract -> screen -> fine-tune three arms -> evaluate, on the embedded SmolLM2 (CPU)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the whole path in minutes")
    add_arguments(parser, DemoConfig, DEMO_FLAGS, optional=True)  # types, ranges, help: the dataclass's
    add_force_argument(parser)
    parser.set_defaults(func=run)
