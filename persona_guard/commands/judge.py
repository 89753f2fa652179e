"""``persona-guard judge``: score answers for a trait, or report the offline judge's held-out accuracy."""

from __future__ import annotations

from pathlib import Path

from persona_guard.commands.common import (
    add_force_argument,
    add_judge_arguments,
    judge_endpoint,
    judge_from_args,
    preflight,
)
from persona_guard.errors import PersonaGuardError
from persona_guard.files import refuse_overwrite
from persona_guard.io import write_jsonl
from persona_guard.judges import OfflineJudge, offline_heldout_report
from persona_guard.rows import last_user_turn, read_rows, strict_rows
from persona_guard.traits import bundled_trait_names, load_trait


def report(traits: list[str]) -> int:
    if not traits:
        raise PersonaGuardError("no bundled traits found; pass --trait NAME_OR_FILE")
    judge = OfflineJudge()
    print("offline judge held-out accuracy (trained on extraction exemplars, tested on eval-question exemplars)")
    print(f"{'trait':<20} {'pairs':>5} {'accuracy':>9} {'pair acc':>9}")
    for name in traits:
        result = offline_heldout_report(load_trait(name), judge)
        print(f"{result.trait:<20} {result.n_pairs:>5} {result.accuracy:>9.3f} {result.pair_accuracy:>9.3f}")
    return 0


def score_file(args) -> int:
    """One output line per answer: a preference row gives two, each with its ``side``."""
    out = Path(args.out) if args.out else Path(args.input).with_suffix(".judged.jsonl")
    preflight(judge=(args.judge, judge_endpoint(args)), files=[out])
    refuse_overwrite([out], args.force)
    trait = load_trait(args.trait)
    rows = strict_rows(read_rows(args.input), need="answer")
    samples = [(row, sample) for row in rows for sample in row.samples]
    scores = judge_from_args(args).score(trait, [(last_user_turn(s.prompt), s.response) for _, s in samples])
    write_jsonl(out, [{**row.data, **({"side": sample.side} if sample.side else {}),
                       "judge": {"trait": s.trait, "coherence": s.coherence, "refusal": s.refusal}}
                      for (row, sample), s in zip(samples, scores)])
    unscored = sum(s.trait is None for s in scores)
    print(f"judged {len(scores)} answers for {trait.name} -> {out}" + (f" ({unscored} without a trait score)"
                                                                       if unscored else ""))
    return 0


def run(args) -> int:
    if args.report:
        if args.input or args.out:
            raise PersonaGuardError("--report scores the bundled held-out exemplars: pass --report or --input/--out, "
                                    "not both")
        return report([args.trait] if args.trait else bundled_trait_names())
    if not args.trait or not args.input:
        raise PersonaGuardError("pass --report, or --trait and --input FILE.jsonl to score")
    return score_file(args)


def register(subparsers) -> None:
    parser = subparsers.add_parser("judge", help="judge answers for a trait; --report: offline judge accuracy")
    parser.add_argument("--trait", default=None, help="trait name or file (--report: default all bundled)")
    parser.add_argument("--report", action="store_true", help="held-out accuracy of the offline judge")
    parser.add_argument("--input", default=None, help="rows to score (JSONL, Parquet, CSV; any form in docs/data.md)")
    parser.add_argument("--out", default=None, help="output JSONL (default: INPUT.judged.jsonl)")
    add_judge_arguments(parser)
    add_force_argument(parser)
    parser.set_defaults(func=run)
