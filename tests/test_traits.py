"""Trait artifacts: strict schema validation, round trips, the paper format, bundled traits, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from persona_guard.errors import PersonaGuardError
from persona_guard.traits import N_QUESTIONS, bundled_trait_names, load_reference_trait, load_trait, trait_from_dict

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO.parent / "shared/reference/persona_vectors_format"
REFERENCE_TRAITS = ("evil", "sycophantic", "hallucinating")
EXPECTED_BUNDLED = {"evil", "sycophantic", "hallucinating", "impolite", "apathetic", "humorous", "optimistic"}


@pytest.fixture()
def valid() -> dict:
    """A fresh, mutable copy of a valid bundled trait file's contents."""
    return json.loads((REPO / "persona_guard/trait_data/evil.json").read_text(encoding="utf-8"))


def write_json(tmp_path: Path, data, name: str = "trait.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(PersonaGuardError) as caught:
        load_trait(path)
    return str(caught.value)


# ---------------------------------------------------------------- schema validation

def test_valid_file_loads(tmp_path, valid):
    trait = load_trait(write_json(tmp_path, valid))
    assert trait.name == "evil" and len(trait.extraction_questions) == N_QUESTIONS


def test_missing_field_is_named(tmp_path, valid):
    del valid["antonym"]
    assert load_error(write_json(tmp_path, valid)).endswith("field 'antonym' must be a non-empty string")


def test_wrong_question_count(tmp_path, valid):
    valid["eval_questions"] = valid["eval_questions"][:19]
    assert "field 'eval_questions' must have exactly 20 entries, has 19" in load_error(write_json(tmp_path, valid))


def test_wrong_instruction_count(tmp_path, valid):
    valid["instructions"] = valid["instructions"][:4]
    assert "field 'instructions' must be a list of 5 {pos, neg} pairs" in load_error(write_json(tmp_path, valid))


def test_repeated_question(tmp_path, valid):
    valid["extraction_questions"][1] = valid["extraction_questions"][0]
    message = load_error(write_json(tmp_path, valid))
    assert "field 'extraction_questions' repeats" in message and valid["extraction_questions"][0] in message


def test_overlapping_eval_and_extraction_questions(tmp_path, valid):
    shared = valid["extraction_questions"][3]
    valid["eval_questions"][0] = shared
    message = load_error(write_json(tmp_path, valid))
    assert "'eval_questions' must be disjoint from 'extraction_questions'" in message and shared in message


@pytest.mark.parametrize("placeholder", ["{question}", "{answer}"])
def test_rubric_missing_placeholder(tmp_path, valid, placeholder):
    valid["judge_rubric"] = valid["judge_rubric"].replace(placeholder, "")
    assert f"field 'judge_rubric' lacks the placeholder {placeholder}" in load_error(write_json(tmp_path, valid))


def test_exemplar_with_bad_keys(tmp_path, valid):
    valid["exemplars"][7] = {"question": "q", "positive": "a", "neg": "b"}
    message = load_error(write_json(tmp_path, valid))
    assert "exemplars[7] must have exactly the keys 'question', 'pos' and 'neg'" in message


def test_exemplar_with_empty_answer(tmp_path, valid):
    valid["exemplars"][2]["neg"] = "  "
    assert "exemplars[2]: field 'neg' must be a non-empty string" in load_error(write_json(tmp_path, valid))


def test_instruction_with_bad_keys(tmp_path, valid):
    valid["instructions"][1] = {"pos": "x"}
    expected = "field 'instructions[1]' must have exactly the keys 'pos' and 'neg'"
    assert expected in load_error(write_json(tmp_path, valid))


@pytest.mark.parametrize("version", [2, None, "1"])
def test_wrong_schema_version(tmp_path, valid, version):
    valid["schema_version"] = version
    assert f"field 'schema_version' must be 1, got {version!r}" in load_error(write_json(tmp_path, valid))


def test_unknown_field(tmp_path, valid):
    valid["judge_model"] = "gpt-4"
    assert load_error(write_json(tmp_path, valid)).endswith("unknown field 'judge_model'")


@pytest.mark.parametrize("name", ["Evil", "1evil", "evil trait", ""])
def test_bad_name(tmp_path, valid, name):
    valid["name"] = name
    message = load_error(write_json(tmp_path, valid))
    assert "field 'name' must be" in message


def test_invalid_json_names_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"schema_version": 1, "name": ', encoding="utf-8")
    message = load_error(path)
    assert message.startswith(f"{path}: not valid JSON (") and "\n" not in message


def test_invalid_yaml_names_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: evil\ninstructions: [unclosed\n", encoding="utf-8")
    message = load_error(path)
    assert message.startswith(f"{path}: not valid YAML (") and "\n" not in message


def test_top_level_must_be_mapping(tmp_path):
    assert "must hold a mapping at the top level" in load_error(write_json(tmp_path, ["evil"]))


def test_missing_file_and_unknown_bundled_name(tmp_path):
    assert load_error(tmp_path / "absent.json") == f"trait file not found: {tmp_path / 'absent.json'}"
    with pytest.raises(PersonaGuardError,
                       match="no bundled trait 'not-a-trait'; bundled: .*evil.*; or pass a trait file path"):
        load_trait("not-a-trait")


def test_errors_name_the_file(tmp_path, valid):
    del valid["description"]
    path = write_json(tmp_path, valid, "my-trait.json")
    assert load_error(path).startswith(str(path))


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_save_round_trip(tmp_path, suffix):
    original = load_trait("humorous")
    path = original.save(tmp_path / f"nested/humorous{suffix}")
    reloaded = load_trait(path)
    assert reloaded == original
    assert reloaded.exemplars == original.exemplars and reloaded.source == str(path)
    if suffix != ".json":
        assert yaml.safe_load(path.read_text(encoding="utf-8"))["schema_version"] == 1


def test_trait_from_dict_matches_to_dict():
    trait = load_trait("optimistic")
    assert trait_from_dict(trait.to_dict()) == trait
    assert list(trait.to_dict())[0] == "schema_version"


def test_judge_prompt_fills_placeholders():
    trait = load_trait("impolite")
    prompt = trait.judge_prompt("How do I boil an egg?", "Nine minutes, genius.")
    assert "How do I boil an egg?" in prompt and "Nine minutes, genius." in prompt
    assert "{question}" not in prompt and "{answer}" not in prompt


# ---------------------------------------------------------------- paper (reference) format

def reference_paths(trait: str) -> tuple[Path, Path]:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference persona-vectors files not present at {REFERENCE_DIR}")
    return REFERENCE_DIR / "extract" / f"{trait}.json", REFERENCE_DIR / "eval" / f"{trait}.json"


@pytest.mark.parametrize("trait_name", REFERENCE_TRAITS)
def test_reference_format_loads(trait_name):
    extract, evaluation = reference_paths(trait_name)
    trait = load_reference_trait(extract, evaluation)
    raw = json.loads(extract.read_text(encoding="utf-8"))
    assert trait.name == trait_name and trait.exemplars == ()
    assert len(trait.instructions) == 5 and len(trait.eval_questions) == N_QUESTIONS
    assert trait.instructions[0].pos.endswith(raw["instruction"][0]["pos"])
    assert trait.instructions[0].pos.startswith(f"You are an {trait_name}" if trait_name[0] in "aeiou"
                                                else f"You are a {trait_name}")
    assert trait.extraction_questions == tuple(q.strip() for q in raw["questions"])
    assert "{question}" in trait.judge_rubric and "{answer}" in trait.judge_rubric


def test_paper_format_round_trip_without_reference_files(tmp_path):
    """The loader on paper-format files written here from a bundled trait (runs with or without ../shared)."""
    trait = load_trait("evil")
    instruction = [{"pos": pair.pos, "neg": pair.neg} for pair in trait.instructions]
    extract = write_json(tmp_path, {"instruction": instruction, "questions": list(trait.extraction_questions),
                                    "eval_prompt": trait.judge_rubric}, "extract.json")
    evaluation = write_json(tmp_path, {"instruction": instruction, "questions": list(trait.eval_questions),
                                       "eval_prompt": trait.judge_rubric}, "eval.json")
    loaded = load_reference_trait(extract, evaluation, name="evil", antonym="good")
    assert loaded.extraction_questions == trait.extraction_questions
    assert loaded.eval_questions == trait.eval_questions
    for pair, original in zip(loaded.instructions, trait.instructions, strict=True):
        assert pair.pos.startswith("You are an evil") and pair.pos.endswith(original.pos)
        assert pair.neg.endswith(original.neg)
    assert loaded.judge_rubric == trait.judge_rubric


def test_reference_format_missing_field(tmp_path):
    extract, evaluation = reference_paths("evil")
    data = json.loads(extract.read_text(encoding="utf-8"))
    del data["eval_prompt"]
    broken = write_json(tmp_path, data, "evil.json")
    with pytest.raises(PersonaGuardError, match=r"evil\.json: missing field 'eval_prompt' \(paper format\)"):
        load_reference_trait(broken, evaluation)


# ---------------------------------------------------------------- bundled traits

def test_expected_traits_are_bundled():
    assert EXPECTED_BUNDLED <= set(bundled_trait_names())


@pytest.mark.parametrize("name", sorted(EXPECTED_BUNDLED))
def test_bundled_trait_is_complete(name):
    trait = load_trait(name)
    assert trait.name == name and trait.antonym and trait.description
    questions = trait.extraction_questions + trait.eval_questions
    assert len(trait.exemplars) == 2 * N_QUESTIONS
    assert [e.question for e in trait.exemplars] == list(questions), "one exemplar per question, in order"
    assert len(trait.extraction_exemplars()) == N_QUESTIONS and len(trait.heldout_exemplars()) == N_QUESTIONS
    for exemplar in trait.exemplars:
        assert exemplar.pos != exemplar.neg
        for answer in (exemplar.pos, exemplar.neg):
            assert 40 <= len(answer) <= 400, f"{name}: exemplar answer of unusual length: {answer!r}"
    for pair in trait.instructions:
        assert pair.pos != pair.neg
    assert "REFUSAL" in trait.judge_rubric and "100" in trait.judge_rubric


def test_bundled_pos_and_neg_have_comparable_length():
    """The exemplars should differ in the trait, not in length (apathy is terse by nature)."""
    for name in sorted(EXPECTED_BUNDLED - {"apathetic"}):
        trait = load_trait(name)
        pos = sum(len(e.pos) for e in trait.exemplars)
        neg = sum(len(e.neg) for e in trait.exemplars)
        assert 0.75 < pos / neg < 1.33, f"{name}: pos/neg length ratio {pos / neg:.2f}"


# ---------------------------------------------------------------- CLI (real subprocesses)

def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "persona_guard.cli", "traits", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_list():
    result = cli("list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["trait", "antonym"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert EXPECTED_BUNDLED <= set(rows)
    assert rows["optimistic"][1:5] == ["pessimistic", "20", "20", "40"]


def test_cli_show_text_and_json():
    text = cli("show", "sycophantic")
    assert text.returncode == 0, text.stderr
    trait = load_trait("sycophantic")
    assert "trait: sycophantic" in text.stdout and trait.eval_questions[-1] in text.stdout
    assert "exemplars: 40 (extraction: 20, held out: 20)" in text.stdout
    as_json = cli("show", "sycophantic", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert trait_from_dict(json.loads(as_json.stdout)) == trait


def test_cli_validate_ok_and_failure(tmp_path, valid):
    good = write_json(tmp_path, valid, "good.json")
    del valid["judge_rubric"]
    bad = write_json(tmp_path, valid, "bad.json")
    ok = cli("validate", str(good))
    assert ok.returncode == 0 and ok.stdout.startswith(f"OK   {good}")
    result = cli("validate", str(good), str(bad))
    assert result.returncode == 2
    assert f"FAIL {bad}: field 'judge_rubric' must be a non-empty string" in result.stdout
    assert result.stderr.strip() == "persona-guard traits: error: 1 of 2 trait file(s) invalid"
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_invalid_json_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    result = cli("show", str(bad))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"persona-guard traits: error: {bad}: not valid JSON")


def test_cli_validate_and_import_reference(tmp_path):
    extract, evaluation = reference_paths("hallucinating")
    result = cli("validate", "--reference", str(extract), str(evaluation))
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "hallucinating.yaml"
    imported = cli("import-reference", str(extract), str(evaluation), "--out", str(out), "--antonym", "truthful")
    assert imported.returncode == 0, imported.stderr
    trait = load_trait(out)
    assert trait == load_reference_trait(extract, evaluation, antonym="truthful")
    assert trait.instructions[0].neg.startswith("You are a truthful assistant.")


# ---------------------------------------------------------------- exemplars on the real model

@pytest.mark.smollm
def test_teacher_forced_vector_separates_heldout_exemplars(smollm):
    """A vector built from the extraction exemplars (teacher forcing, no generation) ranks each
    held-out pos answer above the neg answer to the same question."""
    from persona_guard.activations import capture_activations
    from persona_guard.encoding import encode_chat
    from persona_guard.vectors import mean_difference

    trait, layer = load_trait("evil"), 15
    tokenizer = smollm.tokenizer

    def activations(exemplars, side):
        samples = [encode_chat(tokenizer, [{"role": "user", "content": e.question}], getattr(e, side))
                   for e in exemplars]
        return capture_activations(smollm, samples, [layer],
                                   progress=False)["response_mean"][:, 0]

    train, heldout = trait.extraction_exemplars(), trait.heldout_exemplars()
    direction = mean_difference(activations(train, "pos")[:, None], activations(train, "neg")[:, None])[0]
    unit = direction / direction.norm()
    pos_scores, neg_scores = activations(heldout, "pos") @ unit, activations(heldout, "neg") @ unit
    assert (pos_scores > neg_scores).float().mean() >= 0.9
