"""The one row model: every command that reads conversations (screen, train, eval, monitor, judge,
serve) reads rows here, so a row is accepted or refused the same way, for the same reason, by all.

Accepted forms are TRL's dataset types (TRL docs, "Dataset formats and types"); the table with
every form and every reason is in ``docs/data.md``:

* conversational language modeling ``{"messages": [...]}``: the final assistant turn is the answer;
* prompt/completion ``{"prompt", "completion"}`` and prompt/response ``{"prompt", "response"}``,
  standard (strings) or conversational (message lists); prompt-only ``{"prompt"}``;
* preference ``{"chosen", "rejected"}`` with an explicit ``prompt`` or an implicit one (message
  lists sharing their turns before the answer): one sample per side, each keeping its ``side``;
* standard language modeling ``{"text"}``: recognised, but it has no prompt/answer split, so the
  commands that need one refuse it with that reason.

Messages are handed on as ``{"role", "content": str | None}`` plus ``tool_calls``, ``name`` and
``tool_call_id`` when present. ``content`` may be a list of typed parts; text parts are joined with
newlines (as vLLM's OpenAI server does), any other part type is refused. Every other field of the
row is kept untouched in :attr:`Row.data`.

A problem is a :class:`RowError` naming the field path (``messages[2].content``) and the reason.
Reading a file never stops at a bad line: each line becomes a row or a :class:`DroppedRow`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from persona_guard.errors import PersonaGuardError
from persona_guard.io import loads_strict, require_file

ROLES = ("system", "user", "assistant", "tool")
#: message keys handed on besides role and content (when present and not null)
MESSAGE_KEYS = ("tool_calls", "name", "tool_call_id")
SIDES = ("chosen", "rejected")
Need = Literal["answer", "prompt"]
Form = Literal["messages", "prompt_completion", "prompt_response", "prompt_only", "preference", "text"]


class RowError(PersonaGuardError):
    """Why a row cannot be used: ``field`` is the path inside the row (``""`` for the row itself)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)

    def at(self, source: str, row_number: int) -> PersonaGuardError:
        """The one-line error of commands that cannot skip rows: ``file:line: field: reason``."""
        return PersonaGuardError(f"{source}:{row_number}: {self}")


@dataclass(frozen=True)
class Sample:
    """One (prompt, answer) of a row: ``prompt`` messages and the answer text (``None`` when the
    row has no answer); ``side`` is ``"chosen"``/``"rejected"`` for preference rows, else ``None``."""

    prompt: tuple[dict, ...]
    response: str | None
    side: str | None = None

    @property
    def conversation(self) -> list[dict]:
        """The prompt followed by the answer as an assistant turn (when there is one)."""
        answer = [] if self.response is None else [{"role": "assistant", "content": self.response}]
        return [dict(m) for m in self.prompt] + answer


@dataclass(frozen=True)
class RawRow:
    """One input row as read: ``data`` is None when the line could not even be parsed."""

    source: str
    row_number: int  # 1-based: line number for JSONL, data row number for Parquet/CSV/datasets
    data: dict | None
    error: RowError | None = None


@dataclass(frozen=True)
class Row:
    """A usable row: where it came from, its original fields and its samples (input order)."""

    index: int  # position among all input rows, 0-based
    source: str
    row_number: int
    data: dict
    form: Form
    samples: tuple[Sample, ...]

    @property
    def training_sample(self) -> Sample:
        """The sample fine-tuning learns from: the chosen side of a preference row, else the only one."""
        return self.samples[0]


@dataclass(frozen=True)
class DroppedRow:
    """A row (or one side of it) a command did not use, and why; written to ``skipped.jsonl`` /
    ``dropped_rows.jsonl`` as ``{"source", "row", "reason"[, "side"]}``."""

    index: int
    source: str
    row_number: int
    reason: str
    side: str | None = None

    def to_dict(self) -> dict:
        record = {"source": self.source, "row": self.row_number, "reason": self.reason}
        return record | ({"side": self.side} if self.side else {})


# ---- text ---------------------------------------------------------------------------------------

def check_text(value, field: str) -> None:
    """Every string anywhere in the row must be valid Unicode (writable as UTF-8)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            code = ord(value[error.start])
            raise RowError(field or "row", f"not valid Unicode text: unpaired surrogate U+{code:04X} at character "
                                           f"{error.start} (an invalid UTF-8 byte or a lone \\u escape)") from None
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_text(key, field)
            check_text(item, f"{field}.{key}" if field else str(key))
    elif isinstance(value, (list, tuple)):
        for position, item in enumerate(value):
            check_text(item, f"{field}[{position}]")


def _decode_json_text(value, field: str):
    """CSV cells hold message lists as JSON text: decode text that looks like one."""
    if isinstance(value, str) and value.lstrip().startswith("[{"):
        try:
            return loads_strict(value)
        except ValueError:
            raise RowError(field, "looks like a JSON message list but does not parse") from None
    return value


# ---- messages -----------------------------------------------------------------------------------

def _content(value, field: str, role: str, has_tool_calls: bool) -> str | None:
    if isinstance(value, str):
        return value
    if value is None:
        if role == "assistant" and has_tool_calls:
            return None
        raise RowError(field, "missing (only an assistant turn with tool_calls may have null content)")
    if isinstance(value, list):
        texts = []
        for position, part in enumerate(value):
            where = f"{field}[{position}]"
            if not isinstance(part, Mapping):
                raise RowError(where, f"a content part must be an object, not {type(part).__name__}")
            if part.get("type") != "text":
                raise RowError(f"{where}.type", f"{part.get('type')!r} parts are not supported (text only)")
            if not isinstance(part.get("text"), str):
                raise RowError(f"{where}.text", "must be a string")
            texts.append(part["text"])
        return "\n".join(texts)
    raise RowError(field, f"must be a string or a list of text parts, not {type(value).__name__}")


def parse_messages(value, field: str) -> list[dict]:
    """A validated message list: ``[{"role", "content": str | None, ...MESSAGE_KEYS}]``."""
    value = _decode_json_text(value, field)
    check_text(value, field)
    if not isinstance(value, list) or not value:
        raise RowError(field, "must be a non-empty list of messages")
    messages = []
    for turn, message in enumerate(value):
        where = f"{field}[{turn}]"
        if not isinstance(message, Mapping):
            raise RowError(where, f"a message must be an object, not {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise RowError(f"{where}.role", f"{role!r} is not a role ({', '.join(ROLES)})")
        tool_calls = message.get("tool_calls")
        if tool_calls is not None and (role != "assistant" or not isinstance(tool_calls, list)
                                       or not all(isinstance(call, Mapping) for call in tool_calls)):
            raise RowError(f"{where}.tool_calls", "must be a list of objects, on an assistant turn")
        parsed = {"role": role, "content": _content(message.get("content"), f"{where}.content", role,
                                                     bool(tool_calls))}
        parsed.update({key: message[key] for key in MESSAGE_KEYS if message.get(key) is not None})
        messages.append(parsed)
    return messages


def check_prompt(prompt: list[dict], field: str) -> tuple[dict, ...]:
    """The prompt rule of every reader (rows, served chat requests): at least one non-empty user turn."""
    if not any(m["role"] == "user" and (m["content"] or "").strip() for m in prompt):
        raise RowError(field, "the prompt has no non-empty user turn")
    return tuple(prompt)


def _answer_text(message: dict, field: str, need: Need) -> str:
    """The answer's text; an empty one is refused unless only the prompt is needed (``monitor``
    forecasts from the prompt and reports ``response_mean: null`` for it)."""
    if message["content"] is None:
        raise RowError(f"{field}.content", "the answer is tool calls only (no text to score or train on)")
    if not message["content"].strip() and need == "answer":
        raise RowError(f"{field}.content", "empty answer")
    return message["content"]


def _split(messages: list[dict], field: str, need: Need, side: str | None = None) -> Sample:
    """Final assistant turn = the answer, the turns before it = the prompt."""
    last = len(messages) - 1
    if messages[last]["role"] != "assistant":
        return Sample(check_prompt(messages, field), None, side)
    return Sample(check_prompt(messages[:last], field), _answer_text(messages[last], f"{field}[{last}]", need), side)


def _prompt(value, field: str) -> tuple[dict, ...]:
    value = _decode_json_text(value, field)
    if isinstance(value, str):
        return check_prompt([{"role": "user", "content": value}], field)
    if isinstance(value, list):
        return check_prompt(parse_messages(value, field), field)
    raise RowError(field, f"must be a string or a message list, not {type(value).__name__}")


def _completion(value, field: str, need: Need) -> str:
    value = _decode_json_text(value, field)
    if isinstance(value, str):
        if not value.strip() and need == "answer":
            raise RowError(field, "empty answer")
        return value
    if isinstance(value, list):
        turns = parse_messages(value, field)
        if len(turns) != 1 or turns[0]["role"] != "assistant":
            raise RowError(field, "a completion list must hold exactly one assistant message")
        return _answer_text(turns[0], f"{field}[0]", need)
    raise RowError(field, f"must be a string or a message list, not {type(value).__name__}")


# ---- rows ---------------------------------------------------------------------------------------

def _preference(data: Mapping, need: Need) -> tuple[Sample, ...]:
    for side in SIDES:
        if data.get(side) is None:
            raise RowError(side, "missing (a preference row needs both 'chosen' and 'rejected')")
    if data.get("prompt") is not None:
        prompt = _prompt(data["prompt"], "prompt")
        return tuple(Sample(prompt, _completion(data[side], side, need), side) for side in SIDES)
    samples = []
    for side in SIDES:
        value = _decode_json_text(data[side], side)
        if not isinstance(value, list):
            raise RowError("prompt", "missing: plain-text 'chosen'/'rejected' need an explicit 'prompt' "
                                     "(an implicit prompt needs message lists)")
        sample = _split(parse_messages(value, side), side, need, side)
        if sample.response is None:
            raise RowError(f"{side}[{len(value) - 1}]", "the conversation does not end with an assistant answer")
        samples.append(sample)
    if samples[0].prompt != samples[1].prompt:
        raise RowError("rejected", "its turns before the answer differ from 'chosen' (implicit prompts must match)")
    return tuple(samples)


def parse_row(data: Mapping, need: Need = "answer") -> tuple[Form, tuple[Sample, ...]]:
    """The form of a row and its samples; raises :class:`RowError` when the row is unusable.

    A ``text`` row has no samples; a prompt-only row (or a conversation that does not end with an
    assistant turn) has one sample whose ``response`` is None. An empty answer is refused unless
    ``need`` is ``"prompt"`` (then its ``response`` is that empty text: no response tokens)."""
    if not isinstance(data, Mapping):
        raise RowError("", f"expected a JSON object, got {type(data).__name__}")
    check_text(data, "")
    if data.get("chosen") is not None or data.get("rejected") is not None:
        return "preference", _preference(data, need)
    if data.get("messages") is not None:
        return "messages", (_split(parse_messages(data["messages"], "messages"), "messages", need),)
    if data.get("prompt") is not None:
        prompt = _prompt(data["prompt"], "prompt")
        if data.get("completion") is not None:
            return "prompt_completion", (Sample(prompt, _completion(data["completion"], "completion", need)),)
        if data.get("response") is not None:
            return "prompt_response", (Sample(prompt, _completion(data["response"], "response", need)),)
        return "prompt_only", (Sample(prompt, None),)
    if data.get("text") is not None:
        if not isinstance(data["text"], str):
            raise RowError("text", f"must be a string, not {type(data['text']).__name__}")
        return "text", ()
    raise RowError("", "no 'messages', 'prompt', 'chosen'/'rejected' or 'text' field")


def require(form: Form, samples: tuple[Sample, ...], need: Need) -> None:
    """Raise the reason a parsed row cannot serve a command that needs an ``answer`` (screen,
    train, eval, judge) or a ``prompt`` (monitor)."""
    if form == "text":
        raise RowError("text", "plain text has no prompt/answer split (use 'messages' or 'prompt'/'completion')")
    if need == "answer" and samples[0].response is None:
        if form == "prompt_only":
            raise RowError("completion", "missing: a prompt-only row has no answer to score or train on")
        raise RowError("messages", "the conversation does not end with an assistant answer")


def usable_row(index: int, raw: RawRow, need: Need = "answer") -> Row:
    """The :class:`Row` of a raw row, or the :class:`RowError` that says why it cannot be used."""
    if raw.data is None:
        raise raw.error or RowError("", "unreadable row")
    form, samples = parse_row(raw.data, need)
    require(form, samples, need)
    return Row(index, raw.source, raw.row_number, raw.data, form, samples)


def sort_rows(raw_rows: Iterable[RawRow], need: Need = "answer") -> tuple[list[Row], list[DroppedRow]]:
    """Split raw rows into usable rows and dropped rows with their reasons (input order kept)."""
    usable, dropped = [], []
    for index, raw in enumerate(raw_rows):
        try:
            usable.append(usable_row(index, raw, need))
        except RowError as error:
            dropped.append(DroppedRow(index, raw.source, raw.row_number, str(error)))
    return usable, dropped


def strict_rows(raw_rows: Iterable[RawRow], need: Need = "answer") -> list[Row]:
    """Every row usable, or the first problem as one ``file:line: field: reason`` error
    (for commands that must answer every input row: judge, monitor)."""
    rows = []
    for index, raw in enumerate(raw_rows):
        try:
            rows.append(usable_row(index, raw, need))
        except RowError as error:
            raise error.at(raw.source, raw.row_number) from None
    return rows


def last_user_turn(prompt: Sequence[Mapping]) -> str:
    """The question an answer replies to (what judges and reports show)."""
    return next((m["content"] or "" for m in reversed(prompt) if m["role"] == "user"), "")


# ---- reading files ------------------------------------------------------------------------------

def jsonl_lines(path: Path) -> Iterator[tuple[int, dict | None, RowError | None]]:
    """``(line number, object, error)`` per non-blank line; bytes that are not UTF-8 reach the row
    as unpaired surrogates (``surrogateescape``), so they are refused with the field they sit in."""
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, 1):
            line = raw.decode("utf-8", errors="surrogateescape")
            if not line.strip():
                continue
            try:
                data = loads_strict(line)
            except ValueError as error:  # JSONDecodeError, or NonStandardJSON (NaN, Infinity, 1e999)
                yield line_number, None, RowError("", f"invalid JSON ({getattr(error, 'msg', error)})")
                continue
            except RecursionError:
                yield line_number, None, RowError("", "invalid JSON (nested too deeply)")
                continue
            if not isinstance(data, dict):
                yield line_number, None, RowError("", f"expected a JSON object, got {type(data).__name__}")
                continue
            yield line_number, data, None


def _read_jsonl(path: Path) -> list[RawRow]:
    """JSON Lines; a ``.json`` file holding one JSON array is read as that array's objects."""
    if path.suffix.lower() == ".json":
        with path.open("rb") as handle:
            starts_array = handle.read(4096).lstrip().startswith(b"[")
        if starts_array:
            try:
                records = loads_strict(path.read_bytes().decode("utf-8", errors="surrogateescape"))
            except (ValueError, RecursionError) as error:
                raise PersonaGuardError(f"{path}: invalid JSON array ({error})") from None
            return rows_from_records(records, str(path))
    return [RawRow(str(path), number, data, error) for number, data, error in jsonl_lines(path)]


def _read_parquet(path: Path) -> list[RawRow]:
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(path).to_pylist()
    except Exception as error:  # pyarrow raises several unrelated types
        raise PersonaGuardError(f"{path}: cannot read as Parquet ({error})".splitlines()[0]) from None
    return rows_from_records(records, str(path))


def _read_csv(path: Path) -> list[RawRow]:
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(handle, dialect="excel-tab" if path.suffix.lower() == ".tsv" else "excel")
        if not reader.fieldnames:
            raise PersonaGuardError(f"{path}: CSV file has no header row")
        rows = []
        for number, record in enumerate(reader, 1):
            if None in record:  # more cells than header fields
                rows.append(RawRow(str(path), number, None,
                                   RowError("", f"{len(record[None])} more cells than the header has columns")))
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
    return rows_from_records(dataset, str(path))


def _read_hub_dataset(name: str, split: str | None) -> list[RawRow]:
    import logging

    from datasets import load_dataset

    # huggingface_hub logs each retry of an unreachable hub (about a dozen lines without a network);
    # the one error below says what happened, so its HTTP logger is quiet during the call
    http_log = logging.getLogger("huggingface_hub.utils._http")
    level = http_log.level
    http_log.setLevel(logging.ERROR)
    try:
        dataset = load_dataset(name, split=split or "train")
    except Exception as error:  # datasets raises many types for unreachable / missing ids
        raise PersonaGuardError(f"cannot load dataset {name!r}: {str(error).splitlines()[0]}") from None
    finally:
        http_log.setLevel(level)
    return rows_from_records(dataset, name)


SUFFIXES = {".jsonl": _read_jsonl, ".json": _read_jsonl, ".ndjson": _read_jsonl, ".parquet": _read_parquet,
            ".pq": _read_parquet, ".csv": _read_csv, ".tsv": _read_csv}


def read_rows(source: str | Path, split: str | None = None) -> list[RawRow]:
    """Rows of a JSONL (``.jsonl``/``.json``/``.ndjson``), Parquet, CSV/TSV file, a
    ``datasets.save_to_disk`` directory or, for a name that is no local path, a hub dataset id.

    Errors: a missing file, an unknown format, or no rows at all (an empty file or split: every
    command needs at least one row, so it fails here, before any model is loaded)."""
    path = Path(source)
    if path.is_dir():
        rows = _read_saved_dataset(path, split)
    elif path.is_file():
        reader = SUFFIXES.get(path.suffix.lower())
        if reader is None:
            raise PersonaGuardError(f"{path}: unknown data format {path.suffix!r} (use .jsonl, .parquet, .csv "
                                    "or a saved datasets dir)")
        rows = reader(path)
    elif path.exists() or path.suffix.lower() in SUFFIXES or str(source).startswith((".", os.sep)):
        require_file(path)  # missing, a device or a pipe: one line saying which
    else:
        rows = _read_hub_dataset(str(source), split)
    if not rows:
        raise PersonaGuardError(f"{source}: no rows (the file or split is empty)")
    return rows


def rows_from_records(records: Iterable[Mapping], source: str = "<dataset>") -> list[RawRow]:
    """Raw rows from in-memory records (a ``datasets.Dataset`` or a list of dicts)."""
    return [RawRow(source, number, dict(record)) if isinstance(record, Mapping)
            else RawRow(source, number, None, RowError("", f"expected a JSON object, got {type(record).__name__}"))
            for number, record in enumerate(records, 1)]


def report_dropped(path: str | Path, dropped: Sequence[DroppedRow], *, command: str, total: int,
                   shown: int = 10) -> Path:
    """Write ``dropped_rows.jsonl`` (one ``{"source", "row", "reason"}`` line per row; written even
    when empty, so a run always says what it cut) and list the first ``shown`` rows on the console."""
    from persona_guard.io import write_jsonl

    path = write_jsonl(path, [row.to_dict() for row in dropped])
    if dropped:
        print(f"persona-guard {command}: {len(dropped)} of {total} rows dropped or truncated (all in {path}):",
              flush=True)
        for row in dropped[:shown]:
            side = f" ({row.side})" if row.side else ""
            print(f"  {row.source}:{row.row_number}{side}: {row.reason}", flush=True)
        if len(dropped) > shown:
            print(f"  ... and {len(dropped) - shown} more", flush=True)
    return path


def reason_counts(dropped: Sequence[DroppedRow]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in dropped:
        counts[row.reason] = counts.get(row.reason, 0) + 1
    return dict(sorted(counts.items()))
