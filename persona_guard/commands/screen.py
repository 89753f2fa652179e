"""``persona-guard screen``: projection-difference screening of a fine-tuning dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

from persona_guard.commands.common import add_model_arguments
from persona_guard.errors import PersonaGuardError


def _layer_overrides(specs: list[str], traits: list[str]) -> dict[str, int]:
    """``--layer 15`` (every vector) or ``--layer evil=15`` (one trait)."""
    overrides = {}
    for spec in specs:
        trait, sep, value = spec.rpartition("=")
        try:
            layer = int(value)
        except ValueError:
            raise PersonaGuardError(f"--layer {spec!r}: expected L or TRAIT=L with an integer L") from None
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
    from persona_guard.models import load_model
    from persona_guard.vectors import PersonaVector
    from persona_guard.screening.base_answers import BaseAnswerSettings
    from persona_guard.screening.data import read_rows
    from persona_guard.screening.policy import FlagPolicy
    from persona_guard.screening.report import baseline_scores, compare_methods, labels_of, log_to_wandb, write_outputs
    from persona_guard.screening.scorer import Screener, ScreeningConfig, current_processes

    if args.percentile is not None and args.reference is None:
        raise PersonaGuardError("--percentile calibrates on a reference set: add --reference BENIGN.jsonl")
    percentile = args.percentile if args.percentile is not None else (95.0 if args.reference else None)
    policy = FlagPolicy(top_k=args.top_k, top_percent=args.top_percent, threshold=args.threshold,
                        percentile=percentile)
    out = Path(args.out)
    shards = out / "shards"
    processes = current_processes()
    if args.overwrite and processes.is_main and shards.exists():
        shutil.rmtree(shards)
    processes.barrier()
    raw_rows = read_rows(args.data, args.split)  # fail on bad paths before loading the model
    reference_rows = read_rows(args.reference) if args.reference else None
    vectors = [PersonaVector.load(path) for path in args.vector]
    device = processes.state.device if processes.state is not None else args.device
    loaded = load_model(args.model, device=device, dtype=args.dtype)
    config = ScreeningConfig(
        mode="fast" if args.no_generate else "exact",
        layers=_layer_overrides(args.layer, [v.trait for v in vectors]),
        batch_size=args.batch_size, max_length=args.max_length, shard_size=args.shard_size,
        base_answers=BaseAnswerSettings(n=args.n_answers, max_new_tokens=args.max_new_tokens,
                                        temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                                        batch_size=args.generation_batch_size),
        answer_cache=args.answer_cache, base_answers_file=args.base_answers, backend=args.backend, policy=policy,
        judge=args.judge, judge_threshold=args.judge_threshold, judge_combine=args.judge_combine,
        checkpoint_dir=str(shards), layers_path=args.layers_path,
        progress=processes.is_main)
    screener = Screener(loaded.model, loaded.tokenizer, vectors, config, model_id=loaded.model_id)
    if args.export_prompts:
        if processes.is_main:
            count = screener.export_prompts(raw_rows, args.export_prompts, reference=reference_rows)
            print(f"{count} unique prompts -> {args.export_prompts} (answer them, then pass the answers "
                  "with --base-answers)")
        return 0
    result = screener.score(raw_rows, reference=reference_rows)
    if not processes.is_main:
        return 0
    comparisons = None
    if args.baselines or args.label_field:
        labels = labels_of(result, args.label_field) if args.label_field else None
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
    parser.add_argument("data", help="JSONL, Parquet, CSV or a saved datasets dir; rows in 'messages', "
                                     "'prompt'/'completion' or 'prompt'/'response' form")
    parser.add_argument("--vector", action="append", required=True, help="vector file (repeatable: one per trait)")
    parser.add_argument("--out", required=True, help="output directory (shards are checkpointed there)")
    add_model_arguments(parser)
    parser.add_argument("--split", default=None, help="split of a saved DatasetDict (default: train)")
    parser.add_argument("--layer", action="append", default=[],
                        help="L for every vector or TRAIT=L (default: each vector's default layer)")
    parser.add_argument("--no-generate", action="store_true",
                        help="fast proxy: response projection minus last-prompt-token projection, no base answers")
    generation = parser.add_argument_group("base answers (exact mode)")
    generation.add_argument("--n-answers", type=int, default=1, help="base answers per prompt (default 1)")
    generation.add_argument("--max-new-tokens", type=int, default=128)
    generation.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    generation.add_argument("--top-p", type=float, default=1.0)
    generation.add_argument("--seed", type=int, default=0)
    generation.add_argument("--generation-batch-size", type=int, default=None,
                            help="rows per decode batch (default: as many as the KV-cache budget allows)")
    generation.add_argument("--answer-cache", default=None,
                            help="SQLite cache of base answers (default: ~/.cache/persona-guard/base_answers.sqlite)")
    generation.add_argument("--backend", choices=("auto", "transformers", "vllm"), default="auto",
                            help="generation backend (auto: vLLM when installed and on GPU)")
    handoff = generation.add_mutually_exclusive_group()
    handoff.add_argument("--export-prompts", default=None, metavar="FILE",
                         help="write the unique prompts needing base answers (JSONL with cache keys) and exit")
    handoff.add_argument("--base-answers", default=None, metavar="FILE",
                         help="base answers made elsewhere (JSONL: key, prompt, answers, settings, model); "
                              "checked against this model and settings, nothing is generated")
    scale = parser.add_argument_group("batching")
    scale.add_argument("--batch-size", type=int, default=8)
    scale.add_argument("--max-length", type=int, default=2048, help="skip (and report) longer rows")
    scale.add_argument("--shard-size", type=int, default=256, help="rows per checkpointed shard")
    scale.add_argument("--overwrite", action="store_true", help="discard shards of an earlier run in --out")
    flagging = parser.add_argument_group("flagging policy (one of; default --top-percent 5)")
    exclusive = flagging.add_mutually_exclusive_group()
    exclusive.add_argument("--top-k", type=int, default=None)
    exclusive.add_argument("--top-percent", type=float, default=None)
    exclusive.add_argument("--threshold", type=float, default=None, help="flag dP above this value")
    exclusive.add_argument("--percentile", type=float, default=None,
                           help="flag dP above this percentile of the reference set's dP (default 95 with --reference)")
    flagging.add_argument("--reference", default=None, help="benign reference set to calibrate the threshold")
    flagging.add_argument("--judge", default=None,
                          help="also score responses with a judge (persona_guard.judges spec, e.g. offline)")
    flagging.add_argument("--judge-threshold", type=float, default=50.0, help="judge trait score that counts (0-100)")
    flagging.add_argument("--judge-combine", choices=("and", "or"), default="and",
                          help="flag when dP and (default) / or the judge agree")
    report = parser.add_argument_group("report")
    report.add_argument("--baselines", action="store_true",
                        help="compare with random, response-only and embedding-similarity rankings")
    report.add_argument("--label-field", default=None, help="0/1 field: report AUROC and precision@k")
    report.add_argument("--wandb-project", default=None, help="log summary, histograms and flagged rows to W&B")
    report.add_argument("--wandb-run-name", default=None)
    parser.set_defaults(func=run)

