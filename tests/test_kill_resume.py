"""``kill -9`` at random points, then the same command again: the result is the uninterrupted one.

Each command runs as a real subprocess whose own code is left alone; a driver script wraps one
function to send itself SIGKILL at a kill point (after the k-th cache write, half-way through a
line, between writing a staging file and renaming it, after the k-th checkpoint ...). The points
are drawn from a seeded generator, so a failure names a point that can be replayed. The resumed
run goes through ``persona_guard.cli.main`` like any rerun, and its outputs are compared byte for
byte with an uninterrupted run (training: the adapter weights).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from persona_guard.cli import main
from tests.test_screening_cli import same_outputs, screen_args, subprocess_env, workspace  # noqa: F401
from tests.test_training_recipe import tiny_recipe, tiny_setup  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SEED = 16

DRIVER = """\
import json, os, signal, sys
def die():
    sys.stdout.flush(); sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
{patch}
from persona_guard.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_killed(tmp_path: Path, patch: str, argv: list[str], point) -> subprocess.CompletedProcess:
    """Run ``persona-guard argv`` with ``patch`` applied; it must die by SIGKILL at ``point``."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(patch=patch))
    env = {**subprocess_env(), "PG_KILL_POINT": json.dumps(point)}
    done = subprocess.run([sys.executable, str(driver), *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, (point, done.stderr[-3000:])
    return done


# ---- extraction --------------------------------------------------------------------------------

EXTRACT_PATCH = """\
import persona_guard.extraction as extraction
name, call, when = json.loads(os.environ["PG_KILL_POINT"])
calls = {}
original = extraction.JsonlCache.extend
def extend(self, rows):
    rows = list(rows)
    calls[self.path.stem] = calls.get(self.path.stem, 0) + 1
    if self.path.stem == name and calls[name] == call:
        if when == "torn":  # half of the first row, no newline: the crash hits mid-line
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(rows[0])[:40])
        elif when == "after":
            original(self, rows)
        die()
    return original(self, rows)
extraction.JsonlCache.extend = extend
"""


def extract_args(setup: Path, out: Path) -> list[str]:
    # a random-weight model: keep every pair (thresholds off); 2 questions x 5 pairs x 2 = 20 answers in
    # 5 generation chunks of 4, then one judgement chunk
    return ["extract", "--trait", "evil", "--model", str(setup / "model"), "--device", "cpu", "--out", str(out),
            "--questions", "2", "--max-new-tokens", "6", "--batch-size", "4", "--temperature", "1.0",
            "--pos-threshold", "0", "--neg-threshold", "101", "--coherence-threshold", "0", "--min-pairs", "1"]


def test_extraction_killed_at_random_points_resumes_to_identical_files(tiny_setup, tmp_path):  # noqa: F811
    reference = tmp_path / "reference"
    assert main(extract_args(tiny_setup, reference)) == 0
    points = [("generations", call, when) for call in range(1, 6) for when in ("torn", "after")]
    points += [("judgements", 1, "torn"), ("judgements", 1, "before")]
    for point in random.Random(SEED).sample(points, 3):
        out = tmp_path / "-".join(map(str, point))
        run_killed(tmp_path, EXTRACT_PATCH, extract_args(tiny_setup, out), point)
        assert not (out / "evil.safetensors").exists()
        assert main(extract_args(tiny_setup, out)) == 0, point
        for name in ("evil.safetensors", "report.json"):
            assert (out / name).read_bytes() == (reference / name).read_bytes(), (point, name)
        generations = (out / "cache" / "generations.jsonl").read_text().splitlines()
        assert sum(1 for line in generations if line.startswith('{"key"') and line.endswith("}")) >= 20


# ---- screening ---------------------------------------------------------------------------------

SCREEN_PATCH = """\
import persona_guard.files as files
import persona_guard.screening.base_answers as base_answers
import persona_guard.screening.scorer as scorer
kind, index = json.loads(os.environ["PG_KILL_POINT"])
if kind == "answers":  # after the index-th batch of base answers is committed
    original_put = base_answers.AnswerCache.put_many
    count = [0]
    def put_many(self, answers):
        original_put(self, answers)
        count[0] += 1
        if count[0] == index:
            die()
    base_answers.AnswerCache.put_many = put_many
elif kind == "shard-done":  # after shard `index` is written
    original_init = scorer.Screener.__init__
    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.on_shard_done = lambda k: die() if k == index else None
    scorer.Screener.__init__ = init
else:  # "staged": shard `index` written to its staging file, not yet renamed into place
    original_replace = files.os.replace
    def replace(source, target):
        if str(target).endswith(f"shard-{index:05d}.jsonl"):
            die()
        return original_replace(source, target)
    files.os.replace = replace
"""


def test_screening_killed_at_random_points_resumes_to_identical_outputs(workspace, tmp_path):  # noqa: F811
    reference = tmp_path / "reference"
    assert main(screen_args(workspace, reference, tmp_path / "reference.sqlite")) == 0
    shards = len(list((reference / "shards").glob("shard-*.jsonl")))
    points = [("answers", batch) for batch in (1, 2)] + [(kind, k) for kind in ("shard-done", "staged")
                                                          for k in range(shards - 1)]
    for point in random.Random(SEED).sample(points, 3):
        out, cache = tmp_path / "-".join(map(str, point)), tmp_path / f"{'-'.join(map(str, point))}.sqlite"
        run_killed(tmp_path, SCREEN_PATCH, screen_args(workspace, out, cache), point)
        assert not (out / "scored.jsonl").exists()
        assert main(screen_args(workspace, out, cache)) == 0, point
        same_outputs(reference, out)


# ---- training ----------------------------------------------------------------------------------

TRAIN_PATCH = """\
from transformers import TrainerCallback
import persona_guard.training.builder as builder
when, step = json.loads(os.environ["PG_KILL_POINT"])
class Kill(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):  # before this step's checkpoint
        if when == "step" and state.global_step == step:
            die()
    def on_save(self, args, state, control, **kwargs):  # after checkpoint-<step> is on disk
        if when == "saved" and state.global_step == step:
            die()
original = builder.build_training_run
def build(recipe):
    run = original(recipe)
    run.trainer.add_callback(Kill())
    return run
builder.build_training_run = build
"""

STEPS = 4


def resumable_recipe(root: Path, output_dir: Path) -> Path:
    """Preventative steering, a checkpoint every step; no W&B or drift probes (not part of the weights)."""
    recipe = tiny_recipe(root)
    recipe.pop("drift")
    recipe.pop("wandb")
    recipe["training"].update(output_dir=str(output_dir), max_steps=STEPS, save_strategy="steps", save_steps=1,
                              per_device_train_batch_size=2, report_to="none", seed=0, data_seed=0)
    path = output_dir.parent / f"{output_dir.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_training_killed_at_random_points_resumes_to_the_same_adapter(tiny_setup, tmp_path):  # noqa: F811
    reference_dir = tmp_path / "reference"
    assert main(["train", str(resumable_recipe(tiny_setup, reference_dir))]) == 0
    reference = load_file(reference_dir / "adapter_model.safetensors")
    finished = {p.name: p.stat().st_mtime_ns for p in reference_dir.iterdir()}
    assert main(["train", str(resumable_recipe(tiny_setup, reference_dir))]) == 0  # a finished run: nothing to do
    assert {p.name: p.stat().st_mtime_ns for p in reference_dir.iterdir()} == finished
    steered = json.loads((reference_dir / "steering_rank0.json").read_text())["steered_block_forwards"]
    points = [("step", step) for step in range(2, STEPS)] + [("saved", step) for step in range(1, STEPS)]
    for point in random.Random(SEED).sample(points, 2):
        output_dir = tmp_path / "-".join(map(str, point))
        recipe = resumable_recipe(tiny_setup, output_dir)
        run_killed(tmp_path, TRAIN_PATCH, ["train", str(recipe)], point)
        assert not (output_dir / "adapter_model.safetensors").exists()
        assert main(["train", str(recipe)]) == 0, point
        resumed = load_file(output_dir / "adapter_model.safetensors")
        assert resumed.keys() == reference.keys()
        for name, tensor in reference.items():
            assert torch.equal(resumed[name], tensor), (point, name)
        # the steering callback was rebuilt and acted on the steps run after the resume
        report = json.loads((output_dir / "steering_rank0.json").read_text())
        assert 0 < report["steered_block_forwards"] < steered, point


def test_training_with_other_inputs_refuses_the_checkpoints_of_a_killed_run(tiny_setup, tmp_path, capsys):  # noqa: F811
    output_dir = tmp_path / "run"
    recipe = resumable_recipe(tiny_setup, output_dir)
    run_killed(tmp_path, TRAIN_PATCH, ["train", str(recipe)], ("saved", 1))
    assert (output_dir / "checkpoint-1").is_dir()
    before = sorted(p.name for p in output_dir.iterdir())
    assert main(["train", str(recipe), "--steering.coef=1.0"]) == 2
    assert f"{output_dir} exists; pass --force to overwrite it" in capsys.readouterr().err
    assert sorted(p.name for p in output_dir.iterdir()) == before
    assert main(["train", str(recipe), "--steering.coef=1.0", "--force"]) == 0
    inputs = json.loads((output_dir / "run_inputs.json").read_text())
    assert inputs["recipe"]["steering"]["coef"] == 1.0
