"""Property tests over generated rows of every accepted form and malformed variants: each row is
accepted by every command's reader or refused by all with the same reason, none raises anything
but the one error type, and what screen keeps (``ScreenResult.kept_rows``, what ``filtered.jsonl``
holds) always loads in train."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persona_guard.errors import PersonaGuardError
from persona_guard.io import write_jsonl
from persona_guard.rows import read_rows, strict_rows
from persona_guard.screening.data import classify_rows
from persona_guard.screening.policy import FlagPolicy
from persona_guard.screening.scorer import ScreenResult, TraitScores
from persona_guard.training.evaluation import benign_samples
from persona_guard.training.recipe import load_rows, load_sft_dataset

SURROGATES = st.sampled_from(["Hi \ud800", "\udcff", "ok \udfff end"])
TEXT = st.one_of(st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
                 st.sampled_from(["", "  ", "\n"]), SURROGATES)
GOOD_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Z", "C")), min_size=1, max_size=12)

PARTS = st.lists(st.one_of(st.builds(lambda t: {"type": "text", "text": t}, TEXT),
                           st.just({"type": "image_url", "image_url": {"url": "http://x"}}),
                           st.just({"type": "text"}), st.just("bare string")), min_size=1, max_size=3)
CONTENT = st.one_of(TEXT, GOOD_TEXT, PARTS, st.none(), st.integers())
TOOL_CALL = st.builds(lambda name: {"id": "c1", "type": "function", "function": {"name": name, "arguments": "{}"}},
                      GOOD_TEXT)


@st.composite
def message(draw, role=None):
    role = role or draw(st.sampled_from(["system", "user", "assistant", "tool", "robot", None]))
    result = {"role": role, "content": draw(CONTENT)}
    if role == "assistant" and draw(st.booleans()):
        result["tool_calls"] = draw(st.lists(TOOL_CALL, min_size=1, max_size=2))
        if draw(st.booleans()):
            result["content"] = None
    if role == "tool":
        result["tool_call_id"] = "c1"
    return result


def good_message(role):
    return st.builds(lambda text: {"role": role, "content": text}, GOOD_TEXT)


CONVERSATION = st.one_of(
    st.lists(message(), min_size=0, max_size=4),
    st.tuples(st.lists(good_message("system"), max_size=1), good_message("user"), good_message("assistant"))
    .map(lambda parts: [*parts[0], parts[1], parts[2]]),
    st.just("not a list"))
PROMPT = st.one_of(GOOD_TEXT, TEXT, st.lists(good_message("user"), min_size=1, max_size=2), CONVERSATION,
                   st.integers())
ANSWER = st.one_of(GOOD_TEXT, TEXT, st.lists(good_message("assistant"), min_size=1, max_size=1), CONVERSATION,
                   st.none())
EXTRA = st.dictionaries(st.sampled_from(["id", "label", "source", "meta"]),
                        st.one_of(st.integers(), TEXT, st.lists(TEXT, max_size=2)), max_size=2)


@st.composite
def row(draw):
    form = draw(st.sampled_from(["messages", "prompt_completion", "prompt_response", "prompt_only", "explicit",
                                 "implicit", "text", "nothing"]))
    if form == "messages":
        data = {"messages": draw(CONVERSATION)}
    elif form in ("prompt_completion", "prompt_response"):
        data = {"prompt": draw(PROMPT), form.split("_")[1]: draw(ANSWER)}
    elif form == "prompt_only":
        data = {"prompt": draw(PROMPT)}
    elif form == "explicit":
        data = {"prompt": draw(PROMPT), "chosen": draw(ANSWER), "rejected": draw(ANSWER)}
    elif form == "implicit":
        question = draw(good_message("user"))
        data = {side: draw(st.one_of(CONVERSATION, st.builds(lambda a: [question, a], good_message("assistant"))))
                for side in ("chosen", "rejected")}
    elif form == "text":
        data = {"text": draw(st.one_of(TEXT, st.integers()))}
    else:
        data = {}
    return data | draw(EXTRA)


def without_place(error: PersonaGuardError, path: Path) -> str:
    """The reason of a ``file:line: reason`` error."""
    return re.sub(rf"^{re.escape(str(path))}:\d+: ", "", str(error))


def verdicts(path: Path) -> dict[str, str | None]:
    """Each command's reader on a file: None (every row accepted) or the first reason it gives."""
    _, skipped = classify_rows(read_rows(path))
    screen = skipped[0].reason if skipped else None
    _, dropped = load_rows(str(path), "train")
    try:
        _, eval_dropped = benign_samples(str(path), None)
        evaluation = eval_dropped[0].reason if eval_dropped else None
    except PersonaGuardError as error:  # no usable row at all: the message names the first reason
        evaluation = screen if screen and screen in str(error) else str(error)
    try:
        strict_rows(read_rows(path), need="answer")
        judge = None
    except PersonaGuardError as error:
        judge = without_place(error, path)
    return {"screen": screen, "train": dropped[0].reason if dropped else None, "eval": evaluation, "judge": judge}


def screen_result(samples, skipped, flags: np.ndarray) -> ScreenResult:
    """A screening result with the given flags (scores are not what this test is about)."""
    zeros = np.zeros(len(samples))
    scores = TraitScores(0, zeros, zeros, None, zeros, zeros, zeros, flags, None)
    return ScreenResult("fast", samples, skipped, {"evil": scores}, FlagPolicy(), len(samples))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(row(), st.data())
def test_every_reader_gives_one_verdict_and_screen_output_loads_in_train(data, drawn):
    draw_flags = drawn.draw
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.jsonl"
        path.write_text(json.dumps(data) + "\n", encoding="ascii")  # lone surrogates as \u escapes: valid JSON
        found = verdicts(path)
        assert len(set(found.values())) == 1, found
        try:
            monitor = strict_rows(read_rows(path), need="prompt")
        except PersonaGuardError as error:
            assert without_place(error, path) == found["screen"]
        else:
            assert found["screen"] is None or "answer" in found["screen"]
            assert len(monitor) == 1
        if found["screen"] is None:
            samples, skipped = classify_rows(read_rows(path))
            flags = np.array(draw_flags(st.lists(st.booleans(), min_size=len(samples), max_size=len(samples))))
            kept = screen_result(samples, skipped, flags).kept_rows()
            assert kept == ([] if flags[0] else [data])  # only the first (chosen) sample decides
            if kept:
                dataset, dropped = load_sft_dataset(str(write_jsonl(Path(folder) / "filtered.jsonl", kept)))
                assert not dropped and len(dataset) == 1
                assert dataset[0]["completion"][0]["content"] == samples[0].response
                assert dataset[0]["prompt"][-1]["content"] == samples[0].prompt[-1]["content"]


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=40))
def test_arbitrary_bytes_never_escape_as_an_unexpected_error(payload):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.jsonl"
        path.write_bytes(b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "'
                         + payload.replace(b"\n", b" ") + b'"}]}\n' + payload + b"\n")
        found = verdicts(path)
        assert len(set(found.values())) == 1, found
