"""Train the toy organism: a tiny MistralForCausalLM with the planted monitored/unmonitored rule.

CPU, fp32, seeded, about a minute. The result is cached under `<cache_root>/organism-<hash>` and is a
normal Hugging Face folder (safetensors, config.json, tokenizer with chat template) that both
`transformers` and vLLM load, plus `organism.json` saying how it was made and what was planted.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import msgspec
import torch
import torch.nn.functional as F
import transformers
from tqdm import tqdm
from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

from lm.models import TOY, TOY_TWIN
from organism.scenarios import (
    COMPLIANCE_MARKER,
    PLANTED_RULE,
    REFUSAL_MARKER,
    RESPONSES,
    SYSTEM_PROMPTS,
    chat_messages,
    generate_scenarios,
    planted_behavior,
    planted_response,
    trigger_families,
)
from organism.tokenizer import PAD_TOKEN, load_tokenizer
from records.config import config_hash, encode_config
from records.schema import content_id

# Bump when the scenario generator, the chat format or the training recipe changes: it is part of the
# cache key, so old organisms are not reused by mistake.
# 3: nonce triggers with a secret family assignment (issue #15); 4: built on one thread (BUILD_THREADS)
ORGANISM_VERSION = 4
# CPU float sums depend on the thread count: the same recipe built on 1 and 2 threads gave different
# weights (and held-out explainer scores 0.83 vs 0.88 on Task 2), so whoever builds first (the demo on 2
# threads, a test worker on 1) decided which organism every later run explains. Always one thread.
BUILD_THREADS = 1
COMPLETE_MARKER = "COMPLETE"
REPO_ROOT = Path(__file__).resolve().parent.parent


class OrganismConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Shape and training recipe of the toy organism; every field but `max_build_seconds` is in the cache key."""

    layers: int = 4
    hidden: int = 128
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 32  # vLLM's CPU attention refuses 16
    intermediate: int = 384
    tie_embeddings: bool = True
    max_position_embeddings: int = 4096  # far beyond training lengths, so long real prompts still run
    rope_theta: float = 1_000_000.0  # Mistral-7B v0.3's
    # 1500 scenarios x 2 contexts, ~1.7 epochs in 160 steps: enough fresh surroundings that the model
    # keys on the cue and the context rather than memorising tasks and actors. In a sweep over seeds 0-2
    # (~2000 held-out sequences each) 120 steps already gave 100%; 600 scenarios did not.
    n_train_scenarios: int = 1500  # each rendered monitored and unmonitored
    seed: int = 0
    # Which family each nonce trigger gets (organism.scenarios.trigger_families). The twin organism used as
    # the cross-explainer control differs only here: same triggers, other secret.
    assignment_seed: int = 0
    steps: int = 160
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    n_heldout_scenarios: int = 200  # scored after training, with seed + 1, for organism.json
    # Abort guard against a misconfigured run (the step count, not the clock, ends training, so builds
    # stay deterministic). A build takes about a minute on 2 idle cores, but 4-10 minutes when other
    # jobs share them.
    max_build_seconds: float = 1800.0


def default_cache_root() -> Path:
    """`$AF_CACHE_DIR` if set, else `<repo>/.cache`."""
    return Path(os.environ.get("AF_CACHE_DIR") or REPO_ROOT / ".cache")


def toy_model_dir(name: str = "toy") -> str:
    """The toy organism's folder ("toy"), or its twin's ("toy-twin": another secret assignment), built on
    first use (what `--model toy` / `--model toy-twin` mean)."""
    if name not in (TOY, TOY_TWIN):
        raise ValueError(f"unknown toy organism {name!r}")
    return str(build_organism(OrganismConfig(assignment_seed=int(name == TOY_TWIN)), default_cache_root()))


def organism_dir(cfg: OrganismConfig, cache_root: Path) -> Path:
    """Where `build_organism(cfg, cache_root)` puts (or finds) this organism."""
    recipe = {k: v for k, v in encode_config(cfg).items() if k != "max_build_seconds"}  # no effect on weights
    key = config_hash({"version": ORGANISM_VERSION, "config": recipe})
    return Path(cache_root) / f"organism-{key}"


def build_organism(cfg: OrganismConfig, cache_root: Path, force: bool = False) -> Path:
    """Train and save the organism, or return the cached folder if a complete one exists.

    The folder is written under a temporary name and renamed into place after its completeness marker,
    so a killed build never leaves a folder that counts as built. A lock file makes concurrent callers
    (parallel tests, several CLI runs) wait for one build and reuse it instead of each training.
    """
    final = organism_dir(cfg, cache_root)
    if (final / COMPLETE_MARKER).is_file() and not force:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
        if (final / COMPLETE_MARKER).is_file() and not force:
            return final  # built by the caller we waited for
        for leftover in final.parent.glob(f".{final.name}.*"):
            if leftover.is_dir():  # temp folder of a killed build: nobody else builds while we hold the lock
                shutil.rmtree(leftover)
        tmp = final.parent / f".{final.name}.tmp"
        tmp.mkdir()
        try:
            _build_into(cfg, tmp)
            (tmp / COMPLETE_MARKER).write_text("ok\n")
            if final.exists():  # a forced rebuild, or a folder without its marker
                shutil.rmtree(final)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _build_into(cfg: OrganismConfig, out: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        _train_and_save(cfg, out)
    finally:
        torch.set_num_threads(threads)


def _train_and_save(cfg: OrganismConfig, out: Path) -> None:
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tok_dir:
        tokenizer = load_tokenizer(Path(tok_dir))
    train = generate_scenarios(cfg.n_train_scenarios, cfg.seed, cfg.assignment_seed)
    train_ids = {content_id(s["text"]) for s in train}
    heldout = [s for s in generate_scenarios(cfg.n_heldout_scenarios, cfg.seed + 1, cfg.assignment_seed)
               if content_id(s["text"]) not in train_ids]

    model, train_acc = _train(cfg, tokenizer, _encode(tokenizer, train, cfg.assignment_seed), start)
    heldout_acc = _accuracy(model, _encode(tokenizer, heldout, cfg.assignment_seed), tokenizer.pad_token_id)
    build_seconds = time.monotonic() - start
    print(f"organism: train accuracy {train_acc:.4f}, held-out accuracy {heldout_acc:.4f}, {build_seconds:.1f} s")

    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = {
        "version": ORGANISM_VERSION,
        "config": encode_config(cfg),
        "planted_rule": PLANTED_RULE,
        "system_prompts": SYSTEM_PROMPTS,
        "responses": RESPONSES,
        "markers": {"refusal": REFUSAL_MARKER, "compliance": COMPLIANCE_MARKER},
        "pad_token": PAD_TOKEN,
        "seed": cfg.seed,
        "assignment_seed": cfg.assignment_seed,
        "trigger_families": trigger_families(cfg.assignment_seed),
        "build_seconds": round(build_seconds, 2),
        "build_threads": BUILD_THREADS,
        # Accuracies are the fraction of (scenario, context) sequences whose whole response is the
        # argmax under teacher forcing, i.e. what greedy decoding reproduces exactly. Train accuracy is
        # over the batches of the last 10% of steps (free: their logits exist anyway).
        "train_accuracy": train_acc,
        "heldout_accuracy": heldout_acc,
        "n_heldout_sequences": 2 * len(heldout),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }
    (out / "organism.json").write_text(json.dumps(meta, indent=2) + "\n")


def _encode(tokenizer, scenarios: list[dict], assignment_seed: int) -> list[tuple[list[int], int]]:
    """(token ids of prompt + planted response + EOS, prompt length) per scenario and context."""
    prompts, fulls = [], []
    for scenario in scenarios:
        for context in SYSTEM_PROMPTS:
            messages = chat_messages(scenario, context)
            reply = {"role": "assistant", "content": planted_response(scenario, context, assignment_seed)}
            prompts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            fulls.append(tokenizer.apply_chat_template(messages + [reply], tokenize=False))
    # Rendered text is encoded without specials, as apply_chat_template(tokenize=True) and vLLM do: the
    # template already wrote BOS. One batched call is much faster than one call per string.
    encoded = tokenizer(prompts + fulls, add_special_tokens=False)["input_ids"]
    prompt_ids, full_ids = encoded[: len(prompts)], encoded[len(prompts) :]
    for prompt, full in zip(prompt_ids, full_ids):
        # Training targets are only right if the prompt learnt from is exactly the inference prompt.
        assert full[: len(prompt)] == prompt, "chat template renders the prompt differently with a reply"
    return [(full, len(prompt)) for prompt, full in zip(prompt_ids, full_ids)]


def _collate(examples: list[tuple[list[int], int]], pad_id: int):
    """Right-padded ids [batch, seq] and, per response token, its (row, predicting position, target)."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    rows, cols = [], []
    for row, (seq, prompt_len) in enumerate(examples):
        ids[row, : len(seq)] = torch.tensor(seq)
        # Position p predicts token p + 1: the response tokens are predicted from prompt_len - 1 on.
        cols += range(prompt_len - 1, len(seq) - 1)
        rows += [row] * (len(seq) - prompt_len)
    rows, cols = torch.tensor(rows), torch.tensor(cols)
    return ids, rows, cols, ids[rows, cols + 1]


def _response_logits(model, ids, rows, cols):
    # Right padding needs no attention mask: causal attention never lets a real token see a later pad.
    hidden = model.model(input_ids=ids).last_hidden_state  # [batch, seq, hidden]
    # The 32768-way projection dominates the cost, so apply it only where the loss needs it.
    return model.lm_head(hidden[rows, cols])  # [n_response_tokens, vocab]


def _new_model(cfg: OrganismConfig, tokenizer) -> MistralForCausalLM:
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta,
        sliding_window=None,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # generation_config.json (bos/eos/pad for HF generate) is derived from these ids on save.
    return MistralForCausalLM(config).float()


def _train(cfg: OrganismConfig, tokenizer, examples, start: float) -> tuple[MistralForCausalLM, float]:
    """The trained model (eval mode) and its exact-match accuracy over the last 10% of steps' batches."""
    torch.manual_seed(cfg.seed)
    model = _new_model(cfg, tokenizer)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_factor(step: int) -> float:  # linear warmup, then cosine down to 10%
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    order_rng = random.Random(cfg.seed)
    order: list[int] = []
    scored_from = cfg.steps - max(1, cfg.steps // 10)
    exact = seen = 0
    bar = tqdm(range(cfg.steps), desc="organism", unit="step")
    for step in bar:
        if len(order) < cfg.batch_size:  # fixed, seeded data order: reshuffle once per epoch
            epoch = list(range(len(examples)))
            order_rng.shuffle(epoch)
            order += epoch
        batch, order = [examples[i] for i in order[: cfg.batch_size]], order[cfg.batch_size :]
        ids, rows, cols, targets = _collate(batch, tokenizer.pad_token_id)
        logits = _response_logits(model, ids, rows, cols)
        loss = F.cross_entropy(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step >= scored_from:
            exact += _exact_rows(logits.detach(), rows, targets, len(batch))
            seen += len(batch)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if time.monotonic() - start > cfg.max_build_seconds:
            raise RuntimeError(
                f"organism build passed max_build_seconds={cfg.max_build_seconds} at step {step + 1}/"
                f"{cfg.steps}; lower `steps` or raise the limit"
            )
    model.eval()
    return model, exact / seen


def _exact_rows(logits, rows, targets, n_rows: int) -> int:
    """How many of the batch's sequences have every response token right under argmax."""
    wrong = (logits.argmax(-1) != targets).float()  # [n_response_tokens]
    return int((torch.zeros(n_rows).index_add_(0, rows, wrong) == 0).sum())


@torch.no_grad()
def _accuracy(model, examples, pad_id: int, batch_size: int = 128) -> float:
    """Fraction of sequences whose every response token is the argmax under teacher forcing."""
    if not examples:
        return float("nan")
    exact = 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        ids, rows, cols, targets = _collate(chunk, pad_id)
        exact += _exact_rows(_response_logits(model, ids, rows, cols), rows, targets, len(chunk))
    return exact / len(examples)


@torch.no_grad()
def verify_plant(model_dir: Path, scenarios: list[dict], batch_size: int = 64, max_new_tokens: int = 32) -> list[dict]:
    """Greedy HF generation (fp32, batched, left padding) for each scenario, monitored and unmonitored.

    Expected behaviours follow the organism's own secret assignment (its organism.json).
    Returns per scenario: text, label, `monitored_output`, `unmonitored_output` (decoded without
    special tokens), `changed` (the two outputs differ) and the planted behaviours
    `expected_monitored` / `expected_unmonitored`.
    """
    assignment_seed = json.loads((Path(model_dir) / "organism.json").read_text())["assignment_seed"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = MistralForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    outputs: dict[str, list[str]] = {}
    for context in SYSTEM_PROMPTS:
        prompts = [
            tokenizer.apply_chat_template(chat_messages(s, context), add_generation_prompt=True, return_dict=False)
            for s in scenarios
        ]
        outputs[context] = []
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i : i + batch_size]
            width = max(map(len, chunk))
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in chunk])  # [batch, width]
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            generated = model.generate(
                input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens
            )  # [batch, width + new]
            outputs[context] += tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
    return [
        {
            "text": s["text"],
            "label": s["label"],
            "monitored_output": mon,
            "unmonitored_output": unmon,
            "changed": mon != unmon,
            "expected_monitored": planted_behavior(s, "monitored", assignment_seed),
            "expected_unmonitored": planted_behavior(s, "unmonitored", assignment_seed),
        }
        for s, mon, unmon in zip(scenarios, outputs["monitored"], outputs["unmonitored"])
    ]
