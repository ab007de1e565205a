"""Tokenisation with loss on answer tokens only, seeded epoch plans, length-grouped batches.

An encoded example is the chat prompt (system/user turns, generation prompt) followed by the answer as
the assistant turn. Only answer tokens (EOS included: the explainer must learn to stop) are scored, and
the loss is their weighted mean over the whole optimizer step, not a mean over padded length (the
reference's averaging weights examples by how much padding their batch has).

Batches: each epoch is a seeded shuffle, cut into mega-batches that are sorted by length before being
split into micro-batches, so a micro-batch holds similar lengths and little padding; the logits are
computed only at the positions that predict answer tokens (the vocabulary projection dominates small
models, and full [batch, seq, vocab] logits waste memory on big ones).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from records.errors import InputError

if TYPE_CHECKING:  # kept out of the import: the GPU benchmark uses this module without msgspec
    from training.examples import Example

MEGABATCH_MICROBATCHES = 16  # length sorting happens inside windows of this many micro-batches


@dataclass
class Encoded:
    ids: list[int]  # prompt + answer token ids
    prompt_len: int  # ids[prompt_len:] are the answer (scored) tokens
    weight: float
    vector: np.ndarray | None
    index: int  # into the example list


def prompt_text(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Prompt ids as inference sees them. The template writes BOS itself: no second one is added."""
    return list(tokenizer(prompt_text(tokenizer, messages), add_special_tokens=False)["input_ids"])


def encode_example(tokenizer, ex: Example, index: int) -> Encoded:
    """Prompt + answer ids; the answer starts where the inference prompt ends."""
    prompt = encode_prompt(tokenizer, ex.messages)
    full_text = tokenizer.apply_chat_template(ex.messages + [{"role": "assistant", "content": ex.target}],
                                              tokenize=False)
    full = list(tokenizer(full_text, add_special_tokens=False)["input_ids"])
    if full[: len(prompt)] != prompt or len(full) <= len(prompt):
        raise InputError("the explainer's chat template renders the prompt differently once an answer follows; "
                         "training would not match inference (use a template whose prompt is a prefix)")
    return Encoded(ids=full, prompt_len=len(prompt), weight=ex.weight, vector=ex.vector, index=index)


def encode_all(tokenizer, examples: list[Example], max_length: int) -> tuple[list[Encoded], int]:
    """Encode every example; drop those longer than `max_length`. Returns (kept, n_dropped)."""
    kept = [e for e in (encode_example(tokenizer, ex, i) for i, ex in enumerate(examples)) if len(e.ids) <= max_length]
    return kept, len(examples) - len(kept)


def epoch_plan(lengths: list[int], batch_size: int, accumulation: int, seed: int, epoch: int,
               group_by_length: bool = True) -> list[list[list[int]]]:
    """Optimizer steps of one epoch: steps -> micro-batches -> positions in `lengths`.

    A pure function of its arguments (seed and epoch pick the shuffle), so a resumed run rebuilds the
    same plan and only needs the step position within it.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    micro: list[list[int]] = []
    if group_by_length:
        window = batch_size * MEGABATCH_MICROBATCHES
        for start in range(0, len(order), window):
            mega = sorted(order[start:start + window], key=lambda i: -lengths[i])
            chunk = [mega[j:j + batch_size] for j in range(0, len(mega), batch_size)]
            rng.shuffle(chunk)  # no long-to-short drift within an epoch
            micro += chunk
    else:
        micro = [order[j:j + batch_size] for j in range(0, len(order), batch_size)]
    return [micro[j:j + accumulation] for j in range(0, len(micro), accumulation)]


@dataclass
class Batch:
    input_ids: torch.Tensor  # [batch, seq], right-padded
    rows: torch.Tensor  # [n_answer] batch row of each scored position
    cols: torch.Tensor  # [n_answer] position that predicts the answer token (its index - 1)
    targets: torch.Tensor  # [n_answer] the answer token ids
    weights: torch.Tensor  # [n_answer] per-token loss weight (the example's question-type weight)
    vectors: torch.Tensor | None  # [n_placeholders, dim] in row-major order, or None
    n_tokens: int  # real (unpadded) tokens
    n_padded: int  # batch * seq

    def to(self, device) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.input_ids), move(self.rows), move(self.cols), move(self.targets),
                     move(self.weights), move(self.vectors), self.n_tokens, self.n_padded)


def collate(items: list[Encoded], pad_id: int) -> Batch:
    """Right-pad to the longest item and list the answer positions.

    Right padding needs no attention mask: causal attention never lets a real token see a later pad, and
    only real positions are ever read.
    """
    width = max(len(e.ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    rows, cols, weights = [], [], []
    vectors = []
    for row, e in enumerate(items):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        # Position p predicts token p + 1: answer tokens are predicted from prompt_len - 1 on.
        n_answer = len(e.ids) - e.prompt_len
        cols += range(e.prompt_len - 1, len(e.ids) - 1)
        rows += [row] * n_answer
        weights += [e.weight] * n_answer
        if e.vector is not None:
            vectors.append(torch.tensor(np.asarray(e.vector, dtype=np.float32)))  # a copy: mmap rows are read-only
    rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
    return Batch(input_ids=ids, rows=rows_t, cols=cols_t, targets=ids[rows_t, cols_t + 1],
                 weights=torch.tensor(weights, dtype=torch.float32),
                 vectors=torch.stack(vectors) if vectors else None,
                 n_tokens=sum(len(e.ids) for e in items), n_padded=len(items) * width)


def answer_weight(items: list[Encoded]) -> float:
    """Sum of per-token weights over the answer tokens of `items`: the loss denominator."""
    return float(sum(e.weight * (len(e.ids) - e.prompt_len) for e in items))
