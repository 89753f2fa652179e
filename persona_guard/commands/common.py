"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse

from persona_guard.models import DEFAULT_MODEL


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"built-in name, hub id, local dir or .gguf file (default: {DEFAULT_MODEL})")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 ... (default: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--layers-path", default=None,
                        help="attribute path of the decoder-layer list, e.g. model.layers (default: auto)")
