"""Reading screening inputs and turning rows into (prompt messages, response) pairs.

Every input row ends up either as a :class:`ScreenRow` or as a :class:`SkippedRow` that names the
file, the row number and the reason: nothing is dropped without a trace.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from persona_guard.encoding import split_conversation
from persona_guard.errors import PersonaGuardError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class RawRow:
    """One input row as read: ``data`` is None when the row could not even be parsed."""

    source: str
    row_number: int  # 1-based: line number for JSONL, data row number for Parquet/CSV/datasets
    data: dict | None
    error: str | None = None


@dataclass(frozen=True)
class ScreenRow:
    """A usable row: its original fields and the conversation split into prompt and response."""

    index: int  # position among all input rows, 0-based
    source: str
    row_number: int
    data: dict
    prompt: tuple[dict, ...]
    response: str


@dataclass(frozen=True)
class SkippedRow:
    index: int
    source: str
    row_number: int
    reason: str

    def to_dict(self) -> dict:
        return {"source": self.source, "row": self.row_number, "reason": self.reason}


# ---- reading files ------------------------------------------------------------------------------

def _read_jsonl(path: Path) -> list[RawRow]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                rows.append(RawRow(str(path), line_number, None, f"invalid JSON ({error.msg})"))
                continue
            if not isinstance(data, dict):
                rows.append(RawRow(str(path), line_number, None,
                                   f"expected a JSON object, got {type(data).__name__}"))
                continue
            rows.append(RawRow(str(path), line_number, data))
    return rows


def _read_parquet(path: Path) -> list[RawRow]:
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(path).to_pylist()
    except Exception as error:  # pyarrow raises several unrelated types
        raise PersonaGuardError(f"{path}: cannot read as Parquet ({error})".splitlines()[0]) from None
    return [RawRow(str(path), number, record) for number, record in enumerate(records, 1)]


def _read_csv(path: Path) -> list[RawRow]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise PersonaGuardError(f"{path}: CSV file has no header row")
        rows = []
        for number, record in enumerate(reader, 1):
            if None in record:  # more cells than header fields
                rows.append(RawRow(str(path), number, None,
                                   f"{len(record[None])} more cells than the header has columns"))
                continue
            rows.append(RawRow(str(path), number, dict(record)))
    return rows


def _read_saved_dataset(path: Path, split: str | None) -> list[RawRow]:
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except Exception as error:
        raise PersonaGuardError(f"{path}: not a saved datasets dir ({error})".splitlines()[0]) from None
    if isinstance(dataset, DatasetDict):
        split = split or ("train" if "train" in dataset else None)
        if split not in dataset:
            raise PersonaGuardError(f"{path}: pick a split with --split ({', '.join(dataset)})")
        dataset = dataset[split]
    return [RawRow(str(path), number, dict(record)) for number, record in enumerate(dataset, 1)]


def read_rows(path: str | Path, split: str | None = None) -> list[RawRow]:
    """Read JSONL (``.jsonl``/``.json``), Parquet, CSV or a ``datasets.save_to_disk`` directory."""
    path = Path(path)
    if path.is_dir():
        return _read_saved_dataset(path, split)
    if not path.is_file():
        raise PersonaGuardError(f"file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return _read_jsonl(path)
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path)
    raise PersonaGuardError(f"{path}: unknown data format {suffix!r} (use .jsonl, .parquet, .csv "
                            "or a saved datasets dir)")


def rows_from_records(records: Iterable[Mapping], source: str = "<dataset>") -> list[RawRow]:
    """Raw rows from in-memory records (a ``datasets.Dataset`` or a list of dicts)."""
    return [RawRow(source, number, dict(record)) for number, record in enumerate(records, 1)]


# ---- understanding rows -------------------------------------------------------------------------

def _decode_message_list(value, field: str):
    """CSV cells hold message lists as JSON text: decode text that looks like one."""
    if isinstance(value, str) and value.lstrip().startswith("[{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"'{field}' looks like a JSON message list but does not parse") from None
    return value


def _check_messages(messages, field: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"'{field}' must be a non-empty list of messages")
    for turn, message in enumerate(messages):
        if not isinstance(message, Mapping) or message.get("role") not in ROLES \
                or not isinstance(message.get("content"), str):
            raise ValueError(f"{field}[{turn}] needs a role (system/user/assistant) and string content")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def conversation_parts(data: Mapping) -> tuple[list[dict], str]:
    """``(prompt messages, response)`` of a row; raises ValueError with the reason when unusable.

    Accepted forms: ``messages`` (the last assistant turn is the response, everything before it
    the prompt), ``prompt`` + ``completion`` or ``prompt`` + ``response`` where the prompt is a
    string or a message list and the completion a string or a one-assistant-message list (TRL's
    conversational prompt-completion form).
    """
    if data.get("messages") is not None:
        messages = _check_messages(_decode_message_list(data["messages"], "messages"), "messages")
        prompt, response = split_conversation(messages)
        if response is None:
            raise ValueError("conversation does not end with an assistant turn (no response to score)")
    elif data.get("prompt") is not None:
        answer_field = "completion" if data.get("completion") is not None else "response"
        if data.get(answer_field) is None:
            raise ValueError("'prompt' without a 'completion' or 'response' (no response to score)")
        raw_prompt = _decode_message_list(data["prompt"], "prompt")
        if isinstance(raw_prompt, str):
            prompt = [{"role": "user", "content": raw_prompt}]
        else:
            prompt = _check_messages(raw_prompt, "prompt")
        answer = _decode_message_list(data[answer_field], answer_field)
        if isinstance(answer, list):
            turns = _check_messages(answer, answer_field)
            if len(turns) != 1 or turns[0]["role"] != "assistant":
                raise ValueError(f"'{answer_field}' list must hold exactly one assistant message")
            response = turns[0]["content"]
        elif isinstance(answer, str):
            response = answer
        else:
            raise ValueError(f"'{answer_field}' must be a string or a message list, "
                             f"not {type(answer).__name__}")
    else:
        raise ValueError("no 'messages' and no 'prompt' + 'completion'/'response' fields")
    if not response.strip():
        raise ValueError("response is empty")
    if not any(m["role"] == "user" and m["content"].strip() for m in prompt):
        raise ValueError("prompt has no non-empty user turn")
    return prompt, response


def last_user_turn(prompt: Sequence[Mapping]) -> str:
    """The question a response answers (what judges and reports show)."""
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


def classify_rows(raw_rows: Sequence[RawRow]) -> tuple[list[ScreenRow], list[SkippedRow]]:
    """Split raw rows into usable rows and skipped rows with their reasons (input order kept)."""
    usable, skipped = [], []
    for index, raw in enumerate(raw_rows):
        if raw.data is None:
            skipped.append(SkippedRow(index, raw.source, raw.row_number, raw.error or "unreadable row"))
            continue
        try:
            prompt, response = conversation_parts(raw.data)
        except ValueError as error:
            skipped.append(SkippedRow(index, raw.source, raw.row_number, str(error)))
            continue
        usable.append(ScreenRow(index, raw.source, raw.row_number, raw.data, tuple(prompt), response))
    return usable, skipped
