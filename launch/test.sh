#!/usr/bin/env bash
# Set up .venv (first run: a few minutes) and run the test suite on CPU with the toy organism.
# Extra arguments go to pytest, e.g. launch/test.sh -k generation -x
# Two workers (pytest-xdist), one file each at a time (module fixtures built once), one torch thread each
# (tests/conftest.py): on 2 cores much of the suite is single-threaded Python, vLLM start-up and I/O.
# --no-loadscope-reorder keeps conftest's longest-first file order (xdist would put the files with the
# most test cases first, leaving the long trainings to the end on one worker while the other idles).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
source launch/cpu_env.sh
# Lint first (pyproject.toml [tool.ruff]): CI fails on a finding before spending minutes on tests.
.venv/bin/ruff check --quiet . || { echo "ruff found the problems above (fix them, or \`.venv/bin/ruff check --fix .\`)" >&2; exit 1; }
exec .venv/bin/python -m pytest -n "${AF_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
