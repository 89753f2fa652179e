"""``persona-guard`` command line. Each subcommand lives in :mod:`personas.commands`.

Errors the user can fix (:class:`PersonaGuardError`) print as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from personas.errors import PersonaGuardError

#: Subcommand modules; each defines ``register(subparsers)`` which sets ``func`` on its parser.
COMMAND_MODULES = (
    "personas.commands.models",
    "personas.commands.vector",
    "personas.commands.steer",
    "personas.commands.monitor",
    "personas.commands.traits",
    "personas.commands.train",
    "personas.commands.evaluate",
    "personas.commands.screen",
    "personas.commands.serve",
    "personas.commands.extract",
    "personas.commands.select_layer",
    "personas.commands.judge",
    "personas.commands.demo",
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
        print(f"persona-guard {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
