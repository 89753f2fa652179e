"""``persona-guard train RECIPE.yaml [--section.key=value ...]``: fine-tune from a YAML recipe.

Runs under ``accelerate launch`` too (see ``launch/train.sh``): every process builds the same
trainer; steering hooks are attached on each process's model replica or shard.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import yaml


def run(args) -> int:
    from persona_guard.training.builder import build_training_run, reports_to_wandb, write_rank_report
    from persona_guard.training.recipe import load_recipe
    from persona_guard.training.steering_callback import train_with_cleanup

    recipe = load_recipe(args.recipe, args.overrides)
    training_run = build_training_run(recipe)
    trainer = training_run.trainer
    output_dir = Path(trainer.args.output_dir)
    train_with_cleanup(trainer)
    report = write_rank_report(training_run)
    if training_run.steering is not None:
        print(f"persona-guard train: {report.stem}: steered {training_run.steering.steered_calls} block forwards "
              f"at layers {training_run.steering.layers} ({training_run.steering.operator})", flush=True)
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        (output_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        if recipe.steering is not None:
            shutil.copy(recipe.steering.vector, output_dir / "steering_vector.safetensors")
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
                    "fields, e.g. --training.learning_rate=1e-4 --steering.coef=3 --steering=null.")
    parser.add_argument("--keys", action=ListKeys, nargs=0,
                        help="list every recipe key (--section.key) with its type and default, then exit")
    parser.add_argument("recipe", help="recipe YAML, e.g. recipes/smollm2-135m/evil/preventative.yaml")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, metavar="--section.key=value",
                        help="recipe overrides (values are YAML)")
    parser.set_defaults(func=run)
