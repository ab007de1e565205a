"""Train the LoRA explainer: records -> examples -> peft LoRA on a transformers causal LM.

One readable path: `main(cfg, ...)` loads the explainer, builds and guards the data, then runs the
loop (AdamW, gradient accumulation, eval every `eval_steps`, checkpoint every `save_steps`). A
checkpoint holds the adapter (PEFT format), the projector, the optimizer, the step, the data position
and every RNG state; it is written to a temporary folder, fsynced, renamed into place, and only then
marked COMPLETE, so `--resume` never picks a half-written one and continues bit-for-bit.

`--debug` runs a few steps on the same config, prints what the data looks like, fails on a NaN or
exactly-0 loss, and leaves a marker that a full run of the same config (by content hash) requires.
Nothing is uploaded anywhere.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import torch
import torch.nn.functional as F

from records.assets import check_output_dir
from records.config import config_hash
from records.errors import InputError
from records.jsonl import write_atomic, write_json_atomic
from training import data as D
from training import distributed as dist
from training import examples as E
from training import packing as P
from training import speed as S
from training.config import TrainConfig
from training.continuous import ContinuousEmbedder, prompt_markers, resolve_markers

log = logging.getLogger(__name__)

CKPT_PREFIX = "checkpoint-"
COMPLETE = "COMPLETE"
VECTOR_TASKS = {"act_patch", "features_explain"}


# ---------------------------------------------------------------------------------------------------
# Explainer: tokenizer, model, LoRA, continuous inputs


def pick_device(cfg: TrainConfig) -> tuple[torch.device, torch.dtype]:
    """cuda when asked or available; bf16 only on GPU (CPU trains in fp32)."""
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise InputError("device: cuda asked for, but no CUDA device is available")
    device = torch.device("cuda" if use_cuda else "cpu")
    return device, (torch.bfloat16 if use_cuda and cfg.train.bf16 else torch.float32)


def load_tokenizer(model_dir: str):
    """The explainer's tokenizer; a model without a chat template gets the Mistral v0.3-style one."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if not getattr(tok, "chat_template", None):
        from organism.tokenizer import CHAT_TEMPLATE

        log.warning("%s has no chat template: using the Mistral v0.3-style template of organism/tokenizer.py", model_dir)
        tok.chat_template = CHAT_TEMPLATE
    if tok.pad_token_id is None:
        # Pads are never scored or attended by real tokens, so any id works; EOS is always present.
        tok.pad_token = tok.eos_token
    return tok


@dataclass
class Explainer:
    model: torch.nn.Module  # the peft model
    tokenizer: object
    embedder: ContinuousEmbedder
    device: torch.device
    dtype: torch.dtype
    markers: dict[str, str]

    @property
    def causal_lm(self):
        return self.model.get_base_model()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """LoRA then projector parameters, in a fixed order (the optimizer state depends on it)."""
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.embedder.parameters())

    def embed(self, input_ids: torch.Tensor, vectors: torch.Tensor | None) -> torch.Tensor:
        return self.embedder(self.causal_lm.get_input_embeddings(), input_ids, vectors)

    def loss_sum(self, batch: D.Batch) -> torch.Tensor:
        """Weighted sum of answer-token cross-entropies of one micro-batch (the caller divides)."""
        embeds = self.embed(batch.input_ids, batch.vectors)  # [batch, seq, hidden]
        extra = P.decoder_kwargs(batch, self.causal_lm.config._attn_implementation, self.dtype)  # packed rows
        hidden = self.causal_lm.get_decoder()(inputs_embeds=embeds, use_cache=False, **extra).last_hidden_state
        # The vocabulary projection only where an answer token is predicted: [n_answer, vocab]
        logits = self.causal_lm.get_output_embeddings()(hidden[batch.rows, batch.cols]).float()
        ce = F.cross_entropy(logits, batch.targets, reduction="none")  # [n_answer]
        return (ce * batch.weights).sum()

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], vectors: list[np.ndarray | None], max_new_tokens: int,
                 batch_size: int = 16) -> list[str]:
        """Greedy answers for token-id prompts (left-padded batches, sorted by length for little padding)."""
        self.model.eval()
        pad = self.tokenizer.pad_token_id
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        answers: dict[int, str] = {}
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in idx], device=self.device)
            mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx],
                                device=self.device)  # [batch, width]
            vecs = [vectors[i] for i in idx if vectors[i] is not None]
            vt = torch.from_numpy(np.stack(vecs)).to(self.device) if vecs else None
            embeds = self.embed(ids, vt)  # [batch, width, hidden]
            with S.generation_mode(self.causal_lm):
                out = self.model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                          do_sample=False, pad_token_id=pad, eos_token_id=self.tokenizer.eos_token_id)
            # With inputs_embeds only, generate returns just the new tokens: [batch, new]
            for i, text in zip(idx, self.tokenizer.batch_decode(out, skip_special_tokens=True)):
                answers[i] = text
        return [answers[i] for i in range(len(prompts))]


def build_explainer(cfg: TrainConfig, vector_dim: int | None, device: torch.device, dtype: torch.dtype,
                    tokenizer=None, markers: dict[str, str] | None = None,
                    token_indices: list[int] | None = None) -> Explainer:
    """Load the explainer, wrap it with a fresh LoRA adapter (r, alpha, all linear projections).

    `token_indices`: embedding rows trained besides LoRA (train.trainable_answer_tokens), or None.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from records.models import resolve_model

    if not cfg.train.peft_lora:
        raise InputError("train.peft_lora: false (full fine-tuning) is not supported; this stage trains LoRA adapters")
    model_dir = resolve_model(cfg.model_path, "model_path")
    tokenizer = tokenizer or load_tokenizer(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **S.load_kwargs(cfg.train)).to(device)
    base.config.use_cache = False
    S.fuse(base, cfg.train)
    lora = LoraConfig(r=cfg.train.lora_r, lora_alpha=cfg.train.lora_alpha or 2 * cfg.train.lora_r,
                      lora_dropout=cfg.train.lora_dropout, target_modules="all-linear", bias="none",
                      task_type="CAUSAL_LM", trainable_token_indices=token_indices or None)
    model = get_peft_model(base, lora, **S.peft_kwargs(cfg.train))
    if cfg.train.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    S.compile_layers(base, cfg.train)
    markers = markers or {}
    rep_id = tokenizer.convert_tokens_to_ids(markers["continuous_rep"]) if markers else -1
    hidden = base.config.get_text_config().hidden_size
    embedder = ContinuousEmbedder(rep_id, vector_dim or hidden, hidden,
                                  use_proj=bool(vector_dim) and cfg.use_embed_proj).to(device)
    if vector_dim is None:
        embedder.projector = None  # text-only tasks: nothing to project
    return Explainer(model=model, tokenizer=tokenizer, embedder=embedder, device=device, dtype=dtype,
                     markers=markers)


# ---------------------------------------------------------------------------------------------------
# Data


@dataclass
class Data:
    train: list[E.Example]
    test: list[E.Example]
    eval_sets: dict[str, list[E.Example]]
    train_records: dict[str, list]  # task -> records (for debug printing and baselines)
    vector_dim: int | None


def needs_markers(cfg: TrainConfig) -> bool:
    return any(t in VECTOR_TASKS for t in cfg.train.tasks)


def load_data(cfg: TrainConfig, tokenizer, markers: dict[str, str], check_heldout: bool = True) -> Data:
    """Records of every task -> examples; refuses training data that overlaps held-out scenarios."""
    decode = _target_decoder(cfg, tokenizer) if "act_patch" in cfg.train.tasks else None
    slot_markers = prompt_markers(markers) if markers else {}
    train, test, records = [], [], {}
    eval_sets: dict[str, list[E.Example]] = {}
    for task, tc in cfg.train.tasks.items():
        folder = E.dataset_dir(cfg, task)
        vectors = E.VectorStore(folder)
        tr, te = E.load_split(folder, task, "train"), E.load_split(folder, task, "test")
        records[task] = tr
        n_test = cfg.test.tasks[task].num_samples if task in cfg.test.tasks else 0
        te = te[:n_test] if n_test else te
        E.check_split_overlap(tr, te)
        train += E.build_examples(tr, task, tc, slot_markers, cfg.train.seed, vectors, decode)
        test += E.build_examples(te, task, tc, slot_markers, cfg.train.seed, vectors, decode)
        for path in cfg.train.eval_sets:
            eval_sets.setdefault(Path(path).stem if Path(path).is_file() else Path(path).name, []).extend(
                E.build_examples(E.load_record_file(path, task), task, tc, slot_markers, cfg.train.seed,
                                 E.VectorStore(Path(path) if Path(path).is_dir() else Path(path).parent), decode))
    if check_heldout:
        held = E.heldout_from_config(cfg, list(cfg.train.tasks), decode)
        for task, rs in records.items():
            E.check_no_heldout(rs, held, decode, where=str(E.dataset_dir(cfg, task) / "train.json"))
        log.info("held-out guard: %d training records checked against %d held-out scenarios: no overlap",
                 sum(map(len, records.values())), len(held))
    dims = {ex.vector.shape[0] for ex in train + test if ex.vector is not None}
    if len(dims) > 1:
        raise InputError(f"vectors of different sizes in one run: {sorted(dims)}")
    return Data(train, test, eval_sets, records, dims.pop() if dims else None)


def _target_decoder(cfg: TrainConfig, explainer_tokenizer):
    from records.models import resolve_model

    tok = explainer_tokenizer
    if cfg.target_model_path != cfg.model_path:
        tok = load_tokenizer(resolve_model(cfg.target_model_path, "target_model_path"))
    return lambda ids: tok.decode(ids, skip_special_tokens=True)


def answer_tokens(cfg: TrainConfig, encoded: list[D.Encoded]) -> list[int] | None:
    """Token ids occurring in training answers, when their embedding rows are trained too."""
    if not cfg.train.trainable_answer_tokens:
        return None
    return sorted({t for e in encoded for t in e.ids[e.prompt_len:]})


def saved_token_indices(folder: Path) -> list[int] | None:
    """The trainable token rows recorded in a saved adapter's config (None when it has none)."""
    path = Path(folder) / "adapter" / "adapter_config.json"
    if not path.is_file():
        return None
    indices = json.loads(path.read_text()).get("trainable_token_indices")
    if isinstance(indices, dict):  # {"embed_tokens": [...]}
        indices = next(iter(indices.values()), None)
    return indices or None


# ---------------------------------------------------------------------------------------------------
# Checkpoints


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


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                                                    "pos": int(pos), "has_gauss": int(has_gauss),
                                                    "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
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


def _publish(tmp: Path, final: Path) -> None:
    """fsync the temporary folder, rename it into place, then write the completeness marker."""
    _fsync_tree(tmp)
    if final.exists():
        stale = final.with_name(f".{final.name}.stale-{os.getpid()}")
        final.rename(stale)
        shutil.rmtree(stale)
    tmp.rename(final)
    write_atomic(final / COMPLETE, b"ok\n")


def save_checkpoint(root: Path, step: int, explainer: Explainer, optimizer, state: dict, keep: int,
                    rng_by_rank: list[dict] | None = None) -> Path:
    """Write a checkpoint (weights, optimizer, loop state, RNG states) atomically; keep the newest `keep`.

    `rng_by_rank`: every data-parallel process's RNG state, so each resumes its own stream.
    """
    final = root / f"{CKPT_PREFIX}{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_weights(tmp, explainer)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    extra = {"rng_by_rank": rng_by_rank} if rng_by_rank and len(rng_by_rank) > 1 else {}
    torch.save({**state, "rng": _rng_state(), **extra}, tmp / "trainer_state.pt")
    _publish(tmp, final)
    for old in complete_checkpoints(root)[:-keep]:
        # The marker goes first: a kill in the middle of rmtree must not leave a "complete" half folder.
        (old / COMPLETE).unlink()
        shutil.rmtree(old)
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


def load_checkpoint(folder: Path, explainer: Explainer, optimizer) -> dict:
    load_weights(folder, explainer)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=explainer.device, weights_only=True))
    state = torch.load(folder / "trainer_state.pt", weights_only=True)
    by_rank = state.get("rng_by_rank")
    _set_rng_state(by_rank[dist.rank()] if by_rank and len(by_rank) == dist.world_size() else state["rng"])
    return state


# ---------------------------------------------------------------------------------------------------
# Debug gate


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


# ---------------------------------------------------------------------------------------------------
# Loop


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


def make_optimizer(cfg: TrainConfig, explainer: Explainer) -> torch.optim.Optimizer:
    """AdamW over LoRA (lora_B at loraplus_lr_ratio x lr), trainable token rows and the projector."""
    b = [p for n, p in explainer.model.named_parameters() if p.requires_grad and "lora_B" in n]
    b_ids = {id(p) for p in b}
    rest = [p for p in explainer.trainable_parameters() if id(p) not in b_ids]
    groups = [{"params": rest, "lr_scale": 1.0}, {"params": b, "lr_scale": cfg.train.loraplus_lr_ratio}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.train.learning_rate,
                             weight_decay=cfg.train.weight_decay)


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    t = cfg.train
    warm = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else 1.0
    decay = max(0.0, 1 - step / max(1, total)) if t.lr_scheduler_type == "linear" else 1.0
    return t.learning_rate * warm * decay


@torch.no_grad()
def eval_loss(explainer: Explainer, encoded: list[D.Encoded], batch_size: int) -> float:
    explainer.model.eval()
    total, weight = 0.0, 0.0
    items = sorted(encoded, key=lambda e: len(e.ids))
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        total += float(explainer.loss_sum(D.collate(chunk, explainer.tokenizer.pad_token_id).to(explainer.device)))
        weight += D.answer_weight(chunk)
    return total / weight if weight else float("nan")


def eval_generation(explainer: Explainer, examples: list[E.Example], cfg: TrainConfig, n: int) -> tuple[dict, list]:
    """Exact-match style metrics on `n` examples spread over the split (every k-th)."""
    from training.evaluate import score

    picked = examples[:: max(1, len(examples) // n)][:n] if n else []
    if not picked:
        return {}, []
    prompts = [D.encode_prompt(explainer.tokenizer, ex.messages) for ex in picked]
    preds = explainer.generate(prompts, [ex.vector for ex in picked], cfg.test.max_new_tokens, cfg.test.batch_size)
    return score(picked, preds), list(zip(picked, preds))


def _format_example(explainer: Explainer, enc: D.Encoded, ex: E.Example) -> str:
    tok = explainer.tokenizer
    return (f"--- one training example ({ex.task}/{ex.question_type}, sample {ex.sample_id}) ---\n"
            f"prompt ({enc.prompt_len} tokens): {tok.decode(enc.ids[:enc.prompt_len])!r}\n"
            f"answer tokens ({len(enc.ids) - enc.prompt_len}, the only scored ones): "
            f"{tok.decode(enc.ids[enc.prompt_len:])!r}\n"
            f"target: {ex.target!r}" + (f"\nvector: shape {ex.vector.shape}" if ex.vector is not None else ""))


def main(cfg: TrainConfig, *, debug: bool = False, force: bool = False, resume: bool = False,
         max_steps: int | None = None) -> dict:
    """Train (or debug-run) one config; returns a summary dict (final losses, eval metrics, paths)."""
    from records.models import resolve_model

    t0 = time.perf_counter()
    _, world = dist.setup()
    main_process = dist.is_main()
    if not debug:
        check_debug_gate(cfg, force)
    out = Path(cfg.output_dir) / "debug" if debug else Path(cfg.output_dir)
    check_output_dir(out, [E.dataset_dir(cfg, task) for task in cfg.train.tasks])
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

    tokenizer = load_tokenizer(resolve_model(cfg.model_path, "model_path"))
    markers = resolve_markers(tokenizer, msgspec.structs.asdict(cfg.continuous_tokens)) if needs_markers(cfg) else {}
    data = load_data(cfg, tokenizer, markers)
    train_enc, dropped = D.encode_all(tokenizer, data.train, cfg.train.max_length)
    test_enc, _ = D.encode_all(tokenizer, data.test, cfg.train.max_length)
    if dropped:
        log.warning("%d training examples longer than max_length=%d dropped", dropped, cfg.train.max_length)
    if not train_enc:
        raise InputError("no training examples left after encoding")
    if main_process:
        out.mkdir(parents=True, exist_ok=True)  # only now: refused input leaves nothing behind
    if debug:
        _print_debug_data(cfg, data, train_enc, tokenizer)

    explainer = build_explainer(cfg, data.vector_dim, device, dtype, tokenizer, markers, answer_tokens(cfg, train_enc))
    if debug:
        print(_format_example(explainer, train_enc[0], data.train[train_enc[0].index]))
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
    if debug:
        limit = min(limit, t.debug_steps)

    step, epoch, pos, resumed_from = 0, 0, 0, None
    tokens_seen, padded_seen = 0, 0
    if main_process:
        remove_partial_saves(ckpt_root)
    dist.barrier()
    if resume:
        found = complete_checkpoints(ckpt_root)
        if found:
            state = load_checkpoint(found[-1], explainer, optimizer)
            if state["config_hash"] != config_hash(cfg):
                log.warning("resuming %s made with another config (hash %s, now %s)", found[-1],
                            state["config_hash"], config_hash(cfg))
            step, epoch, pos, resumed_from = state["step"], state["epoch"], state["step_in_epoch"], str(found[-1])
            tokens_seen, padded_seen = state.get("tokens_seen", 0), state.get("padded_seen", 0)
            log.info("resumed from %s: step %d, epoch %d, step %d of the epoch", found[-1], step, epoch, pos)
        else:
            log.info("--resume: no complete checkpoint in %s, starting from step 0", ckpt_root)
    if main_process:
        _write_run_files(out, cfg, resolve_model(cfg.model_path, "model_path"), explainer)
    metrics = MetricsLog(out, step if resume else None, enabled=main_process)
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

    losses: list[float] = []
    last_eval: dict = {}
    tokens_at_start = tokens_seen

    def save(step: int) -> None:
        """Checkpoint where the loop stands: with the RNG states, enough to continue bit-for-bit."""
        rngs = dist.gather(_rng_state())  # collective: every process takes part
        if main_process:
            state = {"step": step, "epoch": epoch, "step_in_epoch": pos, "config_hash": config_hash(cfg),
                     "total_steps": total_steps, "tokens_seen": tokens_seen, "padded_seen": padded_seen}
            save_checkpoint(ckpt_root, step, explainer, optimizer, state, t.save_total_limit, rngs)

    pad = tokenizer.pad_token_id
    last_saved = step
    t_loop = time.perf_counter()
    try:
        while step < limit:
            plan = epoch_plan(epoch)
            if pos >= len(plan):
                epoch, pos = epoch + 1, 0
                continue
            micro = [[train_enc[i] for i in mb] for mb in plan[pos]]
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
            tokens_seen, padded_seen = tokens_seen + int(step_tokens), padded_seen + int(step_padded)
            if not math.isfinite(loss_value) or (debug and loss_value == 0.0):
                raise RuntimeError(f"loss is {loss_value} at step {step + 1}: stopping (check the data and the "
                                   "answer masking; an exactly-0 loss means nothing is being scored)")
            lr = lr_at(cfg, step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            grad_norm = (float(torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)) if t.max_grad_norm > 0
                         else float("nan"))
            optimizer.step()
            step, pos = step + 1, pos + 1
            losses.append(loss_value)
            metrics.write({"step": step, "epoch": epoch, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                           "tokens": tokens_seen, "padding_fraction": 1 - tokens_seen / max(1, padded_seen),
                           "elapsed_s": time.perf_counter() - t0, "micro_batches": len(micro),
                           "examples": [e.index for e in step_examples]}, "train")
            if debug and main_process:
                print(f"debug step {step}/{limit}: loss {loss_value:.4f}")
            elif main_process and (step % 10 == 0 or step == limit):
                rate = (tokens_seen - tokens_at_start) / (time.perf_counter() - t_loop)
                print(f"step {step}/{limit} epoch {epoch} loss {loss_value:.4f} lr {lr:.2e} ({rate:,.0f} tok/s)")
            if step % t.eval_steps == 0 and not debug and main_process:
                last_eval = _evaluate(explainer, test_enc, data.test, cfg, step, metrics)
            if step % t.save_steps == 0 or step == limit:
                save(step)
                last_saved = step
        if last_saved != step:
            save(step)
        if main_process:
            if debug:
                last_eval = _debug_eval(explainer, test_enc, data.test, cfg, step, metrics)
            elif step % t.eval_steps != 0:
                last_eval = _evaluate(explainer, test_enc, data.test, cfg, step, metrics)
            final = out / "final"
            tmp = out / f".tmp-final-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            write_weights(tmp, explainer)
            write_json_atomic(tmp / "state.json", {"step": step, "total_steps": total_steps,
                                                   "config_hash": config_hash(cfg)})
            _publish(tmp, final)
        dist.barrier()
    finally:
        metrics.close()
    summary = {"steps": step, "total_steps": total_steps, "first_loss": losses[0] if losses else None,
               "last_loss": losses[-1] if losses else None, "eval": last_eval, "output_dir": str(out),
               "final": str(out / "final"), "resumed_from": resumed_from,
               "padding_fraction": 1 - tokens_seen / max(1, padded_seen), "wall_s": time.perf_counter() - t0}
    if not main_process:
        return summary
    if debug:
        marker = debug_marker(cfg)
        write_json_atomic(marker, {"config_hash": config_hash(cfg), "steps": step, "losses": losses,
                                   "created": dt.datetime.now(dt.timezone.utc).isoformat()})
        print(f"debug run OK: {step} steps, losses {['%.4f' % x for x in losses]}; marker {marker}")
    write_json_atomic(out / "summary.json", summary)
    return summary


def _evaluate(explainer, test_enc, test_examples, cfg, step, metrics) -> dict:
    entry = {"step": step, "eval_loss": eval_loss(explainer, test_enc, cfg.test.batch_size)}
    gen, _ = eval_generation(explainer, test_examples, cfg, cfg.train.eval_samples)
    entry.update(_flatten(gen))
    metrics.write(entry, "eval")
    print(f"eval @ step {step}: loss {entry['eval_loss']:.4f}"
          + "".join(f", {k} {v:.3f}" for k, v in entry.items() if k.endswith("exact_match")))
    return entry


def _debug_eval(explainer, test_enc, test_examples, cfg, step, metrics) -> dict:
    entry = {"step": step, "eval_loss": eval_loss(explainer, test_enc[:8], cfg.test.batch_size)}
    gen, pairs = eval_generation(explainer, test_examples, cfg, 4)
    entry.update(_flatten(gen))
    metrics.write(entry, "eval")
    print(f"debug eval on {min(8, len(test_enc))} test examples: loss {entry['eval_loss']:.4f}")
    for ex, pred in pairs:
        print(f"  [{ex.question_type}] target {ex.target!r} <- generated {pred!r}")
    return entry


def _flatten(metrics_by_qtype: dict) -> dict:
    return {f"{q}/{k}": v for q, m in metrics_by_qtype.items() for k, v in m.items() if isinstance(v, (int, float))}


def _print_debug_data(cfg: TrainConfig, data: Data, train_enc: list[D.Encoded], tokenizer) -> None:
    for task, records in data.train_records.items():
        fields = list(type(records[0]).__struct_fields__)
        print(f"task {task}: {len(records)} training records from {E.dataset_dir(cfg, task)}; fields: {', '.join(fields)}")
    counts: dict[str, int] = {}
    for ex in data.train:
        counts[ex.question_type] = counts.get(ex.question_type, 0) + 1
    lengths = sorted(len(e.ids) for e in train_enc)
    print(f"samples: {len(data.train)} train examples ({', '.join(f'{k} {v}' for k, v in counts.items())}), "
          f"{len(data.test)} test examples, eval sets: {', '.join(f'{k} {len(v)}' for k, v in data.eval_sets.items()) or 'none'}")
    print(f"token lengths: min {lengths[0]}, median {lengths[len(lengths) // 2]}, max {lengths[-1]}")


def _write_run_files(out: Path, cfg: TrainConfig, model_dir: str, explainer: Explainer) -> None:
    from records.provenance import make_manifest

    write_json_atomic(out / "manifest.json", make_manifest(
        "train", cfg, model_dir, {task: str(E.dataset_dir(cfg, task)) for task in cfg.train.tasks}))
    write_json_atomic(out / "markers.json", explainer.markers)
