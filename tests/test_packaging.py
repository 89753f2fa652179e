"""The built wheel, installed into a fresh venv, from a project that has its own ``training/`` package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

USER_SCRIPT = """
import training                                   # the user's own package, not persona-guard's
from persona_guard.training import PreventativeSteeringCallback, SteeringSettings
from persona_guard.screening import Screener, ScreeningConfig
import persona_guard

assert training.OWNER == "user", training.__file__
assert persona_guard.__file__.startswith(PREFIX), persona_guard.__file__
assert PreventativeSteeringCallback.__module__ == "persona_guard.training.steering_callback"
print("imports ok")
"""


def test_wheel_in_fresh_venv_imports_public_api_beside_a_users_training_package(tmp_path):
    # no network: build without isolation, with the setuptools of the dependencies' environment first
    deps = str(Path(torch.__file__).resolve().parents[1])
    # build from a copy of the sources setuptools reads, so the checkout gets no build/ folder
    source = tmp_path / "source"
    for folder in ("persona_guard", "screening", "training"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(dist), str(source)], env={**os.environ, "PYTHONPATH": deps},
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:]
    wheel = next(dist.glob("persona_guard-*.whl"))
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {"persona_guard"} == {top for top in tops if not top.endswith(".dist-info")}, tops

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=600)
    # dependencies: reuse the test environment's packages instead of the network
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "deps.pth").write_text(deps + "\n")

    project = tmp_path / "project"
    (project / "training").mkdir(parents=True)
    (project / "training" / "__init__.py").write_text('OWNER = "user"\n')
    script = f"PREFIX = {str(site)!r}\n" + USER_SCRIPT
    done = subprocess.run([str(python), "-c", script], cwd=project, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "imports ok"

    cli = subprocess.run([str(venv / "bin" / "persona-guard"), "--help"], cwd=project, capture_output=True,
                         text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "persona-guard" in cli.stdout and "train" in cli.stdout
