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
