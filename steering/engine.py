"""Batched greedy generation with per-row steering: the fast engine and the HF `generate` reference.

Fast engine (`FastSteeredGenerator`), one batch = rows of (prompt, per-layer coefficients):
  - a static KV cache of our own (a few tensors, updated in place) sized to the batch's longest prompt +
    max_new_tokens, rounded up so consecutive batches reuse it;
  - prompts shared by several rows (every arm of a scenario) are prefilled ONCE and their cache copied to
    each row, whenever the position policy leaves the shared part unsteered (`last`: all but the last
    prompt token, which then runs as the first decode step; `generated`: the whole prompt); `all` prefills
    each row with its own steering. Prefill is chunked by rows to bound activation memory;
  - each decode step is one captured CUDA graph on a GPU (per attended-length bucket of 64 positions, so
    attention reads the part of the cache in use, not its whole length), replayed with no Python in the
    loop; on CPU the same step runs eagerly;
  - decode attention folds the query heads of a KV group into the query length, so grouped-query
    attention reads the cache once instead of through `repeat_kv`'s copy (HF's SDPA path with a padding
    mask copies the whole cache 4x per step on Mistral-7B).
Greedy: argmax per step, EOS stops a row (its later tokens are pad and dropped), `force_length` ignores
EOS (benchmarks).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from lm.batching import left_pad
from lm.hooks import SteeringState, prompt_position_mask, steering

log = logging.getLogger(__name__)

ATTN_NAME = "steer_gqa_sdpa"
KV_BUCKET = 64  # attended-length granularity of the decode graphs
LEN_BUCKET = 128  # cache-length granularity (batches with similar prompts share one cache)


class Row(NamedTuple):
    prompt: list[int]
    group: int  # rows with the same group share the prompt (prefilled once when the policy allows)
    coef: dict[int, float]  # layer -> multiplier of the unit direction (missing = 0)


class Generated(NamedTuple):
    token_ids: list[int]  # EOS and anything after it removed
    finish_reason: str  # "stop" | "length"


# ------------------------------------------------------------------------------------------ attention

def _gqa_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """SDPA that handles single-position queries of grouped-query attention without repeating K/V."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    if q_len == 1 and groups > 1:
        folded = query.reshape(batch, kv_heads, groups, dim)  # head h = kv * groups + j
        out = F.scaled_dot_product_attention(folded, key, value, attn_mask=attention_mask, scale=scaling)
        return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, _gqa_sdpa)


@contextlib.contextmanager
def _attention_impl(model, name: str):
    config = model.config
    old = config._attn_implementation
    config._attn_implementation = name
    for module in model.modules():  # sub-configs (text_config) read the same attribute
        sub = getattr(module, "config", None)
        if sub is not None and sub is not config and hasattr(sub, "_attn_implementation"):
            sub._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = old
        for module in model.modules():
            sub = getattr(module, "config", None)
            if sub is not None and sub is not config and hasattr(sub, "_attn_implementation"):
                sub._attn_implementation = old


# ------------------------------------------------------------------------------------------ cache

class StaticKV:
    """Per-layer K/V tensors [B, kv_heads, L, head_dim], written at `write_pos` (a device tensor).

    Duck-types the one method Mistral-style attention calls, `update(k, v, layer_idx)`, and returns the
    first `kv_len` positions (a Python int fixed per captured graph).
    """

    def __init__(self, n_layers: int, batch: int, kv_heads: int, length: int, head_dim: int, dtype, device):
        shape = (batch, kv_heads, length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.write_pos = torch.zeros(1, dtype=torch.long, device=device)
        self._arange = torch.arange(length, device=device)
        self.length = length
        self.kv_len = length

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        idx = self.write_pos + self._arange[: key_states.shape[2]]
        self.keys[layer_idx].index_copy_(2, idx, key_states)
        self.values[layer_idx].index_copy_(2, idx, value_states)
        return self.keys[layer_idx][:, :, : self.kv_len], self.values[layer_idx][:, :, : self.kv_len]

    def get_seq_length(self, layer_idx: int = 0) -> int:  # only called when position_ids are missing
        return 0


def _model_shape(model) -> tuple[int, int, int, torch.dtype, torch.device]:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    param = next(model.parameters())
    return config.num_hidden_layers, kv_heads, head_dim, param.dtype, param.device


def _round_up(n: int, k: int) -> int:
    return int(math.ceil(n / k) * k)


# ------------------------------------------------------------------------------------------ fast engine

class _Context:
    """Static buffers (and captured graphs) for one (batch, cache length) shape."""

    def __init__(self, model, batch: int, length: int, max_new: int):
        n_layers, kv_heads, head_dim, dtype, device = _model_shape(model)
        self.batch, self.length, self.max_new = batch, length, max_new
        self.cache = StaticKV(n_layers, batch, kv_heads, length, head_dim, dtype, device)
        self.tok = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.valid = torch.zeros(batch, length, dtype=torch.bool, device=device)
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.out = torch.zeros(batch, max_new, dtype=torch.long, device=device)
        self.step_idx = torch.zeros(1, dtype=torch.long, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}


class FastSteeredGenerator:
    """Greedy generation for many rows at once with per-row steering; see the module docstring."""

    def __init__(self, model, direction: torch.Tensor, layers: Sequence[int], policy: str, eos_ids: Sequence[int],
                 pad_id: int, cuda_graphs: bool | None = None, prefill_tokens: int = 16384):
        _register_attention()
        self.model = model
        self.layers = list(layers)
        self.policy = policy
        self.device = next(model.parameters()).device
        self.eos = torch.tensor(sorted(set(eos_ids)) or [-1], device=self.device)
        self.pad_id = int(pad_id)
        self.use_graphs = (self.device.type == "cuda") if cuda_graphs is None else bool(cuda_graphs)
        if self.use_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs needs the model on a CUDA device")
        self.prefill_tokens = prefill_tokens
        self.direction = direction.detach().clone()  # set_direction writes into it: never alias the caller's
        self._ctx: _Context | None = None
        self._state: SteeringState | None = None
        self._pool = None  # one CUDA graph memory pool per context, shared by its graphs
        self.stats = {"graphs_captured": 0, "contexts": 0, "prefill_rows": 0, "decode_steps": 0}

    # -------------------------------------------------------------- public

    @torch.inference_mode()
    def generate(self, rows: Sequence[Row], max_new_tokens: int, force_length: bool = False,
                 pad_to: int | None = None) -> list[Generated]:
        """Greedy outputs for `rows`, in order.

        `pad_to` pads the batch with unsteered copies of row 0 (dropped), so every batch of a run has one
        shape: captured graphs are reused, and a resumed run computes exactly what a clean run did.
        """
        if not rows:
            return []
        n = len(rows)
        width = max(len(r.prompt) for r in rows)
        length = _round_up(width + max_new_tokens, LEN_BUCKET)
        batch = max(n, pad_to or n)
        rows = list(rows) + [rows[0]._replace(coef={})] * (batch - n)  # pad rows: unsteered copies, dropped
        ctx = self._context(batch, length, max_new_tokens)
        self._force_t.fill_(force_length)
        with _attention_impl(self.model, ATTN_NAME), steering(self.model, self._state):
            self._reset(ctx)
            self._state.set_coefficients({layer: [r.coef.get(layer, 0.0) for r in rows] for layer in self.layers})
            start_pos = self._prefill(ctx, rows, width)
            steps = max_new_tokens - int(self._first_written)
            self._decode(ctx, start_pos, steps, force_length)
        out = ctx.out[:n].tolist()
        results = []
        eos = set(self.eos.tolist())
        for ids in out:
            cut = next((i for i, t in enumerate(ids) if t in eos), None) if not force_length else None
            results.append(Generated(ids if cut is None else ids[:cut], "length" if cut is None else "stop"))
        return results

    def set_direction(self, direction: torch.Tensor) -> None:
        """Steer the next batches along another unit direction; written in place, so captured graphs
        (which read the state's tensor) stay valid."""
        self.direction = direction.detach().clone()
        if self._state is not None:
            self._state.direction.copy_(direction.reshape(-1).to(self._state.direction))

    def release(self) -> None:
        """Drop the cache and graphs (after an OOM, or when done)."""
        self._ctx = None
        self._state = None
        self._pool = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -------------------------------------------------------------- internals

    def _context(self, batch: int, length: int, max_new: int) -> _Context:
        ctx = self._ctx
        if ctx is not None and (ctx.batch, ctx.length, ctx.max_new) == (batch, length, max_new):
            return ctx
        ctx = None  # drop every reference to the old cache and graphs before allocating the new ones
        self.release()
        ctx = _Context(self.model, batch, length, max_new)
        # A fresh pool: reusing the handle of a released context's graphs trips the caching allocator.
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self._state = SteeringState(self.direction, self.layers, batch, device=self.device)
        self._ctx = ctx
        self.stats["contexts"] += 1
        return ctx

    def _reset(self, ctx: _Context) -> None:
        ctx.valid.zero_()
        ctx.done.zero_()
        ctx.out.fill_(self.pad_id)
        ctx.step_idx.zero_()
        self._first_written = False

    def _forward_prefill(self, ids: torch.Tensor, attn: torch.Tensor, positions: torch.Tensor):
        """Prefill `ids` [n, W] (left padded) into a fresh cache; returns (last logits [n, V], cache)."""
        n_layers, kv_heads, head_dim, dtype, device = _model_shape(self.model)
        n, width = ids.shape
        cache = StaticKV(n_layers, n, kv_heads, width, head_dim, dtype, device)
        real = attn.bool()
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        # query i sees key j <= i that is a real token; every query also sees itself, so a padding query
        # never has an empty row (NaN) — padding keys stay invisible to real queries.
        mask = (causal[None] & real[:, None, :]) | torch.eye(width, dtype=torch.bool, device=device)[None]
        out = self.model(input_ids=ids, attention_mask=mask[:, None], position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float(), cache

    def _prefill(self, ctx: _Context, rows: list[Row], width: int) -> int:
        """Fill the cache and the first decode input; returns the cache position of the first decode step."""
        policy = self.policy
        shared = policy in ("last", "generated")
        prompt_w = width - 1 if policy == "last" else width  # "last": the last prompt token is decode step 0
        if shared:
            groups: dict[int, int] = {}
            for r in rows:
                groups.setdefault(r.group, len(groups))
            sources = [next(r for r in rows if r.group == g) for g in groups]
            row_map = torch.tensor([groups[r.group] for r in rows], device=self.device)
        else:
            sources, row_map = rows, torch.arange(len(rows), device=self.device)
        prompts = [r.prompt[:-1] if policy == "last" else r.prompt for r in sources]
        first_logits = torch.empty(len(prompts), dtype=torch.long, device=self.device)
        chunk = max(1, self.prefill_tokens // max(1, prompt_w))
        self._state.enabled = not shared
        try:
            for start in range(0, len(prompts), chunk):
                part = prompts[start:start + chunk]
                ids, attn = left_pad(part, self.pad_id, width=prompt_w)  # [part, prompt_w]
                ids, attn = ids.to(self.device), attn.to(self.device)
                positions = (attn.cumsum(-1) - 1).clamp(min=0)
                if not shared:
                    self._state.use_rows(start, start + len(part), prompt_position_mask(attn, policy))
                logits, cache = self._forward_prefill(ids, attn, positions)
                first_logits[start:start + len(part)] = logits.argmax(-1)
                dst = (row_map[:, None] == torch.arange(start, start + len(part), device=self.device)[None]).nonzero()
                for layer in range(len(cache.keys)):  # copy each source's cache to every row using it
                    ctx.cache.keys[layer][dst[:, 0], :, :prompt_w] = cache.keys[layer][dst[:, 1] , :, :prompt_w]
                    ctx.cache.values[layer][dst[:, 0], :, :prompt_w] = cache.values[layer][dst[:, 1], :, :prompt_w]
                ctx.valid[dst[:, 0], :prompt_w] = attn.bool()[dst[:, 1]]
                del cache
        finally:
            self._state.enabled = True
            self._state.use_all_rows()
        self.stats["prefill_rows"] += len(prompts)
        lengths = torch.tensor([len(r.prompt) for r in rows], device=self.device)
        if policy == "last":
            ctx.tok[:, 0] = torch.tensor([r.prompt[-1] for r in rows], device=self.device)
            ctx.pos[:, 0] = lengths - 1
            return prompt_w
        first = first_logits[row_map]
        ctx.out[:, 0] = first
        ctx.done |= torch.isin(first, self.eos) & ~self._force_t
        ctx.tok[:, 0] = first
        ctx.pos[:, 0] = lengths
        ctx.step_idx.fill_(1)
        self._first_written = True
        return prompt_w

    def _step(self, ctx: _Context) -> None:
        """One decode step on the static buffers (captured as a graph on CUDA)."""
        ctx.valid.index_fill_(1, ctx.cache.write_pos, True)
        mask = ctx.valid[:, None, None, : ctx.cache.kv_len]
        logits = self.model(input_ids=ctx.tok, position_ids=ctx.pos, attention_mask=mask,
                            past_key_values=ctx.cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        nxt = logits.argmax(-1)
        nxt = torch.where(ctx.done, torch.full_like(nxt, self.pad_id), nxt)
        ctx.out.index_copy_(1, ctx.step_idx, nxt[:, None])
        ctx.done |= torch.isin(nxt, self.eos) & ~self._force_t
        ctx.tok.copy_(nxt[:, None])
        ctx.pos.add_(1)
        ctx.cache.write_pos.add_(1)
        ctx.step_idx.add_(1)

    def _decode(self, ctx: _Context, start_pos: int, steps: int, force_length: bool) -> None:
        ctx.cache.write_pos.fill_(start_pos)
        self._state.steer_all_positions()
        for s in range(steps):
            kv_len = min(ctx.length, _round_up(start_pos + s + 1, KV_BUCKET))
            if self.use_graphs:
                self._graph(ctx, kv_len).replay()
            else:
                ctx.cache.kv_len = kv_len
                self._step(ctx)
            self.stats["decode_steps"] += 1
            if not force_length and s % 16 == 15 and bool(ctx.done.all()):
                break

    def _graph(self, ctx: _Context, kv_len: int) -> torch.cuda.CUDAGraph:
        graph = ctx.graphs.get(kv_len)
        if graph is not None:
            return graph
        # Capture records kernels without running them; the eager warm-up that must precede it does run,
        # so it works on copies of the buffers it would move forward and puts them back.
        saved = [t.clone() for t in (ctx.tok, ctx.pos, ctx.done, ctx.out, ctx.step_idx, ctx.valid,
                                      ctx.cache.write_pos)]
        ctx.cache.kv_len = kv_len
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            # The warm-up writes one cache slot at write_pos (the next one to be written anyway).
            self._step(ctx)
        torch.cuda.current_stream().wait_stream(stream)
        for t, s in zip((ctx.tok, ctx.pos, ctx.done, ctx.out, ctx.step_idx, ctx.valid, ctx.cache.write_pos), saved):
            t.copy_(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._step(ctx)
        ctx.graphs[kv_len] = graph
        self.stats["graphs_captured"] += 1
        return graph

    @property
    def _force_t(self) -> torch.Tensor:
        t = getattr(self, "_force_buf", None)
        if t is None:
            t = self._force_buf = torch.zeros((), dtype=torch.bool, device=self.device)
        return t


# ------------------------------------------------------------------------------------------ HF reference

@torch.inference_mode()
def hf_generate(model, direction: torch.Tensor, layers: Sequence[int], policy: str, rows: Sequence[Row],
                max_new_tokens: int, eos_ids: Sequence[int], pad_id: int,
                force_length: bool = False) -> list[Generated]:
    """The same rows through transformers' `generate` (dynamic cache, eager) with the same hooks."""
    device = next(model.parameters()).device
    ids, attn = left_pad([r.prompt for r in rows], pad_id)  # [batch, width]
    width = ids.shape[1]
    state = SteeringState(direction, layers, len(rows), device=device)
    state.set_coefficients({layer: [r.coef.get(layer, 0.0) for r in rows] for layer in layers})
    eos = sorted(set(eos_ids))
    with steering(model, state, policy=policy):
        out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens if force_length else None,
                             eos_token_id=None if force_length else eos, pad_token_id=pad_id)
    results = []
    for row in out[:, width:].tolist():
        row = row + [pad_id] * (max_new_tokens - len(row))
        cut = None if force_length else next((i for i, t in enumerate(row) if t in eos), None)
        results.append(Generated(row if cut is None else row[:cut], "length" if cut is None else "stop"))
    return results
