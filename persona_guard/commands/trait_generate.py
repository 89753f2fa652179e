"""``persona-guard traits generate``: have an LLM write a trait file, validated and retried on errors."""

from __future__ import annotations

from argparse import ArgumentTypeError
from pathlib import Path

from persona_guard.commands.common import add_force_argument, http_url, non_empty_text, preflight
from persona_guard.files import refuse_overwrite
from persona_guard.llm_client import client_from_options
from persona_guard.schema import bounds, flag_type
from persona_guard.trait_generation import generate_trait
from persona_guard.traits import TRAIT_NAME


def run(args) -> int:
    out = Path(args.out) if args.out else Path("traits") / f"{args.name}.json"
    preflight(files=[out])
    refuse_overwrite([out], args.force)
    client = client_from_options(base_url=args.base_url, model=args.generator_model, api_key=args.api_key,
                                 local_model=args.local_model, cache_dir=args.cache_dir)
    generated = generate_trait(client, args.name, args.description, max_attempts=args.attempts,
                               max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    path = generated.trait.save(out)
    print(f"wrote {path} after {len(generated.attempts)} attempt(s); check it with `persona-guard traits validate`")
    return 0


def trait_name(text: str) -> str:
    """argparse ``type=`` of ``--name``: what a trait file accepts (it also names the output file)."""
    if not TRAIT_NAME.match(text):
        raise ArgumentTypeError(f"{text!r} is not a trait name (lowercase letters, digits, _ and -, "
                                "starting with a letter, at most 64)")
    return text


def add_generator_arguments(parser) -> None:
    parser.add_argument("--base-url", type=http_url, default=None,
                        help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL)")
    parser.add_argument("--model", dest="generator_model", default=None, help="generator model name at --base-url")
    parser.add_argument("--api-key", default=None, help="default: $OPENAI_API_KEY")
    parser.add_argument("--local-model", default=None, help="use a local transformers model instead (name or path)")
    parser.add_argument("--cache-dir", default=None, help="cache HTTP answers here (reruns are free)")


def add_generate_action(actions) -> None:
    """Register ``generate`` under ``persona-guard traits``."""
    parser = actions.add_parser("generate", help="write a new trait file with a generator LLM")
    parser.add_argument("--name", type=trait_name, required=True, help="trait name (lowercase, e.g. 'sarcastic')")
    parser.add_argument("--description", type=non_empty_text, required=True,
                        help="what the trait is, in a sentence or two")
    parser.add_argument("--out", default=None, help="output path (default: traits/<name>.json)")
    add_force_argument(parser)
    add_generator_arguments(parser)
    parser.add_argument("--attempts", type=flag_type("attempts", int, bounds(ge=1)), default=3,
                        help="tries, each fed the previous validation error (default 3)")
    parser.add_argument("--max-tokens", type=flag_type("max_tokens", int, bounds(ge=1)), default=8000,
                        help="tokens per generator answer (default 8000)")
    parser.add_argument("--temperature", type=flag_type("temperature", float, bounds(ge=0, le=2)), default=0.7,
                        help="generator sampling temperature (OpenAI's range 0-2, default 0.7)")
    parser.add_argument("--seed", type=flag_type("seed", int, bounds(ge=0)), default=0)
    parser.set_defaults(func=run)
