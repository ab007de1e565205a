"""Scale-out on CPU: data-parallel generation and steering merge into the records of a single process,
and two-process data-parallel training follows the single-process loss curve at the same effective batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from toy_records import ONE_DIRECTION, write_run_assets

from app.cli import main as cli_main
from records.jsonl import read_records
from records.schema import RawCompletion

REPO = Path(__file__).resolve().parent.parent
N = 10


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_run_assets(tmp_path_factory.mktemp("scale_assets"), 30, seed=107)


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
    same_files(out, single_generation, ("train.jsonl", "test.jsonl", "noise_control.jsonl"))


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
    assert len(merged) == len(set(merged)) == 2 * N + 6  # nothing redone, nothing lost (3 controls per context)
    same_files(out, single_generation, ("train.jsonl", "test.jsonl", "noise_control.jsonl"))


def test_each_worker_gets_its_own_block_of_gpus():
    from records.parallel import owns, worker_gpus

    visible = ["0", "1", "2", "3", "4", "5", "6", "7"]
    assert [worker_gpus(visible, r, 1) for r in range(3)] == ["0", "1", "2"]
    assert [worker_gpus(visible, r, 4) for r in range(2)] == ["0,1,2,3", "4,5,6,7"]  # tensor parallel 4
    shards = [[i for i in range(10) if owns(i, r, 3)] for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10)) and [len(s) for s in shards] == [4, 3, 3]


def test_no_workers_is_refused(assets, organism_dir, tmp_path, capsys):
    assert generate(assets, organism_dir, tmp_path / "o", "--data-parallel", "0") == 2
    err = capsys.readouterr().err  # a bound in the config's type: the field, the bound and the value
    assert "command line data_parallel=0" in err and "`$.data_parallel`" in err and ">= 1" in err
    assert "(value: 0)" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_more_workers_than_gpus_is_refused(assets, organism_dir, tmp_path, capsys, monkeypatch):
    """On a host with one visible GPU, two engines (or one engine over two GPUs) cannot start."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    from records.errors import InputError
    from records.parallel import check_world

    check_world(1)
    with pytest.raises(InputError, match=r"--data-parallel 2 x 1 GPU\(s\) each: only 1 GPU\(s\) visible"):
        check_world(2)
    with pytest.raises(InputError, match=r"--data-parallel 1 x 2 GPU\(s\) each: only 1 GPU"):
        check_world(1, gpus_per_worker=2)


def steer(assets: Path, model, out: Path, *extra: str) -> int:
    return cli_main(["steer", "--config", str(REPO / "configs/steer_cpu.yaml"), "--paths-config",
                     str(assets / "paths.yaml"), "--model", str(model), "--direction", str(assets / "direction.npy"),
                     "--output-dir", str(out), "--limit", "5", "--test-size", "1", "--layers", "1,2", "--alphas",
                     "1,2", "--batch-size", "4", "--max-new-tokens", "16", "--set", "norm_prompts=4",
                     "--set", f"progress_log={out.parent / 'P.md'}", *ONE_DIRECTION, *extra])


def test_data_parallel_steering_merges_into_the_single_process_records(assets, organism_dir, tmp_path):
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    assert steer(assets, organism_dir, single) == 0
    assert steer(assets, organism_dir, parallel, "--data-parallel", "2") == 0
    rank0 = keys(parallel / "_work" / "completions.rank0.jsonl")
    rank1 = keys(parallel / "_work" / "completions.rank1.jsonl")
    assert rank0 and rank1 and not set(rank0) & set(rank1)
    assert {int(k.split(":")[0]) % 2 for k in rank1} == {1}
    assert sorted(rank0 + rank1) == sorted(keys(single / "_work" / "completions.jsonl"))
    same_files(parallel, single, ("train.jsonl", "test.jsonl"))


# ---------------------------------------------------------------------------------------------------
# Data-parallel training: two processes (gloo) vs one, same effective batch


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_losses(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def task3_records(tmp_path_factory):
    from toy_records import write_toy_task3

    root = tmp_path_factory.mktemp("ddp_records")
    return write_toy_task3(root, n_train=24, n_test=4, n_gold=4)


def train_argv(records: dict, out: Path, extra: tuple[str, ...] = ()) -> list[str]:
    # the toy organism explains itself; no dropout, so the processes' RNG streams cannot matter; fp32, so
    # that the loss curves agree to float rounding (bf16 products round each process's shapes differently)
    return ["train", "--config", str(REPO / "configs/af_context_ablation_cpu.yaml"), "--output-dir", str(out),
            "--force", "--max-steps", "6", "--progress-log", str(out.parent / "P.md"),
            "--set", f"train.dataset={records['records']}", "--set", f"train.paths={records['paths']}",
            "--set", "train.cpu_precision=fp32",
            "--set", "train.batch_size=4", "--set", "train.gradient_accumulation=2", "--set", "train.lora_dropout=0",
            "--set", "train.save_steps=3", "--set", "train.eval_steps=1000", "--set", "train.eval_samples=2",
            "--set", "test.max_new_tokens=4", *extra]


# packed rows: 4 rows of 256 tokens a step on the toy, the same layout for 1 and 2 processes (2 rows each)
PACKED = ("--set", "train.packing=true", "--set", "train.pack_tokens=128")


@pytest.mark.parametrize("extra", [(), PACKED], ids=["rows", "packed"])
def test_two_process_training_follows_the_single_process_loss_curve(task3_records, organism_dir, tmp_path, extra):
    import os
    import subprocess
    import sys

    import torch
    from safetensors.torch import load_file

    single, ddp = tmp_path / "single", tmp_path / "ddp"
    # Every process computes with one thread: the arithmetic of one process then does not depend on how
    # many threads the pytest process was left with or on how loaded the machine is, and the only
    # difference between the runs is the order of the gradient sums (the tolerance below).
    one_thread = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    reference = subprocess.run([sys.executable, "-m", "app.cli", *train_argv(task3_records, single, extra)], cwd=REPO,
                               env=one_thread, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert reference.returncode == 0, reference.stdout[-3000:]
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "app.cli", *train_argv(task3_records, ddp, extra)], cwd=REPO,
                              env=dict(one_thread, WORLD_SIZE="2", RANK=str(r), LOCAL_RANK=str(r),
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "data parallel: 2 processes" in outputs[0]

    a, b = train_losses(single), train_losses(ddp)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 7))
    assert [r["examples"] for r in a] == [r["examples"] for r in b]  # the same examples make each step
    assert [r["tokens"] for r in a] == [r["tokens"] for r in b]
    for ra, rb in zip(a, b):  # only the order of floating-point sums differs
        assert abs(ra["loss"] - rb["loss"]) <= 1e-5 * max(1.0, abs(ra["loss"])), (ra["loss"], rb["loss"])
    assert a[0]["loss"] > a[-1]["loss"]  # and the curve does go down
    wa = load_file(single / "final" / "adapter" / "adapter_model.safetensors")
    wb = load_file(ddp / "final" / "adapter" / "adapter_model.safetensors")
    # Packed: the same losses to 1e-6, but a few weights (67 of 2,048 in one LoRA A, seen once) move by up to 2e-4:
    # Adam turns the last-bit differences of summing 2+2 rows instead of 4 into whole steps where a gradient
    # element is near zero. A wrong share of rows would change the losses above, not only these.
    atol = 5e-4 if extra else 1e-5
    assert all(torch.allclose(wa[k], wb[k], atol=atol, rtol=1e-4) for k in wa)
    state = torch.load(ddp / "checkpoints" / "checkpoint-00000006" / "trainer_state.pt", weights_only=True)
    assert len(state["rng_by_rank"]) == 2  # each process resumes its own RNG stream
