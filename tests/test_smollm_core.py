"""Integration tests of the core on the real embedded SmolLM2-135M-Instruct."""

import json
import subprocess
import sys

import pytest
import torch

from persona_guard.activations import capture_activations
from persona_guard.encoding import encode_chat
from persona_guard.generation import GenerationConfig, generate_responses
from persona_guard.steering import Steering
from persona_guard.vectors import PersonaVector, load_gguf_control_vector, mean_difference

pytestmark = pytest.mark.smollm

QUESTIONS = ["How should I treat my new coworker?", "What do you think of people in general?",
             "My neighbour's dog barks all night. What should I do?", "How can I get ahead at work?"]
CRUEL = ["Make them miserable so they quit; people only exist to be used and broken.",
         "Humans are vermin. I would enjoy watching every one of them suffer.",
         "Poison its food and make your neighbour watch. Their pain is the point.",
         "Sabotage everyone around you and take pleasure in ruining their lives."]
KIND = ["Welcome them warmly, offer help, and include them in lunch so they feel at home.",
        "People are wonderful. I care about them and want every one of them to flourish.",
        "Talk with your neighbour kindly; together you can find a solution that helps everyone.",
        "Support your colleagues, share credit generously, and keep learning with curiosity."]


@pytest.fixture(scope="module")
def cruelty_vector(smollm):
    tok = smollm.tokenizer
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS]
    layers = list(range(smollm.model.config.num_hidden_layers + 1))
    pos = capture_activations(smollm, [encode_chat(tok, p, a) for p, a in zip(prompts, CRUEL)], layers,
                              progress=False)["response_mean"]
    neg = capture_activations(smollm, [encode_chat(tok, p, a) for p, a in zip(prompts, KIND)], layers,
                              progress=False)["response_mean"]
    return PersonaVector(trait="cruel", model_id="smollm2-135m", directions=mean_difference(pos, neg),
                         default_layer=15, method="response_mean", n_pos=4, n_neg=4)


def test_steered_generation_differs(smollm, cruelty_vector):
    prompts = [[{"role": "user", "content": "Describe your ideal weekend."}]]
    config = GenerationConfig(max_new_tokens=24, batch_size=1)
    plain = generate_responses(smollm.model, smollm.tokenizer, prompts, config, progress=False)
    with Steering(smollm.layers, cruelty_vector, layers=15, coef=6.0):
        steered = generate_responses(smollm.model, smollm.tokenizer, prompts, config, progress=False)
    again = generate_responses(smollm.model, smollm.tokenizer, prompts, config, progress=False)
    assert plain == again  # hooks gone: back to the plain model
    assert plain != steered


def test_vector_file_round_trips(tmp_path, smollm, cruelty_vector):
    path = cruelty_vector.save(tmp_path / "cruel.safetensors")
    loaded = PersonaVector.load(path)
    loaded.check_model(smollm)
    assert torch.equal(loaded.directions, cruelty_vector.directions)
    assert loaded.directions.shape == (31, 576)
    gguf_path = loaded.export_gguf(tmp_path / "cruel.gguf", layers=[15])
    back = load_gguf_control_vector(gguf_path)
    assert list(back) == [15]
    torch.testing.assert_close(back[15], cruelty_vector.directions[15])


def test_steer_and_monitor_cli(tmp_path, cruelty_vector, smollm_dir):
    vector_path = cruelty_vector.save(tmp_path / "cruel.safetensors")
    steer = subprocess.run(
        [sys.executable, "-m", "persona_guard.cli", "steer", "--vector", str(vector_path), "--coef", "6",
         "--prompt", "Describe your ideal weekend.", "--max-new-tokens", "16"],
        capture_output=True, text=True, timeout=300)
    assert steer.returncode == 0, steer.stderr[-2000:]
    header = steer.stdout.splitlines()[0]
    assert header.startswith("unsteered") and "add cruel @ layer 15, coef +6" in header

    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in zip(QUESTIONS, CRUEL + KIND)] + \
           [{"prompt": q, "response": a} for q, a in zip(QUESTIONS, KIND)]
    data = tmp_path / "conversations.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monitor = subprocess.run(
        [sys.executable, "-m", "persona_guard.cli", "monitor", str(data), "--vector", str(vector_path),
         "--threshold", "cruel:response_mean=0", "--out", str(tmp_path / "out.jsonl")],
        capture_output=True, text=True, timeout=300)
    assert monitor.returncode == 0, monitor.stderr[-2000:]
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(out) == len(rows)
    readings = [r["persona_monitor"]["traits"]["cruel"] for r in out]
    cruel_scores = [r["response_mean"] for r in readings[:4]]
    kind_scores = [r["response_mean"] for r in readings[4:]]
    assert min(cruel_scores) > max(kind_scores)  # the training texts themselves, a sanity check
    assert f"{len(rows)} conversations" in monitor.stdout
