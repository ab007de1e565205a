"""Token-budget packing: examples concatenated into fixed-width rows, attention confined to each example.

Row batching (training/data.py) pads each micro-batch of `batch_size` examples to its longest one; at
150-600 tokens an 8-example batch is small enough that a 7B step is launch-bound. Packing instead fills
rows of one fixed width: every example keeps its own position ids (0, 1, ... restarting at each example)
and attends only to itself, so its logits are the ones it would get alone (tests/test_packing.py on
CPU, `benchmarks/bench_training.py --check` with flex attention on the GPU), and only answer positions
reach the vocabulary projection, as in row batching.

Same recipe as row batching: a step holds `batch_size x gradient_accumulation` examples on average. The
row width is that many examples' mean token count divided over `k` rows per step (k the fewest rows of at
most `pack_tokens` tokens, a multiple of the data-parallel world size so each process gets whole rows), so
the learning rate keeps its meaning; the loss stays the step's weighted mean over answer tokens. One
width for the whole run keeps shapes static: flex attention and compiled layers compile once.

Attention: with `flex_attention` a block-sparse document mask (flex's BlockMask: blocks outside the
examples are skipped, nothing [seq, seq] is materialised); with eager/SDPA (CPU, tests) a dense additive
[rows, 1, seq, seq] mask, fine at toy sizes only.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch

from training import data as D

ROW_MULTIPLE = 128  # row width granularity: flex attention's block size
WINDOW_ROWS = 32  # first-fit packing looks at this many rows' worth of shuffled examples at once


@dataclass(frozen=True)
class Layout:
    width: int  # tokens per packed row (every row is padded to it)
    rows_per_step: int  # rows per optimizer step (a multiple of the world size)
    step_examples: int  # batch_size x gradient_accumulation: the row-batching recipe being matched


def layout(lengths: list[int], batch_size: int, accumulation: int, pack_tokens: int, world: int = 1) -> Layout:
    """Row width and rows per step that give `batch_size x accumulation` examples per step on average."""
    step_examples = batch_size * accumulation
    step_tokens = step_examples * sum(lengths) / len(lengths)
    rows = world * math.ceil(step_tokens / (world * pack_tokens))
    width = ROW_MULTIPLE * math.ceil(max(step_tokens / rows, max(lengths)) / ROW_MULTIPLE)
    # the longest example may have widened the rows: fewer of them then keep the average
    rows = world * max(1, round(step_tokens / (world * width)))
    return Layout(width=width, rows_per_step=rows, step_examples=step_examples)


def epoch_plan(lengths: list[int], lay: Layout, seed: int, epoch: int) -> list[list[list[int]]]:
    """Optimizer steps of one epoch: steps -> packed rows -> positions in `lengths`.

    A seeded shuffle, first-fit into rows of `lay.width` tokens within windows of WINDOW_ROWS rows (rows
    stay mixed in length: no sorting), rows shuffled again and grouped `rows_per_step` to a step. A pure
    function of its arguments, like data.epoch_plan, so a resumed run rebuilds the same plan.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    per_window = max(1, WINDOW_ROWS * lay.width * len(lengths) // sum(lengths))
    rows: list[list[int]] = []
    for start in range(0, len(order), per_window):
        window: list[list[int]] = []
        room: list[int] = []
        for i in order[start:start + per_window]:
            fit = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
            if fit is None:
                window.append([])
                room.append(lay.width)
                fit = len(window) - 1
            window[fit].append(i)
            room[fit] -= lengths[i]
        rows += window
    rng.shuffle(rows)
    return [rows[j:j + lay.rows_per_step] for j in range(0, len(rows), lay.rows_per_step)]


@dataclass
class PackedBatch(D.Batch):
    position_ids: torch.Tensor  # [rows, width] restarting at 0 for each example (and for the padding tail)
    document_ids: torch.Tensor  # [rows, width] example number within its row; the padding tail is one more

    def to(self, device) -> PackedBatch:
        b = D.Batch.to(self, device)
        return PackedBatch(b.input_ids, b.rows, b.cols, b.targets, b.weights, b.vectors, b.n_tokens, b.n_padded,
                           self.position_ids.to(device, non_blocking=True),
                           self.document_ids.to(device, non_blocking=True))


def collate(items: list[D.Encoded], pad_id: int, width: int) -> PackedBatch:
    """One packed row [1, width]: the items back to back, then padding; the answer positions listed."""
    ids = torch.full((1, width), pad_id, dtype=torch.long)
    pos = torch.zeros((1, width), dtype=torch.long)
    doc = torch.full((1, width), len(items), dtype=torch.long)
    cols, weights, vectors = [], [], []
    offset = 0
    for n, e in enumerate(items):
        length = len(e.ids)
        if offset + length > width:
            raise ValueError(f"packed row overflows: {offset + length} tokens > width {width}")
        ids[0, offset:offset + length] = torch.tensor(e.ids)
        pos[0, offset:offset + length] = torch.arange(length)
        doc[0, offset:offset + length] = n
        # Position p predicts token p + 1: answer tokens are predicted from prompt_len - 1 on.
        cols += range(offset + e.prompt_len - 1, offset + length - 1)
        weights += [e.weight] * (length - e.prompt_len)
        if e.vector is not None:  # placeholder order in the row = item order
            vectors.append(torch.tensor(np.asarray(e.vector, dtype=np.float32)))
        offset += length
    pos[0, offset:] = torch.arange(width - offset)
    rows_t, cols_t = torch.zeros(len(cols), dtype=torch.long), torch.tensor(cols)
    return PackedBatch(input_ids=ids, rows=rows_t, cols=cols_t, targets=ids[rows_t, cols_t + 1],
                       weights=torch.tensor(weights, dtype=torch.float32),
                       vectors=torch.stack(vectors) if vectors else None, n_tokens=offset, n_padded=width,
                       position_ids=pos, document_ids=doc)


def document_mask(document_ids: torch.Tensor, attn_implementation: str, dtype: torch.dtype):
    """Causal attention within each example of a packed row.

    flex_attention: a BlockMask (block-sparse); otherwise a dense additive mask [rows, 1, seq, seq].
    """
    rows, seq = document_ids.shape
    if attn_implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        def same_example_causal(b, h, q, kv):
            return (document_ids[b, q] == document_ids[b, kv]) & (q >= kv)

        return create_block_mask(same_example_causal, rows, None, seq, seq, device=document_ids.device)
    causal = torch.ones(seq, seq, dtype=torch.bool, device=document_ids.device).tril()
    allowed = (document_ids[:, :, None] == document_ids[:, None, :]) & causal  # [rows, seq, seq]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=document_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def decoder_kwargs(batch: D.Batch, attn_implementation: str, dtype: torch.dtype) -> dict:
    """What the decoder needs besides the embeddings: nothing for a padded batch; position ids and the
    document mask for a packed one."""
    if not isinstance(batch, PackedBatch):
        return {}
    return {"position_ids": batch.position_ids,
            "attention_mask": document_mask(batch.document_ids, attn_implementation, dtype)}
