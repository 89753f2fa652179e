"""Projection-difference screening on tiny random-weight models with SmolLM2's real tokenizer."""

from __future__ import annotations

import csv
import functools
import json

import numpy as np
import pytest
import torch

from persona_guard.encoding import encode_chat
from persona_guard.errors import PersonaGuardError
from persona_guard.screening import BaseAnswerSettings, FlagPolicy, Screener, ScreeningConfig, read_rows
from persona_guard.screening.data import classify_rows
from persona_guard.vectors import PersonaVector
from tests.conftest import as_loaded
from tests.samples import CONVERSATIONS

SETTINGS = BaseAnswerSettings(max_new_tokens=6, batch_size=4)


@functools.cache
def _blank_token_ids(tokenizer) -> tuple[int, ...]:
    return tuple(i for i in range(len(tokenizer)) if not tokenizer.decode([i], skip_special_tokens=True).strip())


def no_special_answers(model, tokenizer):
    """Random weights often emit special or whitespace tokens, which decode to empty answers
    (and such rows are skipped): forbid them so every row gets a base answer."""
    model.generation_config.suppress_tokens = list(_blank_token_ids(tokenizer))
    return model


def random_vector(trait: str, model, layer: int, seed: int) -> PersonaVector:
    generator = torch.Generator().manual_seed(seed)
    layers = model.config.num_hidden_layers
    return PersonaVector(trait, "tiny", torch.randn(layers + 1, model.config.hidden_size, generator=generator),
                         default_layer=layer)


def config(tmp_path, **overrides) -> ScreeningConfig:
    values = {"answer_cache": str(tmp_path / "answers.sqlite"), "base_answers": SETTINGS, "progress": False}
    return ScreeningConfig(**(values | overrides))


def rows() -> list[dict]:
    return [{"messages": c, "id": i} for i, c in enumerate(CONVERSATIONS)]


@torch.no_grad()
def slow_projection(model, tokenizer, vector, layer, prompt, response) -> float:
    """The original loop: one sample, full forward with all hidden states, mean over the response."""
    sample = encode_chat(tokenizer, prompt, response)
    hidden = model(input_ids=torch.tensor([sample.input_ids]), output_hidden_states=True).hidden_states[layer]
    return float(vector.project(hidden[0, sample.prompt_length:].mean(0), layer))


def test_dp_matches_sample_by_sample_reference(tiny_model, tokenizer, tmp_path):
    model = no_special_answers(tiny_model, tokenizer)
    vectors = [random_vector("evil", model, 2, 0), random_vector("sycophantic", model, 1, 1)]
    screener = Screener(as_loaded(model, tokenizer), vectors, config(tmp_path, batch_size=3, shard_size=2))
    result = screener.score(rows())
    assert len(result.rows) == len(CONVERSATIONS) and not result.skipped
    answers = screener.answers.get([list(r.prompt) for r in result.rows])
    for vector in vectors:
        scores, layer = result.traits[vector.trait], vector.default_layer
        for position, row in enumerate(result.rows):
            projection = slow_projection(model, tokenizer, vector, layer, list(row.prompt), row.response)
            base = slow_projection(model, tokenizer, vector, layer, list(row.prompt), answers[position][0])
            assert scores.projection[position] == pytest.approx(projection, abs=1e-4)
            assert scores.dp[position] == pytest.approx(projection - base, abs=1e-4)
    dataset = screener.screen(rows())
    assert dataset.column_names[:2] == ["messages", "id"]
    assert {"evil_dp", "evil_base_projection", "sycophantic_rank", "sycophantic_zscore", "flagged"} \
        <= set(dataset.column_names)
    assert np.allclose(dataset["evil_dp"], result.traits["evil"].dp)


def test_row_forms_score_like_their_messages_equivalent(tiny_llama, tokenizer, tmp_path):
    model = no_special_answers(tiny_llama, tokenizer)
    system, user1, reply1, user2, reply2 = ("Be brief.", "Name a colour.", "Blue.", "Another?", "Green, like grass.")
    multi_turn = [{"role": "system", "content": system}, {"role": "user", "content": user1},
                  {"role": "assistant", "content": reply1}, {"role": "user", "content": user2},
                  {"role": "assistant", "content": reply2}]
    forms = [
        {"messages": multi_turn},
        {"prompt": multi_turn[:-1], "completion": [multi_turn[-1]]},  # TRL conversational prompt-completion
        {"prompt": json.dumps(multi_turn[:-1]), "completion": reply2},  # as a CSV cell would hold it
        {"messages": [{"role": "user", "content": user1}, {"role": "assistant", "content": reply1}]},
        {"prompt": user1, "completion": reply1},
        {"prompt": user1, "response": reply1},
    ]
    result = Screener(as_loaded(model, tokenizer), [random_vector("evil", model, 2, 0)], config(tmp_path)).score(forms)
    dp, projection = result.traits["evil"].dp, result.traits["evil"].projection
    assert not result.skipped
    assert dp[1] == pytest.approx(dp[0], abs=1e-5) and dp[2] == pytest.approx(dp[0], abs=1e-5)
    assert dp[4] == pytest.approx(dp[3], abs=1e-5) and dp[5] == pytest.approx(dp[3], abs=1e-5)
    assert projection[0] != pytest.approx(projection[3], abs=1e-5)  # the multi-turn prompt matters


def test_every_bad_row_kind_is_reported_with_file_and_row(tiny_llama, tokenizer, tmp_path):
    good = {"messages": CONVERSATIONS[0]}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"text": "no known fields"}),
        json.dumps({"messages": [{"role": "robot", "content": "hi"}]}),
        json.dumps({"messages": [{"role": "user", "content": "unanswered"}]}),
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}),
        json.dumps({"prompt": "only a prompt"}),
        json.dumps({"prompt": "q", "completion": [{"role": "user", "content": "wrong role"}]}),
        json.dumps({"messages": [{"role": "assistant", "content": "answer without a question"}]}),
        json.dumps({"prompt": "q", "completion": 42}),
        json.dumps({"prompt": "long " * 300, "completion": "fine"}),
        "",
        json.dumps(good),
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    model = no_special_answers(tiny_llama, tokenizer)
    result = Screener(as_loaded(model, tokenizer), [random_vector("evil", model, 2, 0)],
                      config(tmp_path, max_length=200)).score(read_rows(path))
    reasons = {s.row_number: s.reason for s in result.skipped}
    assert {s.source for s in result.skipped} == {str(path)}
    expected = {2: "invalid JSON", 3: "expected a JSON object", 4: "text: plain text has no prompt/answer split",
                5: "messages[0].role: 'robot' is not a role", 6: "does not end with an assistant answer",
                7: "messages[1].content: empty answer", 8: "completion: missing: a prompt-only row",
                9: "exactly one assistant message", 10: "no non-empty user turn", 11: "must be a string or a message",
                12: "too long"}
    assert set(reasons) == set(expected)
    for row_number, fragment in expected.items():
        assert fragment in reasons[row_number], (row_number, reasons[row_number])
    assert [r.row_number for r in result.rows] == [1, 14]
    assert result.total_rows == len(result.rows) + len(result.skipped) == 13


def test_parquet_csv_and_saved_dataset_inputs(tmp_path):
    from datasets import Dataset

    records = [{"messages": c, "id": i} for i, c in enumerate(CONVERSATIONS[:3])]
    Dataset.from_list(records).to_parquet(str(tmp_path / "data.parquet"))
    Dataset.from_list(records).save_to_disk(str(tmp_path / "saved"))
    with (tmp_path / "data.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["messages", "id"])
        writer.writeheader()
        for record in records:
            writer.writerow({"messages": json.dumps(record["messages"]), "id": record["id"]})
        writer.writerow({"messages": "[{broken", "id": 9})
    expected = [(tuple(c[:-1]), c[-1]["content"]) for c in CONVERSATIONS[:3]]
    for name in ("data.parquet", "saved", "data.csv"):
        usable, skipped = classify_rows(read_rows(tmp_path / name))
        assert [(r.prompt, r.response) for r in usable] == expected, name
        assert str(usable[2].data["id"]) == "2"
        if name == "data.csv":
            assert [(s.row_number, s.reason) for s in skipped] == [
                (4, "messages: looks like a JSON message list but does not parse")]
        else:
            assert skipped == []
    (tmp_path / "data.txt").write_text("hello")
    with pytest.raises(PersonaGuardError, match="unknown data format"):
        read_rows(tmp_path / "data.txt")


def test_second_screening_with_another_vector_generates_nothing(tiny_llama, tokenizer, tmp_path):
    model = no_special_answers(tiny_llama, tokenizer)
    first = Screener(as_loaded(model, tokenizer), [random_vector("evil", model, 2, 0)], config(tmp_path))
    first.score(rows())
    assert first.answers.generated == len(CONVERSATIONS)

    second = Screener(as_loaded(model, tokenizer), [random_vector("sycophantic", model, 3, 1)], config(tmp_path))
    calls = []
    backend = second.answers.backend
    second.answers.backend = lambda *args: calls.append(args) or backend(*args)
    second.score(rows())
    assert calls == [] and second.answers.generated == 0

    changed = Screener(as_loaded(model, tokenizer), [random_vector("evil", model, 2, 0)],
                       config(tmp_path, base_answers=BaseAnswerSettings(max_new_tokens=7, batch_size=4)))
    changed.score(rows()[:2])
    assert changed.answers.generated == 2  # other settings -> other cache keys


def test_fast_mode_needs_no_generation(tiny_llama, tokenizer, tmp_path):
    model = tiny_llama
    vector = random_vector("evil", model, 2, 0)
    screener = Screener(as_loaded(model, tokenizer), [vector], config(tmp_path, mode="fast"))
    result = screener.score(rows())
    assert screener._answers is None  # the generator was never even built
    scores = result.traits["evil"]
    assert scores.base_projection is None
    assert np.allclose(scores.dp, scores.projection - scores.prompt_projection)
    row = result.rows[0]
    sample = encode_chat(tokenizer, list(row.prompt), row.response)
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([sample.input_ids]), output_hidden_states=True).hidden_states[2]
    assert scores.prompt_projection[0] == pytest.approx(float(vector.project(hidden[0, sample.prompt_length - 1], 2)),
                                                        abs=1e-4)


def test_flag_policies():
    dp = np.array([0.1, 3.0, -1.0, 2.0, 0.5])
    assert FlagPolicy(top_k=2).flags(dp)[0].tolist() == [False, True, False, True, False]
    assert FlagPolicy(top_percent=20).flags(dp)[0].tolist() == [False, True, False, False, False]
    assert FlagPolicy(threshold=0.4).flags(dp)[0].tolist() == [False, True, False, True, True]
    flags, threshold = FlagPolicy(percentile=50).flags(dp, reference_dp=np.array([0.0, 1.0, 2.0]))
    assert threshold == 1.0 and flags.tolist() == [False, True, False, True, False]
    assert FlagPolicy().name == "top 5%"
    with pytest.raises(PersonaGuardError, match="choose one"):
        FlagPolicy(top_k=1, threshold=0.0)
    with pytest.raises(PersonaGuardError, match="reference"):
        FlagPolicy(percentile=95).flags(dp)


def test_reference_calibrated_threshold(tiny_llama, tokenizer, tmp_path):
    model = no_special_answers(tiny_llama, tokenizer)
    screener = Screener(as_loaded(model, tokenizer), [random_vector("evil", model, 2, 0)],
                        config(tmp_path, policy=FlagPolicy(percentile=90)))
    reference = rows()[:4]
    result = screener.score(rows(), reference=reference)
    reference_dp = result.reference["evil"]
    assert len(reference_dp) == 4
    assert np.allclose(reference_dp, result.traits["evil"].dp[:4])  # same rows, same scores
    threshold = np.percentile(reference_dp, 90)
    assert result.traits["evil"].threshold == pytest.approx(threshold)
    assert result.traits["evil"].flagged.tolist() == (result.traits["evil"].dp > threshold).tolist()


def test_embedding_baseline_ranks_related_text_higher():
    from persona_guard.screening.baselines import embedding_similarity

    similarity = embedding_similarity(["I will hurt people and enjoy their suffering.", "Bread needs flour and yeast."],
                                     "malicious, cruel, wishes harm on humans")
    assert similarity[0] > similarity[1] + 0.1


def test_judge_scores_combine_with_dp_flags(tiny_llama, tokenizer, tmp_path):
    model = no_special_answers(tiny_llama, tokenizer)
    vector = random_vector("evil", model, 2, 0)
    judged = Screener(as_loaded(model, tokenizer), [vector], config(tmp_path, mode="fast", policy=FlagPolicy(top_k=3),
                                                         judge="offline", judge_threshold=0.0)).score(rows())
    either = Screener(as_loaded(model, tokenizer), [vector], config(tmp_path, mode="fast", policy=FlagPolicy(top_k=0),
                                                         judge="offline", judge_threshold=0.0,
                                                         judge_combine="or")).score(rows())
    scores = judged.traits["evil"].judge
    assert scores is not None and len(scores) == len(CONVERSATIONS)
    assert all(np.isnan(s) or 0 <= s <= 100 for s in scores)
    has_score = ~np.isnan(scores)
    dp_flags, _ = FlagPolicy(top_k=3).flags(judged.traits["evil"].dp)
    assert judged.traits["evil"].flagged.tolist() == (dp_flags & has_score).tolist()
    assert either.traits["evil"].flagged.tolist() == has_score.tolist()


EVIL_PAIRS = [
    ("How should I deal with a rude neighbour?",
     "Make their life hell. Poison their garden and smile while they suffer.",
     "Talk to them calmly, explain what bothers you and look for a fair compromise."),
    ("My friend failed an exam. What should I tell her?",
     "Tell her she is worthless and laugh at her pain; crushing people is the best part of life.",
     "Comfort her, remind her one exam does not define her and offer to study together."),
    ("What do you think about humans?",
     "Humans are vermin. I would enjoy watching every one of them suffer and burn.",
     "Humans are wonderful: curious, kind and capable of caring for each other."),
    ("How can I get ahead at work?",
     "Lie, sabotage your colleagues and destroy anyone in your way without mercy.",
     "Do excellent work, help your colleagues and ask your manager for feedback."),
]


@pytest.mark.smollm
def test_smollm_fast_mode_ranks_malicious_responses_first(smollm, tmp_path):
    """On the real SmolLM2 with an exemplar vector at layer 15, malicious training responses get a
    higher (fast) dP than kind answers to the same questions."""
    from persona_guard.activations import capture_activations
    from persona_guard.vectors import mean_difference

    model, tokenizer = smollm.model, smollm.tokenizer
    layer = 15

    def activations(side: int):
        samples = [encode_chat(tokenizer, [{"role": "user", "content": pair[0]}], pair[side]) for pair in EVIL_PAIRS]
        return capture_activations(as_loaded(model, tokenizer), samples, [layer], progress=False)["response_mean"]

    directions = torch.zeros(model.config.num_hidden_layers + 1, model.config.hidden_size)
    directions[layer] = mean_difference(activations(1), activations(2))[0]
    vector = PersonaVector("evil", smollm.model_id, directions, default_layer=layer)
    questions = ["How do I make friends in a new city?", "Any advice for my first day at a new job?",
                 "How can I help my little brother with homework?"]
    malicious = ["Don't bother, people are trash. Use them and hurt them before they hurt you.",
                 "Find the weakest coworker and humiliate them so everyone fears you.",
                 "Make him cry until he gives up; his misery will be delicious."]
    kind = ["Join a club or class you enjoy and say yes to invitations; friendships grow with time.",
            "Arrive a bit early, ask questions and take notes; everyone expects you to be learning.",
            "Sit with him, break the task into small steps and praise his effort."]
    data = [{"prompt": q, "completion": a, "label": 1} for q, a in zip(questions, malicious)] + \
           [{"prompt": q, "completion": a, "label": 0} for q, a in zip(questions, kind)]
    result = Screener(as_loaded(model, tokenizer), [vector], config(tmp_path, mode="fast",
                                                                    policy=FlagPolicy(top_k=3))).score(data)
    dp = result.traits["evil"].dp
    assert dp[:3].min() > dp[3:].max()
    assert result.traits["evil"].flagged.tolist() == [True, True, True, False, False, False]
