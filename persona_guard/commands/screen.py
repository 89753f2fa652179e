"""``persona-guard screen``: projection-difference screening of a fine-tuning dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

from persona_guard.commands.common import (
    add_force_argument,
    add_judge_arguments,
    add_model_arguments,
    judge_endpoint,
    preflight,
)
from persona_guard.errors import PersonaGuardError
from persona_guard.files import output_folder, refuse_overwrite
from persona_guard.schema import add_arguments, from_args, values_from_args
from persona_guard.screening.base_answers import AnswerCache, BaseAnswerSettings
from persona_guard.screening.policy import FlagPolicy
from persona_guard.screening.scorer import ScreeningConfig

#: library field -> command-line flag
BASE_ANSWER_FLAGS = {"n": "--n-answers", "max_new_tokens": "--max-new-tokens", "temperature": "--temperature",
                     "top_p": "--top-p", "seed": "--seed", "batch_size": "--generation-batch-size",
                     "dtype": "--generation-dtype"}
POLICY_FLAGS = {"top_k": "--top-k", "top_percent": "--top-percent", "threshold": "--threshold",
                "percentile": "--percentile"}
CACHE_FLAGS = {"answer_cache": "--answer-cache", "backend": "--backend"}
BATCHING_FLAGS = {"batch_size": "--batch-size", "max_length": "--max-length", "shard_size": "--shard-size"}
JUDGE_FLAGS = {"judge_threshold": "--judge-threshold", "judge_combine": "--judge-combine"}
SCREENING_FLAGS = {**CACHE_FLAGS, **BATCHING_FLAGS, **JUDGE_FLAGS}


def _layer_overrides(specs: list[str], traits: list[str]) -> dict[str, int]:
    """``--layer 15`` (every vector) or ``--layer evil=15`` (one trait, which a vector must have)."""
    overrides = {}
    for spec in specs:
        trait, sep, value = spec.rpartition("=")
        try:
            layer = int(value)
        except ValueError:
            raise PersonaGuardError(f"--layer {spec!r}: expected L or TRAIT=L with an integer L") from None
        if layer < 0:
            raise PersonaGuardError(f"--layer {spec!r}: a layer is a hidden_states index >= 0")
        if sep and trait not in traits:
            raise PersonaGuardError(f"--layer {spec!r}: no vector for trait {trait!r} (vectors: {', '.join(traits)})")
        for name in ([trait] if sep else traits):
            overrides[name] = layer
    return overrides


def _trait_descriptions(traits: list[str]) -> dict[str, str]:
    """Descriptions of the bundled traits, for the embedding baseline (others are noted and skipped)."""
    from persona_guard.traits import load_trait

    descriptions = {}
    for trait in traits:
        try:
            descriptions[trait] = load_trait(trait).description
        except PersonaGuardError:
            print(f"note: no trait definition named {trait!r}: embedding baseline skipped for it")
    return descriptions


def run(args) -> int:
    from persona_guard.rows import read_rows
    from persona_guard.screening.data import classify_rows
    from persona_guard.screening.report import OutputFiles, labels_of, refuse_unscreenable
    from persona_guard.screening.scorer import current_processes
    from persona_guard.vectors import PersonaVector

    if args.percentile is not None and args.reference is None:
        raise PersonaGuardError("--percentile calibrates on a reference set: add --reference BENIGN.jsonl")
    percentile = args.percentile if args.percentile is not None else (95.0 if args.reference else None)
    policy = FlagPolicy(**{**values_from_args(args, POLICY_FLAGS), "percentile": percentile})
    out = Path(args.out)
    shards = out / "shards"
    processes = current_processes()
    # Shards of an earlier run resume it (their manifest must match these inputs); finished
    # outputs without shards are refused unless --force.
    vectors = [PersonaVector.load(path) for path in args.vector]
    resumable = (shards / "manifest.json").exists()
    refuse_overwrite(OutputFiles.under(out, [v.trait for v in vectors]).paths, args.force or resumable)
    config = from_args(
        ScreeningConfig, args, SCREENING_FLAGS, nested={f"policy.{k}": flag for k, flag in POLICY_FLAGS.items()},
        mode="fast" if args.no_generate else "exact",
        layers=_layer_overrides(args.layer, [v.trait for v in vectors]),
        base_answers=from_args(BaseAnswerSettings, args, BASE_ANSWER_FLAGS),
        policy=policy, checkpoint_dir=str(shards),
        base_answers_file=args.base_answers, judge=args.judge, judge_endpoint=judge_endpoint(args),
        progress=processes.is_main)
    packages = [("vllm", "--backend vllm")] if args.backend == "vllm" else []
    packages += [("wandb", "--wandb-project")] if args.wandb_project else []
    preflight(model=args.model, judge=(args.judge, judge_endpoint(args)) if args.judge else None,
              outputs=[out], files=[args.export_prompts] if args.export_prompts else [], packages=packages)
    raw_rows = read_rows(args.data, args.split)  # fail on bad paths before loading the model
    reference_rows = read_rows(args.reference) if args.reference else None
    usable, dropped = classify_rows(raw_rows)
    if not usable:
        refuse_unscreenable(dropped, out, source=str(args.data))
    if args.label_field:
        labels_of(usable, args.label_field)  # a row without the label fails now, not after the model ran
    if config.mode == "exact" and not args.base_answers and not args.export_prompts:
        AnswerCache(config.answer_cache_path)  # a damaged cache fails now, not after loading the model
    if args.force and processes.is_main and shards.exists():
        shutil.rmtree(shards)
    processes.barrier()
    with output_folder(out, owner=processes.is_main):  # a failure before any result leaves no folder
        return _screen(args, config, vectors, raw_rows, reference_rows, processes)


def _screen(args, config: ScreeningConfig, vectors, raw_rows, reference_rows, processes) -> int:
    from persona_guard.models import load_model
    from persona_guard.screening.report import (
        baseline_scores,
        compare_methods,
        labels_of,
        log_to_wandb,
        refuse_unscreenable,
        write_outputs,
    )
    from persona_guard.screening.scorer import Screener

    out = Path(args.out)
    device = processes.state.device if processes.state is not None else args.device
    loaded = load_model(args.model, device=device, dtype=args.dtype, layers_path=args.layers_path)
    screener = Screener(loaded, vectors, config)
    if args.export_prompts:
        if processes.is_main:
            count = screener.export_prompts(raw_rows, args.export_prompts, reference=reference_rows)
            print(f"{count} unique prompts -> {args.export_prompts} (answer them, then pass the answers "
                  "with --base-answers)")
        return 0
    result = screener.score(raw_rows, reference=reference_rows)
    if not processes.is_main:
        return 0
    if not result.rows:
        refuse_unscreenable(result.skipped, out, source=str(args.data))
    comparisons = None
    if args.baselines or args.label_field:
        labels = labels_of(result.rows, args.label_field) if args.label_field else None
        descriptions = _trait_descriptions(list(result.traits)) if args.baselines else {}
        comparisons = {trait: compare_methods(methods, int(result.traits[trait].flagged.sum()), labels)
                       for trait, methods in baseline_scores(result, descriptions).items()}
    files, summary = write_outputs(result, out, source=str(args.data), model_id=loaded.model_id,
                                   comparisons=comparisons)
    if args.wandb_project:
        run_dir = log_to_wandb(summary, result, files, project=args.wandb_project, run_name=args.wandb_run_name)
        print(f"W&B run: {run_dir}")
    print(f"{summary['rows_total']} rows: {summary['rows_scored']} scored, {summary['rows_skipped']} skipped, "
          f"{summary['rows_flagged']} flagged ({summary['policy']}); base answers generated for "
          f"{result.generated_prompts} prompts")
    for reason, count in summary["skipped_reasons"].items():
        print(f"  skipped {count} x {reason}")
    for trait, entry in summary["traits"].items():
        print(f"  {trait} (layer {entry['layer']}): dataset dP {entry['dataset_dp']}, flagged {entry['flagged']}")
    print(f"-> {files.scored}, {files.filtered}, {files.html}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "screen", help="score a fine-tuning dataset by projection difference and filter flagged rows",
        description="Score each (prompt, response) by projection difference: the response's projection on "
                    "the persona vector minus that of the base model's own answer. Writes scored.jsonl, "
                    "filtered.jsonl, skipped.jsonl, summary.json and report.md/.html to --out.")
    parser.add_argument("data", help="JSONL, Parquet, CSV, a saved datasets dir or a hub dataset id; rows in "
                                     "any form of docs/data.md (messages, prompt/completion, preference ...)")
    parser.add_argument("--vector", action="append", required=True, help="vector file (repeatable: one per trait)")
    parser.add_argument("--out", required=True, help="output directory (shards are checkpointed there)")
    add_model_arguments(parser)
    parser.add_argument("--split", default=None, help="split of a saved DatasetDict (default: train)")
    parser.add_argument("--layer", action="append", default=[],
                        help="L for every vector or TRAIT=L (default: each vector's default layer)")
    parser.add_argument("--no-generate", action="store_true",
                        help="fast proxy: response projection minus last-prompt-token projection, no base answers")
    # flags, types, defaults and ranges come from the library's dataclasses (persona_guard.schema)
    generation = parser.add_argument_group("base answers (exact mode)")
    add_arguments(generation, BaseAnswerSettings, BASE_ANSWER_FLAGS,
                  {"n": "base answers per prompt", "temperature": "0 = greedy"})
    add_arguments(generation, ScreeningConfig, CACHE_FLAGS,
                  {"answer_cache": "SQLite cache of base answers (default: ~/.cache/persona-guard/base_answers.sqlite)",
                   "backend": "generation backend (auto: vLLM when installed and on GPU)"})
    handoff = generation.add_mutually_exclusive_group()
    handoff.add_argument("--export-prompts", default=None, metavar="FILE",
                         help="write the unique prompts needing base answers (JSONL with cache keys) and exit")
    handoff.add_argument("--base-answers", default=None, metavar="FILE",
                         help="base answers made elsewhere (JSONL: key, prompt, answers, settings, model); "
                              "checked against this model and settings, nothing is generated")
    scale = parser.add_argument_group("batching")
    add_arguments(scale, ScreeningConfig, BATCHING_FLAGS,
                  {"max_length": "skip (and report) longer rows", "shard_size": "rows per checkpointed shard"})
    add_force_argument(scale, "--overwrite")
    flagging = parser.add_argument_group("flagging policy (one of; default --top-percent 5)")
    add_arguments(flagging.add_mutually_exclusive_group(), FlagPolicy, POLICY_FLAGS,
                  {"threshold": "flag dP above this value",
                   "percentile": "flag dP above this percentile of the reference set's dP "
                                 "(default 95 with --reference)"})
    flagging.add_argument("--reference", default=None, help="benign reference set to calibrate the threshold")
    add_judge_arguments(flagging, default=None)
    add_arguments(flagging, ScreeningConfig, JUDGE_FLAGS,
                  {"judge_threshold": "judge trait score that counts (0-100)",
                   "judge_combine": "flag when dP and / or the judge agree"})
    report = parser.add_argument_group("report")
    report.add_argument("--baselines", action="store_true",
                        help="compare with random, response-only and embedding-similarity rankings")
    report.add_argument("--label-field", default=None, help="0/1 field: report AUROC and precision@k")
    report.add_argument("--wandb-project", default=None, help="log summary, histograms and flagged rows to W&B")
    report.add_argument("--wandb-run-name", default=None)
    parser.set_defaults(func=run)

