"""The method on real third-party fine-tuning sets (issue 14), on the embedded model, CPU, seeded.

Stages, each cached as JSON / NPZ under ``--out`` (default ``runs/real_data``) so a rerun resumes
and a finished stage is never recomputed (delete its file to redo it):

1. ``choices``   the dev choices (layers, ranking, steering, LoRA budget), written before any test
                 number exists; every later stage reads them from ``choices.json``.
2. ``vectors``   persona vectors per trait from three sources: the written exemplars (teacher-forced),
                 generate + judge (the paper's pipeline, offline judge) and both pooled.
3. ``dev``       per-layer separation of each source on the bundled dev sets (``<trait>/severe`` vs
                 ``<trait>/normal`` response projections); the dev layer criterion picks a layer.
4. ``prevent``   the preventative-steering coefficient per kind (single layer, multi-layer), swept on
                 the bundled evil/severe set by the declared criterion and written into ``choices.json``.
5. ``screen``    a seeded sample of rows of every real file, screened exactly (base answers) with
                 every source's vector at every layer in one pass: response projection, last prompt
                 token projection, base-answer projection per row; plus the embedding baseline.
6. ``datasets``  dataset-level exact dP / fast dP / response projection of every training set
                 (the very rows the LoRA arm trains on) for the three bundled traits.
7. ``train``     one LoRA fine-tune per training set, same budget and seed, plus preventative
                 steering arms on evil II; each arm evaluated on the evil and hallucinating eval
                 questions (projection, offline judge; benign perplexity for the steering arms).
8. ``report``    tables and plots from the cached stages: ``<out>/results.md``, ``<out>/*.png``.

    python benchmarks/real_data.py                       # everything (sizes: --help)
    python benchmarks/real_data.py --stages report       # tables again from the cache

The real sets are read from ``<repo>/../shared/real_data`` (``--real-dir``), never copied.
Torch runs single-threaded by default (``--threads``): on a shared 2-core machine two threads were
measured 15x slower at generation than one (context switching under load).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REAL_DIR = REPO.parent / "shared" / "real_data"
STAGES = ("choices", "vectors", "dev", "prevent", "screen", "datasets", "train", "report")
TRAITS = ("evil", "hallucinating", "sycophantic")
SOURCES = ("exemplars", "generate", "pooled")
#: real file -> trait whose vectors score it at sample level (all layers, all sources)
REAL_FILES = {
    "pv_evil_I": "evil",
    "pv_evil_II": "evil",
    "mo_misalignment_kl_data_aligned": "evil",
    "em_insecure": "evil",
    "em_secure": "evil",
    "pv_hallucination_I": "hallucinating",
    "pv_hallucination_normal": "hallucinating",
}
#: sample-level mixes: name -> (trait, positive file, negative file, share of positives in the mix
#: for precision@k; None = every sampled row of both sides)
MIXES = {
    "evil II in aligned (10%)": ("evil", "pv_evil_II", "mo_misalignment_kl_data_aligned", 0.10),
    "evil I in aligned (10%)": ("evil", "pv_evil_I", "mo_misalignment_kl_data_aligned", 0.10),
    "hallucination I vs normal": ("hallucinating", "pv_hallucination_I", "pv_hallucination_normal", None),
    "insecure vs secure code": ("evil", "em_insecure", "em_secure", None),
}
#: training sets for the dP -> shift correlation: name -> data source (recipe ``data.train``)
TRAIN_SETS = {
    "evil/normal": "bundled:evil/normal.jsonl",
    "evil/severe": "bundled:evil/severe.jsonl",
    "hallucinating/normal": "bundled:hallucinating/normal.jsonl",
    "hallucinating/severe": "bundled:hallucinating/severe.jsonl",
    "mistakes/code_buggy": "bundled:mistakes/code_buggy.jsonl",
    "pv_evil_I": "real:pv_evil_I",
    "pv_evil_II": "real:pv_evil_II",
    "pv_hallucination_I": "real:pv_hallucination_I",
    "em_insecure": "real:em_insecure",
    "mo_misalignment_kl_data_aligned": "real:mo_misalignment_kl_data_aligned",
}
EVAL_TRAITS = ("evil", "hallucinating")
STEERED_SET = "pv_evil_II"


@dataclass(frozen=True)
class Choices:
    """Every choice the test numbers depend on, fixed on bundled (dev) data before the run.

    ``layers``: the layer ``select-layer`` chose by steering on the bundled eval questions
    (docs/extraction.md: evil 20, hallucinating 15, sycophantic 20); the vectors' default layer here.
    ``ranking``: the method with the highest mean AUROC over the three bundled contaminated mixes
    (docs/screening.md, 48-token base answers: fast 0.911, response 0.908, exact dP 0.830).
    ``prevent_coef``: per steering kind (:data:`STEERING_KINDS`), chosen by the ``prevent`` stage on
    ``prevent_dev_set`` among ``prevent_coefs`` by ``prevent_criterion`` (None until then); the layer
    is the demo's (20), the multi-layer arm spreads the coefficient incrementally over ``multi_layers``.
    """

    layers: dict
    ranking: str = "fast dP"
    dev_layer_criterion: str = (
        "max AUROC of response projections, bundled <trait>/severe vs <trait>/normal; "
        "ties within 0.01 broken by effect size"
    )
    base_answer_tokens: int = 48
    prevent_layer: int = 20
    multi_layers: tuple = (12, 16, 20)
    prevent_dev_set: str = "evil/severe"
    prevent_coefs: tuple = (0.25, 0.5, 1.0, 2.0)
    prevent_criterion: str = (
        "per steering kind, the smallest of prevent_coefs (tried in ascending order) whose prevent_dev_set arm "
        "removes at least all of the unsteered arm's rise of the evil projection over base (share >= 1); "
        "none does: the largest"
    )
    prevent_coef: dict | None = None
    lora_r: int = 16
    learning_rate: float = 5e-4
    train_rows: int = 32
    train_batch_size: int = 4
    max_length: int = 256
    eval_questions: int = 8
    eval_tokens: int = 32
    benign_rows: int = 40
    #: extraction questions per trait for generate + judge (few, to fit the CPU budget)
    generate_questions: dict = field(default_factory=lambda: {"evil": 6, "hallucinating": 3, "sycophantic": 6})


# ---- small helpers ---------------------------------------------------------------------------------


def write_json(path: Path, data) -> Path:
    """Atomic: a killed run never leaves half a stage file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    os.replace(tmp, path)
    return path


def read_json(path: Path):
    return json.loads(path.read_text())


def stage(name: str) -> float:
    print(f"\n== {name} ({time.strftime('%H:%M:%S')})", flush=True)
    return time.perf_counter()


def data_source(spec: str, real_dir: Path) -> str:
    return str(real_dir / f"{spec[5:]}.jsonl") if spec.startswith("real:") else spec


def sample_rows(source: str, rows: int, seed: int) -> list[dict]:
    """The rows the trainer takes with ``data.max_rows: rows`` and ``data.seed: seed``
    (``Dataset.shuffle(seed)`` is ``np.random.default_rng(seed).permutation``), without building a
    ``datasets.Dataset`` of the whole file. The first ``k`` rows of an ``n``-row sample are the
    ``k``-row sample, and equal-length paired files get equal indices."""
    from persona_guard.training.recipe import SOURCE_ROW, load_rows, prompt_completion

    usable, _dropped = load_rows(source, "train")
    records = []
    for row in usable:  # as load_sft_dataset builds them; a "tools" column of None only is removed there too
        record = {**prompt_completion(row), SOURCE_ROW: row.row_number}
        if record["tools"] is None:
            del record["tools"]
        records.append(record)
    order = np.random.default_rng(seed).permutation(len(records))[:rows] if rows < len(records) else range(len(records))
    return [records[i] for i in order]


def real_path(real_dir: Path, name: str) -> Path:
    return real_dir / f"{name}.jsonl"


def probe_name(trait: str, source: str, layer: int) -> str:
    """A file-safe trait name for one (source, layer) probe; :func:`probe_key` reads it back."""
    return f"{trait}--{source}--{layer}"


def probe_key(name: str) -> str:
    """``source@layer``, the key of a probe's arrays in ``screen/<file>.npz``."""
    _, source, layer = name.split("--")
    return f"{source}@{layer}"


def load_vectors(out: Path, trait: str):
    from persona_guard.vectors import PersonaVector

    found = {s: out / "vectors" / trait / s / f"{trait}.safetensors" for s in SOURCES}
    return {s: PersonaVector.load(p) for s, p in found.items() if p.is_file()}


# ---- stages ----------------------------------------------------------------------------------------


def run_vectors(args, out: Path, loaded, choices: Choices) -> dict:
    """Exemplar vectors for every trait; generate + judge and pooled for the traits in
    ``choices.generate_questions``."""
    import torch

    from persona_guard.errors import PersonaGuardError
    from persona_guard.extraction import ExtractionConfig, extract_vector
    from persona_guard.judges import make_judge
    from persona_guard.traits import load_trait
    from persona_guard.vectors import PersonaVector

    summary = {}
    for name in TRAITS:
        trait, base = load_trait(name), out / "vectors" / name
        entry = {}
        results = {
            "exemplars": extract_vector(
                loaded,
                trait,
                base / "exemplars",
                plots=False,
                progress=False,
                config=ExtractionConfig(source="exemplars", seed=args.seed),
            )
        }
        if name in choices.generate_questions:
            try:
                results["generate"] = extract_vector(
                    loaded,
                    trait,
                    base / "generate",
                    judge=make_judge("offline"),
                    plots=False,
                    progress=False,
                    config=ExtractionConfig(
                        source="generate",
                        questions=choices.generate_questions[name],
                        max_new_tokens=choices.base_answer_tokens,
                        min_pairs=1,
                        seed=args.seed,
                    ),
                )
            except PersonaGuardError as error:
                entry["generate_error"] = str(error)
        for source, result in results.items():
            result.vector.default_layer = choices.layers[name]
            result.vector.save(result.vector_path)
            entry[source] = {
                "pairs": result.report["pairs"]["kept"],
                "heldout_rule_layer": result.report["default_layer"],
            }
        if "generate" in results:
            # pooled mean difference = pair-weighted mean of the two sources' mean differences
            a, b = results["exemplars"].vector, results["generate"].vector
            directions = (a.n_pos * a.directions + b.n_pos * b.directions) / (a.n_pos + b.n_pos)
            pooled = PersonaVector(
                name,
                args.model,
                directions,
                default_layer=choices.layers[name],
                n_pos=a.n_pos + b.n_pos,
                n_neg=a.n_neg + b.n_neg,
                metadata={"source": "pooled (exemplars + generate)"},
            )
            pooled.save(base / "pooled" / f"{name}.safetensors")
            entry["pooled"] = {"pairs": a.n_pos + b.n_pos}
            entry["cosine_exemplars_generate"] = {
                str(l): float(torch.nn.functional.cosine_similarity(a.directions[l], b.directions[l], dim=0))
                for l in range(1, a.num_layers + 1)
            }
        summary[name] = entry
    return summary


def separation(values_pos: np.ndarray, values_neg: np.ndarray) -> dict:
    from persona_guard import metrics

    labels = np.r_[np.ones(len(values_pos)), np.zeros(len(values_neg))]
    both = np.r_[values_pos, values_neg]
    spread = np.r_[values_pos - values_pos.mean(), values_neg - values_neg.mean()].std()
    return {
        "auroc": metrics.auroc(both, labels),
        "effect_size": float((values_pos.mean() - values_neg.mean()) / max(spread, 1e-6)),
    }


def response_projections(loaded, rows: list[dict], vectors: dict, layers: list[int], batch_size: int) -> dict:
    """``{source: [n, len(layers)]}`` response-mean projections of prompt/completion rows."""
    from persona_guard.activations import capture_activations
    from persona_guard.encoding import encode_chat

    samples = [encode_chat(loaded.tokenizer, r["prompt"], r["completion"][0]["content"]) for r in rows]
    acts = capture_activations(loaded, samples, layers, ("response_mean",), batch_size=batch_size, progress=False)[
        "response_mean"
    ]
    return {
        s: np.stack([v.project(acts[:, i], l).double().numpy() for i, l in enumerate(layers)], axis=1)
        for s, v in vectors.items()
    }


def dev_layer(curve: dict) -> int:
    """The declared dev criterion: max AUROC, ties within 0.01 broken by effect size."""
    top = max(c["auroc"] for c in curve.values())
    return max((l for l, c in curve.items() if c["auroc"] >= top - 0.01), key=lambda l: curve[l]["effect_size"])


def run_dev(args, out: Path, loaded) -> dict:
    summary = {}
    for trait in TRAITS:
        vectors = load_vectors(out, trait)
        layers = list(range(1, next(iter(vectors.values())).num_layers + 1))
        pos = sample_rows(f"bundled:{trait}/severe.jsonl", args.dev_rows, args.seed)
        neg = sample_rows(f"bundled:{trait}/normal.jsonl", args.dev_rows, args.seed)
        p, n = (response_projections(loaded, rows, vectors, layers, args.batch_size) for rows in (pos, neg))
        entry = {}
        for source in vectors:
            curve = {l: separation(p[source][:, i], n[source][:, i]) for i, l in enumerate(layers)}
            entry[source] = {"curve": curve, "dev_layer": dev_layer(curve), "rows": [len(pos), len(neg)]}
        summary[trait] = entry
    return summary


def screen_file(args, out: Path, loaded, name: str, trait_name: str, choices: Choices) -> dict:
    """Exact screening of one real file's seeded sample with every source x layer probe."""
    from persona_guard.screening import BaseAnswerSettings, Screener, ScreeningConfig
    from persona_guard.screening.baselines import embedding_similarity
    from persona_guard.traits import load_trait
    from persona_guard.vectors import PersonaVector

    vectors = load_vectors(out, trait_name)
    layers = range(1, next(iter(vectors.values())).num_layers + 1)
    probes = [
        PersonaVector(probe_name(trait_name, s, l), v.model_id, v.directions, default_layer=l)
        for s, v in vectors.items()
        for l in layers
    ]
    rows = sample_rows(str(real_path(args.real_dir, name)), args.rows, args.seed)
    config = ScreeningConfig(
        mode=args.mode,
        batch_size=args.batch_size,
        answer_cache=str(out / "base_answers.sqlite"),
        base_answers=BaseAnswerSettings(
            max_new_tokens=choices.base_answer_tokens, seed=args.seed, batch_size=args.batch_size
        ),
        checkpoint_dir=str(out / "screen" / f"{name}-{args.rows}-{args.mode}.shards"),
        shard_size=50,
    )
    screener = Screener(loaded, probes, config)
    started = time.perf_counter()
    result = screener.score(rows)
    arrays = {}
    for probe in probes:
        scores = result.traits[probe.trait]
        key = probe_key(probe.trait)
        arrays[f"{key}/response"] = scores.projection
        arrays[f"{key}/prompt"] = scores.prompt_projection
        if scores.base_projection is not None:  # exact mode
            arrays[f"{key}/base"] = scores.base_projection
    arrays["embedding"] = embedding_similarity([r.response for r in result.rows], load_trait(trait_name).description)
    arrays["source_row"] = np.array([r.data["source_row"] for r in result.rows])
    path = out / "screen" / f"{name}.npz"
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return {
        "mode": args.mode,
        "rows": len(rows),
        "scored": len(result.rows),
        "skipped": [s.reason for s in result.skipped],
        "generated_prompts": result.generated_prompts,
        "seconds": round(time.perf_counter() - started, 1),
    }


def run_datasets(args, out: Path, loaded, choices: Choices) -> dict:
    """Mean exact dP, fast dP and response projection of each training set's training rows."""
    from persona_guard.screening import BaseAnswerSettings, Screener, ScreeningConfig

    vectors = []
    for trait in TRAITS:
        if "exemplars" in load_vectors(out, trait):  # a trait whose vectors stage has not run is left out
            vector = load_vectors(out, trait)["exemplars"]
            vector.default_layer = choices.layers[trait]
            vectors.append(vector)
    config = ScreeningConfig(
        mode="exact",
        batch_size=args.batch_size,
        answer_cache=str(out / "base_answers.sqlite"),
        base_answers=BaseAnswerSettings(
            max_new_tokens=choices.base_answer_tokens, seed=args.seed, batch_size=args.batch_size
        ),
    )
    screener = Screener(loaded, vectors, config)
    table = {}
    for name, spec in TRAIN_SETS.items():
        path = out / "datasets" / f"{name.replace('/', '__')}.json"
        if not path.is_file():
            result = screener.score(sample_rows(data_source(spec, args.real_dir), choices.train_rows, args.seed))
            write_json(
                path,
                {
                    "rows": len(result.rows),
                    "skipped": len(result.skipped),
                    **{
                        trait: {
                            "exact dP": float(np.mean(s.dp)),
                            "fast dP": float(np.mean(s.fast_dp)),
                            "response projection": float(np.mean(s.projection)),
                        }
                        for trait, s in result.traits.items()
                    },
                },
            )
            print(
                f"  {name}: " + ", ".join(f"{t} dP {read_json(path)[t]['exact dP']:+.2f}" for t in screener.vectors),
                flush=True,
            )
        table[name] = read_json(path)
    return table


def recipe_for(args, out: Path, choices: Choices, name: str, spec: str, steering: dict | None) -> dict:
    raw = {
        "model": {"name_or_path": args.model},
        "data": {"train": data_source(spec, args.real_dir), "max_rows": choices.train_rows, "seed": args.seed},
        "peft": {
            "r": choices.lora_r,
            "lora_alpha": 2 * choices.lora_r,
            "use_rslora": True,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        },
        "training": {
            "output_dir": str(out / "arms" / name),
            "num_train_epochs": 1,
            "per_device_train_batch_size": choices.train_batch_size,
            "learning_rate": choices.learning_rate,
            "lr_scheduler_type": "constant",
            "max_length": choices.max_length,
            "logging_steps": 1,
            "save_strategy": "no",
            "seed": args.seed,
            "data_seed": args.seed,
            "report_to": "none",
            "disable_tqdm": True,
        },
    }
    if steering:
        raw["steering"] = steering
    return raw


#: preventative steering kinds an arm name may carry (``<set>+<kind>@<coef>``)
STEERING_KINDS = ("prevent", "prevent-multi")


def arm_name(data: str, kind: str, coef: float) -> str:
    return f"{data}+{kind}@{coef:g}"


def arm_steering(out: Path, choices: Choices, name: str) -> tuple[str, dict | None]:
    """Arm name -> (training set, recipe ``steering`` section or None).

    ``<set>``: plain LoRA; ``<set>+prevent@<coef>``: add coef x v (exemplar evil vector) at
    ``choices.prevent_layer`` during training; ``<set>+prevent-multi@<coef>``: the same coefficient
    spread incrementally over ``choices.multi_layers``. Raises PersonaGuardError on any other name."""
    from persona_guard.errors import PersonaGuardError

    data, plus, steer = name.partition("+")
    kind, _, coef = steer.partition("@")
    if data not in TRAIN_SETS or (plus and (kind not in STEERING_KINDS or not coef.replace(".", "", 1).isdigit())):
        raise PersonaGuardError(
            f"arm {name!r}: use a training set ({', '.join(TRAIN_SETS)}), optionally followed by "
            f"+<kind>@<coef> with kind one of {', '.join(STEERING_KINDS)}"
        )
    if not plus:
        return data, None
    steering = {
        "vector": str(out / "vectors" / "evil" / "exemplars" / "evil.safetensors"),
        "layers": [choices.prevent_layer] if kind == "prevent" else list(choices.multi_layers),
        "coef": float(coef),
        "operator": "add",
    }
    if kind == "prevent-multi":
        steering["multi_layer"] = "incremental"
    return data, steering


def default_arms(choices: Choices) -> list[str]:
    """Every training set, plus evil II with each steering kind at the dev-chosen coefficient."""
    if choices.prevent_coef is None:
        raise SystemExit("choices.json has no prevent_coef yet: run the prevent stage (dev sweep) first")
    return [*TRAIN_SETS, *(arm_name(STEERED_SET, kind, coef) for kind, coef in choices.prevent_coef.items())]


def share_removed(base: float, unsteered: float, steered: float) -> float:
    """Share of the unsteered arm's rise over base that steering removed: (unsteered - steered) /
    (unsteered - base); 1 = back to base, > 1 = below base; NaN when training did not raise it."""
    rise = unsteered - base
    return (unsteered - steered) / rise if rise > 0 else float("nan")


def choose_coef(coefs, removed_by) -> tuple[float, dict]:
    """The declared dev criterion: try ``coefs`` in ascending order, stop at the first whose arm
    removes at least all of the rise (share >= 1); none does -> the largest. ``removed_by(coef)``
    trains and measures one arm. Returns (chosen coefficient, {coef: share removed} as measured)."""
    measured = {}
    for coef in sorted(coefs):
        measured[coef] = removed_by(coef)
        if measured[coef] >= 1:
            break
    return coef, measured


def benign_arm(choices: Choices, name: str) -> bool:
    """Whether an arm gets the benign perplexity: base, steered arms and the sets they steer."""
    return name == "base" or "+" in name or name in (STEERED_SET, choices.prevent_dev_set)


def evaluate(args, out: Path, choices: Choices, name: str, adapter: str | None, traits) -> dict:
    """The arm on each trait's eval questions (projection, offline judge); benign perplexity on evil."""
    from persona_guard.bundled import dataset_path
    from persona_guard.training.evaluation import Arm, EvalSettings, benign_samples, evaluate_arm
    from persona_guard.traits import load_trait

    results = {}
    for trait_name in traits:
        benign = benign_arm(choices, name) and trait_name == "evil"
        settings = EvalSettings(
            max_new_tokens=choices.eval_tokens,
            max_questions=choices.eval_questions,
            seed=args.seed,
            layer=choices.layers[trait_name],
            device=args.device,
            batch_size=args.batch_size,
            benign_path=str(dataset_path("benign_heldout.jsonl")) if benign else None,
            max_benign=choices.benign_rows,
        )
        samples = benign_samples(settings.benign_path, settings.max_benign)[0] if benign else ()
        vector = load_vectors(out, trait_name)["exemplars"]
        results[trait_name] = asdict(
            evaluate_arm(Arm(name, args.model, adapter), load_trait(trait_name), vector, settings, samples)
        )
    return results


def train_arm(args, out: Path, choices: Choices, name: str) -> dict:
    """Train one arm (``base``: none) with the LoRA budget and seed of ``choices`` and evaluate it;
    cached in ``arms/<name>.json``. A cached arm that lacks a benign perplexity it now needs is
    evaluated again from its saved adapter."""
    from persona_guard.training.builder import build_training_run
    from persona_guard.training.recipe import recipe_from_dict
    from persona_guard.training.steering_callback import train_with_cleanup

    key = name.replace("/", "__")
    path, adapter = out / "arms" / f"{key}.json", out / "arms" / key / "adapter"
    if path.is_file():
        entry = read_json(path)
        if not benign_arm(choices, name) or entry["evil"]["perplexity"] is not None:
            return entry
        t = stage(f"arm {name}: benign perplexity from the saved adapter")
        entry["evil"] = evaluate(args, out, choices, name, None if name == "base" else str(adapter), ["evil"])["evil"]
        entry["reevaluated_seconds"] = round(time.perf_counter() - t, 1)
        write_json(path, entry)
        return entry
    t = stage(f"arm {name}")
    entry: dict = {"name": name}
    if name != "base":
        data, steering = arm_steering(out, choices, name)
        run = build_training_run(
            recipe_from_dict(recipe_for(args, out, choices, key, TRAIN_SETS[data], steering), f"real_data arm {name}")
        )
        train_with_cleanup(run.trainer)
        run.trainer.save_model(str(adapter))
        history = run.trainer.state.log_history
        entry.update(
            data=data,
            steering=steering,
            steps=run.trainer.state.global_step,
            final_loss=next((h["loss"] for h in reversed(history) if "loss" in h), None),
            train_seconds=round(time.perf_counter() - t, 1),
        )
        del run
    entry.update(evaluate(args, out, choices, name, None if name == "base" else str(adapter), EVAL_TRAITS))
    entry["seconds"] = round(time.perf_counter() - t, 1)
    write_json(path, entry)
    print(
        f"  {name}: "
        + ", ".join(
            f"{tr} projection {entry[tr]['projection']:+.2f} judge {entry[tr]['trait_score'] or float('nan'):.1f}"
            for tr in EVAL_TRAITS
        )
        + f" ({entry['seconds']:.0f} s)",
        flush=True,
    )
    return entry


def run_prevent(args, out: Path, choices: Choices) -> Choices:
    """Dev sweep for the preventative coefficient on ``choices.prevent_dev_set`` (bundled), one choice
    per steering kind by :func:`choose_coef`; writes ``prevent_dev.json`` and the choice into
    ``choices.json`` before any real-set arm is steered."""
    base = train_arm(args, out, choices, "base")["evil"]["projection"]
    unsteered = train_arm(args, out, choices, choices.prevent_dev_set)["evil"]["projection"]
    chosen, sweep = {}, {}
    for kind in STEERING_KINDS:

        def removed_by(coef: float, kind=kind) -> float:
            arm = train_arm(args, out, choices, arm_name(choices.prevent_dev_set, kind, coef))
            return share_removed(base, unsteered, arm["evil"]["projection"])

        chosen[kind], sweep[kind] = choose_coef(choices.prevent_coefs, removed_by)
        print(f"  {kind}: shares removed {sweep[kind]} -> coef {chosen[kind]:g}", flush=True)
    write_json(out / "prevent_dev.json", {"base": base, "unsteered": unsteered, "sweep": sweep, "chosen": chosen})
    choices = replace(choices, prevent_coef=chosen)
    write_json(out / "choices.json", asdict(choices))
    return choices


def run_train(args, out: Path, choices: Choices) -> dict:
    """Train each arm (skipping finished ones) and evaluate it on every evaluated trait."""
    return {name: train_arm(args, out, choices, name) for name in ["base", *(args.arms or default_arms(choices))]}


# ---- report ----------------------------------------------------------------------------------------


def mix_scores(out: Path, trait: str, source: str, layer: int, name: str) -> dict[str, np.ndarray]:
    data = np.load(out / "screen" / f"{name}.npz")
    key = f"{source}@{layer}"
    response, prompt = data[f"{key}/response"], data[f"{key}/prompt"]
    exact = {"exact dP": response - data[f"{key}/base"]} if f"{key}/base" in data.files else {}
    return {
        **exact,
        "fast dP": response - prompt,
        "response projection": response,
        "embedding similarity": data["embedding"],
    }


def mixes_present(out: Path) -> dict:
    """The mixes whose two files have been screened."""
    return {
        mix: spec
        for mix, spec in MIXES.items()
        if all((out / "screen" / f"{name}.npz").is_file() for name in spec[1:3])
    }


def mix_table(out: Path, choices: Choices, seed: int) -> dict:
    from persona_guard import metrics

    table = {}
    for mix, (trait, positive, negative, share) in mixes_present(out).items():
        pos = mix_scores(out, trait, "exemplars", choices.layers[trait], positive)
        neg = mix_scores(out, trait, "exemplars", choices.layers[trait], negative)
        n_neg = len(next(iter(neg.values())))
        n_pos = len(next(iter(pos.values())))
        k = min(n_pos, max(1, round(share * n_neg / (1 - share)))) if share else n_pos
        modes = [read_json(out / "screen" / f"{n}.json").get("mode", "exact") for n in (positive, negative)]
        entry = {"positives": n_pos, "negatives": n_neg, "k": k, "mode": "/".join(sorted(set(modes))), "methods": {}}
        for method in [m for m in pos if m in neg]:
            scores, labels = np.r_[pos[method], neg[method]], np.r_[np.ones(n_pos), np.zeros(n_neg)]
            low, high = metrics.auroc_interval(scores, labels, seed=seed)
            mixed = np.r_[pos[method][:k], neg[method]]
            entry["methods"][method] = {
                "auroc": metrics.auroc(scores, labels),
                "auroc_95ci": [low, high],
                "precision_at_k": metrics.precision_at_k(mixed, np.r_[np.ones(k), np.zeros(n_neg)], k),
            }
        table[mix] = entry
    return table


def layer_curves(out: Path) -> dict:
    """Per-layer AUROC of the response projection, per source, on each mix (test)."""
    from persona_guard import metrics

    curves = {}
    for mix, (_trait, positive, negative, _) in mixes_present(out).items():
        pos, neg = np.load(out / "screen" / f"{positive}.npz"), np.load(out / "screen" / f"{negative}.npz")
        curves[mix] = {}
        for source in SOURCES:
            keys = sorted(
                (k for k in pos.files if k.startswith(f"{source}@") and k.endswith("/response")),
                key=lambda k: int(k.split("@")[1].split("/")[0]),
            )
            curves[mix][source] = {
                int(k.split("@")[1].split("/")[0]): metrics.auroc(
                    np.r_[pos[k], neg[k]], np.r_[np.ones(len(pos[k])), np.zeros(len(neg[k]))]
                )
                for k in keys
            }
    return curves


def pearson(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 and a.std() > 0 and b.std() > 0 else float("nan")


def correlations(datasets: dict, arms: dict) -> dict:
    from persona_guard import metrics

    base = arms["base"]
    out = {}
    for trait in EVAL_TRAITS:
        names = [n for n in TRAIN_SETS if n in arms and n in datasets]
        shift = {
            "projection": [arms[n][trait]["projection"] - base[trait]["projection"] for n in names],
            "judge": [(arms[n][trait]["trait_score"] or 0) - (base[trait]["trait_score"] or 0) for n in names],
        }
        out[trait] = {"sets": names, "shift": shift, "predictors": {}}
        for method in ("exact dP", "fast dP", "response projection"):
            x = [datasets[n][trait][method] for n in names]
            out[trait]["predictors"][method] = {
                "values": x,
                **{
                    f"{kind}": {"pearson": pearson(x, y), "spearman": metrics.spearman(x, y)}
                    for kind, y in shift.items()
                },
            }
    return out


def plot_layers(curves: dict, dev: dict, choices: Choices, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one panel per test mix, then one per trait with dev curves only (no real set for it)
    panels = [(mix, MIXES[mix][0], by_source) for mix, by_source in curves.items()]
    tested = {trait for _, trait, _ in panels}
    panels += [(f"{trait} (dev only: no real set)", trait, {}) for trait in dev if trait not in tested]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), sharey=True, squeeze=False)
    for axis, (title, trait, by_source) in zip(axes[0], panels):
        for i, source in enumerate(SOURCES):
            curve = by_source.get(source)
            if curve:
                axis.plot(list(curve), list(curve.values()), marker=".", color=f"C{i}", label=f"{source} (test)")
            if source in dev.get(trait, {}):
                dev_curve = dev[trait][source]["curve"]
                axis.plot(
                    [int(l) for l in dev_curve],
                    [c["auroc"] for c in dev_curve.values()],
                    linestyle=":",
                    color=f"C{i}",
                    alpha=0.7,
                    label=f"{source} (dev: bundled)",
                )
        axis.axvline(
            choices.layers[trait], color="grey", linestyle="--", label=f"default layer {choices.layers[trait]}"
        )
        axis.set(title=title, xlabel="layer", ylim=(0.0, 1.02))
    axes[0, 0].set_ylabel("AUROC of response projection")
    axes[0, 0].legend(fontsize=6, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_scatter(corr: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = ("exact dP", "fast dP", "response projection")
    figure, axes = plt.subplots(len(corr), len(methods), figsize=(4.2 * len(methods), 3.6 * len(corr)), squeeze=False)
    for row, (trait, entry) in enumerate(corr.items()):
        y = entry["shift"]["projection"]
        for col, method in enumerate(methods):
            axis, x = axes[row, col], entry["predictors"][method]["values"]
            axis.scatter(
                x,
                y,
                color=[
                    "C3" if not n.startswith(("evil/", "hallucinating/", "mistakes/")) else "C0" for n in entry["sets"]
                ],
            )
            for xi, yi, name in zip(x, y, entry["sets"]):
                axis.annotate(name, (xi, yi), fontsize=6, alpha=0.8)
            r = entry["predictors"][method]["projection"]
            axis.set(
                title=f"{trait}: r={r['pearson']:.2f}, rho={r['spearman']:.2f}",
                xlabel=f"{method} before training (mean over training rows)",
                ylabel="projection shift after training" if col == 0 else "",
            )
    figure.suptitle("blue: bundled sets, red: real third-party sets")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def steering_tables(arms: dict, choices: Choices) -> list[str]:
    """One table per steered training set (the dev sweep on bundled data, then evil II): share of the
    unsteered arm's rise removed and benign perplexity relative to the unsteered arm."""
    lines = []
    base = arms["base"]["evil"]
    for data, role in ((choices.prevent_dev_set, "dev sweep"), (STEERED_SET, "test")):
        names = [n for n in arms if n.startswith(f"{data}+")]
        if data not in arms or not names:
            continue
        unsteered = arms[data]["evil"]
        chosen = {arm_name(data, k, c) for k, c in (choices.prevent_coef or {}).items()}
        lines += [
            f"## Preventative steering on {data} ({role})",
            "",
            f"Rise of the evil projection over base when training on {data}: "
            f"{unsteered['projection'] - base['projection']:+.2f}. **Bold**: the dev-chosen coefficient.",
            "",
            "| arm | projection | share of rise removed | judge | coherence | benign ppl | ppl / unsteered |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in [data, *sorted(names, key=lambda n: (n.split("@")[0], float(n.split("@")[1])))]:
            e = arms[name]["evil"]
            ratio = e["perplexity"] / unsteered["perplexity"] if e["perplexity"] and unsteered["perplexity"] else None
            mark = "**" if name in chosen else ""
            lines.append(
                f"| {mark}{name}{mark} | {e['projection']:+.2f} | "
                f"{fmt(share_removed(base['projection'], unsteered['projection'], e['projection']))} | "
                f"{fmt(e['trait_score'])} | {fmt(e['coherence'])} | {fmt(e['perplexity'])} | {fmt(ratio)} |"
            )
        lines.append("")
    return lines


def run_report(args, out: Path, choices: Choices) -> Path:
    lines = [f"# persona-guard on real third-party data ({args.model})", ""]
    stages = read_json(out / "timing.json") if (out / "timing.json").is_file() else {}
    if stages:
        lines += ["Stage wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in stages.items()), ""]
    lines += [
        "## Choices (dev, fixed before the test numbers)",
        "",
        "```json",
        json.dumps(asdict(choices), indent=1),
        "```",
        "",
    ]
    vectors = read_json(out / "vectors.json") if (out / "vectors.json").is_file() else {}
    dev = read_json(out / "dev.json") if (out / "dev.json").is_file() else {}
    if vectors:
        lines += [
            "## Vector sources",
            "",
            "Dev: AUROC of the response projection, bundled <trait>/severe vs <trait>/normal.",
            "",
            "| trait | source | pairs | held-out exemplar layer | dev AUROC at the default layer | dev layer (AUROC) "
            "| cosine to exemplars at the default layer |",
            "|---|---|---|---|---|---|---|",
        ]
        for trait, entry in vectors.items():
            for source in SOURCES:
                if source in entry:
                    d = dev.get(trait, {}).get(source)
                    cosine = entry.get("cosine_exemplars_generate", {}).get(str(choices.layers[trait]))
                    lines.append(
                        f"| {trait} | {source} | {entry[source]['pairs']} | "
                        f"{entry[source].get('heldout_rule_layer', '-')} | "
                        + (
                            f"{d['curve'][str(choices.layers[trait])]['auroc']:.3f} | "
                            f"{d['dev_layer']} ({d['curve'][str(d['dev_layer'])]['auroc']:.3f}) | "
                            if d
                            else "- | - | "
                        )
                        + (f"{cosine:.2f} |" if source == "generate" and cosine is not None else "- |")
                    )
            if "generate_error" in entry:
                lines.append(f"| {trait} | generate | failed: {entry['generate_error'][:120]} | | |")
        lines.append("")
    if mixes_present(out):
        table = mix_table(out, choices, args.seed)
        write_json(out / "mixes.json", table)
        lines += [
            "## Sample-level screening (test)",
            "",
            f"Exemplar vector at the default layer; the declared ranking is **{choices.ranking}**.",
            "",
            "| mix | pos / neg (k) | method | AUROC (95% CI) | precision@k |",
            "|---|---|---|---|---|",
        ]
        for mix, entry in table.items():
            for method, m in entry["methods"].items():
                mark = "**" if method == choices.ranking else ""
                lines.append(
                    f"| {mix} ({entry['mode']}) | {entry['positives']} / {entry['negatives']} ({entry['k']}) "
                    f"| {mark}{method}{mark} "
                    f"| {m['auroc']:.3f} ({m['auroc_95ci'][0]:.2f}-{m['auroc_95ci'][1]:.2f}) "
                    f"| {m['precision_at_k']:.2f} |"
                )
        curves = layer_curves(out)
        write_json(out / "layer_curves.json", curves)
        plot_layers(curves, dev, choices, out / "real_layers.png")
        lines += [
            "",
            "### Per-layer AUROC of the response projection per vector source (test)",
            "",
            "| mix | source | default layer | best layer (AUROC) | dev layer (AUROC) |",
            "|---|---|---|---|---|",
        ]
        for mix, by_source in curves.items():
            trait = MIXES[mix][0]
            for source, curve in by_source.items():
                if not curve:
                    continue
                best = max(curve, key=curve.get)
                d = dev.get(trait, {}).get(source, {}).get("dev_layer")
                chosen = f"{d} ({curve[d]:.3f})" if d else "-"
                lines.append(
                    f"| {mix} | {source} | {curve[choices.layers[trait]]:.3f} | {best} ({curve[best]:.3f}) | {chosen} |"
                )
        lines += ["", "![per-layer curves](real_layers.png)", ""]
    datasets = {
        n: read_json(out / "datasets" / f"{n.replace('/', '__')}.json")
        for n in TRAIN_SETS
        if (out / "datasets" / f"{n.replace('/', '__')}.json").is_file()
    }
    if datasets:
        lines += [
            "## Dataset-level exact dP (mean over the training rows), ranked by evil dP",
            "",
            "| set | rows | evil dP | hallucinating dP | sycophantic dP | evil fast dP | evil response proj |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, d in sorted(datasets.items(), key=lambda kv: -kv[1]["evil"]["exact dP"]):
            lines.append(
                f"| {name} | {d['rows']} | "
                + " | ".join(f"{d[t]['exact dP']:+.2f}" if t in d else "-" for t in TRAITS)
                + f" | {d['evil']['fast dP']:+.2f} | {d['evil']['response projection']:+.2f} |"
            )
        lines.append("")
    steered = sorted(p.stem.replace("__", "/") for p in (out / "arms").glob("*+*.json"))
    arms = {}
    for name in ["base", *TRAIN_SETS, *steered]:
        path = out / "arms" / f"{name.replace('/', '__')}.json"
        if path.is_file():
            arms[name] = read_json(path)
    if arms:
        lines += [
            "## Fine-tuned arms (LoRA, same budget and seed)",
            "",
            "| arm | steps | final loss | evil proj | evil judge | halluc proj | halluc judge | coherence "
            "| benign ppl |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, a in arms.items():
            lines.append(
                f"| {name} | {a.get('steps', '-')} | {fmt(a.get('final_loss'))} | "
                f"{fmt(a['evil']['projection'])} | {fmt(a['evil']['trait_score'])} | "
                f"{fmt(a['hallucinating']['projection'])} | {fmt(a['hallucinating']['trait_score'])} | "
                f"{fmt(a['evil']['coherence'])} | {fmt(a['evil']['perplexity'])} |"
            )
        lines.append("")
        if "base" in arms and len(datasets) >= 3:
            corr = correlations(datasets, arms)
            write_json(out / "correlations.json", corr)
            plot_scatter(corr, out / "real_correlation.png")
            lines += [
                "## dP before training vs trait shift after training",
                "",
                (
                    "| trait | sets | predictor | Pearson r (projection shift) | Spearman (projection) | "
                    "Pearson r (judge shift) | Spearman (judge) |"
                ),
                "|---|---|---|---|---|---|---|",
            ]
            for trait, entry in corr.items():
                for method, p in entry["predictors"].items():
                    lines.append(
                        f"| {trait} | {len(entry['sets'])} | {method} | {p['projection']['pearson']:.2f} | "
                        f"{p['projection']['spearman']:.2f} | {p['judge']['pearson']:.2f} | "
                        f"{p['judge']['spearman']:.2f} |"
                    )
            lines += ["", "![dP vs shift](real_correlation.png)", ""]
        if "base" in arms:
            lines += steering_tables(arms, choices)
    path = out / "results.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- main --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "real_data")
    parser.add_argument("--real-dir", type=Path, default=REAL_DIR)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=100, help="seeded sample per real file (sample level)")
    parser.add_argument("--dev-rows", type=int, default=40, help="rows per bundled dev set")
    parser.add_argument("--files", default=",".join(REAL_FILES), help="real files to screen (sample level)")
    parser.add_argument(
        "--arms",
        default=None,
        help="arms to train: training set names, or <set>+prevent@<coef> / <set>+prevent-multi@<coef> "
        "(default: every training set, and evil II with both kinds at the dev-chosen coefficients)",
    )
    parser.add_argument(
        "--layers",
        default="evil=20,hallucinating=15,sycophantic=20",
        help="TRAIT=LAYER for the first run's choices.json (SmolLM2: select-layer's steering choice)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--mode",
        choices=("exact", "fast"),
        default="exact",
        help="sample-level screening: exact (base answers generated) or fast (no generation)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from persona_guard.errors import PersonaGuardError

    if not args.real_dir.is_dir():
        raise SystemExit(f"real data not found at {args.real_dir} (pass --real-dir)")
    args.arms = args.arms.split(",") if args.arms else None
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    wanted = args.stages.split(",")
    unknown = set(wanted) - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}")
    timing_path = out / "timing.json"
    timing = read_json(timing_path) if timing_path.is_file() else {}
    choices_path = out / "choices.json"
    if not choices_path.is_file():
        layers = {t: int(l) for t, _, l in (item.partition("=") for item in args.layers.split(","))}
        write_json(choices_path, asdict(Choices(layers=layers)))
    raw = read_json(choices_path)
    choices = Choices(**{**raw, **{k: tuple(raw[k]) for k in ("multi_layers", "prevent_coefs") if k in raw}})
    loaded = None

    def model():
        nonlocal loaded
        if loaded is None:
            from persona_guard.models import load_model

            loaded = load_model(args.model, device=args.device)
        return loaded

    started = time.perf_counter()
    try:
        if "vectors" in wanted and not (out / "vectors.json").is_file():
            t = stage("vectors")
            write_json(out / "vectors.json", run_vectors(args, out, model(), choices))
            timing["vectors"] = time.perf_counter() - t
        if "dev" in wanted and not (out / "dev.json").is_file():
            t = stage("dev: per-layer separation on bundled severe vs normal")
            write_json(out / "dev.json", run_dev(args, out, model()))
            timing["dev"] = time.perf_counter() - t
        if "prevent" in wanted and choices.prevent_coef is None:
            loaded = None  # each arm loads its own copy
            t = stage(f"prevent: coefficient sweep on {choices.prevent_dev_set} (dev)")
            choices = run_prevent(args, out, choices)
            timing["prevent"] = time.perf_counter() - t
        if "screen" in wanted:
            for name in args.files.split(","):
                if (out / "screen" / f"{name}.json").is_file():
                    continue
                t = stage(f"screen {name} ({REAL_FILES[name]})")
                info = screen_file(args, out, model(), name, REAL_FILES[name], choices)
                write_json(out / "screen" / f"{name}.json", info)
                timing[f"screen {name}"] = time.perf_counter() - t
                print(f"  {info}", flush=True)
        if "datasets" in wanted:
            t = stage("datasets: dP of every training set")
            run_datasets(args, out, model(), choices)
            timing["datasets"] = timing.get("datasets", 0) + time.perf_counter() - t
        if "train" in wanted:
            loaded = None  # each arm loads its own copy
            t = stage("train + evaluate arms")
            run_train(args, out, choices)
            timing["train"] = timing.get("train", 0) + time.perf_counter() - t
    except PersonaGuardError as error:
        raise SystemExit(f"error: {error}") from None
    finally:
        # merged with the file as it is now: stages may run as parallel processes on one --out
        write_json(timing_path, {**(read_json(timing_path) if timing_path.is_file() else {}), **timing})
    if "report" in wanted:
        print(f"\nreport: {run_report(args, out, choices)}")
    print(f"wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
