"""Reading and writing JSONL with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from persona_guard.errors import PersonaGuardError
from persona_guard.files import write_text_atomic


def read_jsonl(path: str | Path) -> list[dict]:
    """Every line's JSON object; the first bad line (invalid JSON, not an object, text that is not
    valid UTF-8) is one ``file:line: reason`` error. Conversation rows are read with
    :func:`persona_guard.rows.read_rows` instead, which keeps going past bad lines."""
    from persona_guard.rows import RowError, check_text, jsonl_lines

    path = Path(path)
    if not path.is_file():
        raise PersonaGuardError(f"file not found: {path}")
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
    """Write atomically: the file appears complete or not at all."""
    return write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
