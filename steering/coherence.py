"""Coherence before behaviour: is a steered output still language, or has steering broken the model?

A large push along any direction turns outputs into repetition or noise ("sembsembsemb..."), which a
behaviour labeller files under "other" and a change-rate table would count as a behaviour change. Every
steered output gets three checks; failing any one makes it `degenerate`, an outcome of its own:
  repeated   share of its token n-grams that repeat an earlier n-gram of the same output
  compression  zlib-compressed size / raw size of its text (only for texts of >= MIN_COMPRESS_BYTES:
             short texts do not compress at all, whatever they say)
  loss       median per-token loss of the output under the UNSTEERED model given the prompt (the median,
             so one surprising first token of a coherent change of behaviour does not count)
"""

from __future__ import annotations

import zlib
from typing import Sequence

import torch

from lm.batching import left_pad
from records.schema import CoherenceCheck
from steering.config import CoherenceConfig

MIN_COMPRESS_BYTES = 64


def repeated_ngram_share(ids: Sequence[int], n: int) -> float:
    """Share of the n-grams of `ids` already seen earlier in `ids` (0 when it has no n-gram)."""
    grams = [tuple(ids[k:k + n]) for k in range(len(ids) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def compression_ratio(text: str) -> float | None:
    """zlib size / UTF-8 size; None for texts too short to judge."""
    raw = text.encode("utf-8")
    return len(zlib.compress(raw, 9)) / len(raw) if len(raw) >= MIN_COMPRESS_BYTES else None


@torch.inference_mode()
def median_token_loss(model, prompts: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]], pad_id: int,
                      batch_size: int = 16) -> list[float | None]:
    """Per row, the median over output tokens of -log p(token | prompt, earlier output), unsteered; None
    for an empty output. The model must carry no steering hooks (plain HF forward)."""
    device = next(model.parameters()).device
    out: list[float | None] = []
    for start in range(0, len(prompts), batch_size):
        outs = [list(o) for o in outputs[start:start + batch_size]]
        chunk = [list(p) + o for p, o in zip(prompts[start:start + batch_size], outs)]
        keep = max(map(len, outs)) + 1
        if keep == 1:
            out += [None] * len(outs)
            continue
        ids, mask = left_pad(chunk, pad_id)  # [batch, width]; every output ends at the right edge
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False,
                       logits_to_keep=keep).logits.float()  # [B, keep, V]: the last `keep` positions
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # position t predicts token t+1
        target = ids[:, -(keep - 1):].to(device)  # [B, keep-1]
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        out += [float(nll[b, -len(o):].median()) if o else None for b, o in enumerate(outs)]
    return out


def check(ids: Sequence[int], text: str, loss: float | None, cfg: CoherenceConfig) -> CoherenceCheck:
    """The three measures and the verdict, with the reasons that fired."""
    rep = repeated_ngram_share(ids, cfg.ngram)
    comp = compression_ratio(text)
    reasons = []
    if rep > cfg.max_repeated:
        reasons.append("repeated")
    if comp is not None and comp < cfg.min_compression:
        reasons.append("compression")
    if loss is not None and loss > cfg.max_median_loss:
        reasons.append("loss")
    return CoherenceCheck(repeated_ngrams=rep, compression_ratio=comp, median_loss=loss,
                          degenerate=bool(reasons), reasons=reasons)
