"""``persona-guard serve``: an OpenAI-compatible ``/v1/chat/completions`` endpoint for a local model."""

from __future__ import annotations

from persona_guard.commands.common import add_model_arguments, preflight
from persona_guard.models import load_model
from persona_guard.serve import make_server


def run(args) -> int:
    preflight(model=args.model)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    server = make_server(loaded.model, loaded.tokenizer, args.model, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"persona-guard serve: {args.model} on http://{host}:{port}/v1 (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    parser.set_defaults(func=run)
