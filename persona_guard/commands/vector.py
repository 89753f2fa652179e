"""``persona-guard vector``: inspect, import and export persona vector files."""

from __future__ import annotations

import json

from persona_guard.commands.common import add_force_argument, preflight
from persona_guard.errors import PersonaGuardError
from persona_guard.files import refuse_overwrite
from persona_guard.schema import bounds, flag_type
from persona_guard.steering import COEF_BOUNDS
from persona_guard.vectors import UNKNOWN_MODEL, PersonaVector

LAYER = flag_type("layer", int, bounds(ge=0))


def run_show(args) -> int:
    vector = PersonaVector.load(args.path)
    info = vector.metadata_dict()
    info["norms"] = [round(float(n), 4) for n in vector.directions.norm(dim=1)]
    print(json.dumps(info, indent=2))
    return 0


def run_import(args) -> int:
    preflight(files=[args.out])
    refuse_overwrite([args.out], args.force)
    vector = PersonaVector.from_original_pt(args.path, trait=args.trait, model_id=args.model_id,
                                            default_layer=args.layer)
    print(f"wrote {vector.save(args.out)}")
    return 0


def run_export(args) -> int:
    if args.layer is not None and args.all_layers:
        raise PersonaGuardError("pass --layer or --all-layers, not both")
    if args.coef == 0:
        raise PersonaGuardError("argument --coef: 0 would write an all-zero control vector")
    preflight(files=[args.out], packages=[("gguf", "vector export-gguf")])
    refuse_overwrite([args.out], args.force)
    vector = PersonaVector.load(args.path)
    layers = None if args.all_layers else [vector.resolve_layer(args.layer)]
    out = vector.export_gguf(args.out, layers=layers, coef=args.coef, model_hint=args.model_hint)
    print(f"wrote {out}  (use: llama-cli --control-vector {out})")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("vector", help="show, import (.pt) or export (GGUF) persona vectors")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="print a vector's metadata and per-layer norms")
    show.add_argument("path")
    show.set_defaults(func=run_show)
    imp = actions.add_parser("import", help="convert an original persona-vectors .pt file")
    imp.add_argument("path")
    imp.add_argument("--out", required=True, help="output .safetensors path")
    imp.add_argument("--trait", default=None)
    imp.add_argument("--model-id", default=UNKNOWN_MODEL,
                     help="the model the vector was extracted from (default: unknown, never compared)")
    imp.add_argument("--layer", type=LAYER, default=None, help="default layer to record")
    add_force_argument(imp)
    imp.set_defaults(func=run_import)
    export = actions.add_parser("export-gguf", help="write a llama.cpp control vector")
    export.add_argument("path")
    export.add_argument("--out", required=True)
    export.add_argument("--layer", type=LAYER, default=None, help="one layer (default: the vector's default)")
    export.add_argument("--all-layers", action="store_true")
    export.add_argument("--coef", type=flag_type("coef", float, COEF_BOUNDS), default=1.0,
                        help=f"scale baked into the file (|coef| <= {COEF_BOUNDS['le']:g}, default 1)")
    export.add_argument("--model-hint", default="llama")
    add_force_argument(export)
    export.set_defaults(func=run_export)
