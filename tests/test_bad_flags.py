"""Bad command-line values, each refused when the flags are parsed: a real ``persona-guard`` subprocess
per case, exit status 2, one ``error:`` line naming the flag, no traceback, nothing created or changed.

Most flags come from the library's dataclasses (:mod:`persona_guard.schema`: type, default, range, help);
the rest are typed by :func:`persona_guard.schema.flag_type` or a small checker (device, URL, trait name).
Output paths are checked in preflight: a folder where a file is expected, or a place nothing can be written
(``/proc``), fails before any model is loaded. The runner and the shared inputs are test_bad_input's.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.test_bad_input import MONITOR, REPO, SCREEN, STEER, Case, build_inputs, check_outcome, run_cases

VECTOR = "{in}/evil.safetensors"
EXTRACT = ("extract", "--trait", "evil", "--model", "{in}/model", "--out", "vec")
EVAL = ("eval", "--trait", "evil", "--model", "{in}/model", "--out", "ev")
SERVE = ("serve", "--model", "{in}/model", "--monitor", VECTOR)
SELECT = ("select-layer", "--vector", VECTOR, "--model", "{in}/model", "--out", "sel")
CALIBRATE = ("monitor", "calibrate", "--model", "{in}/model", "--vector", VECTOR)
GENERATE = ("traits", "generate", "--description", "d", "--local-model", "{in}/model")
A_FOLDER = (("a_folder/keep", "x"),)  # an existing, non-empty folder where a file is expected

CASES = [
    # -- model options: checked up front, not a traceback from torch
    Case("steer-dtype-unknown", (*STEER, "--vector", VECTOR, "--dtype", "float99"),
         "argument --dtype: invalid choice: 'float99'"),
    Case("steer-device-absent", (*STEER[:-1], "cuda:7", "--vector", VECTOR),
         "argument --device: 'cuda:7' is not available here"),
    Case("extract-device-not-a-device", (*EXTRACT, "--device", "gpu0"),
         "argument --device: 'gpu0' is not a device"),
    Case("screen-dtype-unknown", (*SCREEN, "--vector", VECTOR, "--dtype", "fp8"), "argument --dtype: invalid choice"),
    # -- a name that matches no vector is refused, not ignored
    Case("monitor-threshold-unknown-trait", (*MONITOR, VECTOR, "--threshold", "nosuch:prompt_last=1"),
         "--threshold names trait(s) nosuch but the vectors are evil"),
    Case("screen-layer-unknown-trait", (*SCREEN, "--vector", VECTOR, "--layer", "nosuch=2"),
         "--layer 'nosuch=2': no vector for trait 'nosuch'"),
    Case("screen-layer-negative", (*SCREEN, "--vector", VECTOR, "--layer", "-3"),
         "--layer '-3': a layer is a hidden_states index >= 0"),
    # -- ranges from the library's dataclasses
    Case("steer-temperature-negative", (*STEER, "--vector", VECTOR, "--temperature=-1"),
         "argument --temperature: must be >= 0, got -1.0"),
    Case("steer-max-new-tokens-zero", (*STEER, "--vector", VECTOR, "--max-new-tokens", "0"),
         "argument --max-new-tokens: must be >= 1, got 0"),
    Case("steer-coef-huge", (*STEER, "--vector", VECTOR, "--coef", "1e30"),
         "argument --coef: must be <= 1000, got 1e+30"),
    Case("steer-layer-negative", (*STEER, "--vector", VECTOR, "--layer", "-1"), "argument --layer: must be >= 0"),
    Case("extract-batch-size-zero", (*EXTRACT, "--batch-size", "0"), "argument --batch-size: must be >= 1, got 0"),
    Case("extract-min-pairs-negative", (*EXTRACT, "--min-pairs", "-1"), "argument --min-pairs: must be >= 1, got -1"),
    Case("extract-pos-threshold-over-100", (*EXTRACT, "--pos-threshold", "500"),
         "argument --pos-threshold: must be <= 100, got 500.0"),
    Case("extract-questions-zero", (*EXTRACT, "--questions", "0"), "argument --questions: must be >= 1, got 0"),
    Case("extract-aggregator-unknown", (*EXTRACT, "--aggregator", "median"), "argument --aggregator: invalid choice"),
    Case("eval-samples-zero", (*EVAL, "--samples", "0"), "argument --samples: must be >= 1, got 0"),
    Case("eval-max-questions-zero", (*EVAL, "--max-questions", "0"), "argument --max-questions: must be >= 1"),
    Case("eval-arm-coef-huge", ("eval", "--trait", "evil", "--arm", "a={in}/model@5000"),
         "arm 'a={in}/model@5000': steer_coef: must be <= 1000"),
    Case("select-layer-questions-zero", (*SELECT, "--questions", "0"), "argument --questions: must be >= 1, got 0"),
    Case("select-layer-layers-negative", (*SELECT, "--layers", "1,-2"), "argument --layers: must be >= 0, got -2"),
    Case("select-layer-coefs-all-zero", (*SELECT, "--coefs", "0,0"),
         "--coefs: must include a positive steering coefficient"),
    Case("screen-several-greedy-base-answers", (*SCREEN, "--vector", VECTOR, "--n-answers", "2"),
         "--temperature: several base answers per prompt need sampling"),
    Case("monitor-batch-size-zero", (*MONITOR, VECTOR, "--batch-size", "0"), "argument --batch-size: must be >= 1"),
    Case("calibrate-percentile-over-100", (*CALIBRATE, "--policy", "p.yaml", "--percentile", "101"),
         "argument --percentile: must be <= 100, got 101.0"),
    Case("serve-port-negative", (*SERVE, "--port", "-1"), "argument --port: must be >= 0, got -1"),
    Case("serve-port-too-large", (*SERVE, "--port", "70000"), "argument --port: must be <= 65535, got 70000"),
    Case("serve-body-cap-negative", (*SERVE, "--max-body-bytes", "-5"), "argument --max-body-bytes: must be >= 1"),
    Case("serve-max-tokens-cap-negative", (*SERVE, "--max-tokens-cap=-1"), "argument --max-tokens-cap: must be >= 1"),
    Case("serve-batch-window-negative", (*SERVE, "--batch-window-ms=-10"),
         "argument --batch-window-ms: must be >= 0, got -10.0"),
    Case("serve-webhook-not-a-url", (*SERVE, "--webhook", "hooks.example"),
         "argument --webhook: 'hooks.example' is not an http(s) URL"),
    Case("demo-learning-rate-negative", ("demo", "--quick", "--out", "demo", "--learning-rate=-1"),
         "argument --learning-rate: must be > 0, got -1.0"),
    Case("demo-train-rows-zero", ("demo", "--quick", "--out", "demo", "--train-rows", "0"),
         "argument --train-rows: must be >= 1, got 0"),
    Case("traits-generate-attempts-zero", (*GENERATE, "--name", "x", "--attempts", "0"),
         "argument --attempts: must be >= 1, got 0"),
    Case("traits-generate-name-a-path", (*GENERATE, "--name", "../x"), "argument --name: '../x' is not a trait name"),
    Case("vector-import-layer-negative", ("vector", "import", "{in}/evil.pt", "--out", "v.safetensors", "--layer=-1"),
         "argument --layer: must be >= 0, got -1"),
    # -- argv that is not UTF-8 (kept by Python as surrogate escapes)
    Case("steer-prompt-invalid-utf8", (*STEER[:4], os.fsdecode(b"caf\xe9"), *STEER[5:], "--vector", VECTOR),
         "argument --prompt: 'caf\\udce9' is not valid UTF-8 text"),
    Case("judge-trait-invalid-utf8", ("judge", "--trait=" + os.fsdecode(b"\xff"), "--input", "{in}/data.jsonl"),
         "argument --trait: '--trait=\\udcff' is not valid UTF-8 text"),
    # -- output paths, checked in preflight: a folder where a file goes, a place nothing can be written
    Case("monitor-out-is-a-folder", (*MONITOR, VECTOR, "--out", "a_folder"),
         "a_folder is a folder; expected an output file path", setup=A_FOLDER),
    Case("export-gguf-out-is-a-folder", ("vector", "export-gguf", VECTOR, "--out", "a_folder"),
         "a_folder is a folder; expected an output file path", setup=A_FOLDER),
    Case("calibrate-policy-is-a-folder", (*CALIBRATE, "--policy", "a_folder"),
         "a_folder is a folder; expected an output file path", setup=A_FOLDER),
    Case("judge-out-is-a-folder", ("judge", "--trait", "evil", "--input", "{in}/data.jsonl", "--out", "a_folder"),
         "a_folder is a folder; expected an output file path", setup=A_FOLDER),
    Case("import-reference-out-is-a-folder",
         ("traits", "import-reference", "{in}/paper_extract.json", "{in}/paper_eval.json", "--out", "a_folder"),
         "a_folder is a folder; expected an output file path", setup=A_FOLDER),
    Case("serve-audit-log-is-a-folder", (*SERVE, "--audit-log", "a_folder"),
         "a_folder is a folder; expected an output file path", setup=A_FOLDER),
    Case("screen-export-prompts-is-a-folder", (*SCREEN, "--vector", VECTOR, "--export-prompts", "a_folder"),
         "a_folder is a folder; expected an output file path", setup=A_FOLDER),
    Case("monitor-out-under-proc", (*MONITOR, VECTOR, "--out", "/proc/x.jsonl"),
         "cannot write under /proc: /proc is not writable"),
    Case("demo-out-under-proc", ("demo", "--quick", "--out", "/proc/demo"),
         "cannot write under /proc/demo: /proc is not writable"),
    Case("monitor-policy-without-calibrate", (*MONITOR, VECTOR, "--policy", "p.yaml"),
         "--policy and --set are for 'monitor calibrate'"),
    # -- found by the second fresh sweep
    Case("models-prepare-unknown", ("models", "--prepare", "nosuch"), "argument --prepare: invalid choice: 'nosuch'"),
    Case("steer-prompt-blank", (*STEER[:4], " ", *STEER[5:], "--vector", VECTOR), "argument --prompt: is empty"),
    Case("extract-exemplars-fewer-than-min-pairs", (*EXTRACT, "--source", "exemplars", "--min-pairs", "1000"),
         "exemplar pairs on extraction questions, fewer than --min-pairs 1000"),
    Case("serve-api-key-env-unset", (*SERVE, "--api-key-env", "PG_NO_SUCH_KEY"),
         "--api-key-env PG_NO_SUCH_KEY: the variable is unset or empty", env=(("PG_NO_SUCH_KEY", None),)),
    Case("eval-vector-of-another-trait", ("eval", "--trait", "sycophantic", "--model", "{in}/model", "--out", "ev",
                                          "--vector", VECTOR),
         "the vector is for trait 'evil' but the trait given is 'sycophantic'"),
    Case("train-peft-target-unknown", ("train", "{in}/recipe.yaml", "--peft.target_modules=[nope_proj]"),
         "peft.target_modules: nope_proj not found in LlamaForCausalLM"),
    # -- found by the last fresh sweep
    Case("screen-top-k-zero-without-judge", (*SCREEN, "--vector", VECTOR, "--no-generate", "--top-k", "0"),
         "--top-k: must be >= 1, got 0 (0 flags no row by dP: only for judge-only flagging"),
    Case("screen-top-k-zero-with-judge-and", (*SCREEN, "--vector", VECTOR, "--no-generate", "--top-k", "0",
                                              "--judge", "offline"),
         "--top-k: must be >= 1, got 0"),
    Case("traits-generate-description-empty",
         ("traits", "generate", "--name", "x", "--description", "", "--base-url", "http://127.0.0.1:{port}/v1",
          "--model", "m"), "argument --description: is empty"),
    Case("traits-generate-description-blank", (*GENERATE[:3], "  ", *GENERATE[4:]), "argument --description: is empty"),
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, tokenizer):
    return run_cases(tmp_path_factory.mktemp("bad_flags"), tokenizer, CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_flag_is_one_line_naming_it_and_changes_nothing(outcomes, case):
    if case.name == "steer-device-absent" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    check_outcome(outcomes[case.name])


def test_closed_output_pipe_ends_quietly(tmp_path, tokenizer):
    """``persona-guard vector show X | head -1``: the reader is gone before the first write; the command
    stops like a Unix tool (status 141, the shell's for SIGPIPE), without a BrokenPipeError traceback."""
    build_inputs(tmp_path, tokenizer)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader already went away
    try:
        done = subprocess.run(
            [sys.executable, "-c", "import sys\nfrom persona_guard.cli import main\nsys.exit(main(sys.argv[1:]))",
             "vector", "show", str(tmp_path / "evil.safetensors")],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        os.close(write_end)
    assert done.stderr == "" and done.returncode == 141, (done.returncode, done.stderr)
