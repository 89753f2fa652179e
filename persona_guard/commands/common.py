"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Sequence
from pathlib import Path

from persona_guard.errors import PersonaGuardError
from persona_guard.files import OVERWRITE_HELP, check_writable
from persona_guard.judges import JUDGE_BASE_URL_ENV, Judge, JudgeEndpoint, check_judge, make_judge
from persona_guard.models import DEFAULT_MODEL, check_model_available

#: ``--dtype`` values (torch dtype names; ``auto``: the checkpoint's own)
DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")


def available_device(text: str) -> str:
    """argparse ``type=`` of ``--device``: a torch device string naming a device this machine has."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda, cuda:1, mps ...)") from None
    if device.type == "cpu":
        return text
    backend = getattr(torch, device.type, None)
    count = backend.device_count() if backend is not None and hasattr(backend, "device_count") else 0
    if device.type == "mps":
        count = int(torch.backends.mps.is_available())
    if count == 0 or (device.index or 0) >= count:
        raise argparse.ArgumentTypeError(f"{text!r} is not available here ({count} {device.type} device(s))")
    return text


def http_url(text: str) -> str:
    """argparse ``type=`` of a URL option (webhook, upstream, generator endpoint): http(s) with a host."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
        _ = parts.port  # a port that is not a number in 0-65535 raises here
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL ({error})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL")
    return text


def non_empty_text(text: str) -> str:
    """argparse ``type=`` of a text option that must say something (a prompt): not only whitespace."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty")
    return text


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"built-in name, hub id, local dir or .gguf file (default: {DEFAULT_MODEL})")
    parser.add_argument("--device", type=available_device, default=None,
                        help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="default: bf16 on GPU, fp32 on CPU; auto: the checkpoint's")
    parser.add_argument("--layers-path", default=None,
                        help="attribute path of the decoder-layer list, e.g. model.layers (default: auto)")


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
              outputs: Sequence[str | Path] = (), files: Sequence[str | Path] = (),
              packages: Sequence[tuple[str, str]] = ()) -> None:
    """Check what a command will need before it starts work, so it fails in a second, not an hour.

    ``model``: can be found (:func:`persona_guard.models.check_model_available`); ``judge``: (spec,
    endpoint) for :func:`persona_guard.judges.check_judge`; ``outputs``: folders that must be
    writable (:func:`persona_guard.files.check_writable`); ``files``: output files, which must not be
    folders and whose folder must be writable; ``packages``: (import name, what needs it) pairs.
    The overwrite rule is :func:`persona_guard.files.refuse_overwrite`'s, checked by each command.
    """
    for module, purpose in packages:
        if importlib.util.find_spec(module) is None:
            raise PersonaGuardError(f"{purpose} needs the package {module!r}: pip install {module}")
    for path in map(Path, files):
        if path.is_dir():
            raise PersonaGuardError(f"{path} is a folder; expected an output file path")
        check_writable(path.parent)
    for folder in outputs:
        check_writable(folder)
    if model is not None:
        check_model_available(model)
    if judge is not None:
        check_judge(*judge)
