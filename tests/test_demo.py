"""The README's main job, ``persona-guard demo --quick``, end to end in a real subprocess."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest

from persona_guard.demo import DATASETS_TO_SCREEN, numeric_leaves

pytestmark = pytest.mark.smollm

ARMS = ("base", "normal", "severe", "severe+prevent", "severe+inference-steer")
SECTIONS = ("## Persona vector", "## Screening the contaminated mix", "### Dataset-level projection difference",
            "## Fine-tuning arms", "## Evaluation", "## Findings")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def table_rows(report: str, header_start: str) -> list[list[str]]:
    """Cells of the Markdown table whose header line starts with ``header_start``."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory, smollm_dir):
    out = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, "-m", "persona_guard.cli", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_quick_demo_writes_a_complete_report(quick_demo):
    out, done = quick_demo
    report = (out / "report.md").read_text()
    for section in SECTIONS:
        assert section in report, section
    assert f"report: {out / 'report.md'}" in done.stdout

    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (out / image).read_bytes()[:8] == PNG_MAGIC, image
    assert {"drift.png", "dp_histogram.png", "eval/comparison.png"} <= set(
        re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report))

    evaluation = table_rows(report, "| arm | steer at inference")
    assert [row[0] for row in evaluation] == list(ARMS)
    training = table_rows(report, "| arm | data | preventative coef")
    assert [row[0] for row in training] == list(ARMS[1:4])
    assert [row[0] for row in table_rows(report, "| set | rows | mean dP")] == list(DATASETS_TO_SCREEN)
    # every arm trained the same number of steps: only the steering differs
    assert len({row[3] for row in training}) == 1 and int(training[0][3]) > 0


def test_every_number_in_the_report_is_finite(quick_demo):
    out, _ = quick_demo
    report = (out / "report.md").read_text()
    assert not re.search(r"\b(nan|inf)\b", report, re.IGNORECASE)
    summary = json.loads((out / "summary.json").read_text())
    numbers = list(numeric_leaves(summary))
    assert len(numbers) > 50
    assert all(math.isfinite(value) for _, value in numbers)
    evaluation = {row["name"]: row for row in summary["evaluation"]}
    for name in ARMS:
        for key in ("trait_score", "coherence", "projection", "perplexity", "mc_accuracy"):
            assert evaluation[name][key] is not None, (name, key)
    assert 0.0 <= summary["screening"]["auroc"] <= 1.0
    assert all(len(arm["drift"]) >= 2 for arm in summary["arms"].values())
