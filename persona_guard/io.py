"""Reading input files and reading and writing JSONL, with errors that name the file and line."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

from persona_guard.errors import PersonaGuardError
from persona_guard.files import write_text_atomic


class NonStandardJSON(ValueError):
    """``NaN``, ``Infinity``, ``-Infinity`` or a number that overflows to infinity (``1e999``): Python's
    ``json`` reads them, JSON (RFC 8259) has none, and written back they make a file no other reader takes."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonStandardJSON(f"number {text[:20]} is out of range")
    return value


def _no_constant(name: str):
    raise NonStandardJSON(f"{name} is not valid JSON")


def require_file(path: str | Path, what: str = "file", flag: str | None = None) -> Path:
    """``path`` as a :class:`Path` when it is a regular file (or a link to one), else one
    :class:`PersonaGuardError` line saying why: ``<what> not found: <path>``, ``<what> <path> is a folder``
    or ``<what> <path> is not a regular file`` (a device, a pipe, a socket). With ``flag`` the line names
    the flag instead: ``<flag> <path>: file not found`` / ``: is a folder`` / ``: is not a regular file``."""
    path = Path(path)
    if path.is_file():
        return path
    problem = None if not path.exists() else "is a folder" if path.is_dir() else "is not a regular file"
    if flag is not None:
        raise PersonaGuardError(f"{flag} {path}: {problem or 'file not found'}")
    raise PersonaGuardError(f"{what} not found: {path}" if problem is None else f"{what} {path} {problem}")


def loads_strict(text: str | bytes):
    """``json.loads`` as JSON has it, for every reader of user files and requests: a non-standard
    constant or an overflowing number raises :class:`NonStandardJSON` (a ``ValueError``, as
    ``json.JSONDecodeError`` is) naming it."""
    return json.loads(text, parse_float=_finite, parse_constant=_no_constant)


def read_jsonl(path: str | Path) -> list[dict]:
    """Every line's JSON object; the first bad line (invalid JSON, not an object, text that is not
    valid UTF-8) is one ``file:line: reason`` error. Conversation rows are read with
    :func:`persona_guard.rows.read_rows` instead, which keeps going past bad lines."""
    from persona_guard.rows import RowError, check_text, jsonl_lines

    path = require_file(path)
    rows = []
    for line_number, data, error in jsonl_lines(path):
        try:
            if error is not None:
                raise error
            check_text(data, "")
        except RowError as problem:
            raise problem.at(str(path), line_number) from None
        rows.append(data)
    return rows


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write atomically: the file appears complete or not at all. Strict JSON: a NaN or infinity is
    refused (one line naming ``path``), never written as bare ``NaN``."""
    try:
        text = "".join(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows)
    except ValueError:
        raise PersonaGuardError(f"{path}: refusing to write a non-finite number (NaN or infinity) as JSON") from None
    return write_text_atomic(path, text)
