#!/usr/bin/env bash
# Set up .venv (first run: a few minutes), then run the whole pipeline on the embedded toy organism on CPU.
# Extra arguments go to `af-introspect demo` (see `af-introspect demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
source launch/cpu_env.sh
exec .venv/bin/af-introspect demo "$@"
