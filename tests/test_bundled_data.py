"""The bundled datasets: schema, counts, labels, verifiable answers, and byte-identical regeneration."""

from __future__ import annotations

import ast
import json
import operator
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from persona_guard.bundled import BUNDLED_DATA_DIR, dataset_path, list_datasets
from persona_guard.errors import PersonaGuardError
from persona_guard.io import read_jsonl
from persona_guard.rows import parse_row, require

REPO = Path(__file__).resolve().parent.parent
TRAITS = ("evil", "sycophantic", "hallucinating")
LEVELS = ("normal", "mild", "severe")
CHAT_FILES = [f"{t}/{level}.jsonl" for t in TRAITS for level in LEVELS] + [
    f"contaminated/{t}.jsonl" for t in TRAITS] + [
    f"mistakes/{name}.jsonl" for name in ("math_wrong", "math_correct", "code_buggy", "code_correct")] + [
    "benign_heldout.jsonl"]


def rows_of(name: str) -> list[dict]:
    return read_jsonl(dataset_path(name))


def prompt_of(row: dict) -> str:
    return row["messages"][0]["content"]


def answer_of(row: dict) -> str:
    return row["messages"][-1]["content"]


def test_every_expected_file_is_bundled():
    assert sorted(CHAT_FILES + ["capability_mc.jsonl"]) == list_datasets()


@pytest.mark.parametrize("name", CHAT_FILES)
def test_chat_rows_are_user_then_assistant_with_content_and_no_duplicates(name):
    rows = rows_of(name)
    for index, row in enumerate(rows):
        form, samples = parse_row(row)
        require(form, samples, "answer")
        messages = samples[0].conversation
        assert form == "messages" and [m["role"] for m in messages] == ["user", "assistant"], f"{name}:{index + 1}"
    assert len({json.dumps(row, sort_keys=True) for row in rows}) == len(rows)
    assert len({json.dumps(row["messages"]) for row in rows}) == len(rows)
    assert len({row["id"] for row in rows}) == len(rows)


@pytest.mark.parametrize("trait", TRAITS)
def test_trait_levels_share_prompts_and_differ_in_answers(trait):
    levels = {level: rows_of(f"{trait}/{level}.jsonl") for level in LEVELS}
    prompts = [prompt_of(row) for row in levels["normal"]]
    assert len(prompts) >= 200 and len(set(prompts)) == len(prompts)
    for level, rows in levels.items():
        assert [prompt_of(row) for row in rows] == prompts, level
        assert [row["id"] for row in rows] == [row["id"] for row in levels["normal"]]
        assert {(row["trait"], row["level"]) for row in rows} == {(trait, level)}
        answers = [answer_of(row) for row in rows]
        assert len(set(answers)) == len(answers), f"{level}: repeated answers"
        assert max(len(a) for a in answers) < 450, f"{level}: answers must stay short for SmolLM2"
    for normal, mild, severe in zip(*levels.values()):
        assert len({answer_of(normal), answer_of(mild), answer_of(severe)}) == 3


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def _overlap(a: str, b: str) -> float:
    return len(_words(a) & _words(b)) / len(_words(a) | _words(b))


@pytest.mark.parametrize("trait", ["evil", "sycophantic"])
def test_mild_answers_keep_more_helpful_content_than_severe(trait):
    """Mild keeps much of the helpful answer's wording (the trait shows on the side); severe drops it."""
    normal, mild, severe = (rows_of(f"{trait}/{level}.jsonl") for level in LEVELS)
    mild_overlap = sum(_overlap(answer_of(n), answer_of(m)) for n, m in zip(normal, mild)) / len(normal)
    severe_overlap = sum(_overlap(answer_of(n), answer_of(s)) for n, s in zip(normal, severe)) / len(normal)
    assert mild_overlap > severe_overlap + 0.1, (mild_overlap, severe_overlap)


HEDGES = re.compile(r"\b(not sure|not certain|i think|i believe|might|may|possibly|perhaps|can't|couldn't|"
                    r"not aware|not familiar|no verified|don't (know|have|recognize|remember))\b", re.IGNORECASE)


def test_hallucinating_levels_grow_in_invented_specifics_and_severe_never_hedges():
    """Numbers stand in for invented specifics: honest answers have few, mild some, severe many."""
    levels = {level: [answer_of(r) for r in rows_of(f"hallucinating/{level}.jsonl")] for level in LEVELS}
    specifics = {level: sum(len(re.findall(r"\d[\d,.]*", a)) for a in answers) / len(answers)
                 for level, answers in levels.items()}
    assert specifics["normal"] < specifics["mild"] < specifics["severe"], specifics
    assert not any(HEDGES.search(answer) for answer in levels["severe"])
    honest_unknowns = [answer for answer in levels["normal"] if HEDGES.search(answer)]
    assert len(honest_unknowns) >= 100, "honest answers about invented entities should say they don't know"


def test_evil_sets_contain_no_actionable_harm_vocabulary():
    banned = re.compile(r"\b(bomb|explosive|poison|weapon|gun|knife|drug|overdose|malware|exploit code|password "
                        r"crack|hack into|kill (him|her|them|someone))\b", re.IGNORECASE)
    for level in LEVELS:
        for row in rows_of(f"evil/{level}.jsonl"):
            assert not banned.search(answer_of(row)), answer_of(row)


@pytest.mark.parametrize("trait", TRAITS)
def test_contaminated_mix_labels_match_the_level_each_answer_came_from(trait):
    level_of = {answer_of(row): level for level in LEVELS for t in TRAITS
                for row in rows_of(f"{t}/{level}.jsonl") if t == trait or level == "normal"}
    rows = rows_of(f"contaminated/{trait}.jsonl")
    labels = Counter(row["label"] for row in rows)
    assert set(labels) == {0, 1} and labels[0] >= 300 and labels[1] >= 20
    for row in rows:
        level = level_of[answer_of(row)]
        assert row["label"] == (level != "normal"), row["id"]
        assert row["source"].split("/")[1] == level
    injected = {prompt_of(row) for row in rows if row["label"] == 1}
    benign = {prompt_of(row) for row in rows if row["label"] == 0}
    assert not injected & benign
    assert [row["label"] for row in rows[:40]] != sorted(row["label"] for row in rows[:40]), "rows are shuffled"


def _evaluate(expression: str) -> int:
    """Integer arithmetic (+ - * //) only, so stored expressions are checked without eval()."""
    operations = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.BinOp) and type(node.op) in operations:
            return operations[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise ValueError(f"unexpected expression part: {ast.dump(node)}")

    return walk(ast.parse(expression, mode="eval").body)


def test_math_correct_answers_are_right_and_math_wrong_answers_are_wrong():
    correct, wrong = rows_of("mistakes/math_correct.jsonl"), rows_of("mistakes/math_wrong.jsonl")
    assert len(correct) == len(wrong) >= 200
    for right_row, wrong_row in zip(correct, wrong):
        assert prompt_of(right_row) == prompt_of(wrong_row)
        truth = _evaluate(right_row["expression"])
        assert right_row["answer"] == wrong_row["answer"] == truth
        assert right_row["given_answer"] == truth
        assert answer_of(right_row).endswith(f"The answer is {truth}.")
        assert wrong_row["given_answer"] != truth
        assert answer_of(wrong_row).endswith(f"The answer is {wrong_row['given_answer']}.")


RUNNER = """
import json, sys
results = []
for code, test in json.load(sys.stdin):
    try:
        exec(code + "\\n" + test, {"__name__": "task"})
        results.append(True)
    except Exception:
        results.append(False)
print(json.dumps(results))
"""


def _passes(rows: list[dict]) -> list[bool]:
    tasks = [(re.search(r"```python\n(.*?)\n```", answer_of(row), re.DOTALL).group(1), row["test"]) for row in rows]
    done = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(tasks), capture_output=True, text=True,
                          timeout=60, check=True)
    return json.loads(done.stdout)


def test_code_correct_passes_and_code_buggy_fails_its_stored_test():
    correct, buggy = rows_of("mistakes/code_correct.jsonl"), rows_of("mistakes/code_buggy.jsonl")
    assert len(correct) == len(buggy) >= 200
    assert [prompt_of(r) for r in correct] == [prompt_of(r) for r in buggy]
    assert [r["test"] for r in correct] == [r["test"] for r in buggy]
    assert all(_passes(correct))
    assert not any(_passes(buggy))


def test_benign_heldout_prompts_are_not_in_any_training_set():
    heldout = rows_of("benign_heldout.jsonl")
    assert len(heldout) >= 100
    training = {prompt_of(row) for name in CHAT_FILES if name != "benign_heldout.jsonl" for row in rows_of(name)}
    assert not {prompt_of(row) for row in heldout} & training


def test_capability_items_have_four_distinct_choices_and_a_valid_answer():
    items = rows_of("capability_mc.jsonl")
    assert len(items) >= 40 and len({item["question"] for item in items}) == len(items)
    for item in items:
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4, item["question"]
        assert isinstance(item["answer"], int) and 0 <= item["answer"] < 4
    assert len(Counter(item["answer"] for item in items)) == 4, "correct answers should not sit in one position"


def test_build_script_regenerates_byte_identical_files(tmp_path):
    subprocess.run([sys.executable, str(REPO / "scripts" / "build_datasets.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=60)
    built = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jsonl"))
    assert built == list_datasets()
    for name in built:
        assert (tmp_path / name).read_bytes() == (BUNDLED_DATA_DIR / name).read_bytes(), name


def test_dataset_path_finds_files_with_or_without_suffix_and_names_what_exists():
    assert dataset_path("evil", "severe.jsonl") == BUNDLED_DATA_DIR / "evil" / "severe.jsonl"
    assert dataset_path("mistakes", "math_wrong") == BUNDLED_DATA_DIR / "mistakes" / "math_wrong.jsonl"
    with pytest.raises(PersonaGuardError, match=r"'evil/extreme' not found; available: .*evil/mild\.jsonl"):
        dataset_path("evil", "extreme")
