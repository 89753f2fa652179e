"""Paths to the datasets shipped inside the package (see docs/data.md for what each one is).

The files are written by ``scripts/build_datasets.py``; this module only locates them so that
examples, tests and benchmarks can say ``dataset_path("evil", "severe.jsonl")`` instead of
hard-coding a path into the installed package.
"""

from __future__ import annotations

from pathlib import Path

from persona_guard.errors import PersonaGuardError

BUNDLED_DATA_DIR = Path(__file__).parent / "bundled_data"


def list_datasets() -> list[str]:
    """Relative names (``"evil/normal.jsonl"``, ``"capability_mc.jsonl"``...) of every bundled file."""
    return sorted(path.relative_to(BUNDLED_DATA_DIR).as_posix() for path in BUNDLED_DATA_DIR.rglob("*.jsonl"))


def dataset_path(*parts: str) -> Path:
    """The path of a bundled dataset, e.g. ``dataset_path("mistakes", "math_wrong.jsonl")``.

    The ``.jsonl`` suffix may be omitted. A missing name raises PersonaGuardError listing what exists.
    """
    if not parts:
        raise PersonaGuardError("dataset_path: name a bundled dataset, e.g. dataset_path('evil', 'severe.jsonl')")
    path = BUNDLED_DATA_DIR.joinpath(*parts)
    if path.suffix != ".jsonl" and not path.is_file():
        path = path.with_name(path.name + ".jsonl")
    if not path.is_file():
        name = "/".join(parts)
        available = ", ".join(list_datasets()) or "none (run scripts/build_datasets.py)"
        raise PersonaGuardError(f"bundled dataset {name!r} not found; available: {available}")
    return path
