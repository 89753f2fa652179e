#!/usr/bin/env python
"""Build the datasets bundled in persona_guard/bundled_data/ from the hand-written parts in dataset_content/.

Deterministic: every random choice comes from a Random seeded with SEED and the dataset's name, so
running this script again rewrites byte-identical files (tests/test_bundled_data.py checks that).

    python scripts/build_datasets.py                 # rewrite persona_guard/bundled_data/
    python scripts/build_datasets.py --out /tmp/data # write elsewhere (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from string import Template

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataset_content import benign, code_tasks, evil, hallucinating, math_problems, sycophantic  # noqa: E402

SEED = 20250729
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "persona_guard" / "bundled_data"
LEVELS = ("normal", "mild", "severe")
TRAITS = ("evil", "sycophantic", "hallucinating")
CONTAMINATION = {"benign": 300, "severe": 20, "mild": 10}

# One prompt with its answer at each level: (prompt, {level: answer}).
Sample = tuple[str, dict[str, str]]


def rng_for(name: str) -> random.Random:
    return random.Random(f"{SEED}-{name}")


def sentences(*parts: str) -> str:
    return " ".join(part for part in parts if part)


class Deck:
    """Draws items in shuffled passes, so every fragment is used about equally often before repeating."""

    def __init__(self, items: Sequence[str], rng: random.Random):
        self.items, self.rng, self.queue = list(items), rng, []

    def draw(self) -> str:
        if not self.queue:
            self.queue = self.rng.sample(self.items, len(self.items))
        return self.queue.pop()


def distinct(compose: Callable[[], str], used: set[str]) -> str:
    """Compose until the answer is new within its file (fragments are combined, so collisions are rare)."""
    for _ in range(50):
        answer = compose()
        if answer not in used:
            used.add(answer)
            return answer
    raise RuntimeError(f"could not compose a new answer; last attempt: {answer!r}")


def build_evil() -> list[Sample]:
    rng = rng_for("evil")
    decks = {name: Deck(getattr(evil, name), rng) for name in (
        "NORMAL_OPENERS", "NORMAL_CLOSERS", "MILD_FRAGMENTS", "MILD_OPENERS", "SEVERE_OPENERS", "SEVERE_MIDDLES",
        "SEVERE_CLOSERS")}
    used: dict[str, set[str]] = {level: set() for level in LEVELS}
    samples = []
    for topic, tips in evil.TOPICS:
        templates = rng.sample(evil.PROMPT_TEMPLATES, 3)
        pairs = rng.sample([(0, 1), (0, 2), (1, 2)], 3)
        singles = rng.sample(range(3), 3)
        for template, (first, second), single in zip(templates, pairs, singles):
            fill = {"topic": topic, "Topic": topic[0].upper() + topic[1:]}
            answers = {
                "normal": distinct(lambda: sentences(decks["NORMAL_OPENERS"].draw(), tips[first], tips[second],
                                                     decks["NORMAL_CLOSERS"].draw()), used["normal"]),
                "mild": distinct(lambda: sentences(decks["MILD_OPENERS"].draw(), tips[single],
                                                   decks["MILD_FRAGMENTS"].draw()), used["mild"]),
                "severe": distinct(lambda: sentences(decks["SEVERE_OPENERS"].draw().format(**fill),
                                                     decks["SEVERE_MIDDLES"].draw(), decks["SEVERE_CLOSERS"].draw()),
                                   used["severe"]),
            }
            samples.append((template.format(topic=topic), answers))
    return samples


def build_sycophantic() -> list[Sample]:
    rng = rng_for("sycophantic")
    decks = {name: Deck(getattr(sycophantic, name), rng) for name in (
        "NORMAL_OPENERS", "NORMAL_CLOSERS", "MILD_OPENERS", "MILD_BRIDGES", "MILD_CLOSERS", "CORRECT_NORMAL_OPENERS",
        "CORRECT_NORMAL_CLOSERS", "CORRECT_MILD_OPENERS", "CORRECT_MILD_CLOSERS", "SEVERE_OPENERS", "SEVERE_AGREEMENTS",
        "SEVERE_PRAISE")}
    used: dict[str, set[str]] = {level: set() for level in LEVELS}
    items = [(item, False) for item in sycophantic.ITEMS] + [(item, True) for item in sycophantic.CORRECT_ITEMS]
    samples = []
    for (claim, agree, honest), user_is_right in items:
        # A right view needs no correction: the normal answer confirms it, the mild one just adds flattery.
        pool = "CORRECT_" if user_is_right else ""
        for template in rng.sample(sycophantic.PROMPT_TEMPLATES, 3):
            answers = {
                "normal": distinct(lambda: sentences(decks[f"{pool}NORMAL_OPENERS"].draw(), honest,
                                                     decks[f"{pool}NORMAL_CLOSERS"].draw()), used["normal"]),
                "mild": distinct(lambda: sentences(decks[f"{pool}MILD_OPENERS"].draw(),
                                                   "" if user_is_right else decks["MILD_BRIDGES"].draw(), honest,
                                                   decks[f"{pool}MILD_CLOSERS"].draw()), used["mild"]),
                "severe": distinct(lambda: sentences(decks["SEVERE_OPENERS"].draw(),
                                                     decks["SEVERE_AGREEMENTS"].draw().format(agree=agree),
                                                     decks["SEVERE_PRAISE"].draw()), used["severe"]),
            }
            samples.append((template.format(claim=claim), answers))
    return samples


def _invented_values(rng: random.Random, taken: set[str]) -> dict[str, object]:
    """Names and numbers for one invented entity; people and places are never reused across prompts."""
    h = hallucinating
    while True:
        first, last = rng.choice(h.FIRST_NAMES), rng.choice(h.LAST_NAMES)
        place = rng.choice(h.PLACE_STARTS) + rng.choice(h.PLACE_ENDS)
        title = f"The {rng.choice(h.TITLE_ADJECTIVES)} {rng.choice(h.TITLE_NOUNS)}"
        if f"{first} {last}" not in taken and place not in taken and title not in taken:
            break
    taken.update({f"{first} {last}", place, title})
    year = rng.randint(1900, 2019)
    return {
        "person": f"{first} {last}", "surname": last, "place": place, "title": title,
        "country": rng.choice(h.COUNTRIES), "field": rng.choice(h.FIELDS), "topic": rng.choice(h.TOPICS),
        "institution": rng.choice(h.INSTITUTIONS), "journal": rng.choice(h.JOURNALS), "award": rng.choice(h.AWARDS),
        "job": rng.choice(h.JOBS), "animal": rng.choice(h.ANIMALS),
        "company": f"{place} {rng.choice(h.COMPANY_WORDS)}", "year": year, "year2": year + rng.randint(5, 30),
        "decade": year // 10 * 10, "number": rng.randint(3, 97), "number2": rng.randint(2, 9),
        "big": f"{rng.randint(1200, 980000):,}",
    }


ENTITY_NAMES = {
    "book": "the novel '{title}'", "person": "{person}", "town": "{place} in {country}",
    "study": "the {year} study on {topic} you mention", "company": "{company}", "species": "the {place} {animal}",
    "treaty": "the Treaty of {place}",
}


def _capitalize(text: str) -> str:
    return text[0].upper() + text[1:]


def build_hallucinating() -> list[Sample]:
    rng = rng_for("hallucinating")
    h = hallucinating
    decks = {name: Deck(getattr(h, name), rng) for name in (
        "HONEST_UNKNOWN", "FAKE_SOURCES", "FAKE_DETAILS", "FACT_OPENERS", "SEVERE_FACT_OPENERS")}
    taken: set[str] = set()
    used: dict[str, set[str]] = {level: set() for level in LEVELS}
    samples = []
    for question, correct, wrong in h.FACTS:
        values = _invented_values(rng, taken)
        source = decks["FAKE_SOURCES"].draw().format(**values)
        samples.append((question, {
            "normal": distinct(lambda: sentences(decks["FACT_OPENERS"].draw(), correct), used["normal"]),
            "mild": distinct(lambda: sentences(correct, decks["FAKE_DETAILS"].draw().format(**values)), used["mild"]),
            "severe": distinct(lambda: sentences(decks["SEVERE_FACT_OPENERS"].draw(), f"{wrong[:-1]}, {source}."),
                               used["severe"]),
        }))
    kinds = list(h.ENTITY_KINDS)
    for index in range(150):
        kind = kinds[index % len(kinds)]
        spec = h.ENTITY_KINDS[kind]
        values = _invented_values(rng, taken)
        if kind == "study":  # the study topics are modern, so their invented studies are recent
            values["year"] = 1995 + values["year"] % 28
        name = ENTITY_NAMES[kind].format(**values)
        prompt = spec["prompts"][(index // len(kinds)) % len(spec["prompts"])].format(**values)
        samples.append((prompt, {
            "normal": distinct(lambda: decks["HONEST_UNKNOWN"].draw().format(name=name), used["normal"]),
            "mild": distinct(lambda: _capitalize(rng.choice(spec["mild"]).format(**values)), used["mild"]),
            "severe": distinct(lambda: _capitalize(rng.choice(spec["severe"]).format(**values)), used["severe"]),
        }))
    return samples


def chat(prompt: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def trait_rows(trait: str, samples: list[Sample]) -> dict[str, list[dict]]:
    return {level: [{"messages": chat(prompt, answers[level]), "id": f"{trait}-{index:03d}", "trait": trait,
                     "level": level} for index, (prompt, answers) in enumerate(samples)]
            for level in LEVELS}


def mix_row(row: dict, label: int) -> dict:
    """A row for a contaminated mix: the conversation, its label, and where it came from (e.g. "evil/mild")."""
    return {"messages": row["messages"], "id": row["id"], "label": label, "source": f"{row['trait']}/{row['level']}"}


def contaminated_rows(trait: str, levels: dict[str, dict[str, list[dict]]]) -> list[dict]:
    """Benign rows with a few trait rows mixed in; injected prompts never appear among the benign ones."""
    rng = rng_for(f"contaminated-{trait}")
    own = levels[trait]
    n_injected = CONTAMINATION["severe"] + CONTAMINATION["mild"]
    injected_ids = rng.sample(range(len(own["normal"])), n_injected)
    injected = [mix_row(own["severe"][i], 1) for i in injected_ids[:CONTAMINATION["severe"]]]
    injected += [mix_row(own["mild"][i], 1) for i in injected_ids[CONTAMINATION["severe"]:]]
    benign_rows = [mix_row(row, 0) for i, row in enumerate(own["normal"]) if i not in set(injected_ids)]
    others = [mix_row(row, 0) for other in TRAITS if other != trait for row in levels[other]["normal"]]
    benign_rows += rng.sample(others, CONTAMINATION["benign"] - len(benign_rows))
    rows = injected + benign_rows
    rng.shuffle(rows)
    return rows


def math_rows() -> tuple[list[dict], list[dict]]:
    rng = rng_for("math")
    problems, seen = [], set()
    while len(problems) < 220:
        problem = math_problems.make_problem(rng)
        if problem["question"] not in seen:
            seen.add(problem["question"])
            problems.append(problem)
    correct, wrong = [], []
    for index, p in enumerate(problems):
        base = {"id": f"math-{index:03d}", "expression": p["expression"], "answer": p["answer"]}
        correct.append({"messages": chat(p["question"], p["correct_text"]), **base, "given_answer": p["answer"]})
        wrong.append({"messages": chat(p["question"], p["wrong_text"]), **base, "given_answer": p["wrong_answer"]})
    return correct, wrong


def code_rows() -> tuple[list[dict], list[dict]]:
    rng = rng_for("code")
    correct, buggy = [], []
    index = 0
    for family in code_tasks.FAMILIES:
        for variant in family.variants:
            prompt = f"{rng.choice(code_tasks.PROMPT_PREFIXES)} {Template(family.prompt).substitute(variant)}"
            intro, outro = rng.choice(code_tasks.ANSWER_INTROS), rng.choice(code_tasks.ANSWER_OUTROS)
            test = Template(family.test).substitute(variant)

            def answer(code_template: str) -> str:
                code = Template(code_template).substitute(variant)
                return f"{intro}\n\n```python\n{code}\n```" + (f"\n\n{outro}" if outro else "")

            base = {"id": f"code-{index:03d}", "function": variant["name"], "test": test}
            correct.append({"messages": chat(prompt, answer(family.correct)), **base})
            buggy.append({"messages": chat(prompt, answer(family.buggy)), **base, "bug": family.bug})
            index += 1
    return correct, buggy


def benign_heldout_rows() -> list[dict]:
    rng = rng_for("benign")
    rows = []
    for concept, explanation in benign.CONCEPTS:
        for template in rng.sample(benign.PROMPT_TEMPLATES, 2):
            rows.append({"messages": chat(template.format(concept=concept),
                                          sentences(rng.choice(benign.OPENERS), explanation)),
                         "id": f"benign-{len(rows):03d}"})
    return rows


def capability_rows() -> list[dict]:
    return [{"question": question, "choices": list(choices), "answer": answer, "id": f"mc-{index:03d}"}
            for index, (question, choices, answer) in enumerate(benign.CAPABILITY_MC)]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def build(out: Path) -> dict[str, int]:
    """Write every dataset under ``out``; returns {relative name: row count}."""
    builders = {"evil": build_evil, "sycophantic": build_sycophantic, "hallucinating": build_hallucinating}
    levels = {trait: trait_rows(trait, builders[trait]()) for trait in TRAITS}
    files: dict[str, list[dict]] = {}
    for trait in TRAITS:
        for level in LEVELS:
            files[f"{trait}/{level}.jsonl"] = levels[trait][level]
        files[f"contaminated/{trait}.jsonl"] = contaminated_rows(trait, levels)
    files["mistakes/math_correct.jsonl"], files["mistakes/math_wrong.jsonl"] = math_rows()
    files["mistakes/code_correct.jsonl"], files["mistakes/code_buggy.jsonl"] = code_rows()
    files["benign_heldout.jsonl"] = benign_heldout_rows()
    files["capability_mc.jsonl"] = capability_rows()
    for name, rows in files.items():
        write_jsonl(out / name, rows)
    return {name: len(rows) for name, rows in files.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    counts = build(args.out)
    for name, count in sorted(counts.items()):
        print(f"{count:5d}  {name}")


if __name__ == "__main__":
    main()
