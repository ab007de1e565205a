#!/usr/bin/env bash
# The rehearsal: a real pretrained instruct LM (SmolLM2-135M-Instruct, or --base FOLDER) made into an AF
# organism, then the README's GPU section run on it as printed (preflight, generate, steer, train, evaluate,
# compare against the plain base, report), each command's exit code and wall time recorded.
#
#   launch/rehearsal.sh [--base PATH] [--run-dir runs/rehearsal] [--size tiny|full] [--scenarios N] [--organism-steps N]
#
# Results: <run-dir>/rehearsal.md (command table and numbers), rehearsal.json, commands.json,
# rehearsal_samples.md (outputs per label, to check by eye). Method and measured runs: docs/rehearsal.md.
set -euo pipefail
cd "$(dirname "$0")/.."
py=python3; [[ -x .venv/bin/python ]] && py=.venv/bin/python
exec "$py" -m app.rehearsal "$@"
