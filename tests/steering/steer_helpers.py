"""Helpers of the steering tests (tests/steering/test_steering_*.py); their shared fixtures: conftest.py."""

from pathlib import Path

import torch
from toy_records import ONE_DIRECTION

REPO = Path(__file__).resolve().parents[2]
H = 64  # hidden size of the tiny model (conftest.py `tiny`)
N_SCEN, TEST, BATCH = 6, 2, 3  # the toy grid of steer_args: scenarios, about how many held out, rows per batch


def left_pad(prompts, pad=0):
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def prompts_of(seed=3, lengths=(4, 7, 5)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 200, (n,), generator=g).tolist() for n in lengths]


def one_line(exc_info) -> str:
    problems = exc_info.value.problems
    assert len(problems) == 1 and "\n" not in problems[0], problems
    return problems[0]


def steer_args(organism_dir, paths, direction, out, *extra):
    return ["steer", "--config", str(REPO / "configs/steer_cpu.yaml"), "--paths-config", str(paths), "--model",
            str(organism_dir), "--direction", str(direction), "--output-dir", str(out), "--limit", str(N_SCEN),
            "--test-size", str(TEST), "--layers", "2", "--alphas", "1,2", "--batch-size", str(BATCH),
            "--max-new-tokens", "20", "--set", f"progress_log={out}/PROGRESS.md", *ONE_DIRECTION, *extra]
