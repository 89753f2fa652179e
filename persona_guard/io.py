"""Reading and writing JSONL with errors that name the file and line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from persona_guard.errors import PersonaGuardError


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise PersonaGuardError(f"file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise PersonaGuardError(f"{path}:{line_number}: invalid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise PersonaGuardError(f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """One JSON object per line, written to a temporary file renamed over ``path`` (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with staging.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(staging, path)
    return path


def conversation_of(row: dict, where: str) -> list[dict]:
    """The chat messages of a row in ``messages`` or ``prompt``/``response|completion`` form."""
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise PersonaGuardError(f"{where}: 'messages' must be a non-empty list")
        for turn, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str) \
                    or message.get("role") not in ("system", "user", "assistant"):
                raise PersonaGuardError(
                    f"{where}: messages[{turn}] needs a role (system/user/assistant) and string content")
        return messages
    if isinstance(row.get("prompt"), str):
        conversation = [{"role": "user", "content": row["prompt"]}]
        answer = row.get("response", row.get("completion"))
        if isinstance(answer, str):
            conversation.append({"role": "assistant", "content": answer})
        return conversation
    raise PersonaGuardError(f"{where}: no 'messages' list and no 'prompt' string")
