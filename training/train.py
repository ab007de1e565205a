"""Train the LoRA explainer: records -> examples -> peft LoRA on a transformers causal LM.

One readable path, top to bottom: `main(cfg, ...)` loads the explainer (training/model.py), builds and
guards the data (training/dataset.py, training/data.py), then `train_loop` runs the loop: AdamW with LoRA+ groups,
warmup and a constant or linear schedule, gradient accumulation, an eval every `eval_steps`
(training/scoring.py), a checkpoint every `save_steps` (training/checkpoint.py: written atomically, so
`--resume` continues the newest complete one bit-for-bit).

`--debug` is the same run with a step limit (`train.debug_steps`) under <output_dir>/debug: it also
prints what the data looks like, prints every step, evaluates on a few test examples and shows their
answers, stops on a NaN or exactly-0 loss, and leaves the marker that a full run of the same config (by
content hash) requires (training/runlog.py). Nothing is uploaded anywhere.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import torch

from lm.models import is_toy, resolve_model
from records.assets import check_output_dir
from records.config import config_hash
from records.errors import InputError
from records.lock import output_lock
from records.provenance import check_stage_folder
from training import collapse, scoring
from training import data as D
from training import distributed as dist
from training import examples as E
from training import packing as P
from training.checkpoint import (
    Progress,
    check_resume,
    complete_checkpoints,
    load_checkpoint,
    remove_partial_saves,
    rng_state,
    save_checkpoint,
    save_final,
)
from training.config import TrainConfig, train_paths
from training.continuous import resolve_markers
from training.dataset import Data, load_data, needs_markers
from training.eval_baselines import majority_predictions
from training.model import Explainer, build_explainer, load_tokenizer, pick_device, trainable_tokens
from training.runlog import (
    MetricsLog,
    answers_before_training,
    check_debug_answers,
    check_debug_gate,
    finish_run,
    print_debug_data,
    print_run_start,
    write_run_files,
)
from training.scoring import eval_loss

log = logging.getLogger(__name__)


def make_optimizer(cfg: TrainConfig, explainer: Explainer) -> torch.optim.Optimizer:
    """AdamW over LoRA (lora_B at loraplus_lr_ratio x lr), trainable token rows and the projector."""
    b = [p for n, p in explainer.model.named_parameters() if p.requires_grad and "lora_B" in n]
    b_ids = {id(p) for p in b}
    rest = [p for p in explainer.trainable_parameters() if id(p) not in b_ids]
    groups = [{"params": rest, "lr_scale": 1.0}, {"params": b, "lr_scale": cfg.train.loraplus_lr_ratio}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.train.learning_rate,
                             weight_decay=cfg.train.weight_decay)


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then constant or linear decay to 0."""
    t = cfg.train
    warm = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else 1.0
    decay = max(0.0, 1 - step / max(1, total)) if t.lr_scheduler_type == "linear" else 1.0
    return t.learning_rate * warm * decay


@dataclass
class Schedule:
    """How the run walks the data: each epoch's plan of steps, the schedule's horizon and where this run stops."""

    lengths: list[int]  # token length of each training example
    packed: P.Layout | None  # packed rows (train.packing), else None: row batches
    steps_per_epoch: int
    total_steps: int  # the schedule's horizon, whatever --max-steps says
    limit: int  # the step this run stops at


def make_schedule(cfg: TrainConfig, train_enc: list[D.Encoded], world: int, max_steps: int | None,
                  debug: bool) -> Schedule:
    t = cfg.train
    lengths = [len(e.ids) for e in train_enc]
    packed = P.layout(lengths, t.batch_size, t.gradient_accumulation, t.pack_tokens, world) if t.packing else None
    sched = Schedule(lengths, packed, 0, 0, 0)
    sched.steps_per_epoch = len(epoch_plan(cfg, sched, 0))
    sched.total_steps = sched.steps_per_epoch * t.num_epochs
    sched.limit = min(sched.total_steps, max_steps) if max_steps else sched.total_steps
    if debug:  # --debug: the same loop, shorter
        sched.limit = min(sched.limit, t.debug_steps)
    return sched


def epoch_plan(cfg: TrainConfig, sched: Schedule, epoch: int) -> list[list[list[int]]]:
    """steps -> micro-batches (packed rows when packing) -> example positions"""
    t = cfg.train
    if sched.packed:
        return P.epoch_plan(sched.lengths, sched.packed, t.seed, epoch)
    return D.epoch_plan(sched.lengths, t.batch_size, t.gradient_accumulation, t.seed, epoch, t.group_by_length)


@dataclass
class Run:
    """One training run's fixed parts, as the loop reads them."""

    cfg: TrainConfig
    out: Path
    debug: bool
    main_process: bool
    world: int
    device: torch.device
    data: Data
    train_enc: list[D.Encoded]
    test_enc: list[D.Encoded]
    explainer: Explainer
    optimizer: torch.optim.Optimizer
    sched: Schedule
    metrics: MetricsLog
    t0: float  # when main started (perf_counter)

    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    def eval_sizes(self) -> tuple[int, int]:
        """(examples scored by loss, answers generated) at an eval: a small eval that shows its answers in --debug"""
        return (8, 4) if self.debug else (len(self.test_enc), self.cfg.train.eval_samples)


def evaluate(run: Run, step: int) -> tuple[dict, list[str]]:
    """Loss on the first test examples, exact match on generated answers, and any collapse
    (training/collapse.py); logged."""
    n_loss, n_generate = run.eval_sizes()
    cfg, test = run.cfg, run.data.test
    entry = {"step": step, "eval_loss": eval_loss(run.explainer, run.test_enc[:n_loss], cfg.test.batch_size)}
    gen, pairs = scoring.eval_generation(run.explainer, test, cfg, n_generate)
    entry.update({f"{q}/{k}": v for q, m in gen.items() for k, v in m.items() if isinstance(v, (int, float))})
    flags = collapse.training_flags(pairs, majority_predictions(run.data.train, [ex for ex, _ in pairs]))
    if flags:
        entry["collapse"] = flags
        collapse.warn(f"at step {step}", flags)
    run.metrics.write(entry, "eval")
    print(f"eval @ step {step} on {min(n_loss, len(run.test_enc))} test examples: loss {entry['eval_loss']:.4f}"
          + "".join(f", {k} {v:.3f}" for k, v in entry.items() if k.endswith("exact_match")))
    for ex, pred in pairs if run.debug else []:
        print(f"  [{ex.question_type}] target {ex.target!r} <- generated {pred!r}")
    return entry, [pred for _, pred in pairs]


def warn_toy_settings(cfg: TrainConfig) -> None:
    """The CPU configs' learning rate (5e-3) suits the 128-wide toy only; on a real model it breaks LoRA."""
    if not is_toy(cfg.model_path) and cfg.train.learning_rate >= 1e-3:
        log.warning("train.learning_rate=%g is a toy setting (configs/*_cpu.yaml train the 4-layer toy): a real "
                    "model's LoRA at this rate forgets how to answer; the GPU configs use 5e-5",
                    cfg.train.learning_rate)


def prepare_output(cfg: TrainConfig, debug: bool, force: bool, resume: bool, main_process: bool) -> Path:
    """The run's output folder, checked before anything loads: the --debug gate, inputs and other stages'
    folders never written over, an earlier run's checkpoints only continued with --resume."""
    if not debug:
        check_debug_gate(cfg, force)
    warn_toy_settings(cfg)
    out = Path(cfg.output_dir) / "debug" if debug else Path(cfg.output_dir)
    check_output_dir(out, [E.dataset_dir(cfg, task) for task in cfg.train.tasks])
    check_stage_folder(out, "train")
    if debug and main_process:
        shutil.rmtree(out, ignore_errors=True)
    elif complete_checkpoints(out / "checkpoints") and not resume:
        raise InputError(f"{out}: holds checkpoints of an earlier run; pass --resume to continue it, or choose "
                         "another --output-dir")
    return out


def resume_progress(cfg: TrainConfig, ckpt_root: Path, explainer: Explainer, optimizer, total_steps: int,
                    resume: bool, main_process: bool) -> tuple[Progress, str | None]:
    """Where the loop starts: step 0, or (--resume) the newest complete checkpoint's position and counters with
    this config's hyperparameters (checkpoint.Progress); and the checkpoint resumed from."""
    prog = Progress(step=0, epoch=0, step_in_epoch=0, config_hash=config_hash(cfg), total_steps=total_steps)
    if main_process:
        remove_partial_saves(ckpt_root)
    dist.barrier()
    found = complete_checkpoints(ckpt_root) if resume else []
    if resume and not found:
        log.info("--resume: no complete checkpoint in %s, starting from step 0", ckpt_root)
    if not found:
        return prog, None
    saved = load_checkpoint(found[-1], explainer, optimizer)
    check_resume(saved, prog.config_hash, total_steps, found[-1])
    prog = msgspec.structs.replace(saved, config_hash=prog.config_hash, total_steps=total_steps)
    log.info("resumed from %s: step %d, epoch %d, step %d of the epoch", found[-1], prog.step, prog.epoch,
             prog.step_in_epoch)
    return prog, str(found[-1])


def main(cfg: TrainConfig, *, debug: bool = False, force: bool = False, resume: bool = False,
         max_steps: int | None = None) -> dict:
    """Train (or debug-run) one config; returns a summary dict (final losses, eval metrics, paths)."""
    t0 = time.perf_counter()
    _, world = dist.setup()
    main_process = dist.is_main()
    out = prepare_output(cfg, debug, force, resume, main_process)
    device, dtype = pick_device(cfg)
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)

    # Data: records -> examples (held-out guard against the paths config, read once here) -> token ids
    model_dir = resolve_model(cfg.model_path, "model_path")
    tokenizer = load_tokenizer(model_dir)
    markers = resolve_markers(tokenizer, msgspec.structs.asdict(cfg.continuous_tokens)) if needs_markers(cfg) else {}
    data = load_data(cfg, tokenizer, markers, paths=train_paths(cfg))
    train_enc, dropped = D.encode_all(tokenizer, data.train, cfg.train.max_length)
    test_enc, _ = D.encode_all(tokenizer, data.test, cfg.train.max_length)
    if dropped:
        log.warning("%d training examples longer than max_length=%d dropped", dropped, cfg.train.max_length)
    if not train_enc:
        raise InputError("no training examples left after encoding")
    # one writer per output folder (the main process holds the lock), from the first write on
    with output_lock(out) if main_process else contextlib.nullcontext():
        if main_process:
            out.mkdir(parents=True, exist_ok=True)  # only now: refused input leaves nothing behind
            if debug:
                print_debug_data(cfg, data, train_enc, tokenizer)

        # Model, optimizer, schedule; resume where a checkpoint left off
        explainer = build_explainer(cfg, data.vector_dim, device, dtype, tokenizer, markers,
                                    trainable_tokens(cfg, train_enc, data.train, tokenizer))
        optimizer = make_optimizer(cfg, explainer)
        sched = make_schedule(cfg, train_enc, world, max_steps, debug)
        prog, resumed_from = resume_progress(cfg, out / "checkpoints", explainer, optimizer, sched.total_steps,
                                             resume, main_process)
        if main_process:
            write_run_files(out, cfg, model_dir, explainer.markers)
            print_run_start(cfg, world, device, dtype, explainer, len(train_enc), len(test_enc), sched)
        metrics = MetricsLog(out, prog.step if resume else None, enabled=main_process)
        run = Run(cfg, out, debug, main_process, world, device, data, train_enc, test_enc, explainer, optimizer,
                  sched, metrics, t0)
        try:
            losses, last_eval = train_loop(run, prog)
            dist.barrier()
        finally:
            metrics.close()
    summary = {"steps": prog.step, "total_steps": sched.total_steps, "first_loss": losses[0] if losses else None,
               "last_loss": losses[-1] if losses else None, "eval": last_eval, "output_dir": str(out),
               "final": str(out / "final"), "resumed_from": resumed_from,
               "padding_fraction": 1 - prog.tokens_seen / max(1, prog.padded_seen),
               "wall_s": time.perf_counter() - t0, "collapse": last_eval.get("collapse", {}),
               "cpu_bf16": explainer.cpu_bf16}  # what train.cpu_precision "auto" resolved to on this machine
    if main_process:
        finish_run(cfg, out, summary, losses, debug)
    return summary


def save(run: Run, prog: Progress) -> None:
    """Checkpoint where the loop stands: with the RNG states, enough to continue bit-for-bit."""
    rngs = dist.gather(rng_state())  # collective: every process takes part
    if run.main_process:
        save_checkpoint(run.ckpt_root, prog.step, run.explainer, run.optimizer, prog, run.cfg.train.save_total_limit,
                        rngs)


def train_loop(run: Run, prog: Progress) -> tuple[list[float], dict]:
    """The optimizer steps from `prog` to the schedule's limit, with evals and checkpoints, then the final
    eval and weights; returns the losses and the last eval. `prog` advances in place."""
    cfg, t, explainer, optimizer = run.cfg, run.cfg.train, run.explainer, run.optimizer
    sched, limit, world, packed = run.sched, run.sched.limit, run.world, run.sched.packed
    params = explainer.trainable_parameters()
    pad = explainer.tokenizer.pad_token_id
    print_every = 1 if run.debug else 10
    losses: list[float] = []
    last_eval: dict = {}
    answers: list[str] = []
    before = answers_before_training(run) if run.debug and run.main_process else []
    tokens_at_start = prog.tokens_seen
    t_loop = time.perf_counter()
    while prog.step < limit:
        plan = epoch_plan(cfg, sched, prog.epoch)
        if prog.step_in_epoch >= len(plan):
            prog.epoch, prog.step_in_epoch = prog.epoch + 1, 0
            continue
        micro = [[run.train_enc[i] for i in mb] for mb in plan[prog.step_in_epoch]]
        step_examples = [e for mb in micro for e in mb]
        denom = D.answer_weight(step_examples)  # the whole step's, on every process
        if world > 1 and packed:  # whole rows: rows_per_step is a multiple of the world size
            micro = dist.my_share(micro)
        elif world > 1:  # this process's share, in micro-batches of at most batch_size
            mine = dist.my_share(step_examples)
            micro = [mine[k:k + t.batch_size] for k in range(0, len(mine), t.batch_size)]
        explainer.model.train()
        optimizer.zero_grad(set_to_none=True)
        loss_value, step_tokens, step_padded = 0.0, 0, 0
        for mb in micro:
            batch = (P.collate(mb, pad, packed.width) if packed else D.collate(mb, pad)).to(run.device)
            loss = explainer.loss_sum(batch) / denom
            loss.backward()
            loss_value += float(loss.detach())
            step_tokens += batch.n_tokens
            step_padded += batch.n_padded
        dist.sum_gradients(params)
        loss_value, step_tokens, step_padded = dist.sum_values(loss_value, step_tokens, step_padded)
        prog.tokens_seen += int(step_tokens)
        prog.padded_seen += int(step_padded)
        if not math.isfinite(loss_value) or (run.debug and loss_value == 0.0):
            raise RuntimeError(f"loss is {loss_value} at step {prog.step + 1}: stopping (check the data and the "
                               "answer masking; an exactly-0 loss means nothing is being scored)")
        lr = lr_at(cfg, prog.step, sched.total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        grad_norm = (float(torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)) if t.max_grad_norm > 0
                     else float("nan"))
        optimizer.step()
        prog.step, prog.step_in_epoch = prog.step + 1, prog.step_in_epoch + 1
        step = prog.step
        losses.append(loss_value)
        run.metrics.write({"step": step, "epoch": prog.epoch, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                           "tokens": prog.tokens_seen,
                           "padding_fraction": 1 - prog.tokens_seen / max(1, prog.padded_seen),
                           "elapsed_s": time.perf_counter() - run.t0, "micro_batches": len(micro),
                           "examples": [e.index for e in step_examples]}, "train")
        if run.main_process and (step % print_every == 0 or step == limit):
            rate = (prog.tokens_seen - tokens_at_start) / (time.perf_counter() - t_loop)
            print(f"{'debug ' if run.debug else ''}step {step}/{limit} epoch {prog.epoch} loss {loss_value:.4f} "
                  f"lr {lr:.2e} ({rate:,.0f} tok/s)")
        if step % t.eval_steps == 0 and run.main_process:
            last_eval, answers = evaluate(run, step)
        if step % t.save_steps == 0 or step == limit:  # the last step is always saved
            save(run, prog)
    if run.main_process:
        if prog.step % t.eval_steps != 0:
            last_eval, answers = evaluate(run, prog.step)
        if run.debug:
            check_debug_answers(answers, before, losses)
        save_final(run.out, explainer, prog.step, sched.total_steps, config_hash(cfg))
    return losses, last_eval
