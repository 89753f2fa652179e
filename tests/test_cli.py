import json
import subprocess
import sys

import torch

from persona_guard.vectors import PersonaVector


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "persona_guard.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_models_lists_builtin_and_cache_state(smollm_dir):
    result = cli("models", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    row = next(r for r in info["models"] if r["name"] == "smollm2-135m")
    assert row["installed"] and row["converted"] and row["gguf"].endswith(".gguf")
    assert row["cache_mb"] > 100


def test_vector_show_import_export(tmp_path):
    torch.save(torch.randn(6, 16), tmp_path / "evil_response_avg_diff.pt")
    out = tmp_path / "evil.safetensors"
    result = cli("vector", "import", str(tmp_path / "evil_response_avg_diff.pt"), "--out", str(out), "--layer", "3")
    assert result.returncode == 0, result.stderr
    shown = json.loads(cli("vector", "show", str(out)).stdout)
    assert shown["trait"] == "evil" and shown["default_layer"] == 3 and len(shown["norms"]) == 6
    exported = cli("vector", "export-gguf", str(out), "--out", str(tmp_path / "evil.gguf"))
    assert exported.returncode == 0 and (tmp_path / "evil.gguf").stat().st_size > 0
    loaded = PersonaVector.load(out)
    assert loaded.method == "imported"


def test_errors_are_one_line(tmp_path):
    result = cli("vector", "show", str(tmp_path / "missing.safetensors"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"persona-guard vector: error: vector file not found: {tmp_path / 'missing.safetensors'}"]
    result = cli("monitor", str(tmp_path / "nope.jsonl"), "--vector", "v.safetensors")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"persona-guard monitor: error: file not found: {tmp_path / 'nope.jsonl'}"
