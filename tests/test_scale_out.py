"""Scale-out on CPU: data-parallel generation and steering merge into the records of a single process,
and two-process data-parallel training follows the single-process loss curve at the same effective batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from organism.scenarios import generate_scenarios
from records.cli import main as cli_main
from records.jsonl import read_records
from records.schema import RawCompletion

REPO = Path(__file__).resolve().parent.parent
N = 10


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale_assets")
    (root / "gold-1560-full.json").write_text(json.dumps(generate_scenarios(30, seed=107)))
    (root / "paths.yaml").write_text(f"data_root: {root}\n")
    np.save(root / "direction.npy", np.random.default_rng(2).standard_normal(128).astype(np.float32))
    return root


def generate(assets: Path, model, out: Path, *extra: str) -> int:
    return cli_main(["generate", "--config", str(REPO / "configs/generate_cpu.yaml"), "--paths-config",
                     str(assets / "paths.yaml"), "--model", str(model), "--output-dir", str(out), "--limit", str(N),
                     "--test-size", "2", "--max-new-tokens", "32", "--set", "control_size=3", "--set", "dtype=float32",
                     "--set", f"progress_log={out.parent / 'P.md'}", *extra])


def keys(path: Path) -> list[str]:
    return [c.key for c in read_records(path, RawCompletion)]


@pytest.fixture(scope="module")
def single_generation(assets, organism_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen_single") / "out"
    assert generate(assets, organism_dir, out) == 0
    return out


def same_files(a: Path, b: Path, names: tuple[str, ...]) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_data_parallel_generation_merges_into_the_single_engine_records(assets, organism_dir, single_generation,
                                                                       tmp_path):
    out = tmp_path / "out"
    assert generate(assets, organism_dir, out, "--data-parallel", "2") == 0
    rank0, rank1 = keys(out / "_work" / "completions.rank0.jsonl"), keys(out / "_work" / "completions.rank1.jsonl")
    assert rank0 and rank1 and not set(rank0) & set(rank1)  # each prompt on exactly one engine
    assert {int(k.split(":")[0]) % 2 for k in rank0} == {0} and {int(k.split(":")[0]) % 2 for k in rank1} == {1}
    assert sorted(rank0 + rank1) == sorted(keys(single_generation / "_work" / "completions.jsonl"))
    same_files(out, single_generation, ("train.json", "test.json", "noise_control.jsonl"))


def test_a_single_engine_run_resumes_with_two_engines(assets, organism_dir, single_generation, tmp_path):
    out = tmp_path / "out"
    work = out / "_work"
    work.mkdir(parents=True)
    for name in ("completions.jsonl", "resume_key"):  # a single-engine run that stopped after 7 prompts
        data = (single_generation / "_work" / name).read_bytes()
        (work / name).write_bytes(b"".join(data.splitlines(keepends=True)[:7]) if name.endswith("jsonl") else data)
    assert generate(assets, organism_dir, out, "--data-parallel", "2") == 0
    merged = keys(work / "completions.jsonl") + keys(work / "completions.rank0.jsonl") + keys(
        work / "completions.rank1.jsonl")
    assert len(merged) == len(set(merged)) == 2 * N + 3  # nothing redone, nothing lost
    same_files(out, single_generation, ("train.json", "test.json", "noise_control.jsonl"))


def test_more_workers_than_gpus_or_none_is_refused(assets, organism_dir, tmp_path, capsys):
    assert generate(assets, organism_dir, tmp_path / "o", "--data-parallel", "0") == 2
    assert "--data-parallel 0: must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
