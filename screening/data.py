"""Screening inputs: rows read and validated by :mod:`persona_guard.rows`, one :class:`ScreenRow`
per (prompt, answer) sample (two for a preference row, one per side).

Every input row ends up either as screen rows or as a :class:`~persona_guard.rows.DroppedRow`
that names the file, the row number and the reason: nothing is dropped without a trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from persona_guard.rows import DroppedRow, RawRow, sort_rows


@dataclass(frozen=True)
class ScreenRow:
    """One scorable sample: its row's original fields and the prompt/answer it holds."""

    sample: int  # position among all samples, 0-based (the key of its scores)
    index: int  # position of its row among all input rows, 0-based
    source: str
    row_number: int
    data: dict
    prompt: tuple[dict, ...]
    response: str
    side: str | None = None  # "chosen" / "rejected" for preference rows


def classify_rows(raw_rows: Sequence[RawRow]) -> tuple[list[ScreenRow], list[DroppedRow]]:
    """Split raw rows into scorable samples and skipped rows with their reasons (input order kept)."""
    rows, skipped = sort_rows(raw_rows, need="answer")
    samples: list[ScreenRow] = []
    for row in rows:
        for sample in row.samples:
            assert sample.response is not None  # need="answer"
            samples.append(ScreenRow(len(samples), row.index, row.source, row.row_number, row.data,
                                     sample.prompt, sample.response, sample.side))
    return samples, skipped
