"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse
import math

from persona_guard.files import OVERWRITE_HELP
from persona_guard.models import DEFAULT_MODEL


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
