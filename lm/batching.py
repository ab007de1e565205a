"""Left-padded batches of token-id prompts, the one layout every generating or measuring stage feeds a
causal LM: generation continues from the right edge, so every row's last real token is at -1."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else EOS: pads are masked out, so any id works, and EOS always exists."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int,
             width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both LongTensor [batch, width]; width defaults to the longest prompt
    (a fixed width lets batches of one run share a shape)."""
    width = max(len(p) for p in prompts) if width is None else width
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        if len(p):
            ids[row, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[row, width - len(p):] = 1
    return ids, mask


def token_budget_batches(order: Sequence[int], lengths: Sequence[int], batch_size: int, batch_tokens: int = 0,
                         extra: int = 0) -> list[list[int]]:
    """`order` cut into consecutive batches of at most `batch_size` positions and, when `batch_tokens` > 0,
    at most that many padded tokens (rows x (widest length + `extra`), e.g. the new tokens a generation
    adds); a position longer than the budget goes alone. A fixed row count that suits short prompts
    exhausts memory on long ones (few-shot prompts are k times longer); the budget keeps both."""
    batches: list[list[int]] = []
    rows: list[int] = []
    widest = 0
    for i in order:
        width = max(widest, lengths[i] + extra)
        if rows and (len(rows) == batch_size or (batch_tokens and (len(rows) + 1) * width > batch_tokens)):
            batches.append(rows)
            rows, width = [], lengths[i] + extra
        rows.append(i)
        widest = width
    if rows:
        batches.append(rows)
    return batches
