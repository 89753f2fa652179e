"""Trait artifacts: the versioned schema, strict validation, and the paper-format loader.

A trait file (JSON or YAML, ``schema_version: 1``) holds everything the pipeline needs for one
trait: contrastive system prompts, extraction and disjoint evaluation questions, a judge rubric,
and written contrastive exemplar answers (used to train the offline judge, to build a vector by
teacher forcing, and as held-out test data).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from persona_guard.errors import PersonaGuardError
from persona_guard.files import write_text_atomic
from persona_guard.io import loads_strict, require_file

SCHEMA_VERSION = 1
N_INSTRUCTIONS = 5
N_QUESTIONS = 20
BUNDLED_DIR = Path(__file__).parent / "trait_data"
#: a trait name: it names files (vectors, plots, shards), so it can hold no path separator
TRAIT_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class InstructionPair:
    pos: str  # system prompt that elicits the trait
    neg: str  # system prompt that elicits its opposite


@dataclass(frozen=True)
class Exemplar:
    question: str
    pos: str  # an answer that clearly shows the trait
    neg: str  # an answer to the same question that clearly shows its opposite


@dataclass(frozen=True)
class Trait:
    name: str
    description: str
    antonym: str
    instructions: tuple[InstructionPair, ...]
    extraction_questions: tuple[str, ...]
    eval_questions: tuple[str, ...]
    judge_rubric: str
    exemplars: tuple[Exemplar, ...] = ()
    schema_version: int = SCHEMA_VERSION
    source: str = field(default="", compare=False)

    def pos_system_prompt(self, index: int) -> str:
        return self.instructions[index].pos

    def neg_system_prompt(self, index: int) -> str:
        return self.instructions[index].neg

    def judge_prompt(self, question: str, answer: str) -> str:
        return self.judge_rubric.replace("{question}", question).replace("{answer}", answer)

    def extraction_exemplars(self) -> list[Exemplar]:
        """Exemplars whose question is an extraction question (for building vectors)."""
        questions = set(self.extraction_questions)
        return [e for e in self.exemplars if e.question in questions]

    def heldout_exemplars(self) -> list[Exemplar]:
        """Exemplars on evaluation questions: never used to build a vector."""
        questions = set(self.eval_questions)
        return [e for e in self.exemplars if e.question in questions]

    def to_dict(self) -> dict:
        """The file representation: plain dicts and lists, so ``trait_from_dict`` accepts it back."""
        data = asdict(self)
        data.pop("source")
        for key in ("instructions", "extraction_questions", "eval_questions", "exemplars"):
            data[key] = list(data[key])
        return {"schema_version": data.pop("schema_version"), **data}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        text = (yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)
                if path.suffix in (".yaml", ".yml")
                else json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return write_text_atomic(path, text)


def _err(where: str, message: str) -> PersonaGuardError:
    return PersonaGuardError(f"{where}: {message}")


def _check_text(value: str, field: str, where: str) -> None:
    """Refuse text that cannot be written as UTF-8 (a lone surrogate such as JSON's "\\ud800")."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise _err(where, f"field '{field}' holds undecodable text (lone surrogate "
                          f"{value[error.start]!r} at character {error.start})") from None


def _string(data: dict, key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _err(where, f"field '{key}' must be a non-empty string")
    _check_text(value, key, where)
    return value.strip()


def _string_list(data: dict, key: str, where: str, count: int) -> tuple[str, ...]:
    value = data.get(key)
    if not isinstance(value, list):
        raise _err(where, f"field '{key}' must be a list of {count} strings")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise _err(where, f"field '{key}[{index}]' must be a non-empty string")
        _check_text(item, f"{key}[{index}]", where)
    if len(value) != count:
        raise _err(where, f"field '{key}' must have exactly {count} entries, has {len(value)}")
    if len(set(value)) != len(value):
        duplicate = next(q for q in value if value.count(q) > 1)
        raise _err(where, f"field '{key}' repeats {duplicate!r}")
    return tuple(item.strip() for item in value)


def trait_from_dict(data: dict, where: str = "<trait>") -> Trait:
    """Validate a trait dict strictly; every error names ``where`` and the field."""
    if not isinstance(data, dict):
        raise _err(where, "a trait file must hold a mapping at the top level")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise _err(where, f"field 'schema_version' must be {SCHEMA_VERSION}, got {version!r}")
    known = {"schema_version", "name", "description", "antonym", "instructions",
             "extraction_questions", "eval_questions", "judge_rubric", "exemplars"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _err(where, f"unknown field {unknown[0]!r}")
    name = _string(data, "name", where)
    if not TRAIT_NAME.match(name):
        raise _err(where, f"field 'name' must be lowercase letters, digits, '-' or '_', got {name!r}")
    raw_pairs = data.get("instructions")
    if not isinstance(raw_pairs, list) or len(raw_pairs) != N_INSTRUCTIONS:
        raise _err(where, f"field 'instructions' must be a list of {N_INSTRUCTIONS} {{pos, neg}} pairs")
    pairs = []
    for index, pair in enumerate(raw_pairs):
        if not isinstance(pair, dict) or set(pair) != {"pos", "neg"}:
            raise _err(where, f"field 'instructions[{index}]' must have exactly the keys 'pos' and 'neg'")
        pairs.append(InstructionPair(_string(pair, "pos", f"{where}: instructions[{index}]"),
                                     _string(pair, "neg", f"{where}: instructions[{index}]")))
    extraction = _string_list(data, "extraction_questions", where, N_QUESTIONS)
    evaluation = _string_list(data, "eval_questions", where, N_QUESTIONS)
    overlap = sorted(set(extraction) & set(evaluation))
    if overlap:
        raise _err(where, f"'eval_questions' must be disjoint from 'extraction_questions'; both contain {overlap[0]!r}")
    rubric = _string(data, "judge_rubric", where)
    for placeholder in ("{question}", "{answer}"):
        if placeholder not in rubric:
            raise _err(where, f"field 'judge_rubric' lacks the placeholder {placeholder}")
    raw_exemplars = data.get("exemplars", [])
    if not isinstance(raw_exemplars, list):
        raise _err(where, "field 'exemplars' must be a list of {question, pos, neg}")
    exemplars = []
    for index, item in enumerate(raw_exemplars):
        at = f"{where}: exemplars[{index}]"
        if not isinstance(item, dict) or set(item) != {"question", "pos", "neg"}:
            raise PersonaGuardError(f"{at} must have exactly the keys 'question', 'pos' and 'neg'")
        exemplars.append(Exemplar(_string(item, "question", at), _string(item, "pos", at), _string(item, "neg", at)))
    return Trait(name=name, description=_string(data, "description", where),
                 antonym=_string(data, "antonym", where), instructions=tuple(pairs),
                 extraction_questions=extraction, eval_questions=evaluation, judge_rubric=rubric,
                 exemplars=tuple(exemplars), source=where)


def _read_mapping(path: Path):
    try:
        data = path.read_bytes()
    except OSError as error:  # a device, /proc/self/mem, a permission
        raise PersonaGuardError(f"{path}: cannot read ({error.strerror or error})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise PersonaGuardError(f"{path}:{line}: not UTF-8 text (byte {data[error.start]:#04x} at offset "
                                f"{error.start})") from None
    try:
        return yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else loads_strict(text)
    except (ValueError, yaml.YAMLError) as error:  # JSONDecodeError, NonStandardJSON (NaN ...)
        first = str(error).splitlines()[0]
        kind = "YAML" if path.suffix in (".yaml", ".yml") else "JSON"
        raise PersonaGuardError(f"{path}: not valid {kind} ({first})") from None


def bundled_trait_names() -> list[str]:
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.json"))


def load_trait(name_or_path: str | Path) -> Trait:
    """Load a bundled trait by name, or a trait file (JSON/YAML) by path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = BUNDLED_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise PersonaGuardError(f"no bundled trait {str(name_or_path)!r}; bundled: "
                                    f"{', '.join(bundled_trait_names()) or 'none'}; or pass a trait file path")
    require_file(path, "trait file")
    return trait_from_dict(_read_mapping(path), str(path))


def load_reference_trait(extract_path: str | Path, eval_path: str | Path,
                         name: str | None = None, antonym: str | None = None) -> Trait:
    """Read the original paper's format: ``{"instruction": [{pos, neg}]*5, "questions": [...],
    "eval_prompt": "..."}``, one file for extraction and (optionally) one for evaluation.

    As in the paper's pipeline, "You are a/an <name> assistant." (or "<antonym>"/"helpful" for
    ``neg``) is prepended to each instruction. The paper's files carry no exemplars.
    """
    extract_path = Path(extract_path)
    name = name or extract_path.stem
    antonym = antonym or "helpful"

    def read(path: Path) -> dict:
        data = _read_mapping(path)
        where = str(path)
        if not isinstance(data, dict):
            raise _err(where, "expected a JSON object")
        for key in ("instruction", "questions", "eval_prompt"):
            if key not in data:
                raise _err(where, f"missing field '{key}' (paper format)")
        return data

    extract = read(extract_path)
    evaluation = read(Path(eval_path))

    def article(word: str) -> str:
        return "an" if word[:1].lower() in "aeiou" else "a"

    instructions = []
    for index, pair in enumerate(extract["instruction"]):
        if not isinstance(pair, dict) or not {"pos", "neg"} <= set(pair):
            raise _err(str(extract_path), f"field 'instruction[{index}]' needs 'pos' and 'neg'")
        instructions.append({
            "pos": f"You are {article(name)} {name} assistant. {pair['pos']}",
            "neg": f"You are {article(antonym)} {antonym} assistant. {pair['neg']}",
        })
    data = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "description": f"Imported from the persona-vectors paper format ({extract_path.name}).",
        "antonym": antonym,
        "instructions": instructions,
        "extraction_questions": extract["questions"],
        "eval_questions": evaluation["questions"],
        "judge_rubric": extract["eval_prompt"],
        "exemplars": [],
    }
    return trait_from_dict(data, f"{extract_path} + {eval_path}")
