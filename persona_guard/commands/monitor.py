"""``persona-guard monitor``: projections and alerts for a JSONL file of conversations, and
``persona-guard monitor calibrate``: thresholds for ``persona-guard serve`` from a benign set."""

from __future__ import annotations

import math
import os
import sys
from argparse import ArgumentTypeError
from dataclasses import replace
from pathlib import Path

import numpy as np

from persona_guard.commands.common import add_force_argument, add_model_arguments, preflight
from persona_guard.errors import PersonaGuardError
from persona_guard.files import refuse_overwrite
from persona_guard.io import write_jsonl
from persona_guard.models import load_model
from persona_guard.monitor import PersonaMonitor, Threshold
from persona_guard.rows import read_rows, strict_rows
from persona_guard.schema import bounds, flag_type
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
                values[key] = flag_type(key, float)(value)
            except ArgumentTypeError as error:
                raise PersonaGuardError(f"--threshold {spec!r}: {error}") from None
        if not trait or not values:
            raise PersonaGuardError(f"--threshold {spec!r}: expected TRAIT:prompt_last=X[,response_mean=Y]")
        thresholds[trait] = Threshold(**values)
    return thresholds


def check_threshold_traits(thresholds: dict[str, Threshold], vectors: list[PersonaVector]) -> None:
    """A ``--threshold`` for a trait none of the vectors has would silently never fire: refuse it."""
    unknown = sorted(set(thresholds) - {vector.trait for vector in vectors})
    if unknown:
        raise PersonaGuardError(f"--threshold names trait(s) {', '.join(unknown)} but the vectors are "
                                f"{', '.join(vector.trait for vector in vectors)}")


def run(args) -> int:
    if args.conversations == "calibrate":
        return calibrate(args)
    if args.policy or args.set:
        raise PersonaGuardError("--policy and --set are for 'monitor calibrate'")
    out = Path(args.out) if args.out else Path(args.conversations).with_suffix(".monitor.jsonl")
    preflight(model=args.model, files=[out])
    refuse_overwrite([out], args.force)
    thresholds = parse_thresholds(args.threshold)
    rows = strict_rows(read_rows(args.conversations), need="prompt")
    samples = [(row, sample) for row in rows for sample in row.samples]
    vectors = [PersonaVector.load(path) for path in args.vector]
    check_threshold_traits(thresholds, vectors)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, layers_path=args.layers_path)
    layers = {v.trait: args.layer for v in vectors} if args.layer is not None else None
    monitor = PersonaMonitor(loaded, vectors, layers=layers, thresholds=thresholds, batch_size=args.batch_size)
    readings = monitor.read([sample.conversation for _, sample in samples])
    write_jsonl(out, [{**row.data, **({"side": sample.side} if sample.side else {}),
                       "persona_monitor": reading.to_dict()} for (row, sample), reading in zip(samples, readings)])
    alerts = sum(bool(r.alerts) for r in readings)
    print(f"{len(readings)} conversations, {alerts} with alerts -> {out}")
    for (row, sample), reading in zip(samples, readings):
        for trait, value in reading.traits.items():
            if value.alert:
                side = f" ({sample.side})" if sample.side else ""
                print(f"  ALERT row {row.row_number}{side} {trait}: {value.alert_reason}")
    return 0


def minimum_conversations(percentile: float) -> int:
    """The fewest benign conversations for which at least one reading is expected above the
    ``percentile``-th percentile: ``ceil(100 / (100 - percentile))`` (100 for the 99th); the 100th
    percentile is the largest reading whatever the count (1)."""
    return 1 if percentile >= 100 else math.ceil(100 / (100 - percentile) - 1e-9)


def calibrate(args) -> int:
    """Readings over a benign set -> per-trait thresholds at ``--percentile`` and mean/std for z-scores,
    merged into the policy file (other traits and settings in it are kept)."""
    from persona_guard.bundled import dataset_path
    from persona_guard.server.policy import Policy, Stats

    if not args.policy:
        raise PersonaGuardError("monitor calibrate: --policy FILE is required (it is created or updated)")
    if args.threshold:
        raise PersonaGuardError("monitor calibrate: --threshold is not used (calibration writes the thresholds)")
    preflight(model=args.model, files=[args.policy])
    policy_path = Path(args.policy)
    policy = Policy.load(policy_path) if policy_path.is_file() else Policy()
    source = Path(args.set) if args.set else dataset_path("benign_heldout.jsonl")
    conversations = [sample.conversation for row in strict_rows(read_rows(source), need="prompt")
                     for sample in row.samples]
    vectors = [PersonaVector.load(path) for path in args.vector]
    needed = minimum_conversations(args.percentile)
    if len(conversations) < needed:
        print(f"persona-guard monitor calibrate: warning: {len(conversations)} conversations are too few for a "
              f"{args.percentile:g}th-percentile threshold (no benign reading is expected above it, so it is "
              f"little more than the largest one); use at least {needed}", file=sys.stderr)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, layers_path=args.layers_path)
    layers = {v.trait: args.layer for v in vectors} if args.layer is not None else None
    monitor = PersonaMonitor(loaded, vectors, layers=layers, batch_size=args.batch_size)
    readings = monitor.read(conversations)
    for vector, path in zip(vectors, args.vector):
        thresholds, stats = {}, {}
        for name in ("prompt_last", "response_mean"):
            values = np.array([v for r in readings if (v := getattr(r.traits[vector.trait], name)) is not None])
            if len(values):
                if len(values) < 2 or not values.std() > 0:
                    raise PersonaGuardError(
                        f"{source}: {vector.trait} {name}: {len(values)} reading(s) with no spread; z-scores need "
                        f"at least 2 different readings (nothing written to {policy_path})")
                thresholds[name] = float(np.percentile(values, args.percentile))
                stats[name] = Stats(float(values.mean()), float(values.std()))
        current = policy.for_trait(vector.trait)
        policy = policy.with_trait(replace(
            current, vector=os.path.relpath(Path(path).resolve(), policy_path.resolve().parent),
            layer=monitor.layers[vector.trait], threshold=Threshold(**thresholds), calibration=stats))
        print(f"{vector.trait} @ layer {monitor.layers[vector.trait]}: "
              + ", ".join(f"{k} threshold {v:.4f} (mean {stats[k].mean:.4f}, std {stats[k].std:.4f})"
                          for k, v in thresholds.items()))
    policy = replace(policy, calibration={"set": str(source), "percentile": args.percentile,
                                          "conversations": len(conversations), "model": args.model})
    policy.save(policy_path)
    print(f"{len(conversations)} conversations, thresholds at the {args.percentile}th percentile -> {policy_path}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "monitor", help="project conversations onto persona vectors, alert on thresholds; "
                        "'monitor calibrate' sets serving thresholds from a benign set")
    parser.add_argument("conversations", help="rows to read (JSONL, Parquet, CSV; any form in docs/data.md; "
                        "a prompt without an answer gets prompt_last only), or the word 'calibrate' to "
                        "write thresholds into --policy")
    parser.add_argument("--vector", action="append", required=True, help="vector file (repeatable)")
    add_model_arguments(parser)
    parser.add_argument("--layer", type=flag_type("layer", int, bounds(ge=0)), default=None,
                        help="override every vector's default layer")
    parser.add_argument("--threshold", action="append", default=[],
                        help="TRAIT:prompt_last=X[,response_mean=Y] (repeatable)")
    parser.add_argument("--batch-size", type=flag_type("batch_size", int, bounds(ge=1)), default=8,
                        help="conversations per forward pass (default 8)")
    parser.add_argument("--out", default=None, help="output JSONL (default: INPUT.monitor.jsonl)")
    parser.add_argument("--policy", default=None, help="calibrate: policy YAML to create or update")
    parser.add_argument("--set", default=None,
                        help="calibrate: benign conversations JSONL (default: the bundled benign_heldout set)")
    parser.add_argument("--percentile", type=flag_type("percentile", float, bounds(gt=0, le=100)), default=99.0,
                        help="calibrate: thresholds at this percentile of the benign readings (default 99)")
    add_force_argument(parser)
    parser.set_defaults(func=run)
