"""Continuous tokens: a vector takes the place of a placeholder token's embedding.

The prompt holds `<begin><rep><end>`; the explainer embeds it as usual, then the embedding at each
`<rep>` position is replaced by the example's vector, projected by a trainable bias-free linear map when
the vector's size differs from the explainer's hidden size (or when `use_embed_proj` asks for one).
The markers are reserved tokens the tokenizer never produces from text (Mistral v0.3's `[control_K]`).
"""

from __future__ import annotations

import torch
from torch import nn

from lm.tokens import reserved_control_tokens
from records.errors import InputError

MARKER_KEYS = ("begin_continuous", "continuous_rep", "end_continuous")


def resolve_markers(tokenizer, configured: dict[str, str]) -> dict[str, str]:
    """Token strings for begin / rep / end: as configured, or the first unused reserved control tokens.

    Each must encode to exactly one id, else the placeholder could not be found after tokenisation.
    """
    chosen = {k: configured.get(k, "") for k in MARKER_KEYS}
    if not all(chosen.values()):
        picks = reserved_control_tokens(tokenizer, len(MARKER_KEYS))
        chosen = {k: chosen[k] or tok for k, tok in zip(MARKER_KEYS, picks)}
    if len({chosen[k] for k in MARKER_KEYS}) != len(MARKER_KEYS):
        raise InputError(f"continuous_tokens must be three different tokens, got {chosen}")
    for key in MARKER_KEYS:
        ids = tokenizer.encode(chosen[key], add_special_tokens=False)
        if len(ids) != 1:
            raise InputError(f"continuous_tokens.{key} {chosen[key]!r} encodes to {len(ids)} ids {ids}, not one; "
                             "pick a reserved token of the explainer's tokenizer")
    return chosen


def prompt_markers(markers: dict[str, str]) -> dict[str, str]:
    """The slot values prompts use: {begin_continuous}{feature}{end_continuous}."""
    return {"begin_continuous": markers["begin_continuous"], "feature": markers["continuous_rep"],
            "end_continuous": markers["end_continuous"]}


class ContinuousEmbedder(nn.Module):
    """Embeds token ids and writes vectors (projected if needed) at the placeholder positions."""

    def __init__(self, rep_id: int, vector_dim: int, hidden: int, use_proj: bool):
        super().__init__()
        self.rep_id = rep_id
        self.vector_dim = vector_dim
        # W_vector -> W_explainer, as the reference's embed_projs (one map: our vectors share a space)
        self.projector = nn.Linear(vector_dim, hidden, bias=False) if use_proj or vector_dim != hidden else None

    def forward(self, embed: nn.Module, input_ids: torch.Tensor, vectors: torch.Tensor | None) -> torch.Tensor:
        """Embeddings [batch, seq, hidden]; `vectors` [n_placeholders, dim] in row-major placeholder order."""
        embeds = embed(input_ids)  # [batch, seq, hidden]
        mask = input_ids == self.rep_id  # [batch, seq]
        n = int(mask.sum())
        if vectors is None or n == 0:
            if n:
                raise ValueError(f"{n} placeholder token(s) in the batch but no vectors")
            return embeds
        if vectors.shape[0] != n:
            raise ValueError(f"{n} placeholder token(s) but {vectors.shape[0]} vector(s)")
        if self.projector is not None:
            values = self.projector(vectors.to(self.projector.weight.device, self.projector.weight.dtype))
        else:
            values = vectors
        # masked_scatter fills the masked rows in order and is differentiable w.r.t. `values`
        return embeds.masked_scatter(mask.unsqueeze(-1), values.to(embeds.dtype))
