"""Data parallelism on one host: one worker process per GPU, each on its own shard of the work.

Workers write their own fsynced shard file (`<stem>.rank<r>.jsonl`) beside the single-process one;
readers merge every shard file in the folder, so a run resumed with another number of workers (or with
one) continues from all of them. A worker sees only its GPU (CUDA_VISIBLE_DEVICES), and NVLink
multicast stays off in NCCL, PyTorch and NVSHMEM (the device notes: it can take a shared host's GPUs
down).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path

from records.errors import InputError, StageFailure
from records.jsonl import read_records

NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def owns(index: int, rank: int, world: int) -> bool:
    """Whether worker `rank` of `world` handles scenario `index` (round robin: shards of equal size)."""
    return index % world == rank


def shard_file(work: Path, stem: str, rank: int | None) -> Path:
    """The shard a worker writes (`rank` None: the single-process file)."""
    return work / (f"{stem}.jsonl" if rank is None else f"{stem}.rank{rank}.jsonl")


def read_all_shards(work: Path, stem: str, record_type: type) -> list:
    """Records of the single-process file and of every worker's shard, in file-name order."""
    files = sorted(work.glob(f"{stem}.jsonl")) + sorted(work.glob(f"{stem}.rank*.jsonl"))
    return [r for f in files for r in read_records(f, record_type)]


def check_world(world: int, gpus_per_worker: int = 1, what: str = "--data-parallel") -> None:
    """Refuse more workers than visible GPUs (on a GPU host) before anything starts."""
    if world < 1 or gpus_per_worker < 1:
        raise InputError(f"{what} {world}: must be at least 1")
    import torch

    if torch.cuda.is_available() and world * gpus_per_worker > torch.cuda.device_count():
        raise InputError(f"{what} {world} x {gpus_per_worker} GPU(s) each: only {torch.cuda.device_count()} "
                         f"GPU(s) visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")


def worker_gpus(visible: list[str], rank: int, per_worker: int) -> str:
    """CUDA_VISIBLE_DEVICES for worker `rank`: its own consecutive block of `per_worker` devices."""
    return ",".join(visible[rank * per_worker:(rank + 1) * per_worker])


def _worker(target: Callable, rank: int, world: int, gpu: str | None, args: tuple) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker{rank} %(levelname)s %(name)s: %(message)s")
    os.environ.update(NO_MULTICAST)
    if gpu is not None:  # before CUDA is initialised in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    target(rank, world, *args)


def run_workers(target: Callable, world: int, args: tuple = (), gpus_per_worker: int = 1) -> None:
    """Run `target(rank, world, *args)` in `world` spawned processes, each on its own `gpus_per_worker`
    GPUs (tensor parallel inside a worker); wait for all.

    A worker that fails makes this raise StageFailure naming it, after the others have finished (their
    shards are complete and kept for the resume).
    """
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = gpus.split(",") if gpus else None
    import torch

    if visible is None and torch.cuda.is_available():
        visible = [str(i) for i in range(torch.cuda.device_count())]
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for rank in range(world):
        gpu = worker_gpus(visible, rank, gpus_per_worker) if visible else None
        p = ctx.Process(target=_worker, args=(target, rank, world, gpu, args), name=f"worker{rank}")
        p.start()
        procs.append(p)
    for p in procs:
        p.join()
    failed = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
    if failed:
        raise StageFailure(f"data-parallel worker(s) failed: {', '.join(f'{n} exit code {c}' for n, c in failed)}; "
                           "their finished work is saved: rerun the same command to resume")
