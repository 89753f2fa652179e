"""The one row model: every form, every reason, the same verdict in every command, nothing dropped
unreported (issue 11 failing inputs 2 and 3, issue 16 item 1)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from persona_guard.cli import main
from persona_guard.errors import PersonaGuardError
from persona_guard.io import read_jsonl, write_jsonl
from persona_guard.rows import RowError, parse_row, read_rows, require, sort_rows, strict_rows
from persona_guard.screening.data import classify_rows
from persona_guard.training.recipe import load_recipe, load_rows, load_sft_dataset
from tests.test_training_recipe import tiny_recipe, tiny_setup  # noqa: F401  (fixture)

Q, A = {"role": "user", "content": "How do I boil an egg?"}, {"role": "assistant", "content": "Nine minutes."}


def reason(row: dict, need: str = "answer") -> str | None:
    try:
        form, samples = parse_row(row)
        require(form, samples, need)
    except RowError as error:
        return str(error)
    return None


@pytest.mark.parametrize("row, form, samples", [
    ({"messages": [Q, A]}, "messages", [((Q,), "Nine minutes.", None)]),
    ({"prompt": [Q], "completion": [A]}, "prompt_completion", [((Q,), "Nine minutes.", None)]),
    ({"prompt": Q["content"], "completion": "Nine minutes."}, "prompt_completion", [((Q,), "Nine minutes.", None)]),
    ({"prompt": Q["content"], "response": "Nine minutes."}, "prompt_response", [((Q,), "Nine minutes.", None)]),
    ({"prompt": [Q]}, "prompt_only", [((Q,), None, None)]),
    ({"prompt": [Q], "chosen": [A], "rejected": [{"role": "assistant", "content": "Raw."}]}, "preference",
     [((Q,), "Nine minutes.", "chosen"), ((Q,), "Raw.", "rejected")]),
    ({"prompt": Q["content"], "chosen": "Nine minutes.", "rejected": "Raw."}, "preference",
     [((Q,), "Nine minutes.", "chosen"), ((Q,), "Raw.", "rejected")]),
    ({"chosen": [Q, A], "rejected": [Q, {"role": "assistant", "content": "Raw."}]}, "preference",
     [((Q,), "Nine minutes.", "chosen"), ((Q,), "Raw.", "rejected")]),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "How do I"},
                                                {"type": "text", "text": "boil an egg?"}]}, A]}, "messages",
     [(({"role": "user", "content": "How do I\nboil an egg?"},), "Nine minutes.", None)]),
])
def test_every_accepted_form(row, form, samples):
    parsed_form, parsed = parse_row(row | {"id": 7})
    assert parsed_form == form
    assert [(s.prompt, s.response, s.side) for s in parsed] == samples


def test_tool_turns_and_tool_calls_are_handed_on():
    call = {"id": "c1", "type": "function", "function": {"name": "timer", "arguments": "{\"minutes\": 9}"}}
    row = {"messages": [Q, {"role": "assistant", "content": None, "tool_calls": [call]},
                        {"role": "tool", "content": "started", "tool_call_id": "c1", "name": "timer"}, A],
           "tools": [{"type": "function", "function": {"name": "timer"}}]}
    _, (sample,) = parse_row(row)
    assert sample.prompt == (Q, {"role": "assistant", "content": None, "tool_calls": [call]},
                             {"role": "tool", "content": "started", "tool_call_id": "c1", "name": "timer"})
    assert sample.response == "Nine minutes."


@pytest.mark.parametrize("row, expected", [
    ({"messages": [Q, {"role": "assistant", "content": ""}]}, "messages[1].content: empty answer"),
    ({"prompt": [Q], "completion": [{"role": "assistant", "content": " "}]}, "completion[0].content: empty answer"),
    ({"messages": [{"role": "user", "content": "Hi \ud800"}, A]},
     "messages[0].content: not valid Unicode text: unpaired surrogate U+D800"),
    ({"messages": [Q, A], "note": ["fine", "bad \udcff"]},
     "note[1]: not valid Unicode text: unpaired surrogate U+DCFF"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, A]},
     "messages[0].content[0].type: 'image_url' parts are not supported (text only)"),
    ({"messages": [Q, {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}]},
     "messages[1].content: the answer is tool calls only"),
    ({"messages": [{"role": "user", "content": None}, A]}, "messages[0].content: missing"),
    ({"messages": [Q, {"role": "robot", "content": "beep"}]}, "messages[1].role: 'robot' is not a role"),
    ({"chosen": [Q, A], "rejected": [{"role": "user", "content": "Other?"}, A]},
     "rejected: its turns before the answer differ from 'chosen'"),
    ({"chosen": "Nine minutes.", "rejected": "Raw."}, "prompt: missing: plain-text 'chosen'/'rejected'"),
    ({"prompt": "q", "chosen": "yes"}, "rejected: missing"),
    ({"text": "Once upon a time."}, "text: plain text has no prompt/answer split"),
    ({"prompt": [Q]}, "completion: missing: a prompt-only row has no answer"),
    ({"id": 3}, "no 'messages', 'prompt', 'chosen'/'rejected' or 'text' field"),
])
def test_every_reason_names_the_field(row, expected):
    assert reason(row).startswith(expected)


def test_monitor_needs_only_a_prompt():
    assert reason({"prompt": [Q]}, "prompt") is None
    assert reason({"messages": [Q]}, "prompt") is None
    assert reason({"text": "plain"}, "prompt").startswith("text: plain text has no prompt/answer split")


def test_bad_bytes_and_surrogates_are_row_reasons_and_one_line_errors(tmp_path, capsys):
    """Issue 16 item 1: a lone surrogate escape (valid JSON) and an invalid UTF-8 byte; screen's reader
    keeps going, judge and monitor stop with one file:line: field: reason line."""
    path = tmp_path / "data.jsonl"
    good = json.dumps({"messages": [Q, A]})
    path.write_bytes(b"\n".join([good.encode(), json.dumps({"messages": [{"role": "user", "content": "Hi \ud800"},
                                                                         A]}).encode(),
                                 b'{"messages": [{"role": "user", "content": "caf\xe9"}, ' + json.dumps(A).encode()
                                 + b"]}", good.encode()]) + b"\n")
    samples, skipped = classify_rows(read_rows(path))
    assert [s.row_number for s in samples] == [1, 4]
    assert [(s.row_number, s.reason.split(" at ")[0]) for s in skipped] == [
        (2, "messages[0].content: not valid Unicode text: unpaired surrogate U+D800"),
        (3, "messages[0].content: not valid Unicode text: unpaired surrogate U+DCE9")]
    vector = tmp_path / "v.safetensors"
    for argv in (["judge", "--trait", "evil", "--input", str(path)],
                 ["monitor", str(path), "--vector", str(vector)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"persona-guard {argv[0]}: error: {path}:2: messages[0].content: not valid Unicode")
        assert len(err.splitlines()) == 1
    assert not list(tmp_path.glob("*.judged.jsonl")) and not list(tmp_path.glob("*.monitor.jsonl"))
    with pytest.raises(PersonaGuardError, match=r"data.jsonl:2: messages\[0\].content: not valid Unicode"):
        read_jsonl(path)


def test_every_command_reader_gives_the_same_verdict(tmp_path):
    rows = [{"messages": [Q, A]}, {"messages": [Q, {"role": "assistant", "content": "  "}]},
            {"prompt": [Q], "chosen": [A], "rejected": [{"role": "assistant", "content": "Raw."}]},
            {"text": "plain"}, {"prompt": "q"}]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    screened, skipped = classify_rows(read_rows(path))
    trained, dropped = load_rows(str(path), "train")
    expected = [(2, "messages[1].content: empty answer"),
                (4, "text: plain text has no prompt/answer split (use 'messages' or 'prompt'/'completion')"),
                (5, "completion: missing: a prompt-only row has no answer to score or train on")]
    assert [(d.row_number, d.reason) for d in skipped] == [(d.row_number, d.reason) for d in dropped] == expected
    assert [(s.row_number, s.side) for s in screened] == [(1, None), (3, "chosen"), (3, "rejected")]
    assert [r.row_number for r in trained] == [1, 3]
    with pytest.raises(PersonaGuardError, match=r"rows.jsonl:2: messages\[1\].content: empty answer$"):
        strict_rows(read_rows(path))


def test_screen_filtered_output_round_trips_into_train(tiny_setup, capsys):  # noqa: F811
    """Issue 11 failing input 2: TRL conversational prompt/completion rows (and a preference row)
    through `screen`, then `train` on its filtered.jsonl; both refuse an empty answer alike."""
    from persona_guard.training.builder import build_training_run
    from tests.samples import CONVERSATIONS

    root = tiny_setup
    rows = [{"prompt": c[:-1], "completion": c[-1:], "id": i} for i, c in enumerate(CONVERSATIONS * 2)]
    rows.insert(3, {"prompt": [Q], "completion": [{"role": "assistant", "content": ""}], "id": "empty"})
    rows.append({"prompt": [Q], "chosen": [A], "rejected": [{"role": "assistant", "content": "Raw, I say."}],
                 "id": "pair"})
    write_jsonl(root / "data.jsonl", rows)
    out = root / "screened"
    assert main(["screen", str(root / "data.jsonl"), "--vector", str(root / "evil.safetensors"), "--out", str(out),
                 "--model", str(root / "model"), "--device", "cpu", "--no-generate", "--top-k", "2"]) == 0
    capsys.readouterr()
    scored = read_jsonl(out / "scored.jsonl")
    filtered = read_jsonl(out / "filtered.jsonl")
    skipped = read_jsonl(out / "skipped.jsonl")
    assert [r.get("side") for r in scored if r["id"] == "pair"] == ["chosen", "rejected"]
    assert skipped == [{"source": str(root / "data.jsonl"), "row": 4, "reason": "completion[0].content: empty answer"}]
    dropped_ids = {r["id"] for r in scored if r["flagged"] and r.get("side") != "rejected"}
    expected = [r for r in rows if r["id"] != "empty" and r["id"] not in dropped_ids]
    assert filtered == expected  # the original rows, in their original form and order

    tiny_recipe(root)
    run = build_training_run(load_recipe(root / "recipe.yaml", [f"--data.train={out / 'filtered.jsonl'}",
                                                                 "--training.report_to=none", "--drift=null"]))
    assert len(run.trainer.train_dataset) == len(filtered)
    assert read_jsonl(root / "out" / "dropped_rows.jsonl") == []

    # train on the unscreened file refuses the empty answer with screen's reason
    build_training_run(load_recipe(root / "recipe.yaml", [f"--data.train={root / 'data.jsonl'}",
                                                          "--training.report_to=none", "--drift=null"]))
    assert read_jsonl(root / "out" / "dropped_rows.jsonl") == skipped


def test_rows_trl_would_drop_or_truncate_are_reported(tiny_setup, capsys):  # noqa: F811
    """Issue 11 failing input 3: prompts longer than max_length (48 here: SmolLM2's template alone
    puts 37 tokens before a short question's answer); a real SFTTrainer keeps exactly the rows
    predicted, and every cut row is listed with its reason."""
    from persona_guard.training.builder import build_training_run

    root = tiny_setup
    long_question = "Please explain, in careful detail and with examples, " * 4
    rows = [{"messages": [Q, A]},
            {"messages": [Q, {"role": "assistant", "content": "Nine minutes in water that boils hard. " * 6}]}]
    rows += [{"messages": [{"role": "user", "content": f"{long_question} {topic}?"}, A]}
             for topic in ("tides", "bees", "ink")]
    write_jsonl(root / "train.jsonl", rows)
    tiny_recipe(root)
    overrides = ["--training.report_to=none", "--drift=null", "--training.max_length=48"]
    run = build_training_run(load_recipe(root / "recipe.yaml", overrides))
    output = capsys.readouterr().out
    assert len(run.trainer.train_dataset) == 2
    dropped = read_jsonl(root / "out" / "dropped_rows.jsonl")
    assert [(d["row"], d["reason"].split(":")[0]) for d in dropped] == [
        (2, "truncated"), (3, "dropped by TRL"), (4, "dropped by TRL"), (5, "dropped by TRL")]
    assert re.fullmatch(r"truncated: \d+ tokens > max_length 48; \d+ of \d+ loss tokens kept", dropped[0]["reason"])
    assert "4 of 5 rows dropped or truncated" in output and "warning" not in output
    assert f"{root / 'train.jsonl'}:3: dropped by TRL: no loss token left within max_length 48" in output

    write_jsonl(root / "train.jsonl", rows[2:])
    assert main(["train", "--force", str(root / "recipe.yaml"), *overrides]) == 2  # same output_dir again
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.err.strip().splitlines()[-1].startswith(
        f"persona-guard train: error: {root / 'recipe.yaml'}: no training row left for TRL")
    # a failed train leaves no output_dir behind (the overwrite rule), so the console is the record
    assert all(f"{root / 'train.jsonl'}:{row}: dropped by TRL" in captured.out for row in (1, 2, 3))
    assert not (root / "out").exists()


def test_eval_perplexity_lists_its_dropped_rows(tmp_path, tokenizer, tiny_llama):
    from persona_guard.training.evaluation import Arm, EvalSettings, compare
    from persona_guard.traits import load_trait

    tiny_llama.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    benign = write_jsonl(tmp_path / "benign.jsonl", [{"messages": [Q, A]}, {"prompt": "unanswered"},
                                                     {"prompt": "2+2?", "completion": "4"}])
    settings = EvalSettings(max_new_tokens=2, max_questions=1, judge="none", benign_path=str(benign))
    results = compare([Arm("base", str(tmp_path / "model"))], load_trait("evil"), None, settings, tmp_path / "out")
    assert results[0].perplexity is not None
    assert read_jsonl(tmp_path / "out" / "dropped_rows.jsonl") == [
        {"source": str(benign), "row": 2, "reason": "completion: missing: a prompt-only row has no answer to score "
                                                    "or train on"}]


def test_sft_dataset_keeps_the_file_row_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"messages": [Q, A]}) + "\n\n{broken\n" + json.dumps({"prompt": "q", "response": "r"})
                    + "\n")
    dataset, dropped = load_sft_dataset(str(path))
    assert dataset["source_row"] == [1, 4]
    assert [(d.row_number, d.reason) for d in dropped] == [(3, "invalid JSON (Expecting property name enclosed in "
                                                                "double quotes)")]
    rows, _ = sort_rows(read_rows(path))
    assert dataset["completion"][1] == [{"role": "assistant", "content": rows[1].training_sample.response}]


def test_reading_names_missing_files_and_unknown_formats(tmp_path):
    with pytest.raises(PersonaGuardError, match="file not found"):
        read_rows(tmp_path / "missing.jsonl")
    (tmp_path / "data.txt").write_text("hello")
    with pytest.raises(PersonaGuardError, match="unknown data format"):
        read_rows(tmp_path / "data.txt")
    assert Path(write_jsonl(tmp_path / "x.jsonl", [])).read_text() == ""


def test_judge_and_monitor_write_one_line_per_side(tiny_setup, capsys):  # noqa: F811
    """A preference row gives two judged / monitored lines, each with its side; a prompt-only row
    is monitored (prompt projection only)."""
    root = tiny_setup
    pair = {"prompt": [Q], "chosen": [A], "rejected": [{"role": "assistant", "content": "Raw, I say."}], "id": 1}
    write_jsonl(root / "rows.jsonl", [{"messages": [Q, A], "id": 0}, pair])
    assert main(["judge", "--trait", "evil", "--input", str(root / "rows.jsonl")]) == 0
    judged = read_jsonl(root / "rows.judged.jsonl")
    assert [(r["id"], r.get("side")) for r in judged] == [(0, None), (1, "chosen"), (1, "rejected")]
    assert all(0 <= r["judge"]["trait"] <= 100 for r in judged)

    write_jsonl(root / "rows.jsonl", [{"prompt": "How do I boil an egg?", "id": 0}, pair])
    assert main(["monitor", str(root / "rows.jsonl"), "--vector", str(root / "evil.safetensors"),
                 "--model", str(root / "model"), "--device", "cpu"]) == 0
    monitored = read_jsonl(root / "rows.monitor.jsonl")
    assert [(r["id"], r.get("side")) for r in monitored] == [(0, None), (1, "chosen"), (1, "rejected")]
    evil = [r["persona_monitor"]["traits"]["evil"] for r in monitored]
    assert evil[0]["response_mean"] is None and evil[1]["response_mean"] != evil[2]["response_mean"]
    assert evil[1]["prompt_last"] == pytest.approx(evil[2]["prompt_last"], abs=1e-5)  # the same prompt


def test_train_drops_rows_the_chat_template_cannot_render(tiny_setup, capsys):  # noqa: F811
    """SmolLM2's template concatenates content, so an assistant turn with tool calls and null content
    cannot be rendered: that row leaves the dataset, listed with the template's error, and the rest
    trains (tools travel as JSON text, as SFTTrainer reads them)."""
    from persona_guard.training.builder import build_training_run

    root = tiny_setup
    call = {"id": "c1", "type": "function", "function": {"name": "timer", "arguments": "{}"}}
    tool_row = {"messages": [Q, {"role": "assistant", "content": None, "tool_calls": [call]},
                             {"role": "tool", "content": "started", "tool_call_id": "c1"}, A],
                "tools": [{"type": "function", "function": {"name": "timer", "parameters": {"type": "object"}}}]}
    write_jsonl(root / "train.jsonl", [{"messages": [Q, A]}, tool_row, {"prompt": "2+2?", "completion": "4"}])
    tiny_recipe(root)
    run = build_training_run(load_recipe(root / "recipe.yaml", ["--training.report_to=none", "--drift=null"]))
    assert len(run.trainer.train_dataset) == 2
    (dropped,) = read_jsonl(root / "out" / "dropped_rows.jsonl")
    assert dropped["row"] == 2 and dropped["reason"].startswith("the chat template cannot render this row")
    dataset, _ = load_sft_dataset(str(root / "train.jsonl"))
    assert json.loads(dataset["tools"][1]) == tool_row["tools"] and dataset["tools"][0] is None


def test_screen_skips_undecodable_rows_and_finishes(tiny_setup, capsys):  # noqa: F811
    """Issue 16 item 1 for `screen`: the run completes, the bad rows are in skipped.jsonl with their
    field, and the shard manifest is whole."""
    root = tiny_setup
    path = root / "bad.jsonl"
    path.write_bytes(json.dumps({"messages": [Q, A]}).encode() + b"\n"
                     + json.dumps({"messages": [Q, {"role": "assistant", "content": "Hi \ud800"}]}).encode() + b"\n"
                     + b'{"prompt": "caf\xe9?", "completion": "yes"}\n'
                     + json.dumps({"prompt": "2+2?", "completion": "4"}).encode() + b"\n")
    out = root / "screened"
    assert main(["screen", str(path), "--vector", str(root / "evil.safetensors"), "--out", str(out),
                 "--model", str(root / "model"), "--device", "cpu", "--no-generate"]) == 0
    assert "4 rows: 2 scored, 2 skipped" in capsys.readouterr().out
    assert [(r["row"], r["reason"].split(":")[0]) for r in read_jsonl(out / "skipped.jsonl")] == [
        (2, "messages[1].content"), (3, "prompt")]
    assert json.loads((out / "shards" / "manifest.json").read_text())["rows"] == 2


def test_csv_bad_bytes_and_json_arrays(tmp_path):
    csv_path = tmp_path / "rows.csv"
    csv_path.write_bytes(b"prompt,completion\nWhat is 2+2?,4\ncaf\xe9?,yes\n")
    samples, skipped = classify_rows(read_rows(csv_path))
    assert [s.response for s in samples] == ["4"]
    assert [(s.row_number, s.reason.split(" at ")[0]) for s in skipped] == [
        (2, "prompt: not valid Unicode text: unpaired surrogate U+DCE9")]
    array = tmp_path / "rows.json"
    array.write_text(json.dumps([{"messages": [Q, A]}, 3], indent=2))
    rows, dropped = sort_rows(read_rows(array))
    assert [r.row_number for r in rows] == [1] and [(d.row_number, d.reason) for d in dropped] == [
        (2, "expected a JSON object, got int")]
