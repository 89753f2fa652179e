"""``persona-guard`` command line. Each subcommand lives in :mod:`persona_guard.commands`.

Errors the user can fix (:class:`PersonaGuardError`) print as one line and exit with status 2, as do
argparse's own (a flag's type, range or choices, derived from the library's dataclasses by
:mod:`persona_guard.schema`) and arguments that are not valid UTF-8. A closed output pipe
(``persona-guard vector show X | head -1``) ends the command quietly, as it does Unix tools.
"""

from __future__ import annotations

import argparse
import importlib
import os
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


#: exit status after a closed output pipe: the shell's for a process ended by SIGPIPE (128 + 13)
BROKEN_PIPE_STATUS = 141


def _undecodable(argv: list[str]) -> tuple[int, str] | None:
    """(index, message) of the first argument holding bytes that are not UTF-8 (Python keeps them as
    surrogate escapes, which no file, model or HTTP request can take); the message names its flag."""
    for index, arg in enumerate(argv):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            flag = arg.partition("=")[0] if arg.startswith("--") and "=" in arg else (
                argv[index - 1] if index and argv[index - 1].startswith("-") else f"#{index + 1}")
            return index, f"argument {flag}: {ascii(arg)} is not valid UTF-8 text"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    undecodable = _undecodable(argv)
    if undecodable is not None:
        index, message = undecodable
        prog = f"persona-guard {argv[0]}" if index > 0 and not argv[0].startswith("-") else "persona-guard"
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        status = args.func(args) or 0
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return status
    except PersonaGuardError as error:
        # one line, whatever text the message quotes from the input
        message = str(error).replace("\r", "\\r").replace("\n", "\\n")
        print(f"persona-guard {args.command}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly; send what is still buffered to /dev/null so
        # the interpreter's final flush does not fail again (Python docs, "Note on SIGPIPE")
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_STATUS


if __name__ == "__main__":
    sys.exit(main())
