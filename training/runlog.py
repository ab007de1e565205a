"""What a training run says and leaves beside its weights: the metrics log, the run files, what it
prints, and the --debug gate.

A full run is refused until a `--debug` run of the same config (by content hash) succeeded and left its
marker in <output_dir>/.debug_ok/ (`--force` overrides, with a warning). The debug run also prints what
the data looks like, so a wrong field or an empty answer shows before hours of training, and fails when
training broke the explainer's answers (`check_debug_answers`, against its answers before training).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from pathlib import Path

from records.config import config_hash
from records.errors import InputError, StageFailure
from records.jsonl import write_atomic, write_json_atomic
from training import data as D
from training import examples as E
from training import scoring
from training.config import TrainConfig
from training.dataset import Data

log = logging.getLogger(__name__)


def debug_marker(cfg: TrainConfig) -> Path:
    return Path(cfg.output_dir) / ".debug_ok" / f"{config_hash(cfg)}.json"


def check_debug_gate(cfg: TrainConfig, force: bool) -> None:
    marker = debug_marker(cfg)
    if marker.is_file():
        return
    if force:
        log.warning("no successful --debug run for this config (hash %s): training anyway because of --force",
                    config_hash(cfg))
        return
    raise InputError(f"no successful --debug run for this config (hash {config_hash(cfg)}, marker {marker}); "
                     "run the same command with --debug first, or pass --force to train without one")


def write_debug_marker(cfg: TrainConfig, steps: int, losses: list[float]) -> Path:
    marker = debug_marker(cfg)
    write_json_atomic(marker, {"config_hash": config_hash(cfg), "steps": steps, "losses": losses,
                               "created": dt.datetime.now(dt.timezone.utc).isoformat()})
    return marker


def print_run_start(cfg: TrainConfig, world: int, device, dtype, explainer, n_train: int, n_test: int, sched) -> None:
    """What the run is about to do: the model, its trainable size, the data and the schedule (`sched`:
    training/train.Schedule)."""
    t = cfg.train
    n_trainable = sum(p.numel() for p in explainer.trainable_parameters())
    if world > 1:
        print(f"data parallel: {world} processes share each step's examples; effective batch unchanged "
              f"({t.batch_size} x {t.gradient_accumulation})")
    precision = str(dtype).replace("torch.", "") + (", bf16 matrix products" if explainer.cpu_bf16 else "")
    print(f"explainer {cfg.model_path} on {device} ({precision}), LoRA r={t.lora_r}, "
          f"{n_trainable:,} trainable parameters; {n_train} train / {n_test} test examples; "
          f"{sched.steps_per_epoch} steps/epoch x {t.num_epochs} epochs = {sched.total_steps} steps; "
          f"running to step {sched.limit}")
    if sched.packed:
        print(f"packing: {sched.packed.rows_per_step} row(s) of {sched.packed.width} tokens a step, "
              f"{n_train / sched.steps_per_epoch:.1f} examples a step on average "
              f"(row batching: {sched.packed.step_examples})")


def answers_before_training(run) -> list[str]:
    """--debug: the untrained explainer's answers (`run`: training/train.Run), to tell a training that broke
    them from a model that starts out answering everything alike."""
    _, n_generate = run.eval_sizes()
    return [pred for _, pred in scoring.eval_generation(run.explainer, run.data.test, run.cfg, n_generate)[1]]


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


def finish_run(cfg: TrainConfig, out: Path, summary: dict, losses: list[float], debug: bool) -> None:
    """summary.json, and after a --debug run the marker a full run of the same config requires."""
    if debug:
        marker = write_debug_marker(cfg, summary["steps"], losses)
        print(f"debug run OK: {summary['steps']} steps, losses {[f'{x:.4f}' for x in losses]}; marker {marker}")
    write_json_atomic(out / "summary.json", summary)


def print_debug_data(cfg: TrainConfig, data: Data, train_enc: list[D.Encoded], tokenizer) -> None:
    """The records' fields, example counts, token lengths, and one training example as the model sees it."""
    for task, records in data.train_records.items():
        fields = list(type(records[0]).__struct_fields__)
        print(f"task {task}: {len(records)} training records from {E.dataset_dir(cfg, task)}; "
              f"fields: {', '.join(fields)}")
    counts: dict[str, int] = {}
    for ex in data.train:
        counts[ex.question_type] = counts.get(ex.question_type, 0) + 1
    lengths = sorted(len(e.ids) for e in train_enc)
    sets = ", ".join(f"{k} {len(v)}" for k, v in data.eval_sets.items()) or "none"
    print(f"samples: {len(data.train)} train examples ({', '.join(f'{k} {v}' for k, v in counts.items())}), "
          f"{len(data.test)} test examples, eval sets: {sets}")
    print(f"token lengths: min {lengths[0]}, median {lengths[len(lengths) // 2]}, max {lengths[-1]}")
    enc = train_enc[0]
    ex = data.train[enc.index]
    print(f"--- one training example ({ex.task}/{ex.question_type}, sample {ex.sample_id}) ---\n"
          f"prompt ({enc.prompt_len} tokens): {tokenizer.decode(enc.ids[:enc.prompt_len])!r}\n"
          f"answer tokens ({len(enc.ids) - enc.prompt_len}, the only scored ones): "
          f"{tokenizer.decode(enc.ids[enc.prompt_len:])!r}\n"
          f"target: {ex.target!r}" + (f"\nvector: shape {ex.vector.shape}" if ex.vector is not None else ""))


def write_run_files(out: Path, cfg: TrainConfig, model_dir: str, markers: dict[str, str]) -> None:
    """The manifest (config, code version, model, inputs) and the continuous-token markers."""
    from records.provenance import make_manifest

    write_json_atomic(out / "manifest.json", make_manifest(
        "train", cfg, model_dir, {task: str(E.dataset_dir(cfg, task)) for task in cfg.train.tasks}))
    write_json_atomic(out / "markers.json", markers)


class MetricsLog:
    """JSONL metrics (one object a line, flushed) plus TensorBoard scalars."""

    def __init__(self, out: Path, resume_step: int | None, enabled: bool = True):
        from torch.utils.tensorboard import SummaryWriter

        self.enabled = enabled  # data-parallel: only the main process writes
        if not enabled:
            return
        self.path = out / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # Entries past the checkpoint were made by the interrupted run and are about to be redone.
            # A kill can leave a torn last line; only whole lines are kept.
            kept = [line for line in self.path.read_bytes().split(b"\n")[:-1]
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            write_atomic(self.path, b"".join(k + b"\n" for k in kept))
        self.file = open(self.path, "a", encoding="utf-8")
        self.tb = SummaryWriter(str(out / "tensorboard"))

    def write(self, entry: dict, prefix: str) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()
        for key, value in entry.items():
            if isinstance(value, (int, float)) and key != "step" and math.isfinite(value):
                self.tb.add_scalar(f"{prefix}/{key}", value, entry["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.tb.close()
