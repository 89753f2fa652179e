"""Benchmarks and scripts are not run by the suite (they time things), so their imports rot silently
when the library moves a name. These tests keep them runnable: every ``persona_guard`` name they
import (at the top or inside a function) exists, and each one answers ``--help``."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((REPO / "benchmarks").glob("*.py")) + sorted((REPO / "scripts").glob("*.py"))


def persona_guard_imports(path: Path) -> list[tuple[str, str, int]]:
    """(module, name, line) of every ``from persona_guard... import name`` anywhere in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "persona_guard":
            found.extend((node.module, alias.name, node.lineno) for alias in node.names)
    return found


def test_there_are_benchmarks() -> None:
    assert len(SCRIPTS) >= 5, SCRIPTS


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_imported_names_exist(path: Path) -> None:
    missing = []
    for module, name, line in persona_guard_imports(path):
        if not hasattr(importlib.import_module(module), name):
            missing.append(f"{path.name}:{line}: {module}.{name}")
    assert not missing, missing


#: benchmarks that run (the others, like compute_ceiling.py, are modules the runnable ones import)
RUNNABLE = [p for p in SCRIPTS if p.parent.name == "benchmarks" and '__name__ == "__main__"' in p.read_text()]


def test_most_benchmarks_run() -> None:
    assert len(RUNNABLE) >= 8, RUNNABLE


@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: p.name)
def test_help_runs(path: Path) -> None:
    done = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
