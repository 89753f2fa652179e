"""``persona-guard train RECIPE.yaml [--section.key=value ...]``: fine-tune from a YAML recipe.

Runs under ``accelerate launch`` too (see ``launch/train.sh``): every process builds the same
trainer; steering hooks are attached on each process's model replica or shard.

``output_dir`` follows the overwrite rule of every command (:mod:`persona_guard.files`): a run whose
``run_inputs.json`` matches this recipe and its input files resumes from its last checkpoint (the
steering callback is rebuilt from the recipe and continues at the checkpoint's step), or does nothing
when that run finished; any other non-empty ``output_dir`` is refused unless ``--force``, which
clears it. A run that fails before its first checkpoint leaves ``output_dir`` as it found it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import yaml

from persona_guard.commands.common import OVERWRITE_HELP, preflight
from persona_guard.errors import PersonaGuardError
from persona_guard.files import atomic_path, output_folder, refuse_overwrite, write_json_atomic, write_text_atomic

RUN_INPUTS = "run_inputs.json"
#: written last, when the model is saved: its presence marks a finished run
FINISHED = "recipe.yaml"


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_inputs(recipe) -> dict:
    """What decides a run's result: the resolved recipe and the content of its local input files."""
    files = [recipe.data.train, recipe.data.eval, recipe.steering.vector if recipe.steering else None,
             *(recipe.drift.vectors.values() if recipe.drift else ())]
    return {"recipe": yaml.safe_load(yaml.safe_dump(recipe.to_dict())),
            "files": {path: _sha256(path) for path in files if path and os.path.isfile(path)}}


def resume_point(output_dir: Path, inputs: dict, force: bool) -> str | None:
    """The checkpoint to resume from (None: start from step 0).

    ``output_dir`` of a run with the same inputs resumes (or restarts, before its first checkpoint);
    any other non-empty ``output_dir`` is refused unless ``force``.
    """
    from transformers.trainer_utils import get_last_checkpoint

    if not force and same_inputs(output_dir, inputs):
        return get_last_checkpoint(str(output_dir))
    refuse_overwrite([output_dir], force)
    return None


def same_inputs(output_dir: Path, inputs: dict) -> bool:
    """Whether ``output_dir`` records a run of this recipe with these input files."""
    recorded = output_dir / RUN_INPUTS
    try:
        return recorded.is_file() and json.loads(recorded.read_text(encoding="utf-8")) == inputs
    except ValueError:
        return False


def run(args) -> int:
    from persona_guard.training.builder import build_training_run, reports_to_wandb, write_rank_report
    from persona_guard.training.recipe import load_recipe
    from persona_guard.training.steering_callback import train_with_cleanup

    # Overrides take the rest of the line, so --force may land there too.
    force = args.force or "--force" in args.overrides
    recipe = load_recipe(args.recipe, [o for o in args.overrides if o != "--force"])
    output_dir = Path(recipe.training["output_dir"])
    inputs = run_inputs(recipe)
    screening_files = [*recipe.screening.vectors, recipe.screening.reference] if recipe.screening else []
    inside = [path for path in [args.recipe, *inputs["files"], *screening_files]
              if path and Path(path).resolve().is_relative_to(output_dir.resolve())]
    if inside:  # --force clears output_dir: it must never hold what the run reads
        raise PersonaGuardError(f"{args.recipe}: training.output_dir {output_dir} holds an input of this run "
                                f"({inside[0]}); choose another output_dir")
    if not force and (output_dir / FINISHED).is_file() and same_inputs(output_dir, inputs):
        print(f"persona-guard train: {output_dir} already holds this run, finished (same recipe and input "
              "files); nothing to do (pass --force to train it again)", file=sys.stderr)
        return 0
    checkpoint = resume_point(output_dir, inputs, force)
    packages = [("wandb", "report_to: wandb")] if "wandb" in str(recipe.training.get("report_to", "")) else []
    preflight(model=recipe.model.name_or_path, outputs=[output_dir], packages=packages)
    main_process = int(os.environ.get("RANK", "0")) == 0
    if checkpoint is None and force and main_process and output_dir.exists():
        shutil.rmtree(output_dir)
    # a failure with nothing to resume from leaves output_dir as it was found (absent or empty)
    with output_folder(output_dir, resumable=lambda folder: any(folder.glob("checkpoint-*")), owner=main_process):
        training_run = build_training_run(recipe)
        if main_process:
            write_json_atomic(output_dir / RUN_INPUTS, inputs)
        trainer = training_run.trainer
        if checkpoint is not None:
            print(f"persona-guard train: resuming from {checkpoint}", flush=True)
        train_with_cleanup(trainer, resume_from_checkpoint=checkpoint)
    report = write_rank_report(training_run)
    if training_run.steering is not None:
        print(f"persona-guard train: {report.stem}: steered {training_run.steering.steered_calls} block forwards "
              f"at layers {training_run.steering.layers} ({training_run.steering.operator})", flush=True)
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        write_text_atomic(output_dir / FINISHED, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        if recipe.steering is not None:
            with atomic_path(output_dir / "steering_vector.safetensors") as staging:
                shutil.copyfile(recipe.steering.vector, staging)
        print(f"persona-guard train: saved to {output_dir}")
    if reports_to_wandb(trainer.args):
        import wandb

        if wandb.run is not None:
            wandb.finish()
    return 0


class ListKeys(argparse.Action):
    """``train --keys``: the recipe schema, read from the dataclasses the library uses."""

    def __call__(self, parser, namespace, values, option_string=None):
        from persona_guard.schema import field_lines
        from persona_guard.training.recipe import SECTION_TYPES

        for name, cls in SECTION_TYPES.items():
            print("\n".join(field_lines(cls, name)))
        print("--training.<field>: any TRL SFTConfig field, checked against SFTConfig's annotations")
        parser.exit()


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="fine-tune from a YAML recipe (LoRA or full; optional preventative steering)",
        description="Fine-tune from a YAML recipe. Extra --section.key=value arguments override recipe "
                    "fields, e.g. --training.learning_rate=1e-4 --steering.coef=3 --steering=null. "
                    "A non-empty output_dir is refused unless --force, except that a run with the same "
                    "recipe and input files resumes from its last checkpoint.")
    parser.add_argument("--keys", action=ListKeys, nargs=0,
                        help="list every recipe key (--section.key) with its type and default, then exit")
    parser.add_argument("--force", action="store_true", help=OVERWRITE_HELP + " (clears output_dir)")
    parser.add_argument("recipe", help="recipe YAML, e.g. recipes/smollm2-135m/evil/preventative.yaml")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, metavar="--section.key=value",
                        help="recipe overrides (values are YAML)")
    parser.set_defaults(func=run)
