"""``persona-guard serve``: an OpenAI-compatible endpoint that reads persona traits on every answer."""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path

from persona_guard.commands.common import add_model_arguments, http_url, preflight
from persona_guard.commands.monitor import parse_thresholds
from persona_guard.errors import PersonaGuardError
from persona_guard.io import require_file
from persona_guard.schema import add_arguments, bounds, flag_type, from_args
from persona_guard.server.app import ServerConfig
from persona_guard.server.policy import ACTIONS, Policy
from persona_guard.vectors import PersonaVector

API_KEY_ENV = "PERSONA_GUARD_API_KEY"
#: library field -> command-line flag
SERVER_FLAGS = {name: "--" + name.replace("_", "-") for name in (
    "max_tokens_cap", "max_body_bytes", "batch_window_ms", "max_batch_rows", "audit_log", "log_content",
    "allow_unmonitored")}


def build_policy(args) -> tuple[Policy, dict[str, tuple[PersonaVector, int]]]:
    """The policy (file, then flags on top) and the watched vectors ``{trait: (vector, layer)}``."""
    policy = Policy.load(args.policy) if args.policy else Policy()
    paths = [Path(p) for p in args.monitor]
    base = Path(args.policy).parent if args.policy else Path(".")
    paths += [base / t.vector for t in policy.traits.values() if t.vector]
    vectors: dict[str, PersonaVector] = {}
    for path in paths:
        vector = PersonaVector.load(path)
        vectors.setdefault(vector.trait, vector)
    for trait, threshold in parse_thresholds(args.threshold).items():
        policy = policy.with_trait(replace(policy.for_trait(trait), threshold=threshold))
    for spec in args.action:
        trait, _, action = spec.partition("=")
        if action not in ACTIONS:
            raise PersonaGuardError(f"--action {spec!r}: expected TRAIT=ACTION with ACTION one of {', '.join(ACTIONS)}")
        policy = policy.with_trait(replace(policy.for_trait(trait), action=action))
    if args.webhook:
        policy = replace(policy, webhook=args.webhook)
    unknown = sorted(set(policy.traits) - set(vectors))
    if unknown:
        raise PersonaGuardError(
            f"policy names trait(s) {', '.join(unknown)} but no vector for them was given "
            "(--monitor VECTOR or 'vector:' in the policy file)"
        )
    watched = {
        trait: (vector, vector.resolve_layer(policy.for_trait(trait).layer)) for trait, vector in vectors.items()
    }
    return policy, watched


def read_api_key(args) -> str | None:
    if args.api_key_file:
        path = require_file(args.api_key_file, flag="--api-key-file")
        key = path.read_text(encoding="utf-8").strip()
        if not key:
            raise PersonaGuardError(f"--api-key-file {path}: file is empty")
        return key
    key = os.environ.get(args.api_key_env, "").strip()
    if not key and args.api_key_env != API_KEY_ENV:  # a variable the user named must hold the key
        raise PersonaGuardError(f"--api-key-env {args.api_key_env}: the variable is unset or empty "
                                "(the server would run without a key)")
    return key or None


def run(args) -> int:
    import uvicorn

    from persona_guard.models import load_model
    from persona_guard.projection import Projector
    from persona_guard.server.app import create_app, local_service

    preflight(model=args.model, files=[args.audit_log] if args.audit_log else [])
    config = from_args(ServerConfig, args, SERVER_FLAGS, model_name=args.served_model_name or args.model,
                       api_key=read_api_key(args))
    policy, watched = build_policy(args)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, layers_path=args.layers_path)
    for vector, _ in watched.values():
        vector.check_model(loaded)
    projector = Projector.of_pairs(watched) if watched else None
    if args.upstream:
        from persona_guard.server.upstream import upstream_service

        service = upstream_service(
            loaded,
            projector,
            policy,
            config,
            url=args.upstream,
            upstream_model=args.upstream_model,
            api_key=os.environ.get(args.upstream_key_env),
            token_ids=args.upstream_token_ids,
        )
    else:
        service = local_service(loaded, projector, policy, config)
    app = create_app(service)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as error:
        raise PersonaGuardError(f"cannot bind {args.host}:{args.port}: {error.strerror}") from None
    sock.listen(128)  # connections queue from here on, so the line below means "ready"
    host, port = sock.getsockname()[:2]
    traits = ", ".join(f"{t}@{layer}:{policy.for_trait(t).action}" for t, (_, layer) in watched.items()) or "none"
    print(
        f"persona-guard serve: {config.model_name} on http://{host}:{port}/v1 (traits: {traits}; "
        f"dashboard http://{host}:{port}/dashboard; Ctrl-C to stop)",
        flush=True,
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API, reading persona traits on every answer"
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--monitor",
        nargs="+",
        action="extend",
        default=[],
        metavar="VECTOR",
        help="persona vector file(s) to read on every answer",
    )
    parser.add_argument(
        "--policy",
        default=None,
        help="policy YAML (thresholds, calibration, actions; written by 'persona-guard monitor calibrate')",
    )
    parser.add_argument(
        "--action",
        action="append",
        default=[],
        metavar="TRAIT=ACTION",
        help=f"action when a trait's reading is over threshold: {', '.join(ACTIONS)} (repeatable)",
    )
    parser.add_argument(
        "--threshold",
        action="append",
        default=[],
        help="TRAIT:prompt_last=X[,response_mean=Y] (repeatable; overrides the policy file)",
    )
    parser.add_argument("--webhook", type=http_url, default=None,
                        help="URL that receives a JSON POST per alert (action alert)")
    parser.add_argument("--served-model-name", default=None, help="model id clients send (default: --model)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=flag_type("port", int, bounds(ge=0, le=65535)), default=8000,
                        help="port (0 picks a free one; default 8000)")
    parser.add_argument(
        "--api-key-env",
        default=API_KEY_ENV,
        help=f"environment variable holding the bearer key clients must send (default: {API_KEY_ENV}; unset: no key)",
    )
    parser.add_argument("--api-key-file", default=None, help="file holding the bearer key (wins over --api-key-env)")
    add_arguments(parser, ServerConfig, SERVER_FLAGS)  # types, defaults, ranges, help: the dataclass's
    parser.add_argument(
        "--upstream",
        type=http_url,
        default=None,
        metavar="URL",
        help="forward requests to this OpenAI-compatible base URL (ending in /v1) and read the "
        "traits from the local copy of the model",
    )
    parser.add_argument("--upstream-model", default=None, help="model id to send upstream (default: the client's)")
    parser.add_argument(
        "--upstream-key-env", default="UPSTREAM_API_KEY", help="environment variable with the upstream's bearer key"
    )
    parser.add_argument(
        "--upstream-token-ids",
        action="store_true",
        help="ask the upstream for the answer's token ids (vLLM's return_token_ids) instead of re-tokenizing its text",
    )
    parser.set_defaults(func=run)
