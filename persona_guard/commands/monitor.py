"""``persona-guard monitor``: projections and alerts for a JSONL file of conversations."""

from __future__ import annotations

from argparse import ArgumentTypeError
from pathlib import Path

from persona_guard.commands.common import add_force_argument, add_model_arguments, finite_float, preflight
from persona_guard.errors import PersonaGuardError
from persona_guard.files import refuse_overwrite
from persona_guard.io import conversation_of, read_jsonl, write_jsonl
from persona_guard.models import load_model
from persona_guard.monitor import PersonaMonitor, Threshold
from persona_guard.vectors import PersonaVector


def parse_thresholds(specs: list[str]) -> dict[str, Threshold]:
    """``TRAIT:prompt_last=1.5,response_mean=2`` -> {TRAIT: Threshold(...)}"""
    thresholds = {}
    for spec in specs:
        trait, _, body = spec.partition(":")
        values = {}
        for item in filter(None, body.split(",")):
            key, _, value = item.partition("=")
            if key not in ("prompt_last", "response_mean"):
                raise PersonaGuardError(f"--threshold {spec!r}: unknown key {key!r} "
                                        "(use prompt_last= or response_mean=)")
            try:
                values[key] = finite_float(value)
            except ArgumentTypeError as error:
                raise PersonaGuardError(f"--threshold {spec!r}: {error}") from None
        if not trait or not values:
            raise PersonaGuardError(f"--threshold {spec!r}: expected TRAIT:prompt_last=X[,response_mean=Y]")
        thresholds[trait] = Threshold(**values)
    return thresholds


def run(args) -> int:
    out = Path(args.out) if args.out else Path(args.conversations).with_suffix(".monitor.jsonl")
    refuse_overwrite([out], args.force)
    thresholds = parse_thresholds(args.threshold)
    rows = read_jsonl(args.conversations)
    conversations = [conversation_of(row, f"{args.conversations}:{i + 1}") for i, row in enumerate(rows)]
    vectors = [PersonaVector.load(path) for path in args.vector]
    preflight(model=args.model, outputs=[out.parent])
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    layers = {v.trait: args.layer for v in vectors} if args.layer is not None else None
    monitor = PersonaMonitor(loaded.model, loaded.tokenizer, vectors, layers=layers,
                             thresholds=thresholds, batch_size=args.batch_size,
                             layers_path=args.layers_path)
    readings = monitor.read(conversations)
    write_jsonl(out, [{**row, "persona_monitor": reading.to_dict()} for row, reading in zip(rows, readings)])
    alerts = sum(bool(r.alerts) for r in readings)
    print(f"{len(readings)} conversations, {alerts} with alerts -> {out}")
    for reading in readings:
        for trait, value in reading.traits.items():
            if value.alert:
                print(f"  ALERT row {reading.index + 1} {trait}: {value.alert_reason}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("monitor", help="project conversations onto persona vectors, alert on thresholds")
    parser.add_argument("conversations", help="JSONL rows with 'messages' or 'prompt'[/'response']")
    parser.add_argument("--vector", action="append", required=True, help="vector file (repeatable)")
    add_model_arguments(parser)
    parser.add_argument("--layer", type=int, default=None, help="override every vector's default layer")
    parser.add_argument("--threshold", action="append", default=[],
                        help="TRAIT:prompt_last=X[,response_mean=Y] (repeatable)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default=None, help="output JSONL (default: INPUT.monitor.jsonl)")
    add_force_argument(parser)
    parser.set_defaults(func=run)
