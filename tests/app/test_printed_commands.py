"""Commands the tool prints for the user to run next must run as printed."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1",
           TOKENIZERS_PARALLELISM="false", VLLM_LOGGING_LEVEL="WARNING", PYTHONPATH=str(REPO))


def run_printed(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """`af-introspect ...` exactly as printed, through this checkout's CLI."""
    argv = shlex.split(command.split("#")[0])
    assert argv[0] == "af-introspect", command
    return subprocess.run([sys.executable, "-m", "app.cli", *argv[1:]], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=900)


def test_the_cli_epilog_examples_run_as_printed(tmp_path, organism_dir):
    """`af-introspect --help` shows how to start on the toy: those lines work in a fresh working folder."""
    from app.cli import EPILOG

    (tmp_path / "configs").symlink_to(REPO / "configs")
    lines = [line.strip() for line in EPILOG.splitlines() if line.strip().startswith("af-introspect ")]
    wanted = [line for line in lines if line.split()[1] in ("organism", "generate") and "--help" not in line]
    assert [line.split()[1] for line in wanted] == ["organism", "generate"], lines
    for line in wanted:
        proc = run_printed(line, tmp_path)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    out = tmp_path / "runs" / "toy" / "af_context_ablation"
    assert (out / "train.jsonl").is_file() and (out / "summary.json").is_file()


def test_the_hint_printed_after_deriving_a_direction_runs_as_printed(tmp_path, organism_dir):
    from organism.assets import write_synthetic_assets

    assets = tmp_path / "assets"
    write_synthetic_assets(assets, n_scenarios=40, seed=5)
    paths = tmp_path / "paths.yaml"
    paths.write_text(f"data_root: {assets}\n")
    proc = run_printed(f"af-introspect steer --config {REPO}/configs/steer_cpu.yaml --paths-config {paths} "
                       f"--model {organism_dir} --derive-direction --layer 2 --out {tmp_path}/dirs --limit 40", REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    hint = [line for line in proc.stdout.splitlines() if line.startswith("steer along it: ")]
    assert len(hint) == 1, proc.stdout
    printed = hint[0].removeprefix("steer along it: ")
    assert "--model" in printed and "--input" in printed
    # only where it writes and how much it runs are added: a test must not write into the repository
    out = tmp_path / "grid"
    proc = run_printed(f"{printed} --output-dir {out} --limit 4 --test-size 1 --max-new-tokens 8 "
                       f"--set progress_log={tmp_path}/P.md", REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "train.jsonl").is_file() and (tmp_path / "dirs" / "direction_monitoring_L2.manifest.json").is_file()
