"""``persona-guard`` command line. Each subcommand lives in :mod:`persona_guard.commands`.

Errors the user can fix (:class:`PersonaGuardError`) print as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from persona_guard.errors import PersonaGuardError

#: Subcommand modules; each defines ``register(subparsers)`` which sets ``func`` on its parser.
COMMAND_MODULES = (
    "persona_guard.commands.models",
    "persona_guard.commands.vector",
    "persona_guard.commands.steer",
    "persona_guard.commands.monitor",
    "persona_guard.commands.traits",
    "persona_guard.commands.train",
    "persona_guard.commands.evaluate",
    "persona_guard.commands.screen",
    "persona_guard.commands.serve",
    "persona_guard.commands.extract",
    "persona_guard.commands.select_layer",
    "persona_guard.commands.judge",
    "persona_guard.commands.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persona-guard",
        description="Persona vectors: extract, monitor, steer, screen data, steer preventatively.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except PersonaGuardError as error:
        # one line, whatever text the message quotes from the input
        message = str(error).replace("\r", "\\r").replace("\n", "\\n")
        print(f"persona-guard {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
