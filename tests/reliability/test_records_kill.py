"""Guarantee 1: records, nothing lost, nothing twice.

The generation and the steering runs (toy organism, CPU, through the CLI in a subprocess) are SIGKILLed
twice per trial: first as the work shard reaches a random number of records (mid-generation), then the
restart at a random moment of a whole run (start-up, generation or finalising); a last run resumes to
the end. The result must equal a clean run: every prompt's completion in the shard exactly once, every
line parsing, and the final split files byte-identical.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from toy_records import ONE_DIRECTION, write_run_assets
from trials import count

from records.jsonl import read_records
from records.schema import RawCompletion

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1",
           TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
N_GEN, N_STEER = 12, 6


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_run_assets(tmp_path_factory.mktemp("kill_assets"), 40, seed=105)


def generate_cmd(assets: Path, model, out: Path) -> list[str]:
    return ["generate", "--config", "configs/generate_cpu.yaml", "--paths-config", str(assets / "paths.yaml"),
            "--model", str(model), "--output-dir", str(out), "--limit", str(N_GEN), "--test-size", "3",
            "--batch-size", "2", "--save-every", "1", "--max-new-tokens", "40", "--set", "control_size=4",
            "--set", "dtype=float32", "--set", f"progress_log={out.parent / 'P.md'}"]


def steer_cmd(assets: Path, model, out: Path) -> list[str]:
    return ["steer", "--config", "configs/steer_cpu.yaml", "--paths-config", str(assets / "paths.yaml"),
            "--model", str(model), "--direction", str(assets / "direction.npy"), "--output-dir", str(out),
            "--limit", str(N_STEER), "--test-size", "2", "--layers", "1,2", "--alphas", "1,2", "--batch-size", "2",
            "--max-new-tokens", "20", "--set", "norm_prompts=4", "--set", f"progress_log={out.parent / 'P.md'}",
            *ONE_DIRECTION]


def launch(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "app.cli", *argv], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def clean_run(argv: list[str]) -> float:
    t = time.monotonic()
    proc = launch(argv)
    assert proc.wait(timeout=600) == 0
    return time.monotonic() - t


def kill_twice(argv: list[str], out: Path, total_lines: int, clean_s: float, rng: random.Random) -> list[str]:
    """SIGKILL a run as its shard reaches a random record count, then (full count) its restart at a random
    moment of a whole run; returns where each kill landed."""
    shard = out / "_work" / "completions.jsonl"
    landed = []
    for by_progress in (True, False)[:count(full=2, reduced=1)]:
        before = lines(shard)
        proc = launch(argv)
        if by_progress:
            target = rng.randint(1, total_lines - 1)
            while lines(shard) < target and proc.poll() is None:
                time.sleep(0.01)
        else:  # the clean run was the slowest (cold caches), so this lands anywhere in a run
            deadline = time.monotonic() + rng.uniform(0.1, 0.8) * clean_s
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
        if proc.poll() is not None:
            landed.append("finished first")
            continue
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        now = lines(shard)
        landed.append("start-up" if now == before and now < total_lines else
                      f"generation ({now}/{total_lines} records)" if now < total_lines else "finalising")
    return landed


def kill_and_resume(argv_for, clean: Path, tmp_path: Path, split_files: tuple[str, ...], seed: int) -> list[str]:
    """Independent trials: kill twice, resume, compare with the clean run. Returns every kill's landing."""
    clean_s = clean_run(argv_for(clean))
    total = lines(clean / "_work" / "completions.jsonl")
    keys = {c.key for c in read_records(clean / "_work" / "completions.jsonl", RawCompletion)}
    rng = random.Random(seed)
    landed = []
    for trial in range(count(full=3, reduced=1)):
        out = tmp_path / f"killed{trial}"
        argv = argv_for(out)
        landed += kill_twice(argv, out, total, clean_s, rng)
        proc = launch(argv)
        assert proc.wait(timeout=600) == 0
        check_against_clean(out, clean, keys, split_files)
    assert "finished first" not in landed[:1], "the first kill came too late"
    assert sum(x.startswith("generation") for x in landed) >= max(1, len(landed) // 2), landed
    return landed


def check_against_clean(out: Path, clean: Path, expected_keys: set[str], split_files: tuple[str, ...]) -> None:
    shard = out / "_work" / "completions.jsonl"
    keys = [c.key for c in read_records(shard, RawCompletion, strict=True)]  # every line parses
    assert len(keys) == len(set(keys)), "a record was written twice"
    assert set(keys) == expected_keys, "a record was lost"
    for name in split_files:
        assert (out / name).read_bytes() == (clean / name).read_bytes(), f"{name} differs from the clean run"


def test_generation_killed_at_random_points_resumes_to_the_clean_run(assets, organism_dir, tmp_path):
    landed = kill_and_resume(lambda out: generate_cmd(assets, organism_dir, out), tmp_path / "clean", tmp_path,
                             ("train.jsonl", "test.jsonl", "noise_control.jsonl"), seed=0)
    print("generation kills landed:", landed)


def test_steering_killed_at_random_points_resumes_to_the_clean_run(assets, organism_dir, tmp_path):
    landed = kill_and_resume(lambda out: steer_cmd(assets, organism_dir, out), tmp_path / "clean", tmp_path,
                             ("train.jsonl", "test.jsonl"), seed=1)
    print("steering kills landed:", landed)
