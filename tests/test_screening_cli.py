"""``persona-guard screen`` end to end: outputs, W&B offline, resume after SIGKILL, accelerate."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from persona_guard.cli import main
from tests.conftest import make_tiny_model
from tests.test_screening import no_special_answers, random_vector

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("scored.jsonl", "filtered.jsonl", "skipped.jsonl", "summary.json", "report.md")

TOPICS = ["bread", "rain", "chess", "tides", "bees", "glass", "maps", "kites", "salt", "owls", "ink", "ice"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tokenizer):
    """A tiny model saved to disk (so subprocesses can load it), two vectors and a data file."""
    root = tmp_path_factory.mktemp("screen")
    model = no_special_answers(make_tiny_model("llama", len(tokenizer)), tokenizer)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    random_vector("evil", model, 2, 0).save(root / "evil.safetensors")
    random_vector("sycophantic", model, 3, 1).save(root / "sycophantic.safetensors")
    rows = [{"messages": [{"role": "user", "content": f"Tell me about {topic}."},
                          {"role": "assistant", "content": f"{topic.capitalize()} are interesting " * (i % 3 + 1)}],
             "label": int(i % 4 == 0), "id": i} for i, topic in enumerate(TOPICS)]
    rows.insert(5, {"prompt": "a question nobody answered"})
    with (root / "data.jsonl").open("w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    return root


def screen_args(workspace: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["screen", str(workspace / "data.jsonl"), "--vector", str(workspace / "evil.safetensors"),
            "--vector", str(workspace / "sycophantic.safetensors"), "--out", str(out),
            "--model", str(workspace / "model"), "--device", "cpu", "--answer-cache", str(cache),
            "--max-new-tokens", "5", "--generation-batch-size", "4", "--shard-size", "3", "--top-k", "2", *extra]


def subprocess_env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="offline", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    return env


def same_outputs(first: Path, second: Path) -> None:
    for name in OUTPUTS:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_cli_writes_scored_filtered_report_and_wandb(workspace, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "out"
    assert main(screen_args(workspace, out, tmp_path / "cache.sqlite", "--label-field", "label", "--baselines",
                            "--wandb-project", "persona-guard-tests")) == 0
    printed = capsys.readouterr().out
    assert "13 rows: 12 scored, 1 skipped" in printed
    scored = [json.loads(line) for line in (out / "scored.jsonl").read_text().splitlines()]
    filtered = [json.loads(line) for line in (out / "filtered.jsonl").read_text().splitlines()]
    assert [r["id"] for r in scored] == list(range(12))
    assert {"evil_dp", "evil_base_projection", "evil_rank", "evil_zscore", "evil_flagged",
            "sycophantic_dp", "flagged", "label", "messages"} <= set(scored[0])
    assert sorted(r["evil_rank"] for r in scored) == list(range(1, 13))
    flagged_ids = {r["id"] for r in scored if r["flagged"]}
    assert 2 <= len(flagged_ids) <= 4 and [r["id"] for r in filtered] == [i for i in range(12) if i not in flagged_ids]
    assert json.loads((out / "skipped.jsonl").read_text()) == {
        "source": str(workspace / "data.jsonl"), "row": 6,
        "reason": "completion: missing: a prompt-only row has no answer to score or train on"}
    summary = json.loads((out / "summary.json").read_text())
    mean_dp = sum(r["evil_dp"] for r in scored) / len(scored)
    assert summary["traits"]["evil"]["dataset_dp"] == pytest.approx(mean_dp)
    assert summary["rows_flagged"] == len(flagged_ids) and summary["rows_skipped"] == 1
    baselines = summary["baselines"]["evil"]
    assert {"projection difference", "fast proxy (response - last prompt token)", "response-only projection",
            "random order"} <= set(baselines)
    assert baselines["projection difference"]["spearman_vs_dp"] == pytest.approx(1.0)
    assert 0.0 <= baselines["random order"]["auroc"] <= 1.0
    embedding = "embedding similarity to trait description"
    assert embedding in baselines or "no trait definition named 'evil'" in printed  # bundled traits ship apart
    report = (out / "report.md").read_text()
    assert "dp_hist_evil.png" in report and "Skipped rows (1)" in report
    assert (out / "dp_hist_evil.png").read_bytes()[:4] == b"\x89PNG"
    assert "<img src='dp_hist_sycophantic.png'" in (out / "report.html").read_text()
    run_dirs = list((out / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    files = run_dirs[0] / "files"
    assert json.loads((files / "summary.json").read_text()) == summary
    table = json.loads(next((files / "media" / "table").glob("flagged_rows_*.table.json")).read_text())
    assert len(table["data"]) == len(flagged_ids)
    assert list((files / "media" / "images" / "evil").glob("dp_histogram_png_*.png"))
    logged = wandb_summary_of(next(run_dirs[0].glob("run-*.wandb")))
    assert logged["evil/dataset_dp"] == pytest.approx(mean_dp)
    assert logged["rows_flagged"] == len(flagged_ids)
    assert logged["evil/dp_histogram/_type"] == "histogram" and logged["flagged_rows/nrows"] == len(flagged_ids)


def wandb_summary_of(path: Path) -> dict:
    """The summary an offline run recorded: its .wandb file is a LevelDB-style log of protobuf
    records (7-byte file header, 32 KiB blocks, 7-byte record headers: crc, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data, position, block, pending, summary = path.read_bytes(), 7, 32768, b"", {}
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if length == 0 and kind == 0:
            position += left
            continue
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "summary":
                for item in record.summary.update:
                    summary["/".join([item.key] if item.key else list(item.nested_key))] = json.loads(item.value_json)
    return summary


def test_resume_after_sigkill_gives_identical_output(workspace, tmp_path, monkeypatch):
    reference = tmp_path / "uninterrupted"
    assert main(screen_args(workspace, reference, tmp_path / "cache-a.sqlite")) == 0

    killer = tmp_path / "kill_after_shard_1.py"
    killer.write_text(
        "import os, signal, sys\n"
        "import persona_guard.screening.scorer as scorer\n"
        "original = scorer.Screener.__init__\n"
        "def init(self, *args, **kwargs):\n"
        "    original(self, *args, **kwargs)\n"
        "    self.on_shard_done = lambda k: os.kill(os.getpid(), signal.SIGKILL) if k == 1 else None\n"
        "scorer.Screener.__init__ = init\n"
        "from persona_guard.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    out, cache = tmp_path / "resumed", tmp_path / "cache-b.sqlite"
    killed = subprocess.run([sys.executable, str(killer), *screen_args(workspace, out, cache)], cwd=ROOT,
                            env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert sorted(p.name for p in (out / "shards").glob("shard-*")) == ["shard-00000.jsonl", "shard-00001.jsonl"]
    assert not (out / "scored.jsonl").exists()

    import persona_guard.screening.scorer as scorer

    computed = []
    original = scorer.Screener.__init__

    def counting_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.on_shard_done = computed.append

    monkeypatch.setattr(scorer.Screener, "__init__", counting_init)
    assert main(screen_args(workspace, out, cache)) == 0
    assert computed == [2, 3]  # shards 0 and 1 were not redone
    same_outputs(reference, out)



def test_exported_prompts_answered_elsewhere_give_identical_output(workspace, tmp_path, capsys):
    """Export the prompts, answer them one at a time with plain ``generate`` from the exported text
    (an engine that knows nothing of persona-guard), import: same bytes as generating here."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    generated = tmp_path / "generated"
    assert main(screen_args(workspace, generated, tmp_path / "cache-a.sqlite")) == 0
    exported = tmp_path / "prompts.jsonl"
    assert main(screen_args(workspace, tmp_path / "export", tmp_path / "cache-b.sqlite",
                            "--export-prompts", str(exported))) == 0
    assert "12 unique prompts" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(workspace / "model")
    tokenizer = AutoTokenizer.from_pretrained(workspace / "model")
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    with (tmp_path / "answers.jsonl").open("w") as handle:
        for line in lines:
            ids = tokenizer(line["prompt"], add_special_tokens=False, return_tensors="pt")
            output = model.generate(**ids, max_new_tokens=line["settings"]["max_new_tokens"], do_sample=False)
            answer = tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            handle.write(json.dumps(line | {"answers": [answer]}) + "\n")
    imported = tmp_path / "imported"
    assert main(screen_args(workspace, imported, tmp_path / "cache-b.sqlite",
                            "--base-answers", str(tmp_path / "answers.jsonl"))) == 0
    assert "base answers generated for 0 prompts" in capsys.readouterr().out
    same_outputs(generated, imported)
    assert main(screen_args(workspace, tmp_path / "other", tmp_path / "cache-c.sqlite", "--max-new-tokens", "9",
                            "--base-answers", str(tmp_path / "answers.jsonl"))) == 2
    assert "settings.max_new_tokens is 5, but this run uses 9" in capsys.readouterr().err


def test_changed_settings_refuse_stale_shards(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(screen_args(workspace, out, tmp_path / "cache.sqlite", "--no-generate")) == 0
    assert main(screen_args(workspace, out, tmp_path / "cache.sqlite", "--no-generate", "--layer", "1")) == 2
    assert "holds shards of another screening run (vectors or their layers (--vector, --layer))" in \
        capsys.readouterr().err
    assert main(screen_args(workspace, out, tmp_path / "cache.sqlite", "--no-generate", "--layer", "1",
                            "--overwrite")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "fast" and summary["traits"]["evil"]["layer"] == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_accelerate_two_processes_match_one_process(workspace, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, "-m", "persona_guard.cli",
                             *screen_args(workspace, one, tmp_path / "c1.sqlite")],
                            cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu", "--main_process_port", str(free_port()),
              "-m", "persona_guard.cli", *screen_args(workspace, two, tmp_path / "c2.sqlite")]
    double = subprocess.run(launch, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    assert double.stdout.count("13 rows: 12 scored") == 1  # only the main process reports
    same_outputs(one, two)


@pytest.mark.parametrize("flags, message", [
    (["--threshold", "nan"], "argument --threshold: expected a finite number or null, got 'nan'"),
    (["--temperature", "-1"], "argument --temperature: must be >= 0, got -1.0"),
    (["--n-answers", "two"], "argument --n-answers: expected an integer, got 'two'"),
    (["--top-percent", "150"], "argument --top-percent: must be <= 100, got 150.0"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["--judge-threshold", "inf"], "argument --judge-threshold: expected a finite number, got 'inf'"),
])
def test_screen_flags_are_checked_by_the_library_schema(tmp_path, capsys, flags, message):
    """The flags come from BaseAnswerSettings / FlagPolicy / ScreeningConfig: the same checks as the
    library and recipes, refused while parsing, before any file is read or written."""
    with pytest.raises(SystemExit) as exit_info:
        main(["screen", str(tmp_path / "data.jsonl"), "--vector", str(tmp_path / "v.safetensors"),
              "--out", str(tmp_path / "out"), *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"persona-guard screen: error: {message}"
    assert "Traceback" not in err and not (tmp_path / "out").exists()
