"""``persona-guard eval``: trait expression, projection, coherence and capability of one or more arms.

One arm: ``--model M [--adapter A] [--steer-coef C]``. Several (compare mode): repeat
``--arm NAME=MODEL[:ADAPTER][@COEF]``, e.g. base, fine-tuned, fine-tuned with preventative steering,
and fine-tuned then steered at inference with the negative vector (``@-4``).
"""

from __future__ import annotations

from pathlib import Path

from persona_guard.commands.common import (
    add_force_argument,
    add_judge_arguments,
    add_model_arguments,
    judge_endpoint,
    preflight,
)
from persona_guard.io import require_file
from persona_guard.schema import add_arguments, flag_type, from_args
from persona_guard.steering import COEF_BOUNDS
from persona_guard.training.evaluation import EvalSettings, check_lm_eval_tasks

BUNDLED_BENIGN = "benign_heldout.jsonl"
BUNDLED_MC = "capability_mc.jsonl"
#: library field -> command-line flag
EVAL_FLAGS = {name: "--" + name.replace("_", "-") for name in (
    "layer", "samples", "temperature", "max_new_tokens", "max_questions", "batch_size", "seed", "max_benign",
    "lm_eval_limit")}


def capability_path(option: str | None, bundled_name: str, what: str) -> str | None:
    """The file for a capability check: the option, the bundled default, or None ('none' / missing)."""
    if option == "none":
        return None
    if option is not None:
        return option
    import persona_guard

    path = Path(persona_guard.__file__).parent / "bundled_data" / bundled_name
    if not path.is_file():
        print(f"persona-guard eval: {what} check skipped: bundled {bundled_name} not found (pass a file)")
        return None
    return str(path)


def run(args) -> int:
    from persona_guard.errors import PersonaGuardError
    from persona_guard.files import output_folder, refuse_overwrite
    from persona_guard.training.evaluation import Arm, check_arms, compare, results_table
    from persona_guard.traits import load_trait
    from persona_guard.vectors import PersonaVector, check_same_trait

    if args.arm and (args.adapter or args.steer_coef):
        raise PersonaGuardError("use either --arm (compare mode) or --model/--adapter/--steer-coef, not both")
    arms = [Arm.parse(spec) for spec in args.arm] or [
        Arm("model", args.model, args.adapter, args.steer_coef or 0.0)]
    out = Path(args.out)
    refuse_overwrite([out / "results.json", out / "results.md", out / "comparison.png"], args.force)
    trait = load_trait(args.trait)
    vector = PersonaVector.load(args.vector) if args.vector else None
    check_arms(arms, vector)  # steering without a vector, or an arm name twice: before anything else
    if vector is not None:
        check_same_trait(vector, trait)  # its projection beside another trait's judge score means nothing
        vector.resolve_layer(args.layer)  # a layer the vector lacks fails before any model loads
    for flag, path in (("--benign", args.benign), ("--mc", args.mc)):
        if path not in (None, "none"):
            require_file(path, flag=flag)
    for arm in arms:
        preflight(model=arm.model)
        if arm.adapter and not (Path(arm.adapter) / "adapter_config.json").is_file():
            raise PersonaGuardError(f"arm {arm.name!r}: adapter dir {arm.adapter} holds no adapter_config.json")
    preflight(judge=(args.judge, judge_endpoint(args)) if args.judge != "none" else None, outputs=[out],
              packages=[("lm_eval", "--lm-eval-task")] if args.lm_eval_task else [])
    check_lm_eval_tasks(args.lm_eval_task)  # after the package check: a typo fails before any model loads
    settings = from_args(
        EvalSettings, args, EVAL_FLAGS, judge=args.judge, judge_endpoint=judge_endpoint(args),
        benign_path=capability_path(args.benign, BUNDLED_BENIGN, "perplexity"),
        mc_path=capability_path(args.mc, BUNDLED_MC, "multiple-choice"),
        device=args.device, dtype=args.dtype, layers_path=args.layers_path, lm_eval_tasks=tuple(args.lm_eval_task))
    with output_folder(out):  # a failed run leaves no folder behind
        results = compare(arms, trait, vector, settings, out)
    print(results_table(results))
    print(f"persona-guard eval: wrote {args.out}/results.json, results.md, comparison.png")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="score trait expression, projection, coherence and capability of models / adapters",
        description=__doc__)
    add_model_arguments(parser)
    parser.add_argument("--adapter", default=None, help="LoRA adapter dir to load on --model")
    parser.add_argument("--steer-coef", type=flag_type("steer_coef", float, COEF_BOUNDS), default=None,
                        help="steer with the vector at inference (negative suppresses the trait; "
                             f"|coef| <= {COEF_BOUNDS['le']:g})")
    parser.add_argument("--arm", action="append", default=[], metavar="NAME=MODEL[:ADAPTER][@COEF]",
                        help="compare mode: one arm per --arm")
    parser.add_argument("--trait", required=True, help="bundled trait name or trait JSON/YAML path")
    parser.add_argument("--vector", default=None, help="persona vector for projections and inference steering")
    add_judge_arguments(parser, default="offline", none="skip trait scoring")
    add_arguments(parser, EvalSettings, EVAL_FLAGS)  # types, defaults, ranges, help: the dataclass's
    parser.add_argument("--benign", default=None, help="held-out chat JSONL for perplexity ('none' skips; "
                                                       "default: bundled benign_heldout.jsonl)")
    parser.add_argument("--lm-eval-task", action="append", default=[], metavar="TASK",
                        help="also run an lm-eval task (name such as mmlu, or a task YAML file; repeatable; "
                             "needs `pip install lm-eval`)")
    parser.add_argument("--mc", default=None, help="multiple-choice JSONL ('none' skips; default: bundled "
                                                   "capability_mc.jsonl)")
    parser.add_argument("--out", default="eval_results", help="output directory")
    add_force_argument(parser)
    parser.set_defaults(func=run)
