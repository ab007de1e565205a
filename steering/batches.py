"""Generation of a run's planned batches, resumable: each batch's completions are fsynced to this process's
shard (`_work/completions.jsonl`, or `completions.rank<r>.jsonl` per data-parallel worker) as it finishes.

Load the model, measure residual norms and derive the in-run direction (once per run, kept in `_work/`),
then generate every planned row (steering/grid.py) no shard holds yet. `BatchRunner` runs one batch with
the chosen engine (steering/engine.py); out of memory halves its sub-batch and retries.
"""

from __future__ import annotations

import gc
import logging

import torch
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tqdm import tqdm

from lm import backends, coherence
from lm.batching import pad_token_id
from records.jsonl import ShardWriter, write_json_atomic
from records.parallel import owns, read_all_shards, run_workers, shard_file
from records.resume import prompt_digest
from records.schema import RawCompletion, ResidualNorm, read_summary
from steering import direction as dirmod
from steering import grid
from steering.config import SteerConfig
from steering.engine import FastSteeredGenerator, Row, hf_generate

log = logging.getLogger(__name__)
MAX_OOM_RETRIES = 4
SHARD_STEM = "completions"  # _work/completions.jsonl, or completions.rank<r>.jsonl per data-parallel worker
NORMS_FILE = "residual_norms.json"


class BatchRunner:
    """Generates planned batches with the chosen engine; OOM halves the sub-batch size and retries."""

    def set_direction(self, direction: torch.Tensor) -> None:
        """The unit direction of the next batches (one direction per batch)."""
        self.direction = direction
        if self.fast is not None:
            self.fast.set_direction(direction)

    def __init__(self, cfg: SteerConfig, model, direction: torch.Tensor, eos_ids, pad_id: int):
        self.cfg, self.model, self.eos_ids, self.pad_id = cfg, model, eos_ids, pad_id
        self.direction = direction
        self.layers = sorted(set(cfg.layers))
        self.sub_batch = cfg.batch_size
        graphs = {"auto": None, "on": True, "off": False}[cfg.cuda_graphs]
        self.fast = FastSteeredGenerator(model, direction, self.layers, cfg.positions, eos_ids, pad_id,
                                         cuda_graphs=graphs) if cfg.engine == "fast" else None

    def _lower(self, state: RetryCallState) -> None:
        old = self.sub_batch
        self.sub_batch = max(1, self.sub_batch // 2)
        log.warning("out of memory at %d rows per batch (attempt %d of %d): %s; retrying the batch with %d rows",
                    old, state.attempt_number, MAX_OOM_RETRIES, str(state.outcome.exception()).splitlines()[0][:200],
                    self.sub_batch)
        if self.fast is not None:
            self.fast.release()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def run(self, rows: list[Row]):
        for attempt in Retrying(retry=retry_if_exception(backends.is_oom), stop=stop_after_attempt(MAX_OOM_RETRIES),
                                before_sleep=self._lower, reraise=True):
            with attempt:
                out = []
                for k in range(0, len(rows), self.sub_batch):
                    part = rows[k:k + self.sub_batch]
                    if self.fast is not None:
                        out += self.fast.generate(part, self.cfg.max_new_tokens, pad_to=self.sub_batch)
                    else:
                        out += hf_generate(self.model, self.direction, self.layers, self.cfg.positions, part,
                                           self.cfg.max_new_tokens, self.eos_ids, self.pad_id)
                return out


def load_norms(work) -> dict[int, ResidualNorm] | None:
    """Residual norms measured by this run (a resumed run scales exactly as the first attempt did)."""
    path = work / NORMS_FILE
    if not path.exists():
        return None
    return {int(k): v for k, v in read_summary(path, dict[str, ResidualNorm]).items()}


def _measured_norms(plan: grid.SteerPlan, model, groups, pad: int) -> dict[int, ResidualNorm] | None:
    """This run's residual norms: measured once (the first scenarios of every context, whichever worker
    measures: all measure the same), then read back."""
    norms = load_norms(plan.work)
    if plan.cfg.scale == "residual_norm" and norms is None:
        norms = grid.measure_residual_norms(model, grid.norm_sample(plan.cfg, groups), sorted(set(plan.cfg.layers)),
                                            pad)
        write_json_atomic(plan.work / NORMS_FILE, {str(k): v for k, v in norms.items()})
    for layer in sorted(norms or {}):
        log.info("layer %d: mean residual norm %.3f (median %.3f, %d tokens)", layer, norms[layer].mean,
                 norms[layer].median, norms[layer].n_tokens)
    return norms


def steer_rows(plan: grid.SteerPlan, rank: int | None = None, world: int = 1) -> tuple[dict | None, str]:
    """Load the model, measure residual norms (once per run), derive the in-run direction (once per run),
    and generate every planned row this process owns that no shard holds yet, each batch fsynced to this
    process's shard as it finishes with the unsteered model's loss on each output (coherence check).

    Returns (fast-engine stats or None, device name).
    """
    from transformers import AutoTokenizer

    cfg, groups = plan.cfg, plan.groups
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or plan.model_dir)
    model = backends.load_hf_model(plan.model_dir, cfg.dtype)
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    eos = model.generation_config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [tokenizer.eos_token_id])
    norms = _measured_norms(plan, model, groups, pad)

    directions = dirmod.sort_directions(cfg, list(plan.fixed) + dirmod.derived_directions(cfg, plan.work, model,
                                                                                          tokenizer, plan.job))
    mine = [g for g in groups if rank is None or owns(g[0], rank, world)]
    batches = grid.plan_direction_batches(mine, plan.arms, directions, cfg.batch_size,
                                          lambda index, arm: grid.held_out_row(cfg, plan.n_train, index, arm))
    arm_by_name = {a.name: a for a in plan.arms}
    group_id = {(i, c): k for k, (i, c, _) in enumerate(groups)}
    prompt_ids = {(i, c): ids for i, c, ids in groups}
    digest = {(i, c): prompt_digest(ids) for i, c, ids in groups}
    runner = BatchRunner(cfg, model, torch.from_numpy(plan.unit).to(device), eos_ids, pad)
    total = sum(len(b) for _, _, b in batches)
    with ShardWriter(shard_file(plan.work, SHARD_STEM, rank), RawCompletion) as writer:
        done = {c.key for c in read_all_shards(plan.work, SHARD_STEM, RawCompletion)}
        finished = sum(grid.row_key(i, c, a.name, digest[(i, c)]) in done for _, _, b in batches for i, c, a in b)
        if finished:
            log.info("resuming: %d of %d rows already finished", finished, total)
        with tqdm(total=total, initial=finished, desc="steer" if rank is None else f"steer[{rank}]",
                  unit="row") as bar:
            for d, layer, batch in batches:
                keys = [grid.row_key(i, c, arm.name, digest[(i, c)]) for i, c, arm in batch]
                if all(k in done for k in keys):
                    continue
                vec = d.vectors[layer if layer is not None else next(iter(d.vectors))]
                runner.set_direction(torch.from_numpy(vec.copy()).to(device))  # the engine writes in place
                rows = []
                for i, c, arm in batch:
                    eff = grid.effective_alphas(arm_by_name[arm.name], cfg.scale, norms)
                    rows.append(Row(prompt_ids[(i, c)], group_id[(i, c)], dict(zip(arm.layers, eff))))
                results = runner.run(rows)
                # Rounded to 0.01 nats (the threshold is 6): the last float bits depend on the batch's padding, and
                # records must not depend on how the rows were batched (data-parallel shards, OOM halving).
                losses = coherence.median_token_loss(model, [r.prompt for r in rows], [g.token_ids for g in results],
                                                     pad)
                writer.append(RawCompletion(key=k, token_ids=g.token_ids, text="", finish_reason=g.finish_reason,
                                            prompt_tokens=len(r.prompt),
                                            median_loss=None if loss is None else round(loss, 2))
                              for k, r, g, loss in zip(keys, rows, results, losses))
                # rows already saved but generated again with their batch were counted as finished
                bar.update(sum(k not in done for k in keys))
    stats = dict(runner.fast.stats) if runner.fast is not None else None
    return stats, torch.cuda.get_device_name() if device.type == "cuda" else "cpu"


def _steer_worker(rank: int, world: int, plan: grid.SteerPlan) -> None:
    steer_rows(plan, rank, world)


def generate(plan: grid.SteerPlan) -> tuple[dict | None, str]:
    """Every planned row, in this process or in `data_parallel` worker processes (one per GPU, each on its own
    shard of the scenarios). Returns (fast-engine stats or None, device name)."""
    if plan.cfg.data_parallel > 1:
        run_workers(_steer_worker, plan.cfg.data_parallel, (plan,))
        return None, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return steer_rows(plan, None, 1)
