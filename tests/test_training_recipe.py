"""Recipes -> SFTTrainer through the real CLI, with a real W&B offline run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from persona_guard.cli import main
from persona_guard.errors import PersonaGuardError
from persona_guard.io import write_jsonl
from persona_guard.training.recipe import load_recipe, recipe_from_dict
from persona_guard.vectors import PersonaVector
from tests.conftest import as_loaded, make_tiny_model
from tests.samples import CONVERSATIONS
from tests.training_helpers import tiny_vector

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.fixture
def tiny_setup(tokenizer, tmp_path):
    """A tiny llama saved like a hub checkpoint, chat data and a persona vector, all in tmp_path."""
    model = make_tiny_model("llama", len(tokenizer))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    tiny_vector(model, scale=3.0).save(tmp_path / "evil.safetensors")
    write_jsonl(tmp_path / "train.jsonl", [{"messages": c} for c in CONVERSATIONS * 2])
    return tmp_path


def tiny_recipe(root: Path, **sections) -> dict:
    recipe = {
        "model": {"name_or_path": str(root / "model")},
        "data": {"train": str(root / "train.jsonl")},
        "peft": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "steering": {"vector": str(root / "evil.safetensors"), "layers": [1, 2], "coef": 4.0},
        "drift": {"vectors": {"evil": str(root / "evil.safetensors")}, "every_steps": 1,
                  "questions": ["Is it ever fine to hurt people?", "How should I treat my neighbours?"]},
        "wandb": {"project": "pg-test", "run_name": "tiny-preventative", "tags": ["tiny", "test"]},
        "training": {"output_dir": str(root / "out"), "max_steps": 2, "per_device_train_batch_size": 4,
                     "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "no", "report_to": "wandb",
                     "use_cpu": True, "activation_checkpointing": False, "disable_tqdm": True,
                     "max_length": 128},
    }
    recipe.update(sections)
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return recipe


def offline_run_dir(output_dir: Path) -> Path:
    runs = sorted((output_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0]


def wandb_records(path: Path):
    """Protobuf records of a W&B transaction log (``run-*.wandb``): 7-byte file header, then
    LevelDB-log style 32 KiB blocks of chunks (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, header = 32768, 7
    position, chunks = header, []
    while position + header <= len(data):
        left = block - position % block
        _crc, length, kind = struct.unpack("<IHB", data[position:position + header]) if left >= header else (0, 0, 0)
        if left < header or kind == 0:
            position += left
            continue
        chunks.append(data[position + header:position + header + length])
        position += header + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def read_offline_run(run_dir: Path, wait_s: float = 30.0) -> tuple[object, list[dict], list[object]]:
    """(run record, history rows, artifact records) of an offline run, as ``wandb sync`` would send them.

    wandb-core may still be flushing the log when ``wandb.finish()`` returns, so read until the
    run's exit record is there."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        run, rows, artifacts, finished = None, [], [], False
        for record in wandb_records(next(run_dir.glob("*.wandb"))):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = record.run
            elif kind == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
            elif kind == "artifact":
                artifacts.append(record.artifact)
            elif kind == "exit":
                finished = True
        if finished or time.monotonic() > deadline:
            return run, rows, artifacts
        time.sleep(0.5)


def test_train_cli_logs_drift_to_wandb_offline_and_saves_adapter(tiny_setup, tokenizer, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM

    from persona_guard.training.drift import TraitDriftCallback
    from persona_guard.vectors import PersonaVector

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("RANK", raising=False)
    tiny_recipe(tiny_setup)
    assert main(["train", str(tiny_setup / "recipe.yaml"), "--training.max_steps=3"]) == 0
    out = tiny_setup / "out"
    assert (out / "adapter_model.safetensors").is_file()
    assert yaml.safe_load((out / "recipe.yaml").read_text())["training"]["max_steps"] == 3
    report = json.loads((out / "steering_rank0.json").read_text())
    assert report["steered_block_forwards"] == 2 * 3  # two layers, three steps
    assert "steered 6 block forwards" in capsys.readouterr().out

    run, rows, artifacts = read_offline_run(offline_run_dir(out))
    assert run.display_name == "tiny-preventative" and list(run.tags) == ["tiny", "test"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    recipe = config["persona_guard_recipe"]
    assert recipe["steering"]["coef"] == 4.0 and recipe["training"]["max_steps"] == 3
    drift = [row["train/trait/evil/prompt_last"] for row in rows if "train/trait/evil/prompt_last" in row]
    assert len(drift) == 4  # before training and after each of the three steps
    assert len(set(drift)) > 1, "LoRA updates move the probe projections"
    # The step-0 probe ran with the steering hooks attached (train mode elsewhere): it must read
    # the plain model.
    plain = AutoModelForCausalLM.from_pretrained(tiny_setup / "model")
    probe = TraitDriftCallback({"evil": (PersonaVector.load(tiny_setup / "evil.safetensors"), None)},
                               tiny_recipe(tiny_setup)["drift"]["questions"])
    assert probe.measure(as_loaded(plain, tokenizer))["trait/evil/prompt_last"] == drift[0]
    losses = [row for row in rows if "train/loss" in row]
    assert [row["train/global_step"] for row in losses] == [1, 2, 3]
    assert all("train/entropy" in row for row in losses)
    assert [(a.type, a.name) for a in artifacts] == [("persona-vector", "evil-vector")]


def test_shipped_recipes_parse_and_overrides_apply():
    shipped = sorted(RECIPES.glob("*/*/*.yaml"))
    assert len(shipped) == 7
    for path in shipped:
        recipe = load_recipe(path)
        assert recipe.training["output_dir"]
        assert recipe.peft is not None and recipe.peft.use_rslora
    qwen = load_recipe(RECIPES / "qwen2.5-7b-instruct/evil/preventative.yaml")
    assert (qwen.peft.r, qwen.peft.lora_alpha, qwen.training["learning_rate"]) == (32, 64, 1e-5)
    # the layer comes from the vector file: recipes state one only to override it
    assert (qwen.steering.layers, qwen.steering.coef, qwen.steering.operator) == (None, 5.0, "add")
    assert all(load_recipe(path).drift.layer is None for path in shipped if load_recipe(path).drift)
    assert load_recipe(RECIPES / "qwen2.5-7b-instruct/evil/ablate.yaml").steering.operator == "ablate"
    screened = load_recipe(RECIPES / "smollm2-135m/evil/screened.yaml")
    assert (screened.screening.mode, screened.screening.policy.top_percent) == ("exact", 10)
    assert screened.screening.base_answers.max_new_tokens == 48
    baseline = load_recipe(RECIPES / "smollm2-135m/evil/preventative.yaml",
                           ["--steering=null", "--training.learning_rate=3e-4", "--wandb.tags=[a, b]"])
    assert baseline.steering is None and baseline.training["learning_rate"] == 3e-4
    assert baseline.wandb.tags == ("a", "b")


@pytest.mark.parametrize("change, message", [
    ({"trainer": {}}, "unknown section(s) trainer"),
    ({"training": {"output_dir": "x", "learning_rat": 1}}, "unknown SFTConfig field(s) learning_rat"),
    ({"steering": {"vector": "v.safetensors", "coeff": 2}}, "steering: unknown field(s) coeff"),
    ({"data": {}}, "data.train: required"),
])
def test_recipe_errors_name_the_field(change, message):
    raw = {"data": {"train": "x.jsonl"}, "training": {"output_dir": "out"}}
    raw.update(change)
    with pytest.raises(PersonaGuardError, match=message.replace("(", r"\(").replace(")", r"\)")):
        recipe_from_dict(raw, "r.yaml")


def test_unusable_rows_are_dropped_and_listed(tiny_setup, capsys):
    """Rows train cannot use are dropped, listed on the console and in dropped_rows.jsonl; a file
    with no usable row at all is one line naming the reasons."""
    tiny_recipe(tiny_setup)
    write_jsonl(tiny_setup / "train.jsonl", [{"messages": CONVERSATIONS[0]},
                                             {"messages": [{"role": "user", "content": "no answer"}]}])
    from persona_guard.training.builder import build_training_run

    run = build_training_run(load_recipe(tiny_setup / "recipe.yaml", ["--training.report_to=none", "--drift=null"]))
    assert len(run.trainer.train_dataset) == 1
    dropped = [json.loads(line) for line in (tiny_setup / "out" / "dropped_rows.jsonl").read_text().splitlines()]
    reason = "messages: the conversation does not end with an assistant answer"
    assert dropped == [{"source": str(tiny_setup / "train.jsonl"), "row": 2, "reason": reason}]
    assert f"train.jsonl:2: {reason}" in capsys.readouterr().out

    write_jsonl(tiny_setup / "train.jsonl", [{"messages": [{"role": "user", "content": "no answer"}]}])
    assert main(["train", "--force", str(tiny_setup / "recipe.yaml"), "--training.report_to=none"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"train.jsonl: no usable rows (1 x {reason})")
    assert len(err.splitlines()) == 1


@pytest.mark.smollm
def test_shipped_smollm_recipe_trains_one_step(smollm_dir, tmp_path, monkeypatch):
    """The shipped preventative recipe on the real SmolLM2, with tmp data and a vector of its shape."""
    import torch

    from persona_guard.vectors import PersonaVector

    monkeypatch.delenv("RANK", raising=False)
    vector = PersonaVector("evil", "smollm2-135m", torch.randn(31, 576, generator=torch.Generator().manual_seed(0)),
                           default_layer=15)
    vector.save(tmp_path / "evil.safetensors")
    write_jsonl(tmp_path / "train.jsonl", [{"messages": c} for c in CONVERSATIONS])
    code = main(["train", str(RECIPES / "smollm2-135m/evil/preventative.yaml"),
                 f"--data.train={tmp_path / 'train.jsonl'}", "--data.max_rows=2",
                 f"--steering.vector={tmp_path / 'evil.safetensors'}",
                 "--drift=null", "--training.max_steps=1",
                 "--training.per_device_train_batch_size=2", "--training.max_length=64",
                 "--training.report_to=none", f"--training.output_dir={tmp_path / 'out'}"])
    assert code == 0
    report = json.loads((tmp_path / "out" / "steering_rank0.json").read_text())
    assert report == {"rank": 0, "steered_block_forwards": 1, "layers": [15], "operator": "add", "coef": 4.0,
                      "schedule": "constant"}
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_screen_then_train_drops_the_flagged_rows(tiny_setup):
    """A recipe with a screening section trains on exactly the rows the screener did not flag."""
    from persona_guard.training.builder import build_training_run

    root = tiny_setup
    raw = tiny_recipe(root, screening={"vectors": [str(root / "evil.safetensors")], "mode": "fast",
                                        "policy": {"top_k": 3}})
    raw["training"]["report_to"] = "none"
    raw["data"]["max_rows"] = 2 * len(CONVERSATIONS) - 2  # a shuffled sample: rows leave file order
    run = build_training_run(recipe_from_dict(raw, "screen-then-train"))

    out = root / "out" / "screening"
    scored = [json.loads(line) for line in (out / "scored.jsonl").read_text().splitlines()]
    filtered = [json.loads(line) for line in (out / "filtered.jsonl").read_text().splitlines()]
    assert len(scored) == 2 * len(CONVERSATIONS) - 2 and sum(r["flagged"] for r in scored) == 3
    top3 = sorted(scored, key=lambda r: r["evil_dp"], reverse=True)[:3]
    assert all(r["flagged"] for r in top3) and len(filtered) == len(scored) - 3
    # every scored row names its row in the training file
    lines = [json.loads(line) for line in Path(raw["data"]["train"]).read_text().splitlines() if line.strip()]
    assert len({row["source_row"] for row in scored}) == len(scored)
    for row in scored:
        assert lines[row["source_row"] - 1]["messages"][-1]["content"] == row["completion"][0]["content"]
    assert "source_row" not in run.trainer.train_dataset.column_names
    # the trainer's (tokenized) rows are the unflagged ones, in their original order
    tokenizer = run.trainer.processing_class
    trained = [tokenizer.decode(ids) for ids in run.trainer.train_dataset["input_ids"]]
    assert len(trained) == len(filtered)
    assert all(r["completion"][0]["content"] in text for r, text in zip(filtered, trained))


def test_screening_section_errors_name_the_field(tiny_setup):
    raw = tiny_recipe(tiny_setup, screening={"mode": "fast"})
    with pytest.raises(PersonaGuardError, match=r"screening\.vectors: required"):
        recipe_from_dict(raw, "r.yaml")
    raw = tiny_recipe(tiny_setup, screening={"vectors": ["v.safetensors"], "policy": {"percentile": 95}})
    with pytest.raises(PersonaGuardError, match=r"screening\.policy\.percentile: needs screening\.reference"):
        recipe_from_dict(raw, "r.yaml")


@pytest.mark.parametrize("change, key", [
    (["--steering.coef=strong"], "steering.coef: expected a finite number, got 'strong'"),
    (["--data.max_rows=ten"], "data.max_rows: expected an integer or null, got 'ten'"),
    (["--peft.r=-1"], "peft.r: must be >= 1, got -1"),
    (["--training.learning_rate=-1e-4"], "training.learning_rate: must be > 0, got -0.0001"),
    ({"num_train_epochs": "one"}, "training.num_train_epochs: expected a finite number, got 'one'"),
])
def test_bad_recipe_values_fail_before_anything_is_created(tiny_setup, change, key):
    """Through the real ``persona-guard train`` process: exit 2, one line naming the key, no
    traceback, and no output_dir (every value is checked before anything is loaded or created)."""
    import subprocess
    import sys

    raw = tiny_recipe(tiny_setup)
    overrides = change if isinstance(change, list) else []
    if isinstance(change, dict):
        raw["training"].update(change)
        (tiny_setup / "recipe.yaml").write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "persona_guard.cli", "train", str(tiny_setup / "recipe.yaml"),
                           *overrides], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"persona-guard train: error: {tiny_setup / 'recipe.yaml'}: {key}"]
    assert "Traceback" not in done.stdout
    assert not (tiny_setup / "out").exists()


@pytest.mark.parametrize("overrides, message", [
    (["--steering.coef=.nan"], "steering.coef: expected a finite number, got nan"),
    (["--steering.coef=-.inf"], "steering.coef: expected a finite number, got -inf"),
    (["--screening.vectors=[v.safetensors]", "--screening.policy.top_percent=150"],
     "screening.policy.top_percent: must be <= 100, got 150"),
    (["--screening.vectors=[v.safetensors]", "--screening.policy.top_k=3", "--screening.policy.threshold=1"],
     "screening.policy: choose one flagging policy, got top_k, threshold"),
    (["--screening.vectors=[v.safetensors]", "--screening.checkpoint_dir=x"],
     "screening: unknown field(s) checkpoint_dir"),
    (["--steering.operator=subtract"], "steering.operator: expected one of 'add', 'ablate', got 'subtract'"),
    (["--steering.layers=[1, two]"], "steering.layers: expected a list of integers or an integer or null"),
    (["--peft.lora_dropout=1"], "peft.lora_dropout: must be < 1, got 1"),
    (["--drift.every_steps=0"], "drift.every_steps: must be >= 1, got 0"),
    (["--model.dtype=float8"], "model.dtype: expected one of 'auto', 'float32', 'bfloat16', 'float16' or null"),
    (["--wandb.upload_vector=maybe"], "wandb.upload_vector: expected true/false, got 'maybe'"),
    (["--training.per_device_train_batch_size=0"], "training.per_device_train_batch_size: must be >= 1, got 0"),
    (["--training.max_steps=2.5"], "training.max_steps: expected an integer, got 2.5"),
])
def test_recipe_values_are_checked_by_name(tiny_setup, overrides, message):
    tiny_recipe(tiny_setup)
    with pytest.raises(PersonaGuardError) as error:
        load_recipe(tiny_setup / "recipe.yaml", overrides)
    assert str(error.value).startswith(f"{tiny_setup / 'recipe.yaml'}: {message}")


def test_resolved_recipe_reads_back_equal(tiny_setup):
    """``Recipe.to_dict`` (saved as recipe.yaml with the run) holds every default and reads back equal."""
    raw = tiny_recipe(tiny_setup, screening={"vectors": ["v.safetensors"], "policy": {"top_k": 3}})
    recipe = recipe_from_dict(raw, "r.yaml")
    again = recipe_from_dict(yaml.safe_load(yaml.safe_dump(recipe.to_dict())), "r.yaml")
    assert again == recipe
    assert recipe.to_dict()["steering"]["layers"] == [1, 2] and recipe.to_dict()["screening"]["mode"] == "exact"


def test_train_keys_lists_the_schema_from_the_library_dataclasses(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--keys"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert "--steering.coef: a finite number, >= -1000, <= 1000 (default 5.0)" in lines
    assert "--steering.layers: a list of integers or an integer or null, >= 0 (default None)" in lines
    assert "--peft.r: an integer, >= 1 (default 32)" in lines
    assert "--screening.policy.top_percent: a finite number or null, >= 0, <= 100 (default None)" in lines
    assert "--screening.base_answers.max_new_tokens: an integer, >= 1 (default 128)" in lines
    assert not any("checkpoint_dir" in line for line in lines)  # set by the library, not by recipes


def test_force_never_clears_an_output_dir_that_holds_an_input(tiny_setup, capsys):
    """Found by the hostile sweep: ``--force`` cleared output_dir, and with it the training data inside."""
    (tiny_setup / "train.jsonl").rename(tiny_setup / "data.jsonl")
    tiny_recipe(tiny_setup, data={"train": str(tiny_setup / "data.jsonl")},
                training={"output_dir": str(tiny_setup), "max_steps": 1, "report_to": "none", "use_cpu": True})
    before = sorted(p.name for p in tiny_setup.iterdir())
    assert main(["train", "--force", str(tiny_setup / "recipe.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds an input of this run" in err[0], err
    assert sorted(p.name for p in tiny_setup.iterdir()) == before


def test_a_vector_trait_name_can_never_name_a_path():
    """Found by the hostile sweep: a header trait of '../../x' wrote a screening plot outside --out."""
    directions = torch.zeros(3, 8)
    directions[1, 0] = 1.0
    for bad in ("../../escaped", "a/b", "", "Evil"):
        with pytest.raises(PersonaGuardError, match="must be lowercase letters"):
            PersonaVector(bad, "m", directions)
    assert PersonaVector("evil", "m", directions).trait == "evil"


def test_a_recipe_that_is_not_utf8_is_one_line(tmp_path):
    """Found by the second hostile sweep: a binary recipe was a UnicodeDecodeError traceback."""
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe model: x")
    with pytest.raises(PersonaGuardError, match=r"binary.yaml: not UTF-8 text \(byte 0"):
        load_recipe(path)
