"""Data-parallel training across processes (one per GPU), as `accelerate launch` or torchrun start them.

The launcher sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; this module joins the
process group (NCCL on GPUs, gloo on CPU) and gives the training loop the few collectives it needs.
Every optimizer step's examples are shared out between the processes, each process backpropagates its
share scaled by the step's global answer-token count, and the gradients are summed across processes
before clipping and the update: the same arithmetic as one process taking the whole step, so the
effective batch (batch_size x gradient_accumulation) and the loss curve do not change with the
number of GPUs. Without a launcher (WORLD_SIZE unset or 1) everything here is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from records.parallel import NO_MULTICAST

T = TypeVar("T")
# Whether this module started the process group: another library in the same process (vLLM's in-process
# CPU engine, say) may have one of its own, which is neither ours to use nor ours to destroy.
_owned = False


def setup() -> tuple[int, int]:
    """Join the process group when launched with several processes; returns (rank, world size)."""
    global _owned
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not _owned:
        if dist.is_initialized():
            raise RuntimeError("a torch.distributed process group already exists in this process; run "
                               "data-parallel training in its own processes (launch/train.sh --gpus N)")
        for key, value in NO_MULTICAST.items():
            os.environ.setdefault(key, value)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        _owned = True
    return rank, world


def world_size() -> int:
    return dist.get_world_size() if _owned else 1


def rank() -> int:
    return dist.get_rank() if _owned else 0


def is_main() -> bool:
    return rank() == 0


def my_share(items: Sequence[T]) -> list[T]:
    """This process's part of one step's examples (every process gets a nearly equal part)."""
    return list(items[rank()::world_size()])


def sum_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum every gradient across processes, flattened into one all-reduce."""
    if world_size() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
        offset += n


def sum_values(*values: float) -> list[float]:
    """Sum scalars (loss, token counts) across processes."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64,
                     device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def gather(obj) -> list:
    """Every process's `obj`, in rank order (on every process)."""
    if world_size() == 1:
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    global _owned
    if _owned:
        dist.destroy_process_group()
        _owned = False
