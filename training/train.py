"""Train the LoRA explainer: records -> examples -> peft LoRA on a transformers causal LM.

One readable path, top to bottom: `main(cfg, ...)` loads the explainer (training/model.py), builds and
guards the data (training/dataset.py, training/data.py), then runs the loop: AdamW with LoRA+ groups,
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
from pathlib import Path

import msgspec
import numpy as np
import torch

from lm.models import is_toy, resolve_model
from records.assets import check_output_dir
from records.config import config_hash
from records.errors import InputError, StageFailure
from records.jsonl import write_json_atomic
from records.lock import output_lock
from records.provenance import check_stage_folder
from training import collapse
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
from training.config import TrainConfig
from training.continuous import resolve_markers
from training.dataset import load_data, needs_markers
from training.evaluate import majority_predictions
from training.model import Explainer, build_explainer, load_tokenizer, pick_device, trainable_tokens
from training.runlog import MetricsLog, check_debug_gate, print_debug_data, write_debug_marker, write_run_files
from training.scoring import eval_generation, eval_loss

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


def evaluate(explainer: Explainer, test_enc: list[D.Encoded], test: list[E.Example], cfg: TrainConfig, step: int,
             metrics: MetricsLog, n_loss: int, n_generate: int, show_answers: bool, train: list[E.Example]) -> dict:
    """Loss on the first `n_loss` test examples, exact match on `n_generate` generated answers, and any
    collapse (training/collapse.py); logged."""
    entry = {"step": step, "eval_loss": eval_loss(explainer, test_enc[:n_loss], cfg.test.batch_size)}
    gen, pairs = eval_generation(explainer, test, cfg, n_generate)
    entry.update({f"{q}/{k}": v for q, m in gen.items() for k, v in m.items() if isinstance(v, (int, float))})
    flags = collapse.training_flags(pairs, majority_predictions(train, [ex for ex, _ in pairs]))
    if flags:
        entry["collapse"] = flags
        collapse.warn(f"at step {step}", flags)
    metrics.write(entry, "eval")
    print(f"eval @ step {step} on {min(n_loss, len(test_enc))} test examples: loss {entry['eval_loss']:.4f}"
          + "".join(f", {k} {v:.3f}" for k, v in entry.items() if k.endswith("exact_match")))
    for ex, pred in pairs if show_answers else []:
        print(f"  [{ex.question_type}] target {ex.target!r} <- generated {pred!r}")
    return entry, [pred for _, pred in pairs]


def check_debug_answers(answers: list[str], before: list[str], losses: list[float]) -> None:
    """A debug run fails when training broke the explainer's answers (too high a learning rate, a template
    that ends the answer at once): all empty where before training they were not, or all the same while
    the loss did not fall."""
    if answers and all(not a.strip() for a in answers) and not all(not b.strip() for b in before):
        raise StageFailure(f"debug run FAILED: all {len(answers)} generated answers are empty; lower "
                           "train.learning_rate (CPU configs are toy settings) or check the chat template")
    # One answer for every input while the loss falls is a model that has not moved far yet: a small adapter
    # after a few steps, or a real organism as its own explainer still writing its usual response (seen on
    # the SmolLM2 rehearsal organism on an H100, 2026-12-07: loss 11.8 -> 5.7 in 5 warm-up steps, every
    # answer its own scratchpad text). Only with a loss that did not fall is it a training that broke.
    loss_fell = len(losses) > 1 and losses[-1] < losses[0]
    if len(answers) > 1 and len(set(answers)) == 1 and len(set(before)) > 1 and answers[0] not in before \
            and not loss_fell:
        raise StageFailure(f"debug run FAILED: all {len(answers)} generated answers are the same ({answers[0]!r}) "
                           "and the loss did not fall; the explainer ignores its input: lower "
                           "train.learning_rate or check the data")


def warn_toy_settings(cfg: TrainConfig) -> None:
    """The CPU configs' learning rate (5e-3) suits the 128-wide toy only; on a real model it breaks LoRA."""
    if not is_toy(cfg.model_path) and cfg.train.learning_rate >= 1e-3:
        log.warning("train.learning_rate=%g is a toy setting (configs/*_cpu.yaml train the 4-layer toy): a real "
                    "model's LoRA at this rate forgets how to answer; the GPU configs use 5e-5",
                    cfg.train.learning_rate)


def main(cfg: TrainConfig, *, debug: bool = False, force: bool = False, resume: bool = False,
         max_steps: int | None = None) -> dict:
    """Train (or debug-run) one config; returns a summary dict (final losses, eval metrics, paths)."""
    t0 = time.perf_counter()
    _, world = dist.setup()
    main_process = dist.is_main()
    if not debug:
        check_debug_gate(cfg, force)
    warn_toy_settings(cfg)
    out = Path(cfg.output_dir) / "debug" if debug else Path(cfg.output_dir)
    check_output_dir(out, [E.dataset_dir(cfg, task) for task in cfg.train.tasks])
    check_stage_folder(out, "train")
    ckpt_root = out / "checkpoints"
    if debug and main_process:
        shutil.rmtree(out, ignore_errors=True)
    elif complete_checkpoints(ckpt_root) and not resume:
        raise InputError(f"{out}: holds checkpoints of an earlier run; pass --resume to continue it, or choose "
                         "another --output-dir")
    device, dtype = pick_device(cfg)
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)

    # Data: records -> examples (held-out guard) -> token ids with the answer marked
    model_dir = resolve_model(cfg.model_path, "model_path")
    tokenizer = load_tokenizer(model_dir)
    markers = resolve_markers(tokenizer, msgspec.structs.asdict(cfg.continuous_tokens)) if needs_markers(cfg) else {}
    data = load_data(cfg, tokenizer, markers)
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

        # Model, optimizer, schedule
        explainer = build_explainer(cfg, data.vector_dim, device, dtype, tokenizer, markers,
                                    trainable_tokens(cfg, train_enc, data.train, tokenizer))
        params = explainer.trainable_parameters()
        optimizer = make_optimizer(cfg, explainer)
        lengths = [len(e.ids) for e in train_enc]
        t = cfg.train
        packed = P.layout(lengths, t.batch_size, t.gradient_accumulation, t.pack_tokens, world) if t.packing else None

        def epoch_plan(epoch: int) -> list[list[list[int]]]:
            """steps -> micro-batches (packed rows when packing) -> example positions"""
            if packed:
                return P.epoch_plan(lengths, packed, t.seed, epoch)
            return D.epoch_plan(lengths, t.batch_size, t.gradient_accumulation, t.seed, epoch, t.group_by_length)

        steps_per_epoch = len(epoch_plan(0))
        total_steps = steps_per_epoch * t.num_epochs  # the schedule's horizon, whatever --max-steps says
        limit = min(total_steps, max_steps) if max_steps else total_steps
        # --debug: the same loop, shorter; every step printed, a small eval that shows its answers
        if debug:
            limit = min(limit, t.debug_steps)
        n_loss, n_generate, print_every = (8, 4, 1) if debug else (len(test_enc), t.eval_samples, 10)

        # Resume: the checkpoint's position and counters, this config's hyperparameters (checkpoint.Progress)
        prog = Progress(step=0, epoch=0, step_in_epoch=0, config_hash=config_hash(cfg), total_steps=total_steps)
        resumed_from = None
        if main_process:
            remove_partial_saves(ckpt_root)
        dist.barrier()
        if resume:
            found = complete_checkpoints(ckpt_root)
            if found:
                saved = load_checkpoint(found[-1], explainer, optimizer)
                check_resume(saved, prog.config_hash, total_steps, found[-1])
                prog = msgspec.structs.replace(saved, config_hash=prog.config_hash, total_steps=total_steps)
                resumed_from = str(found[-1])
                log.info("resumed from %s: step %d, epoch %d, step %d of the epoch", found[-1], prog.step, prog.epoch,
                         prog.step_in_epoch)
            else:
                log.info("--resume: no complete checkpoint in %s, starting from step 0", ckpt_root)
        if main_process:
            write_run_files(out, cfg, model_dir, explainer.markers)
        metrics = MetricsLog(out, prog.step if resume else None, enabled=main_process)
        n_trainable = sum(p.numel() for p in params)
        if main_process:
            if world > 1:
                print(f"data parallel: {world} processes share each step's examples; effective batch unchanged "
                      f"({t.batch_size} x {t.gradient_accumulation})")
            print(f"explainer {cfg.model_path} on {device} ({str(dtype).replace('torch.', '')}), LoRA r={t.lora_r}, "
                  f"{n_trainable:,} trainable parameters; {len(train_enc)} train / {len(test_enc)} test examples; "
                  f"{steps_per_epoch} steps/epoch x {t.num_epochs} epochs = {total_steps} steps; running to step {limit}")
            if packed:
                print(f"packing: {packed.rows_per_step} row(s) of {packed.width} tokens a step, "
                      f"{len(train_enc) / steps_per_epoch:.1f} examples a step on average "
                      f"(row batching: {packed.step_examples})")

        def save() -> None:
            """Checkpoint where the loop stands: with the RNG states, enough to continue bit-for-bit."""
            rngs = dist.gather(rng_state())  # collective: every process takes part
            if main_process:
                save_checkpoint(ckpt_root, prog.step, explainer, optimizer, prog, t.save_total_limit, rngs)

        losses: list[float] = []
        last_eval: dict = {}
        answers: list[str] = []
        # --debug: the untrained explainer's answers, to tell a training that broke them from a model
        # that starts out answering everything alike
        before = []
        if debug and main_process:
            before = [pred for _, pred in eval_generation(explainer, data.test, cfg, n_generate)[1]]
        tokens_at_start = prog.tokens_seen
        pad = tokenizer.pad_token_id
        last_saved = prog.step
        t_loop = time.perf_counter()
        try:
            while prog.step < limit:
                plan = epoch_plan(prog.epoch)
                if prog.step_in_epoch >= len(plan):
                    prog.epoch, prog.step_in_epoch = prog.epoch + 1, 0
                    continue
                micro = [[train_enc[i] for i in mb] for mb in plan[prog.step_in_epoch]]
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
                    batch = (P.collate(mb, pad, packed.width) if packed else D.collate(mb, pad)).to(device)
                    loss = explainer.loss_sum(batch) / denom
                    loss.backward()
                    loss_value += float(loss.detach())
                    step_tokens += batch.n_tokens
                    step_padded += batch.n_padded
                dist.sum_gradients(params)
                loss_value, step_tokens, step_padded = dist.sum_values(loss_value, step_tokens, step_padded)
                prog.tokens_seen += int(step_tokens)
                prog.padded_seen += int(step_padded)
                if not math.isfinite(loss_value) or (debug and loss_value == 0.0):
                    raise RuntimeError(f"loss is {loss_value} at step {prog.step + 1}: stopping (check the data and the "
                                       "answer masking; an exactly-0 loss means nothing is being scored)")
                lr = lr_at(cfg, prog.step, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"]
                grad_norm = (float(torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)) if t.max_grad_norm > 0
                             else float("nan"))
                optimizer.step()
                prog.step, prog.step_in_epoch = prog.step + 1, prog.step_in_epoch + 1
                step = prog.step
                losses.append(loss_value)
                metrics.write({"step": step, "epoch": prog.epoch, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                               "tokens": prog.tokens_seen,
                               "padding_fraction": 1 - prog.tokens_seen / max(1, prog.padded_seen),
                               "elapsed_s": time.perf_counter() - t0, "micro_batches": len(micro),
                               "examples": [e.index for e in step_examples]}, "train")
                if main_process and (step % print_every == 0 or step == limit):
                    rate = (prog.tokens_seen - tokens_at_start) / (time.perf_counter() - t_loop)
                    print(f"{'debug ' if debug else ''}step {step}/{limit} epoch {prog.epoch} loss {loss_value:.4f} "
                          f"lr {lr:.2e} ({rate:,.0f} tok/s)")
                if step % t.eval_steps == 0 and main_process:
                    last_eval, answers = evaluate(explainer, test_enc, data.test, cfg, step, metrics, n_loss, n_generate,
                                                  debug, data.train)
                if step % t.save_steps == 0 or step == limit:
                    save()
                    last_saved = step
            if last_saved != prog.step:
                save()
            if main_process:
                if prog.step % t.eval_steps != 0:
                    last_eval, answers = evaluate(explainer, test_enc, data.test, cfg, prog.step, metrics, n_loss,
                                                  n_generate, debug, data.train)
                if debug:
                    check_debug_answers(answers, before, losses)
                save_final(out, explainer, prog.step, total_steps, config_hash(cfg))
            dist.barrier()
        finally:
            metrics.close()
        summary = {"steps": prog.step, "total_steps": total_steps, "first_loss": losses[0] if losses else None,
                   "last_loss": losses[-1] if losses else None, "eval": last_eval, "output_dir": str(out),
                   "final": str(out / "final"), "resumed_from": resumed_from,
                   "padding_fraction": 1 - prog.tokens_seen / max(1, prog.padded_seen), "wall_s": time.perf_counter() - t0,
                   "collapse": last_eval.get("collapse", {})}
        if not main_process:
            return summary
        if debug:
            marker = write_debug_marker(cfg, prog.step, losses)
            print(f"debug run OK: {prog.step} steps, losses {['%.4f' % x for x in losses]}; marker {marker}")
        write_json_atomic(out / "summary.json", summary)
        return summary
