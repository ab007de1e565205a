"""launch/train.sh on a stubbed `af-introspect`: which train runs it starts, with which flags."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Records each call; `--check-debug` says no debug run succeeded yet, so the script must run one.
STUB = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../../calls.txt"
for a in "$@"; do [[ "$a" == --check-debug ]] && exit 1; done
exit 0
"""


def run_train_sh(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    (tmp_path / "launch").mkdir()
    shutil.copy(REPO / "launch" / "train.sh", tmp_path / "launch" / "train.sh")
    stub = tmp_path / ".venv" / "bin" / "af-introspect"
    stub.parent.mkdir(parents=True)
    stub.write_text(STUB)
    stub.chmod(0o755)
    env = dict(os.environ, PATH="/usr/bin:/bin")  # no nvidia-smi: the GPU preflight is skipped
    proc = subprocess.run(["bash", str(tmp_path / "launch" / "train.sh"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    calls = (tmp_path / "calls.txt").read_text().splitlines() if (tmp_path / "calls.txt").exists() else []
    return proc, [c for c in calls if "--check-debug" not in c]


@pytest.mark.parametrize("args", [("configs/x.yaml", "--debug"), ("--debug", "configs/x.yaml"),
                                  ("configs/x.yaml", "--", "--debug")])
def test_debug_means_the_debug_run_only(tmp_path, args):
    proc, calls = run_train_sh(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    assert calls == ["train --config configs/x.yaml --debug"], calls
    assert not (tmp_path / "logs" / "training_pid.txt").exists()  # no full run under nohup


def test_without_debug_a_debug_run_then_the_full_run(tmp_path):
    proc, calls = run_train_sh(tmp_path, "--foreground", "configs/x.yaml", "--", "--set", "train.lr=1e-4")
    assert proc.returncode == 0, proc.stderr
    assert calls == ["train --config configs/x.yaml --set train.lr=1e-4 --debug",
                     "train --config configs/x.yaml --set train.lr=1e-4"], calls
