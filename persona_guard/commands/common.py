"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse
import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

from persona_guard.errors import PersonaGuardError
from persona_guard.files import OVERWRITE_HELP, check_writable
from persona_guard.judges import JUDGE_BASE_URL_ENV, Judge, JudgeEndpoint, check_judge, make_judge
from persona_guard.models import DEFAULT_MODEL, check_model_available


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"built-in name, hub id, local dir or .gguf file (default: {DEFAULT_MODEL})")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 ... (default: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--layers-path", default=None,
                        help="attribute path of the decoder-layer list, e.g. model.layers (default: auto)")


def finite_float(text: str) -> float:
    """argparse ``type=`` for every float option: NaN, infinities and overflow (``1e309``) are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def add_force_argument(parser: argparse.ArgumentParser, *aliases: str) -> None:
    """``--force``: the one switch that lets a command replace earlier outputs (see persona_guard.files)."""
    parser.add_argument("--force", *aliases, dest="force", action="store_true", help=OVERWRITE_HELP)


def add_judge_arguments(parser: argparse.ArgumentParser, default: str | None = "offline", *,
                        none: str | None = None) -> None:
    """``--judge`` plus the endpoint options (``--judge-base-url``, ``--judge-prefill``) of every judging command.

    ``none``: what ``--judge none`` means for this command (None: not accepted).
    """
    choices = "offline | openai:<model> | local:<model path or name>" + (f" | none ({none})" if none else "")
    parser.add_argument("--judge", default=default,
                        help=f"{choices} (default: {default or 'no judge'})")
    parser.add_argument("--judge-base-url", default=None,
                        help="OpenAI-compatible base URL for --judge openai:... (default: "
                             f"${JUDGE_BASE_URL_ENV}, else OpenAI's public API); the key is read from $OPENAI_API_KEY")
    parser.add_argument("--judge-prefill", action="store_true",
                        help="the judge endpoint continues a final assistant message (e.g. persona-guard "
                             "serve): read digit-split scores exactly")


def judge_endpoint(args: argparse.Namespace) -> JudgeEndpoint:
    return JudgeEndpoint(base_url=args.judge_base_url, prefill=args.judge_prefill)


def judge_from_args(args: argparse.Namespace) -> Judge:
    """The judge ``args`` name (already checked by :func:`preflight`)."""
    return make_judge(args.judge, base_url=args.judge_base_url, prefill=args.judge_prefill)


def preflight(*, model: str | None = None, judge: tuple[str, JudgeEndpoint] | None = None,
              outputs: Sequence[str | Path] = (), packages: Sequence[tuple[str, str]] = ()) -> None:
    """Check what a command will need before it starts work, so it fails in a second, not an hour.

    ``model``: can be found (:func:`persona_guard.models.check_model_available`); ``judge``: (spec,
    endpoint) for :func:`persona_guard.judges.check_judge`; ``outputs``:
    folders that must be writable; ``packages``: (import name, what needs it) pairs.
    """
    for module, purpose in packages:
        if importlib.util.find_spec(module) is None:
            raise PersonaGuardError(f"{purpose} needs the package {module!r}: pip install {module}")
    for folder in outputs:
        check_writable(folder)
    if model is not None:
        check_model_available(model)
    if judge is not None:
        check_judge(*judge)
