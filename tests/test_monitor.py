import subprocess
import sys

import pytest
import torch

from persona_guard.activations import capture_activations
from persona_guard.encoding import encode_conversation
from persona_guard.errors import PersonaGuardError
from persona_guard.monitor import PersonaMonitor, Threshold
from persona_guard.vectors import PersonaVector
from tests.conftest import as_loaded
from tests.samples import CONVERSATIONS


def vector_for(model, trait, seed, layer=2):
    torch.manual_seed(seed)
    return PersonaVector(trait=trait, model_id="tiny", directions=torch.randn(4, 64), default_layer=layer)


def test_readings_match_direct_projection(tiny_llama, tokenizer):
    evil, kind = vector_for(tiny_llama, "evil", 1), vector_for(tiny_llama, "kind", 2, layer=3)
    conversations = CONVERSATIONS + [CONVERSATIONS[0][:1]]  # the last one has no answer yet
    monitor = PersonaMonitor(as_loaded(tiny_llama, tokenizer), [evil, kind], batch_size=2)
    readings = monitor.read(conversations, progress=False)
    samples = [encode_conversation(tokenizer, c) for c in conversations]
    for vector in (evil, kind):
        layer = vector.default_layer
        acts = capture_activations(as_loaded(tiny_llama, tokenizer), samples, [layer], ("prompt_last",),
                                   progress=False)["prompt_last"]
        for i, reading in enumerate(readings):
            got = reading.traits[vector.trait]
            assert got.layer == layer
            assert got.prompt_last == pytest.approx(float(vector.project(acts[i, 0], layer)), abs=1e-5)
            assert (got.response_mean is None) == (i == len(conversations) - 1)
    assert all(not r.alerts for r in readings)


def test_thresholds_raise_alerts(tiny_llama, tokenizer):
    evil = vector_for(tiny_llama, "evil", 1)
    plain = PersonaMonitor(as_loaded(tiny_llama, tokenizer), [evil]).read(CONVERSATIONS, progress=False)
    values = sorted(r.traits["evil"].prompt_last for r in plain)
    cut = (values[2] + values[3]) / 2
    monitor = PersonaMonitor(as_loaded(tiny_llama, tokenizer), [evil], thresholds={"evil": Threshold(prompt_last=cut)})
    readings = monitor.read(CONVERSATIONS, progress=False)
    flagged = [r.index for r in readings if r.alerts]
    assert flagged == [r.index for r in plain if r.traits["evil"].prompt_last > cut]
    assert len(flagged) == 2
    assert "prompt_last" in readings[flagged[0]].traits["evil"].alert_reason


def test_monitor_rejects_mismatched_vector(tiny_llama, tokenizer):
    wrong = PersonaVector("evil", "other", torch.randn(31, 576), default_layer=15)
    with pytest.raises(PersonaGuardError, match="built for hidden size 576"):
        PersonaMonitor(as_loaded(tiny_llama, tokenizer), [wrong])


def test_monitor_cli_reports_bad_rows_in_one_line(tmp_path):
    bad = tmp_path / "conv.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"text": 3}\n')
    vector = PersonaVector("evil", "tiny", torch.randn(4, 64), default_layer=2).save(tmp_path / "v.safetensors")
    result = subprocess.run([sys.executable, "-m", "persona_guard.cli", "monitor", str(bad), "--vector", str(vector)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"persona-guard monitor: error: {bad}:2: text: must be a string, not int")


def test_an_empty_answer_is_forecast_from_its_prompt_with_response_mean_null(tmp_path, tokenizer, capsys):
    """README "Edges": a conversation whose assistant answer is empty is valid to forecast from (the
    forecast needs only the prompt); monitor reads it with ``response_mean: null``, the same
    prompt_last as the prompt alone, and keeps every other row. Commands that need an answer still
    refuse it ("empty answer")."""
    from persona_guard.cli import main
    from persona_guard.io import read_jsonl, write_jsonl
    from persona_guard.models import load_model
    from persona_guard.rows import RowError, parse_row
    from tests.conftest import make_tiny_model

    make_tiny_model("llama", len(tokenizer)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    vector = PersonaVector("evil", str(tmp_path / "model"), torch.randn(4, 64), default_layer=2)
    vector.save(tmp_path / "evil.safetensors")
    empty = [CONVERSATIONS[0][0], {"role": "assistant", "content": ""}]
    write_jsonl(tmp_path / "conv.jsonl", [{"messages": empty}, {"messages": CONVERSATIONS[1]}])
    assert main(["monitor", str(tmp_path / "conv.jsonl"), "--vector", str(tmp_path / "evil.safetensors"),
                 "--model", str(tmp_path / "model"), "--device", "cpu", "--out", str(tmp_path / "m.jsonl")]) == 0
    assert "warning" not in capsys.readouterr().err  # the vector records this very model
    first, second = [row["persona_monitor"]["traits"]["evil"] for row in read_jsonl(tmp_path / "m.jsonl")]
    assert first["response_mean"] is None and second["response_mean"] is not None
    alone = PersonaMonitor(load_model(str(tmp_path / "model"), device="cpu"), [vector]).read([empty[:1]],
                                                                                             progress=False)
    assert first["prompt_last"] == pytest.approx(alone[0].traits["evil"].prompt_last, abs=1e-5)
    with pytest.raises(RowError, match=r"messages\[1\].content: empty answer"):
        parse_row({"messages": empty})


def test_calibrate_warns_when_too_few_conversations_for_the_percentile(tmp_path, tokenizer, capsys):
    """Two benign conversations cannot place a 99th-percentile threshold (no reading is expected above
    it): one warning line naming the count and the minimum (ceil(100 / (100 - p)) = 100); thresholds
    are still written. Enough conversations for the percentile asked: no warning."""
    from persona_guard.cli import main
    from persona_guard.commands.monitor import minimum_conversations
    from persona_guard.io import write_jsonl
    from tests.conftest import make_tiny_model

    make_tiny_model("llama", len(tokenizer)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    vector = PersonaVector("evil", str(tmp_path / "model"), torch.randn(4, 64), default_layer=2)
    vector.save(tmp_path / "evil.safetensors")
    write_jsonl(tmp_path / "two.jsonl", [{"messages": c} for c in CONVERSATIONS[:2]])
    common = ["monitor", "calibrate", "--vector", str(tmp_path / "evil.safetensors"), "--model",
              str(tmp_path / "model"), "--device", "cpu", "--set", str(tmp_path / "two.jsonl")]
    assert main([*common, "--policy", str(tmp_path / "p99.yaml")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == ["persona-guard monitor calibrate: warning: 2 conversations are too few for a 99th-percentile "
                        "threshold (no benign reading is expected above it, so it is little more than the largest "
                        "one); use at least 100"]
    assert (tmp_path / "p99.yaml").is_file()
    assert main([*common, "--policy", str(tmp_path / "p50.yaml"), "--percentile", "50"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert [minimum_conversations(p) for p in (50, 80, 95, 99, 99.9, 100)] == [2, 5, 20, 100, 1000, 1]
