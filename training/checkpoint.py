"""Checkpoints: weights, optimizer, where the loop stands and every RNG state, written so a kill never
leaves a half checkpoint that resume would pick.

A checkpoint folder `checkpoint-<step>` holds the adapter (PEFT format), the projector, the optimizer,
and trainer_state.pt: the `Progress` fields, the RNG states (`rng`) and, under data parallelism, every
process's RNG state (`rng_by_rank`). It is written to a temporary folder, fsynced, renamed into place,
and only then marked COMPLETE; `--resume` takes the newest complete one and continues bit-for-bit.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import msgspec
import numpy as np
import torch

from records.errors import InputError
from records.jsonl import write_atomic, write_json_atomic
from training import distributed as dist
from training.model import Explainer

log = logging.getLogger(__name__)

CKPT_PREFIX = "checkpoint-"
COMPLETE = "COMPLETE"


class Progress(msgspec.Struct, kw_only=True):
    """Where a run stands; saved in trainer_state.pt (as a plain dict, next to the RNG states).

    On resume the checkpoint wins for everything here: the position (step, epoch, step_in_epoch) and the
    counters (tokens_seen, padded_seen). The config being run wins for every hyperparameter, and so for
    the schedule's horizon (total_steps is recomputed from it). When they disagree (another config hash,
    or another horizon, e.g. a changed dataset) `check_resume` warns and the run continues.
    """

    step: int
    epoch: int
    step_in_epoch: int
    config_hash: str
    total_steps: int
    tokens_seen: int = 0  # absent from checkpoints written before they were counted
    padded_seen: int = 0


def progress_from_state(state: dict) -> Progress:
    """The Progress fields of a loaded trainer_state.pt (its RNG entries are not part of them)."""
    return msgspec.convert({k: state[k] for k in Progress.__struct_fields__ if k in state}, Progress)


def check_resume(saved: Progress, config_hash: str, total_steps: int, where: Path) -> list[str]:
    """Warn about each way the checkpoint and the config disagree; returns the warnings."""
    found = []
    if saved.config_hash != config_hash:
        found.append(f"resuming {where} made with another config (hash {saved.config_hash}, now {config_hash})")
    if saved.total_steps != total_steps:
        found.append(f"resuming {where} made for {saved.total_steps} steps; this config's schedule spans "
                     f"{total_steps} (the config's wins)")
    for message in found:
        log.warning("%s", message)
    return found


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(Path(dirpath) / name, "rb") as f:
                os.fsync(f.fileno())
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states, as tensors and plain values (weights_only loads them)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                                                    "pos": int(pos), "has_gauss": int(has_gauss),
                                                    "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_weights(folder: Path, explainer: Explainer) -> None:
    """Adapter (PEFT format), projector and continuous-token markers into `folder`."""
    explainer.model.save_pretrained(folder / "adapter")
    if explainer.embedder.projector is not None:
        torch.save(explainer.embedder.projector.state_dict(), folder / "projector.pt")
    (folder / "markers.json").write_text(json.dumps(explainer.markers, indent=2) + "\n")


def publish(tmp: Path, final: Path) -> None:
    """fsync the temporary folder, rename it into place, then write the completeness marker."""
    _fsync_tree(tmp)
    if final.exists():
        stale = final.with_name(f".{final.name}.stale-{os.getpid()}")
        final.rename(stale)
        shutil.rmtree(stale)
    tmp.rename(final)
    write_atomic(final / COMPLETE, b"ok\n")


def save_checkpoint(root: Path, step: int, explainer: Explainer, optimizer, progress: Progress, keep: int,
                    rng_by_rank: list[dict] | None = None) -> Path:
    """Write a checkpoint (weights, optimizer, progress, RNG states) atomically; keep the newest `keep`.

    `rng_by_rank`: every data-parallel process's RNG state, so each resumes its own stream.
    """
    final = root / f"{CKPT_PREFIX}{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_weights(tmp, explainer)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    extra = {"rng_by_rank": rng_by_rank} if rng_by_rank and len(rng_by_rank) > 1 else {}
    torch.save({**msgspec.structs.asdict(progress), "rng": rng_state(), **extra}, tmp / "trainer_state.pt")
    publish(tmp, final)
    for old in complete_checkpoints(root)[:-keep]:
        # The marker goes first: a kill in the middle of rmtree must not leave a "complete" half folder.
        (old / COMPLETE).unlink()
        shutil.rmtree(old)
    return final


def save_final(out: Path, explainer: Explainer, step: int, total_steps: int, config_hash: str) -> Path:
    """The trained weights as <out>/final (with state.json), published like a checkpoint."""
    final = out / "final"
    tmp = out / f".tmp-final-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_weights(tmp, explainer)
    write_json_atomic(tmp / "state.json", {"step": step, "total_steps": total_steps, "config_hash": config_hash})
    publish(tmp, final)
    return final


def remove_partial_saves(root: Path) -> None:
    """Delete what killed saves left behind: temporary folders, stale copies, folders without a marker."""
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.is_dir() and (p.name.startswith(".") or not (p / COMPLETE).is_file()):
            log.info("removing %s, left by an interrupted checkpoint save", p)
            shutil.rmtree(p)


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders that carry their completeness marker, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CKPT_PREFIX) and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CKPT_PREFIX):]))


def load_weights(folder: Path, explainer: Explainer) -> None:
    """Adapter and projector weights from a checkpoint or final folder into the live explainer."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(folder / "adapter" / "adapter_model.safetensors", device=str(explainer.device))
    result = set_peft_model_state_dict(explainer.model, weights)
    if getattr(result, "unexpected_keys", None):
        raise InputError(f"{folder}: adapter has weights this model does not: {result.unexpected_keys[:3]}")
    if explainer.embedder.projector is not None:
        if not (folder / "projector.pt").is_file():
            raise InputError(f"{folder}: no projector.pt, but this config needs a projector")
        explainer.embedder.projector.load_state_dict(
            torch.load(folder / "projector.pt", map_location=explainer.device, weights_only=True))


def load_checkpoint(folder: Path, explainer: Explainer, optimizer) -> Progress:
    """Weights and optimizer into the live objects, this process's RNG states restored; returns the progress."""
    load_weights(folder, explainer)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=explainer.device, weights_only=True))
    state = torch.load(folder / "trainer_state.pt", weights_only=True)
    by_rank = state.get("rng_by_rank")
    set_rng_state(by_rank[dist.rank()] if by_rank and len(by_rank) == dist.world_size() else state["rng"])
    return progress_from_state(state)


def check_adapter_base(folder: Path, model_path: str) -> None:
    """Refuse to load an adapter onto a model other than the one it was trained from: its
    adapter_config.json names the base folder, compared by weights (lm.models.same_model)."""
    from lm.models import same_model

    path = Path(folder) / "adapter" / "adapter_config.json"
    try:
        base = json.loads(path.read_text()).get("base_model_name_or_path") or ""
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable adapter config ({type(e).__name__})") from None
    if not base or same_model(base, model_path):
        return
    if not Path(base).exists():
        raise InputError(f"{path}: adapter trained from {base}, which is not on this machine, so nothing shows it is "
                         f"model_path {model_path}; evaluate where that model is, or point model_path at it")
    raise InputError(f"{path}: adapter trained from {base}, but model_path is {model_path} (other weights): an "
                     "adapter loaded onto another base scores nonsense; set model_path to the model it was trained "
                     "from")


def saved_token_indices(folder: Path) -> list[int] | None:
    """The trainable token rows recorded in a saved adapter's config (None when it has none)."""
    path = Path(folder) / "adapter" / "adapter_config.json"
    if not path.is_file():
        return None
    indices = json.loads(path.read_text()).get("trainable_token_indices")
    if isinstance(indices, dict):  # {"embed_tokens": [...]}
        indices = next(iter(indices.values()), None)
    return indices or None
