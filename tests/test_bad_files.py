"""Damaged files and degenerate inputs at the library loaders (issue 16, the later hostile sweep).

Commands run as real ``persona-guard`` subprocesses: each case asserts exit status 2, one ``error:``
line naming the file, row, field or layer, no traceback, and that nothing appeared or changed on disk
except the files a case names (``skipped.jsonl``: where a screen that found nothing screenable puts
each row's reason). Loaders and caches are checked at the library level.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
import torch
import yaml

from persona_guard.errors import PersonaGuardError
from persona_guard.extraction import JUDGEMENT_FIELDS, JsonlCache
from persona_guard.files import atomic_path, output_folder, write_text_atomic
from persona_guard.io import read_jsonl, write_jsonl
from persona_guard.layer_selection import Cell, choose_layer
from persona_guard.llm_client import JsonCache
from persona_guard.models import DEFAULT_MODEL, SOURCE_RECORD, _conversion_problem, check_model_dir
from persona_guard.monitor import PersonaMonitor
from persona_guard.rows import read_rows, sort_rows
from persona_guard.screening.base_answers import AnswerCache
from persona_guard.server.policy import Policy
from persona_guard.server.protocol import MAX_JSON_DEPTH, RequestError, parse_json_body
from persona_guard.traits import load_trait
from persona_guard.vectors import PersonaVector, check_same_trait, load_gguf_control_vector
from tests.conftest import as_loaded
from tests.test_bad_input import CONCURRENCY, REPO, build_inputs, snapshot, write_raw_vector
from tests.test_serve import start_server


def build_damaged(root: Path) -> None:
    """Degenerate vectors, empty and unusable data, damaged model dirs, caches and trait files."""
    good = PersonaVector.load(root / "evil.safetensors")
    header = good.metadata_dict()
    write_raw_vector(root / "zero.safetensors", torch.zeros_like(good.directions), json.dumps(header))
    torch.save(torch.zeros(4, 64), root / "zero.pt")
    hollow = good.directions.clone()
    hollow[2] = 0  # the default layer (2) has no direction
    write_raw_vector(root / "zero_default.safetensors", hollow, json.dumps(header))
    write_raw_vector(root / "zero_layer2.safetensors", hollow, json.dumps({**header, "default_layer": 1}))
    (root / "empty.jsonl").write_text("")
    (root / "prompt_only.jsonl").write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n" + json.dumps({"prompt": "x"}) + "\n")
    (root / "no_prompt.jsonl").write_text(json.dumps({"note": "no conversation here"}) + "\n")
    recipe = yaml.safe_load((root / "recipe.yaml").read_text())
    for name, data in (("empty", "empty.jsonl"), ("unusable", "prompt_only.jsonl")):
        (root / f"recipe_{name}.yaml").write_text(yaml.safe_dump({**recipe, "data": {"train": str(root / data)}}))
    for name in ("truncated", "bad_config", "no_weights", "bad_tokenizer"):
        target = root / name
        target.mkdir()
        for file in (root / "model").iterdir():
            (target / file.name).write_bytes(file.read_bytes())
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (root / "bad_config" / "config.json").write_text("{not json")
    (root / "no_weights" / "model.safetensors").unlink()
    (root / "bad_tokenizer" / "tokenizer.json").write_text("{")
    (root / "not_a_db.sqlite").write_text("this is not an SQLite database\n")
    (root / "a_folder").mkdir()
    (root / "empty_trait.json").write_text("")
    trait = load_trait("evil").to_dict()
    (root / "no_questions.json").write_text(json.dumps({**trait, "extraction_questions": []}))
    (root / "policy.yaml").write_text("traits: [unclosed\n")


@dataclass(frozen=True)
class FileCase:
    """One invocation: ``argv`` may use ``{in}``; ``setup`` creates text files in the case's folder
    first; ``message`` must be in the one error line; ``writes`` lists the only paths (relative to the
    case's folder, prefixes) allowed to appear."""

    name: str
    argv: tuple[str, ...]
    message: str
    setup: tuple[tuple[str, str], ...] = ()
    writes: tuple[str, ...] = ()


STEER = ("steer", "--prompt", "hi", "--device", "cpu", "--max-new-tokens", "2", "--vector", "{in}/evil.safetensors")
SCREEN = ("screen", "--model", "{in}/model", "--device", "cpu", "--out", "out", "--vector")
MONITOR = ("monitor", "--model", "{in}/model", "--device", "cpu", "--out", "readings.jsonl", "--vector")

CASES = [
    # -- an all-zero vector, or a zero direction at the layer used, at every loader
    FileCase("vector-show-all-zero", ("vector", "show", "{in}/zero.safetensors"), "every direction is zero"),
    FileCase("vector-import-all-zero-pt", ("vector", "import", "{in}/zero.pt", "--out", "v.safetensors"),
             "zero.pt: persona vector 'zero': every direction is zero"),
    FileCase("vector-show-zero-default-layer", ("vector", "show", "{in}/zero_default.safetensors"),
             "zero_default.safetensors: persona vector 'evil': layer 2 has a zero direction"),
    FileCase("export-gguf-zero-layer",
             ("vector", "export-gguf", "{in}/zero_layer2.safetensors", "--layer", "2", "--out", "c.gguf"),
             "layer 2 has a zero direction"),
    FileCase("steer-zero-layer", ("steer", "--model", "{in}/model", "--prompt", "hi", "--device", "cpu",
                                  "--vector", "{in}/zero_layer2.safetensors", "--layer", "2"),
             "layer 2 has a zero direction"),
    FileCase("screen-all-zero-vector", (*SCREEN, "{in}/zero.safetensors", "{in}/data.jsonl"),
             "every direction is zero"),
    FileCase("monitor-all-zero-vector", (*MONITOR, "{in}/zero.safetensors", "{in}/data.jsonl"),
             "every direction is zero"),
    # -- empty data, or data of which no row is usable
    FileCase("screen-empty-file", (*SCREEN, "{in}/evil.safetensors", "{in}/empty.jsonl"),
             "empty.jsonl: no rows (the file or split is empty)"),
    FileCase("screen-no-row-screenable", (*SCREEN, "{in}/evil.safetensors", "{in}/prompt_only.jsonl"),
             "prompt_only.jsonl: nothing was screenable: all 2 rows were skipped; the reason for each is in "
             "out/skipped.jsonl", writes=("out", "out/skipped.jsonl")),
    FileCase("screen-every-row-too-long",
             (*SCREEN, "{in}/evil.safetensors", "{in}/data.jsonl", "--no-generate", "--max-length", "2"),
             "data.jsonl: nothing was screenable: all 5 rows were skipped; the reason for each is in "
             "out/skipped.jsonl", writes=("out", "out/skipped.jsonl", "out/shards")),
    FileCase("monitor-empty-file", (*MONITOR, "{in}/evil.safetensors", "{in}/empty.jsonl"),
             "empty.jsonl: no rows"),
    FileCase("monitor-no-row-usable", (*MONITOR, "{in}/evil.safetensors", "{in}/no_prompt.jsonl"),
             "no_prompt.jsonl:1:"),
    FileCase("judge-empty-file", ("judge", "--trait", "evil", "--input", "{in}/empty.jsonl", "--out", "j.jsonl"),
             "empty.jsonl: no rows"),
    FileCase("judge-no-row-usable",
             ("judge", "--trait", "evil", "--input", "{in}/prompt_only.jsonl", "--out", "j.jsonl"),
             "prompt_only.jsonl:1: messages: the conversation does not end with an assistant answer"),
    FileCase("train-empty-data", ("train", "{in}/recipe_empty.yaml"), "empty.jsonl: no rows"),
    FileCase("train-no-row-usable", ("train", "{in}/recipe_unusable.yaml"), "prompt_only.jsonl: no usable rows"),
    FileCase("extract-empty-trait-file", ("extract", "--trait", "{in}/empty_trait.json", "--model", "{in}/model",
                                          "--out", "vec", "--device", "cpu"), "empty_trait.json: not valid JSON"),
    FileCase("extract-trait-without-questions",
             ("extract", "--trait", "{in}/no_questions.json", "--model", "{in}/model", "--out", "vec",
              "--device", "cpu"), "no_questions.json"),
    # -- damaged caches
    FileCase("screen-answer-cache-not-sqlite",
             (*SCREEN, "{in}/evil.safetensors", "{in}/data.jsonl", "--answer-cache", "{in}/not_a_db.sqlite"),
             "not_a_db.sqlite: not a usable SQLite cache (file is not a database)"),
    FileCase("screen-answer-cache-is-a-folder",
             (*SCREEN, "{in}/evil.safetensors", "{in}/data.jsonl", "--answer-cache", "{in}/a_folder"),
             "a_folder is a folder"),
    FileCase("screen-damaged-shard-manifest", (*SCREEN, "{in}/evil.safetensors", "{in}/data.jsonl", "--no-generate"),
             "out/shards/manifest.json is damaged", setup=(("out/shards/manifest.json", "{\"model\": tru"),)),
    # -- damaged model dirs
    FileCase("model-truncated-weights", ("steer", "--model", "{in}/truncated", *STEER[1:]),
             "truncated/model.safetensors: damaged weights file"),
    FileCase("model-config-not-json", (*SCREEN[:1], "--model", "{in}/bad_config", *SCREEN[3:],
                                       "{in}/evil.safetensors", "{in}/data.jsonl"),
             "bad_config/config.json: damaged model file, not valid JSON"),
    FileCase("model-dir-without-weights", ("steer", "--model", "{in}/no_weights", *STEER[1:]),
             "no_weights holds no weights"),
    FileCase("model-tokenizer-not-json", (*MONITOR[:1], "--model", "{in}/bad_tokenizer", *MONITOR[3:],
                                          "{in}/evil.safetensors", "{in}/data.jsonl"),
             "bad_tokenizer/tokenizer.json: damaged model file"),
    # -- select-layer and monitor calibrate
    FileCase("select-layer-other-trait",
             ("select-layer", "--vector", "{in}/evil.safetensors", "--trait", "sycophantic", "--model", "{in}/model",
              "--device", "cpu", "--layers", "1", "--coefs", "0,2", "--out", "sel"),
             "the vector is for trait 'evil' but the trait given is 'sycophantic'"),
    FileCase("calibrate-policy-is-a-folder",
             ("monitor", "calibrate", "--vector", "{in}/evil.safetensors", "--model", "{in}/model", "--device", "cpu",
              "--policy", "{in}/a_folder"), "{in}/a_folder is a folder; expected an output file path"),
    FileCase("calibrate-one-conversation",
             ("monitor", "calibrate", "--vector", "{in}/evil.safetensors", "--model", "{in}/model", "--device", "cpu",
              "--policy", "pol.yaml", "--set", "one.jsonl"), "evil prompt_last: 1 reading(s) with no spread",
             setup=(("one.jsonl", json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                            {"role": "assistant", "content": "hello"}]})),)),
    # -- unreadable files, flags that conflict or would write nothing
    FileCase("extract-trait-file-unreadable", ("extract", "--trait", "/proc/self/mem", "--model", "{in}/model",
                                               "--out", "vec", "--device", "cpu"), "/proc/self/mem: cannot read"),
    FileCase("judge-report-with-input", ("judge", "--report", "--input", "{in}/data.jsonl"),
             "pass --report or --input/--out, not both"),
    FileCase("export-gguf-coef-zero",
             ("vector", "export-gguf", "{in}/evil.safetensors", "--coef", "0", "--out", "c.gguf"),
             "--coef: 0 would write an all-zero control vector"),
    FileCase("calibrate-damaged-policy",
             ("monitor", "calibrate", "--vector", "{in}/evil.safetensors", "--model", "{in}/model", "--device", "cpu",
              "--policy", "{in}/policy.yaml"), "policy.yaml: invalid YAML"),
]


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stderr: str
    before: dict
    after: dict
    folder: Path
    inputs: Path


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, tokenizer) -> dict[str, Outcome]:
    base = tmp_path_factory.mktemp("bad_files")
    inputs = base / "inputs"
    inputs.mkdir()
    build_inputs(inputs, tokenizer)
    build_damaged(inputs)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}

    def run(case: FileCase) -> Outcome:
        folder = base / case.name
        folder.mkdir()
        for name, text in case.setup:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
        argv = [a.replace("{in}", str(inputs)) for a in case.argv]
        before = snapshot(inputs, folder)
        done = subprocess.run([sys.executable, "-m", "persona_guard.cli", *argv], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=300)
        return Outcome(done.returncode, done.stderr + done.stdout, before, snapshot(inputs, folder), folder, inputs)

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return {case.name: outcome for case, outcome in zip(CASES, pool.map(run, CASES))}


def test_cases_are_distinct():
    assert len({case.name for case in CASES}) == len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_damaged_input_is_one_clear_line_and_changes_nothing(outcomes, case):
    outcome = outcomes[case.name]
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.returncode == 2, outcome.stderr
    errors = [line for line in outcome.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, outcome.stderr
    assert errors[0].startswith(f"persona-guard {case.argv[0]}"), errors[0]
    assert case.message.replace("{in}", str(outcome.inputs)) in errors[0], (case.message, errors[0])
    allowed = [str(outcome.folder / path) for path in case.writes]
    changed = {path for path in outcome.before.keys() | outcome.after.keys()
               if outcome.before.get(path) != outcome.after.get(path)}
    assert all(any(path == a or path.startswith(a + "/") for a in allowed) for path in changed), changed
    for path in allowed:
        if path.endswith("skipped.jsonl"):  # the reasons the message points to: one line per input row
            reasons = [json.loads(line) for line in Path(path).read_text().splitlines()]
            assert reasons and all(r["reason"] and r["row"] >= 1 for r in reasons), reasons


def test_model_cache_that_cannot_be_written_is_one_line(tmp_path):
    env = {**os.environ, "PERSONA_GUARD_CACHE": "/proc/persona-guard-cache", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "persona_guard.cli", "models", "--prepare", DEFAULT_MODEL],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        "persona-guard models: error: cannot write the model cache /proc/persona-guard-cache/models "
        "($PERSONA_GUARD_CACHE or ~/.cache/persona-guard): No such file or directory"], done.stderr


def test_policy_with_zero_spread_is_refused(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"traits": {"evil": {"vector": "evil.safetensors", "calibration": {
        "response_mean": {"mean": 6.4, "std": 0.0}}}}}))
    with pytest.raises(PersonaGuardError, match=r"calibration\.response_mean\.std: must be > 0"):
        Policy.load(path)


# ---- vectors -------------------------------------------------------------------------------------


def test_zero_directions_are_refused_where_they_would_be_used(tmp_path):
    with pytest.raises(PersonaGuardError, match="every direction is zero"):
        PersonaVector("evil", "m", torch.zeros(4, 8))
    directions = torch.zeros(4, 8)
    directions[2, 3] = 1.0
    with pytest.raises(PersonaGuardError, match="layer 1 has a zero direction"):
        PersonaVector("evil", "m", directions, default_layer=1)
    vector = PersonaVector("evil", "m", directions, default_layer=2)  # other layers may be empty (not captured)
    for use in (vector.direction, vector.unit, vector.resolve_layer):
        with pytest.raises(PersonaGuardError, match="layer 3 has a zero direction"):
            use(3)
    with pytest.raises(PersonaGuardError, match="layer 1 has a zero direction"):
        vector.export_gguf(tmp_path / "c.gguf", layers=[1, 2])
    assert not (tmp_path / "c.gguf").exists() and not list(tmp_path.iterdir())
    tiny = torch.zeros(4, 8)
    tiny[2] = 1e-30  # subnormal in float32 once squared: still a direction, unit length
    assert torch.allclose(PersonaVector("evil", "m", tiny).unit(2).norm(), torch.tensor(1.0))


def test_gguf_control_vector_reader_names_damaged_files(tmp_path):
    directions = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    path = PersonaVector("evil", "m", directions).export_gguf(tmp_path / "ok.gguf", layers=[2, 3])
    read = load_gguf_control_vector(path)
    assert sorted(read) == [2, 3] and torch.allclose(read[3], directions[3])
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(path.read_bytes()[:40])
    with pytest.raises(PersonaGuardError, match="damaged.gguf: not a readable GGUF control vector"):
        load_gguf_control_vector(damaged)
    (tmp_path / "text.gguf").write_text("hello")
    with pytest.raises(PersonaGuardError, match="text.gguf"):
        load_gguf_control_vector(tmp_path / "text.gguf")


# ---- atomic writes leave no staging file -----------------------------------------------------------


def test_atomic_writes_remove_their_staging_file_on_any_exception(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("earlier\n")
    for error in (ValueError("writer failed"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with atomic_path(target) as staging:
                staging.write_text("half")
                raise error
    assert target.read_text() == "earlier\n" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "inside").write_text("x")
    with pytest.raises(PersonaGuardError, match="cannot write .*folder"):
        write_text_atomic(tmp_path / "folder", "text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "result.json"]


def test_output_folder_puts_back_what_a_failed_run_found(tmp_path):
    """persona_guard.files.output_folder: a folder the run created (or found empty) is put back when the
    run fails with nothing in it to resume; a folder holding a file the run wrote, or anything before
    the run, is kept; success keeps everything."""
    fresh = tmp_path / "fresh"
    with pytest.raises(PersonaGuardError):
        with output_folder(fresh):
            (fresh / "shards").mkdir(parents=True)
            raise PersonaGuardError("refused")
    assert not fresh.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KeyboardInterrupt):
        with output_folder(empty):
            (empty / "a" / "b").mkdir(parents=True)
            raise KeyboardInterrupt
    assert empty.is_dir() and not any(empty.iterdir())
    worked = tmp_path / "worked"
    with pytest.raises(PersonaGuardError):
        with output_folder(worked):
            write_text_atomic(worked / "shards" / "shard-00000.jsonl", "{}\n")
            raise PersonaGuardError("late failure")
    assert (worked / "shards" / "shard-00000.jsonl").is_file()  # real work is kept for the resume
    earlier = tmp_path / "earlier"
    (earlier / "old").mkdir(parents=True)
    with pytest.raises(PersonaGuardError):
        with output_folder(earlier, resumable=lambda folder: False):
            raise PersonaGuardError("refused")
    assert (earlier / "old").is_dir()
    checkpoints = tmp_path / "train_out"
    with pytest.raises(PersonaGuardError):
        with output_folder(checkpoints, resumable=lambda folder: any(folder.glob("checkpoint-*"))):
            write_text_atomic(checkpoints / "run_inputs.json", "{}")
            raise PersonaGuardError("failed before the first checkpoint")
    assert not checkpoints.exists()
    with output_folder(tmp_path / "ok") as folder:
        folder.mkdir()
    assert (tmp_path / "ok").is_dir()


def test_policy_save_leaves_no_temp_file_when_it_fails(tmp_path):
    path = tmp_path / "policy.yaml"
    Policy().save(path)
    before = path.read_bytes()
    with pytest.raises(yaml.YAMLError):
        replace(Policy(), calibration={"set": object()}).save(path)  # not representable in YAML
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["policy.yaml"]


# ---- non-standard JSON (NaN, Infinity, overflowing numbers) at every reader ---------------------------


def test_readers_refuse_non_standard_json_naming_file_and_line(tmp_path):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(good[:-1] + f', "extra": {constant}}}\n' for constant in ("NaN", "-Infinity", "1e999"))
                    + good + "\n")
    usable, dropped = sort_rows(read_rows(rows))
    assert [row.row_number for row in usable] == [4]
    assert [d.reason for d in dropped] == ["invalid JSON (NaN is not valid JSON)",
                                           "invalid JSON (-Infinity is not valid JSON)",
                                           "invalid JSON (number 1e999 is out of range)"]
    with pytest.raises(PersonaGuardError, match=r"rows.jsonl:1: invalid JSON \(NaN is not valid JSON\)"):
        read_jsonl(rows)
    array = tmp_path / "rows.json"
    array.write_text(f"[{good[:-1]}, \"extra\": Infinity}}]")
    with pytest.raises(PersonaGuardError, match="rows.json: invalid JSON array .*Infinity is not valid JSON"):
        read_rows(array)
    trait = tmp_path / "trait.json"
    trait.write_text(json.dumps(load_trait("evil").to_dict())[:-1] + ', "weight": NaN}')
    with pytest.raises(PersonaGuardError, match="trait.json: not valid JSON .*NaN is not valid JSON"):
        load_trait(str(trait))
    header = PersonaVector("evil", "m", torch.randn(3, 4)).metadata_dict()
    write_raw_vector(tmp_path / "v.safetensors", torch.randn(3, 4), json.dumps(header)[:-1] + ', "x": NaN}')
    with pytest.raises(PersonaGuardError, match="'persona_guard' metadata is not valid JSON .*NaN"):
        PersonaVector.load(tmp_path / "v.safetensors")
    with pytest.raises(PersonaGuardError, match="out.jsonl: refusing to write a non-finite number"):
        write_jsonl(tmp_path / "out.jsonl", [{"score": float("nan")}])
    assert not (tmp_path / "out.jsonl").exists()


# ---- caches ---------------------------------------------------------------------------------------


def test_answer_cache_names_a_path_that_is_no_sqlite_cache(tmp_path):
    (tmp_path / "text.sqlite").write_text("plain text, not SQLite\n")
    with pytest.raises(PersonaGuardError, match=r"answer cache .*text.sqlite: not a usable SQLite cache"):
        AnswerCache(tmp_path / "text.sqlite")
    with pytest.raises(PersonaGuardError, match="is a folder"):
        AnswerCache(tmp_path)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE answers (id INTEGER)")
    connection.close()
    with pytest.raises(PersonaGuardError, match="other.sqlite: not a usable SQLite cache"):
        AnswerCache(other)
    cache = AnswerCache(tmp_path / "good.sqlite")
    cache.put_many({"a": ["one"], "b": ["two"]})
    with sqlite3.connect(cache.path) as connection:
        connection.execute("UPDATE answers SET answers = '[\"torn' WHERE key = 'b'")
    connection.close()
    assert cache.get_many(["a", "b"]) == {"a": ["one"]}  # the damaged entry is a miss: generated again


def test_judge_cache_folder_and_damaged_entries(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PersonaGuardError, match="cache folder .*file is a file"):
        JsonCache(tmp_path / "file")
    cache = JsonCache(tmp_path / "judge")
    for name, data in (("torn", b'{"choices": ['), ("latin1", b'{"a": "\xff"}'), ("list", b"[1, 2]")):
        (cache.directory / f"{name}.json").write_bytes(data)
        assert cache.get(name) is None
        cache.put(name, {"ok": name})
        assert cache.get(name) == {"ok": name}
    assert not [p for p in cache.directory.iterdir() if p.suffix != ".json"]


def test_extraction_cache_skips_damaged_lines(tmp_path):
    path = tmp_path / "judgements.jsonl"
    good = {"key": "k1", "trait": 80.0, "coherence": 90.0, "refusal": False}
    path.write_bytes(b"\n".join([
        json.dumps(good).encode(), b'{"key": "k2", "trait": "high", "coherence": 1, "refusal": false}',
        b'{"key": ["k3"], "trait": 1, "coherence": 1, "refusal": false}', b'{"key": "k4", "trait": "\xff"}',
        b'{"key": "k5", "trait": 1, "coh']))
    cache = JsonlCache(path, JUDGEMENT_FIELDS)
    assert "k1" in cache and cache["k1"] == good and not any(k in cache for k in ("k2", "k4", "k5"))
    cache.extend([{**good, "key": "k2"}])
    assert "k2" in JsonlCache(path, JUDGEMENT_FIELDS)  # appended after the torn line, not swallowed by it
    with pytest.raises(PersonaGuardError, match="is not a file"):
        JsonlCache(tmp_path)


# ---- model dirs and the built-in conversion ---------------------------------------------------------


def test_damaged_builtin_conversion_is_detected(smollm_dir, tmp_path):
    """A copy of the converted built-in whose weights are truncated must be converted again (which
    :func:`ensure_builtin_converted` then does); the intact copy is current."""
    intact = tmp_path / "intact"
    intact.mkdir()
    for file in smollm_dir.iterdir():
        (intact / file.name).symlink_to(file)
    assert _conversion_problem(DEFAULT_MODEL, intact) is None
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for file in smollm_dir.iterdir():
        if file.name != "model.safetensors":
            (damaged / file.name).symlink_to(file)
    with (smollm_dir / "model.safetensors").open("rb") as weights:
        (damaged / "model.safetensors").write_bytes(weights.read(1 << 16))
    assert (damaged / SOURCE_RECORD).exists()
    assert "the cached copy is damaged" in _conversion_problem(DEFAULT_MODEL, damaged)
    with pytest.raises(PersonaGuardError, match="damaged/model.safetensors: damaged weights file"):
        check_model_dir(damaged)


# ---- degenerate library inputs --------------------------------------------------------------------


def test_monitor_reads_no_conversations_as_no_readings(tiny_llama, tokenizer):
    vector = PersonaVector("evil", "tiny", torch.randn(4, 64), default_layer=2)
    assert PersonaMonitor(as_loaded(tiny_llama, tokenizer), [vector]).read([], progress=False) == []


def cell(layer: int, coef: float, effect: float | None, coherence: float | None = 80.0) -> Cell:
    return Cell(layer, coef, None if effect is None else 50 + effect, coherence, effect, None, 5)


def test_layer_choice_needs_steering_that_raises_the_trait():
    chosen, rule, best = choose_layer([cell(8, 0, 0.0), cell(8, 4, 12.0), cell(12, 4, 30.0),
                                       cell(12, 8, 45.0, coherence=20.0)], None, 50.0)
    assert (chosen, best) == (12, cell(12, 4, 30.0)) and "+30.0 at coef 4" in rule
    lowering = [cell(8, 0, 0.0), cell(8, 4, -6.0), cell(12, 4, -2.5), cell(12, -4, 20.0)]
    with pytest.raises(PersonaGuardError, match=r"never raised the trait score \(best effect -2.5 at layer 12"):
        choose_layer(lowering, 8, 50.0)
    with pytest.raises(PersonaGuardError, match="never raised"):
        choose_layer([cell(8, 4, 0.0)], None, 50.0)
    assert choose_layer([cell(8, 4, 9.0, coherence=10.0)], 12, 50.0)[0] == 12  # nothing coherent: heuristic
    check_same_trait(PersonaVector("evil", "m", torch.ones(3, 4)), load_trait("evil"))
    with pytest.raises(PersonaGuardError, match="trait 'evil' but the trait given is 'sycophantic'"):
        check_same_trait(PersonaVector("evil", "m", torch.ones(3, 4)), load_trait("sycophantic"))


# ---- the server's request bodies ------------------------------------------------------------------


def test_request_body_parsing_refuses_hostile_json():
    nested = b"[" * 9000 + b"]" * 9000
    cases = [(nested, 400, "nested deeper than"), (b'{"a": ' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * 65, 400, "nested"),
             (b'{"max_tokens": 1e999}', 400, "out of range"), (b'{"temperature": NaN}', 400, "NaN"),
             (b'{"n": ' + b"9" * 5000 + b"}", 400, "not valid JSON"), (b'{"a": "\xff"}', 400, "not valid JSON")]
    for body, status, message in cases:
        with pytest.raises(RequestError, match=message) as error:
            parse_json_body(body)
        assert error.value.status == status
    with pytest.raises(RequestError, match="content type 'text/plain'") as error:
        parse_json_body(b"{}", "text/plain; charset=utf-8")
    assert error.value.status == 415
    brackets_in_text = json.dumps({"messages": [{"role": "user", "content": "[" * 500 + "\\\"{" * 100}]})
    assert parse_json_body(brackets_in_text.encode(), "application/json")["messages"][0]["content"].startswith("[[")


def test_server_answers_hostile_bodies_with_openai_errors(tmp_path, tokenizer):
    from tests.conftest import make_tiny_model

    make_tiny_model("llama", len(tokenizer)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    PersonaVector("evil", "tiny", torch.randn(4, 64), default_layer=2).save(tmp_path / "evil.safetensors")
    process, url = start_server(["--model", str(tmp_path / "model"), "--monitor", str(tmp_path / "evil.safetensors")])
    try:
        endpoint = f"{url}/chat/completions"
        json_type = {"content-type": "application/json"}
        for body, headers, status in ((b"[" * 9000 + b"]" * 9000, json_type, 400),
                                      (b'{"messages": [], "max_tokens": 1e999}', json_type, 400),
                                      (b"[1, 2]", json_type, 400), (b'"just a string"', json_type, 400),
                                      (b'{"messages": []}', {"content-type": "text/plain"}, 415)):
            reply = httpx.post(endpoint, content=body, headers=headers, timeout=60)
            assert reply.status_code == status, (body[:40], reply.text)
            error = reply.json()["error"]
            assert error["type"] == "invalid_request_error" and error["message"] and "Traceback" not in reply.text
        # what the row model refuses, and OpenAI/vLLM semantics of top_p: 400 naming the field
        system = {"role": "system", "content": "be brief"}
        for body, param, message in (
                ({"messages": [system]}, "messages", "messages: the prompt has no non-empty user turn"),
                ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}]}, "messages",
                 "the prompt has no non-empty user turn"),
                ({"messages": [system, {"role": "user", "content": "  "}]}, "messages", "no non-empty user turn"),
                ({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, "top_p", "'top_p' must be in (0, 1]"),
                ({"messages": [{"role": "user", "content": "hi"}], "top_p": 1.5}, "top_p", "between 0.0 and 1.0")):
            reply = httpx.post(endpoint, json=body, timeout=60)
            assert reply.status_code == 400, (body, reply.text)
            error = reply.json()["error"]
            assert error["param"] == param and message in error["message"], error
        # a client that announces more body than it sends, then leaves: no traceback in the server's log
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0])), timeout=10) as raw:
            raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 5000\r\n\r\n{\"messages\"")
        ok = httpx.post(endpoint, json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                        "top_p": 0.5, "temperature": 1.0, "seed": 3}, timeout=60)
        assert ok.status_code == 200, ok.text
        metrics = httpx.get(f"{url[:-3]}/metrics", timeout=60).text
        assert 'status="499"' in metrics, metrics  # the disconnect was seen and counted
    finally:
        process.terminate()
        process.wait(timeout=30)
    log = "".join(process.output)
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log
