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
