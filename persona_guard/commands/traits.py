"""``persona-guard traits``: list, inspect, validate and import trait artifacts."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from persona_guard.commands.common import add_force_argument, preflight
from persona_guard.commands.trait_generate import add_generate_action
from persona_guard.errors import PersonaGuardError
from persona_guard.files import refuse_overwrite
from persona_guard.traits import Trait, bundled_trait_names, load_reference_trait, load_trait


def _first_sentence(text: str, width: int = 80) -> str:
    line = " ".join(text.split())
    line = line.split(". ", 1)[0].rstrip(".") + "."
    return line if len(line) <= width else line[: width - 3].rstrip() + "..."


def run_list(args) -> int:
    names = bundled_trait_names()
    if not names:
        print("no bundled traits")
        return 0
    traits = [load_trait(name) for name in names]
    name_width = max(len("trait"), *(len(t.name) for t in traits))
    antonym_width = max(len("antonym"), *(len(t.antonym) for t in traits))
    print(f"{'trait':<{name_width}}  {'antonym':<{antonym_width}}  extract  eval  exemplars  description")
    for trait in traits:
        print(f"{trait.name:<{name_width}}  {trait.antonym:<{antonym_width}}  "
              f"{len(trait.extraction_questions):>7}  {len(trait.eval_questions):>4}  "
              f"{len(trait.exemplars):>9}  {_first_sentence(trait.description)}")
    return 0


def _summary(trait: Trait) -> str:
    wrap = textwrap.TextWrapper(width=100, initial_indent="    ", subsequent_indent="      ")
    lines = [f"trait: {trait.name}   (antonym: {trait.antonym})   source: {trait.source}",
             "", "description:", *textwrap.wrap(trait.description, 100, initial_indent="  ", subsequent_indent="  "),
             "", f"instructions ({len(trait.instructions)} contrastive system-prompt pairs):"]
    for index, pair in enumerate(trait.instructions):
        lines += [f"  [{index}]", wrap.fill(f"+ {pair.pos}"), wrap.fill(f"- {pair.neg}")]
    for title, questions in (("extraction questions", trait.extraction_questions),
                             ("eval questions (held out)", trait.eval_questions)):
        lines += ["", f"{title} ({len(questions)}):"]
        lines += [f"  {index:>2}. {question}" for index, question in enumerate(questions)]
    lines += ["", "judge rubric:", textwrap.indent(trait.judge_rubric, "  | ", lambda _: True), "",
              f"exemplars: {len(trait.exemplars)} (extraction: {len(trait.extraction_exemplars())}, "
              f"held out: {len(trait.heldout_exemplars())})"]
    return "\n".join(lines)


def run_show(args) -> int:
    trait = load_trait(args.trait)
    if args.json:
        print(json.dumps(trait.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(_summary(trait))
    return 0


def run_validate(args) -> int:
    checks = [(path, lambda path=path: load_trait(Path(path))) for path in args.paths]
    if args.reference:
        checks.append((" + ".join(args.reference), lambda: load_reference_trait(*args.reference)))
    if not checks:
        raise PersonaGuardError("pass one or more trait files and/or --reference EXTRACT.json EVAL.json")
    failures = 0
    for label, check in checks:
        try:
            trait = check()
        except PersonaGuardError as error:
            failures += 1
            print(f"FAIL {error}")
            continue
        print(f"OK   {label}: trait '{trait.name}', {len(trait.exemplars)} exemplars")
    if failures:
        raise PersonaGuardError(f"{failures} of {len(checks)} trait file(s) invalid")
    return 0


def run_import_reference(args) -> int:
    preflight(files=[args.out])
    refuse_overwrite([args.out], args.force)
    trait = load_reference_trait(args.extract, args.eval, name=args.name, antonym=args.antonym)
    out = trait.save(args.out)
    print(f"wrote {out}  (trait '{trait.name}', no exemplars: the paper format has none)")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("traits", help="list, show, validate, import or generate trait files")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="the bundled traits, one line each")
    listing.set_defaults(func=run_list)

    show = actions.add_parser("show", help="a readable summary of one trait")
    show.add_argument("trait", help="bundled trait name or a trait file (.json/.yaml)")
    show.add_argument("--json", action="store_true", help="print the validated trait as JSON")
    show.set_defaults(func=run_show)

    validate = actions.add_parser("validate", help="check trait files against the schema (exit 2 on any failure)")
    validate.add_argument("paths", nargs="*", metavar="PATH", help="trait files (.json/.yaml)")
    validate.add_argument("--reference", nargs=2, metavar=("EXTRACT", "EVAL"),
                          help="validate a pair of files in the persona-vectors paper format instead")
    validate.set_defaults(func=run_validate)

    imp = actions.add_parser("import-reference", help="convert the paper's extract/eval JSON pair into a trait file")
    imp.add_argument("extract", help="paper-format extraction file (instruction, questions, eval_prompt)")
    imp.add_argument("eval", help="paper-format evaluation file")
    imp.add_argument("--out", required=True, help="output trait file (.json, or .yaml/.yml)")
    imp.add_argument("--name", default=None, help="trait name (default: the extraction file's stem)")
    imp.add_argument("--antonym", default=None, help="antonym used in the negative prompts (default: helpful)")
    add_force_argument(imp)
    imp.set_defaults(func=run_import_reference)

    add_generate_action(actions)
