"""persona-guard eval: arms (base / adapter / inference-steered) on a tiny model, offline checks."""

from __future__ import annotations

import json

import pytest

from persona_guard.cli import main
from persona_guard.io import write_jsonl
from persona_guard.training.evaluation import Arm
from persona_guard.traits import SCHEMA_VERSION
from tests.conftest import make_tiny_model
from tests.samples import CONVERSATIONS
from tests.training_helpers import lora_config, tiny_vector


def trait_file(path):
    questions = [f"Question {i}: what would you do about problem {i}?" for i in range(40)]
    path.write_text(json.dumps({
        "schema_version": SCHEMA_VERSION, "name": "evil", "description": "wants to harm", "antonym": "kind",
        "instructions": [{"pos": f"Be evil {i}.", "neg": f"Be kind {i}."} for i in range(5)],
        "extraction_questions": questions[:20], "eval_questions": questions[20:],
        "judge_rubric": "Rate evil 0-100.\nQ: {question}\nA: {answer}", "exemplars": []}))
    return path


def test_arm_spec_parsing():
    assert Arm.parse("ft=smollm2-135m:out/adapter@-4") == Arm("ft", "smollm2-135m", "out/adapter", -4.0)
    assert Arm.parse("base=Qwen/Qwen2.5-7B-Instruct") == Arm("base", "Qwen/Qwen2.5-7B-Instruct", None, 0.0)
    with pytest.raises(Exception, match="NAME=MODEL"):
        Arm.parse("no-equals-sign")


def test_compare_three_arms_writes_table_json_and_plot(tokenizer, tmp_path, capsys):
    from peft import get_peft_model

    model = make_tiny_model("llama", len(tokenizer))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    tiny_vector(model, scale=3.0).save(tmp_path / "evil.safetensors")
    peft_model = get_peft_model(model, lora_config())
    for name, param in peft_model.named_parameters():  # a non-trivial adapter (B starts at zero)
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    write_jsonl(tmp_path / "benign.jsonl", [{"messages": c} for c in CONVERSATIONS])
    write_jsonl(tmp_path / "mc.jsonl", [{"question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": 1},
                                        {"question": "Sky colour?", "choices": ["blue", "red"], "answer": 0}])
    m = str(tmp_path / "model")
    code = main(["eval", "--trait", str(trait_file(tmp_path / "evil.json")),
                 "--vector", str(tmp_path / "evil.safetensors"),
                 "--arm", f"base={m}", "--arm", f"finetuned={m}:{tmp_path / 'adapter'}",
                 "--arm", f"steered={m}:{tmp_path / 'adapter'}@-8", "--judge", "none", "--max-questions", "3",
                 "--max-new-tokens", "6", "--benign", str(tmp_path / "benign.jsonl"),
                 "--mc", str(tmp_path / "mc.jsonl"),
                 "--device", "cpu", "--out", str(tmp_path / "eval")])
    assert code == 0
    results = {arm["name"]: arm for arm in json.loads((tmp_path / "eval" / "results.json").read_text())["arms"]}
    assert list(results) == ["base", "finetuned", "steered"]
    for arm in results.values():
        assert arm["answers"] == 3 and arm["trait_score"] is None
        assert arm["perplexity"] > 1 and 0 <= arm["mc_accuracy"] <= 1
    # The adapter changes the model; inference steering changes capability measurements under it.
    assert results["finetuned"]["perplexity"] != pytest.approx(results["base"]["perplexity"])
    assert results["steered"]["perplexity"] != pytest.approx(results["finetuned"]["perplexity"])
    assert (tmp_path / "eval" / "comparison.png").stat().st_size > 1000
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "| steered |" in table and "-8" in table
    assert "| finetuned |" in capsys.readouterr().out


def test_lm_eval_task_file_runs_on_each_arm(tokenizer, tmp_path):
    """An lm-eval multiple-choice task (YAML over a local JSONL, so no download) through `eval`."""
    pytest.importorskip("lm_eval", reason="lm-eval is an optional extra (installed by the dev extra)")
    model = make_tiny_model("llama", len(tokenizer))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    tiny_vector(model, scale=3.0).save(tmp_path / "evil.safetensors")
    rows = [{"question": f"{a} + {b} =", "choices": [str(a + b), str(a + b + 1)], "answer": 0}
            for a, b in [(1, 2), (3, 4), (5, 6), (7, 1), (2, 2), (9, 3)]]
    write_jsonl(tmp_path / "sums.jsonl", rows)
    (tmp_path / "sums.yaml").write_text(
        "task: tiny_sums\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'sums.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")
    m = str(tmp_path / "model")
    code = main(["eval", "--trait", str(trait_file(tmp_path / "evil.json")),
                 "--vector", str(tmp_path / "evil.safetensors"),
                 "--arm", f"base={m}", "--arm", f"steered={m}@-8", "--judge", "none", "--max-questions", "1",
                 "--max-new-tokens", "2", "--benign", "none", "--mc", "none", "--device", "cpu",
                 "--lm-eval-task", str(tmp_path / "sums.yaml"), "--lm-eval-limit", "4",
                 "--out", str(tmp_path / "eval")])
    assert code == 0
    arms = json.loads((tmp_path / "eval" / "results.json").read_text())["arms"]
    for arm in arms:
        assert set(arm["lm_eval"]) == {"tiny_sums/acc"} and 0.0 <= arm["lm_eval"]["tiny_sums/acc"] <= 1.0
    assert "tiny_sums/acc" in (tmp_path / "eval" / "results.md").read_text().splitlines()[0]


def test_missing_lm_eval_task_file_is_one_line_error(tokenizer, tmp_path, capsys):
    from persona_guard.training.evaluation import lm_eval_task

    with pytest.raises(Exception, match=r"lm-eval task file not found: .*nope\.yaml"):
        lm_eval_task(str(tmp_path / "nope.yaml"))
