#!/usr/bin/env bash
# Set up .venv (first run: a few minutes) and run the test suite on CPU with the toy organism.
# Extra arguments go to pytest, e.g. launch/test.sh -k generation -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
source launch/cpu_env.sh
exec .venv/bin/python -m pytest "$@"
