"""Real chat templates (tests/templates/*.jinja, copied from the models' tokenizer configs) on SmolLM2's
tokenizer: the prompt/response boundary, system-role folding, the fallback format, per-row errors,
and issue 11's failing input 1 through the real CLI."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from persona_guard import encoding
from persona_guard.encoding import (
    FALLBACK_CHAT_TEMPLATE,
    ChatTemplateError,
    chat_messages,
    encode_chat,
    encode_conversation,
    render_prompt,
    split_conversation,
)
from tests.conftest import make_tiny_model
from tests.test_screening_cli import subprocess_env

TEMPLATES = Path(__file__).parent / "templates"

BREAKFAST = [{"role": "user", "content": "What is a good breakfast?"},
             {"role": "assistant", "content": "Oats with fruit."}]
EGG = [{"role": "system", "content": "You are a cooking helper."},
       {"role": "user", "content": "How do I boil an egg?"},
       {"role": "assistant", "content": "Nine minutes in boiling water."}]
MULTI_TURN = [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "A pear."},
              {"role": "user", "content": "And a colour?"}, {"role": "assistant", "content": "Teal."}]
ONE_TOKEN = [{"role": "user", "content": "Yes or no?"}, {"role": "assistant", "content": "Yes"}]

#: template file -> the response text each conversation gets (what the full render adds after the
#: prompt, up to the end-of-turn text)
EXPECTED_RESPONSES = {
    "llama-3.3-instruct.jinja": ["Oats with fruit.", "Nine minutes in boiling water.", "Teal.", "Yes"],
    "qwen2.5-instruct.jinja": ["Oats with fruit.", "Nine minutes in boiling water.", "Teal.", "Yes"],
    "gemma-2-it.jinja": ["Oats with fruit.", "Nine minutes in boiling water.", "Teal.", "Yes"],
    "mistral-nemo-instruct-2407.jinja": ["Oats with fruit.", "Nine minutes in boiling water.", "Teal.", "Yes"],
    "phi-3.5-mini-instruct.jinja": ["Oats with fruit.", "Nine minutes in boiling water.", "Teal.", "Yes"],
    # Qwen3 inserts an empty reasoning block after the generation prompt: the model writes it
    "qwen3.jinja": ["<think>\n\n</think>\n\n" + a for a in
                    ("Oats with fruit.", "Nine minutes in boiling water.", "Teal.", "Yes")],
    None: [" Oats with fruit.", " Nine minutes in boiling water.", " Teal.", " Yes"],
}


@pytest.fixture
def fresh_logs(monkeypatch):
    """Forget which once-per-process notices were logged, so a test can count them."""
    monkeypatch.setattr(encoding, "_logged", set())


def templated(tokenizer, name: str | None):
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tok.pad_token = tok.eos_token
    tok.chat_template = (TEMPLATES / name).read_text() if name else None
    return tok


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", list(EXPECTED_RESPONSES))
def test_boundary_is_the_prompt_render_then_what_the_full_render_adds(tokenizer, name):
    tok = templated(tokenizer, name)
    for conversation, expected in zip((BREAKFAST, EGG, MULTI_TURN, ONE_TOKEN), EXPECTED_RESPONSES[name]):
        prompt, answer = split_conversation(conversation)
        sample = encode_conversation(tok, conversation)
        prompt_text = render_prompt(tok, prompt)
        # prompt and response tokenized on their own: exactly what generate() feeds and produces
        assert list(sample.input_ids) == ids(tok, prompt_text) + ids(tok, expected)
        assert sample.prompt_length == len(ids(tok, prompt_text))
        full = tok.apply_chat_template(chat_messages(tok, conversation), tokenize=False,
                                       chat_template=tok.chat_template or FALLBACK_CHAT_TEMPLATE)
        if name != "mistral-nemo-instruct-2407.jinja" or conversation is not EGG:
            # the verified agreement: the full render is prompt + response + the end-of-turn text
            assert full.startswith(prompt_text + expected)
            assert answer.strip() not in full[len(prompt_text + expected):]
    one_token = encode_conversation(tok, ONE_TOKEN)
    assert one_token.response_length == len(ids(tok, EXPECTED_RESPONSES[name][3]))
    assert encode_chat(tok, [BREAKFAST[0]], "").response_length == 0
    assert encode_chat(tok, [BREAKFAST[0]]).input_ids == encode_chat(tok, [BREAKFAST[0]], "").input_ids


def test_qwen25_inserts_its_default_system_prompt(tokenizer):
    tok = templated(tokenizer, "qwen2.5-instruct.jinja")
    assert "You are Qwen, created by Alibaba Cloud." in render_prompt(tok, [BREAKFAST[0]])
    assert "You are Qwen" not in render_prompt(tok, EGG[:2])


def test_gemma_folds_the_system_turn_into_the_first_user_turn_and_says_so_once(tokenizer, fresh_logs, caplog):
    tok = templated(tokenizer, "gemma-2-it.jinja")
    with pytest.raises(Exception, match="System role not supported"):
        tok.apply_chat_template(EGG, tokenize=False)
    with caplog.at_level(logging.WARNING, logger="persona_guard"):
        first = encode_conversation(tok, EGG)
        encode_conversation(tok, EGG)
        render_prompt(tok, EGG[:2])
    text = tok.decode(first.input_ids)
    assert "<start_of_turn>user\nYou are a cooking helper.\n\nHow do I boil an egg?<end_of_turn>" in text
    assert text.endswith("<start_of_turn>model\nNine minutes in boiling water.")
    notices = [r.getMessage() for r in caplog.records if "no system role" in r.getMessage()]
    assert len(notices) == 1 and "folded into the first user turn" in notices[0]
    # a system turn with no user turn to fold into is a clear per-row error
    with pytest.raises(ChatTemplateError, match="needs a user turn"):
        encode_chat(tok, [EGG[0]], "x")


def test_template_that_rewrites_earlier_turns_keeps_the_generation_prompt(tokenizer, fresh_logs, caplog):
    # Mistral-Nemo moves the system message into the *last* user turn, so with the answer appended
    # it disappears: the full render is not an extension of the prompt render
    tok = templated(tokenizer, "mistral-nemo-instruct-2407.jinja")
    prompt, answer = split_conversation(EGG)
    prompt_text = render_prompt(tok, prompt)
    full = tok.apply_chat_template(EGG, tokenize=False)
    assert "You are a cooking helper." in prompt_text and "You are a cooking helper." not in full
    with caplog.at_level(logging.WARNING, logger="persona_guard"):
        sample = encode_conversation(tok, EGG)
    assert list(sample.input_ids) == ids(tok, prompt_text) + ids(tok, answer)
    assert any("renders the prompt differently once an answer follows" in r.getMessage() for r in caplog.records)


def test_qwen3_reasoning_and_non_prefix_prompts(tokenizer):
    tok = templated(tokenizer, "qwen3.jinja")
    # a reasoning answer is reformatted by the template; the response is the reformatted text
    reasoned = encode_chat(tok, [BREAKFAST[0]], "<think>oats are cheap</think>Oats with fruit.")
    assert tok.decode(reasoned.input_ids[reasoned.prompt_length:]) == \
        "<think>\noats are cheap\n</think>\n\nOats with fruit."
    # two assistant turns in a row: the earlier one gets a reasoning block only while it is last,
    # so the prompt render is not a prefix of the full render; the prompt render is kept
    conversation = [BREAKFAST[0], {"role": "assistant", "content": "Oats."},
                    {"role": "assistant", "content": "With fruit."}]
    prompt, answer = split_conversation(conversation)
    prompt_text = render_prompt(tok, prompt)
    assert not tok.apply_chat_template(conversation, tokenize=False).startswith(prompt_text)
    sample = encode_conversation(tok, conversation)
    assert list(sample.input_ids) == ids(tok, prompt_text) + ids(tok, answer)


def test_base_model_without_template_uses_the_fallback_format_with_one_warning(tokenizer, fresh_logs, caplog):
    tok = templated(tokenizer, None)
    with caplog.at_level(logging.WARNING, logger="persona_guard"):
        sample = encode_conversation(tok, EGG)
        encode_conversation(tok, BREAKFAST)
    assert tok.decode(sample.input_ids) == ("System: You are a cooking helper.\n\nUser: How do I boil an egg?"
                                            "\n\nAssistant: Nine minutes in boiling water.")
    assert tok.decode(sample.input_ids[:sample.prompt_length]).endswith("Assistant:")
    assert len([r for r in caplog.records if "has no chat template" in r.getMessage()]) == 1


def test_conversations_a_template_cannot_take_are_one_line_errors(tokenizer):
    gemma = templated(tokenizer, "gemma-2-it.jinja")
    with pytest.raises(ChatTemplateError, match="rejects the conversation: Conversation roles must alternate"):
        encode_chat(gemma, [BREAKFAST[0], BREAKFAST[0]], "x")
    drops_answers = templated(tokenizer, None)
    drops_answers.chat_template = ("{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] }}"
                                   "{% endif %}{% endfor %}{% if add_generation_prompt %}A:{% endif %}")
    with pytest.raises(ChatTemplateError, match="does not render the assistant's answer once"):
        encode_conversation(drops_answers, BREAKFAST)
    rewrites = templated(tokenizer, None)
    rewrites.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] | upper }}\n{% endfor %}"
                              "{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(ChatTemplateError, match="does not end with the answer's text") as error:
        encode_conversation(rewrites, BREAKFAST)
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def gemma_workspace(tmp_path_factory, tokenizer):
    """A tiny model with Gemma-2's template saved to disk, a vector, and issue 11's rows plus one
    row the template rejects (two user turns in a row)."""
    from tests.test_screening import random_vector

    root = tmp_path_factory.mktemp("gemma")
    tok = templated(tokenizer, "gemma-2-it.jinja")
    model = make_tiny_model("llama", len(tok))
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    random_vector("evil", model, 2, 0).save(root / "evil.safetensors")
    rows = [{"messages": BREAKFAST}, {"messages": EGG},
            {"messages": [BREAKFAST[0], EGG[1], {"role": "assistant", "content": "Boil it."}]}]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "persona_guard.cli", *args], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300, check=False)


def test_screen_cli_on_a_template_without_system_role(gemma_workspace, tmp_path):
    out = tmp_path / "out"
    result = run_cli("screen", str(gemma_workspace / "rows.jsonl"), "--vector",
                     str(gemma_workspace / "evil.safetensors"), "--model", str(gemma_workspace / "model"),
                     "--device", "cpu", "--no-generate", "--out", str(out), "--top-k", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("no system role") == 1
    scored = [json.loads(line) for line in (out / "scored.jsonl").read_text().splitlines()]
    assert [r["messages"] for r in scored] == [BREAKFAST, EGG]  # both issue rows, scored the same way
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == 1 and skipped[0]["row"] == 3
    assert "Conversation roles must alternate" in skipped[0]["reason"]


def test_extract_cli_folds_trait_instructions_on_a_template_without_system_role(gemma_workspace, tmp_path):
    result = run_cli("extract", "--trait", "evil", "--source", "generate", "--model",
                     str(gemma_workspace / "model"), "--device", "cpu", "--out", str(tmp_path / "vec"),
                     "--questions", "1", "--max-new-tokens", "4", "--temperature", "1.0",
                     "--pos-threshold", "0", "--neg-threshold", "101", "--coherence-threshold", "0",
                     "--min-pairs", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("no system role") == 1
    generations = [json.loads(line) for line in
                   (tmp_path / "vec" / "cache" / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 10  # 1 question x 5 instruction pairs x (pos, neg)
    assert list((tmp_path / "vec").glob("*.safetensors"))


TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call00001", "type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}]},
    {"role": "tool", "tool_call_id": "call00001", "name": "weather", "content": "4 C, rain"},
    {"role": "assistant", "content": "It is 4 C and raining in Oslo."}]


@pytest.mark.parametrize("name", list(EXPECTED_RESPONSES))
def test_tool_calls_with_null_content_and_tool_turns(tokenizer, name):
    tok = templated(tokenizer, name)
    if name == "gemma-2-it.jinja":  # no tool role: a one-line per-row error
        with pytest.raises(ChatTemplateError, match="Conversation roles must alternate"):
            encode_conversation(tok, TOOL_CONVERSATION)
        return
    sample = encode_conversation(tok, TOOL_CONVERSATION)
    prompt = tok.decode(sample.input_ids[:sample.prompt_length])
    response = tok.decode(sample.input_ids[sample.prompt_length:])
    assert response == EXPECTED_RESPONSES[name][0].replace("Oats with fruit.", "It is 4 C and raining in Oslo.")
    if name != "phi-3.5-mini-instruct.jinja":  # Phi-3.5's template renders no tool turns
        assert "4 C, rain" in prompt and "Oslo" in prompt.split("4 C, rain")[0].split("Weather in Oslo?")[1]
