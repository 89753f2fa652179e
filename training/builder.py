"""Turning a :class:`~persona_guard.training.recipe.Recipe` into a ready ``SFTTrainer`` with its callbacks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from persona_guard.errors import PersonaGuardError
from persona_guard.files import write_json_atomic
from persona_guard.rows import DroppedRow, report_dropped
from persona_guard.training.drift import TraitDriftCallback
from persona_guard.training.recipe import (
    SOURCE_ROW,
    Recipe,
    WandbSettings,
    load_sft_dataset,
    resolve_data_path,
    training_args,
)
from persona_guard.training.steering_callback import PreventativeSteeringCallback
from persona_guard.training.token_budget import budget_problems
from persona_guard.vectors import PersonaVector


@dataclass
class TrainingRun:
    trainer: object
    recipe: Recipe
    steering: PreventativeSteeringCallback | None
    drift: TraitDriftCallback | None


def load_vector(path: str, where: str) -> PersonaVector:
    if not Path(path).exists():  # a folder or a device: PersonaVector.load says which
        raise PersonaGuardError(
            f"{where}: vector file not found: {path} (extract one first, see docs/training.md)")
    return PersonaVector.load(path)


def reports_to_wandb(args) -> bool:
    """Whether the Trainer will report to W&B (``report_to`` is a list once TrainingArguments resolved it)."""
    report_to = args.report_to
    return "wandb" in ([report_to] if isinstance(report_to, str) else list(report_to or []))


def steering_callback(recipe: Recipe) -> PreventativeSteeringCallback | None:
    settings = recipe.steering
    if settings is None:
        return None
    vector = load_vector(settings.vector, f"{recipe.path}: steering.vector")
    return PreventativeSteeringCallback(vector, settings, layers_path=recipe.model.layers_path)


def drift_callback(recipe: Recipe) -> TraitDriftCallback | None:
    settings = recipe.drift
    if settings is None:
        return None
    vectors = {name: (load_vector(path, f"{recipe.path}: drift.vectors.{name}"), settings.layer)
               for name, path in settings.vectors.items()}
    questions = list(settings.questions)
    if not questions:
        from persona_guard.traits import load_trait

        questions = list(load_trait(settings.trait).eval_questions)
    if settings.max_questions is not None:
        questions = questions[:settings.max_questions]
    return TraitDriftCallback(vectors, questions, settings, layers_path=recipe.model.layers_path)


def screen_dataset(recipe: Recipe, loaded, dataset, out_dir: Path):
    """Screen-then-train: score the training rows with the recipe's vectors, the model about to be
    trained serving as the base model, and return the rows no vector flags (original order).

    Under ``accelerate launch`` every process screens its share of the shards (checkpointed in
    ``out_dir/shards``) and all read the same merged result, so every rank trains on the same rows.
    The model is moved to this process's device for screening and back to the CPU afterwards."""
    from accelerate import PartialState

    from persona_guard.rows import RawRow
    from persona_guard.screening import Screener, read_rows
    from persona_guard.screening.report import write_outputs

    settings = recipe.screening
    vectors = [load_vector(path, f"{recipe.path}: screening.vectors") for path in settings.vectors]
    config = replace(settings, checkpoint_dir=str(out_dir / "shards"))
    reference = read_rows(resolve_data_path(settings.reference)) if settings.reference else None
    state = PartialState()
    loaded.model.to(state.device)
    try:
        screener = Screener(loaded, vectors, config)
        # rows keep their place in the data file, so skipped.jsonl and scored.jsonl name the file's rows
        rows = [RawRow(recipe.data.train, record[SOURCE_ROW], record) for record in dataset.to_list()]
        result = screener.score(rows, reference=reference)
    finally:
        loaded.model.to("cpu")
    if state.is_main_process:
        write_outputs(result, out_dir, source=recipe.data.train, model_id=recipe.model.name_or_path)
    keep = [True] * len(dataset)  # rows screening cannot score stay (listed in skipped.jsonl)
    for row, flagged in zip(result.rows, result.flagged):
        keep[row.index] = not flagged
    removed = keep.count(False)
    if removed == len(dataset):
        raise PersonaGuardError(f"{recipe.path}: screening flagged every training row; nothing left to train on")
    print(f"persona-guard: screening removed {removed} of {len(dataset)} training rows "
          f"({len(result.skipped)} unscorable rows kept); report in {out_dir}")
    return dataset.select([index for index, kept in enumerate(keep) if kept])


def init_wandb(recipe: Recipe, output_dir: str, steering_layers: list[int] | None) -> None:
    """Start the W&B run ourselves (main process only) so it gets the recipe's project, name, tags
    and full config; the Trainer's WandbCallback then reuses it. The steering vector is uploaded as
    an artifact so the run records exactly what was added."""
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    import wandb

    settings = recipe.wandb or WandbSettings()
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=settings.project, name=settings.run_name, tags=list(settings.tags),
                     config={"persona_guard_recipe": recipe.to_dict(), "recipe_path": recipe.path},
                     dir=output_dir)
    if settings.upload_vector and recipe.steering is not None:
        artifact = wandb.Artifact(f"{Path(recipe.steering.vector).stem}-vector", type="persona-vector",
                                  metadata={"layers": steering_layers, "coef": recipe.steering.coef,
                                            "operator": recipe.steering.operator})
        artifact.add_file(recipe.steering.vector)
        run.log_artifact(artifact)


def module_names(model) -> dict[str, bool]:
    """The last name component of every module of ``model`` (what LoRA ``target_modules`` match) ->
    whether one of that name is an ``nn.Linear``; one walk over ``named_modules()``."""
    import torch

    names: dict[str, bool] = {}
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        names[last] = names.get(last, False) or isinstance(module, torch.nn.Linear)
    return names


def build_training_run(recipe: Recipe) -> TrainingRun:
    from peft import LoraConfig
    from trl import SFTTrainer

    from persona_guard.models import default_device, default_dtype, load_model

    training = dict(recipe.training)
    if recipe.wandb is not None and recipe.wandb.run_name:
        training.setdefault("run_name", recipe.wandb.run_name)
    args = training_args(training, recipe.path)
    output_dir = args.output_dir

    steering = steering_callback(recipe)
    drift = drift_callback(recipe)
    train_dataset, dropped = load_sft_dataset(recipe.data.train, recipe.data.split, recipe.data.max_rows,
                                              recipe.data.seed)
    eval_dataset, eval_dropped = (load_sft_dataset(recipe.data.eval, recipe.data.split) if recipe.data.eval
                                  else (None, []))

    # Loaded on the CPU: the Trainer / accelerate place (or shard) it on each process's device.
    loaded = load_model(recipe.model.name_or_path, device="cpu", layers_path=recipe.model.layers_path,
                        dtype=recipe.model.dtype or default_dtype(default_device()))
    vectors = ([steering.vector] if steering else []) + (list(drift.projector.vectors.values()) if drift else [])
    for vector in vectors:
        vector.check_model(loaded)
    if recipe.screening is not None:
        train_dataset = screen_dataset(recipe, loaded, train_dataset, Path(output_dir) / "screening")
    train_report = budget_problems(train_dataset, loaded.tokenizer, args, recipe.data.train, SOURCE_ROW)
    eval_report = (budget_problems(eval_dataset, loaded.tokenizer, args, recipe.data.eval, SOURCE_ROW)
                   if eval_dataset is not None else None)
    rows = len(train_dataset) + len(dropped) + (len(eval_dataset) + len(eval_dropped) if eval_dataset is not None
                                                else 0)
    report_dropped(Path(output_dir) / DROPPED_FILE,
                   dropped + train_report.all + eval_dropped + (eval_report.all if eval_report else []),
                   command="train", total=rows)
    train_dataset = without_rows(train_dataset, train_report.unrenderable)
    eval_dataset = without_rows(eval_dataset, eval_report.unrenderable) if eval_report else None
    train_left = len(train_dataset) - len(train_report.dropped)
    if train_left == 0:
        raise PersonaGuardError(f"{recipe.path}: no training row left for TRL (see "
                                f"{Path(output_dir) / DROPPED_FILE}; training.max_length={args.max_length})")
    train_dataset = train_dataset.remove_columns(SOURCE_ROW)
    eval_dataset = eval_dataset.remove_columns(SOURCE_ROW) if eval_dataset is not None else None

    peft_config = None
    if recipe.peft is not None:
        settings = recipe.peft
        target = settings.target_modules if isinstance(settings.target_modules, str) else list(settings.target_modules)
        if isinstance(target, list):  # a regex string (or "all-linear") is PEFT's to match
            names = module_names(loaded.model)
            missing = [module for module in target if module not in names]
            if missing:
                linear = sorted(name for name, is_linear in names.items() if is_linear)
                raise PersonaGuardError(f"peft.target_modules: {', '.join(missing)} not found in "
                                        f"{type(loaded.model).__name__} (its linear layers are named e.g. "
                                        f"{', '.join(linear[:8])})")
        peft_config = LoraConfig(r=settings.r, lora_alpha=settings.lora_alpha, use_rslora=settings.use_rslora,
                                 lora_dropout=settings.lora_dropout, target_modules=target, task_type="CAUSAL_LM")
    if reports_to_wandb(args):
        init_wandb(recipe, output_dir, steering.layers if steering else None)
    trainer = SFTTrainer(model=loaded.model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=loaded.tokenizer, peft_config=peft_config,
                         callbacks=[steering] if steering else None)
    if len(trainer.train_dataset) != train_left:
        print(f"persona-guard train: warning: TRL kept {len(trainer.train_dataset)} training rows, "
              f"{train_left} were expected (see {Path(output_dir) / DROPPED_FILE})", flush=True)
    if drift is not None:
        drift.bind(trainer)
    return TrainingRun(trainer=trainer, recipe=recipe, steering=steering, drift=drift)


DROPPED_FILE = "dropped_rows.jsonl"


def without_rows(dataset, rows: Sequence[DroppedRow]):
    """``dataset`` minus the rows at the given positions (:attr:`DroppedRow.index`)."""
    if not rows:
        return dataset
    gone = {row.index for row in rows}
    return dataset.select([index for index in range(len(dataset)) if index not in gone])


def write_rank_report(run: TrainingRun) -> Path | None:
    """``<output_dir>/steering_rank<r>.json``: what this process's steering hooks did."""
    if run.steering is None:
        return None
    rank = int(os.environ.get("RANK", "0"))
    path = Path(run.trainer.args.output_dir) / f"steering_rank{rank}.json"
    write_json_atomic(path, {"rank": rank, "steered_block_forwards": run.steering.steered_calls,
                             "layers": run.steering.layers, "operator": run.steering.operator,
                             "coef": run.steering.coef, "schedule": run.steering.settings.schedule})
    return path
