"""The residual-stream steering hook: add `coef[row] * mask[row, pos] * direction` to a decoder layer's output.

One hook per steered layer. Everything the hook reads is a tensor held by a `SteeringState`, so a batch can
mix arms (each row its own coefficient per layer, 0 for rows and layers that are not steered) and the hook
stays traceable by torch.compile and capturable in a CUDA graph: no Python branching on tensor values,
the coefficients are a [B, 1, 1] tensor per layer, the position mask a [B, S, 1] tensor. Buffers are
updated in place (`copy_`), so a captured graph sees new values without being rebuilt.

A decoder layer's output is a bare tensor [batch, seq, hidden] in transformers >= 4.54 and a tuple
(hidden, ...) before; both are handled. Indexing `output[0]` on the bare tensor would steer batch row 0
only, which is the bug this module exists to avoid.

Position policies (which positions of the sequence get the vector):
  last       the last prompt token and every generated token (the seed's)
  all        every prompt token and every generated token
  generated  generated tokens only (the positions holding a generated token; the first generated
             token is predicted from the last prompt position, so it is never changed by this policy)
Padding positions are never steered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

POLICIES = ("last", "all", "generated")


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder layers of a causal LM (MistralForCausalLM.model.layers and lookalikes)."""
    for path in ("model.layers", "model.model.layers", "layers", "transformer.h", "gpt_neox.layers"):
        node = model
        try:
            for part in path.split("."):
                node = getattr(node, part)
        except AttributeError:
            continue
        if isinstance(node, torch.nn.ModuleList):
            return node
    raise TypeError(f"{type(model).__name__}: cannot find its decoder layers (looked for model.layers)")


def prompt_position_mask(attention_mask: torch.Tensor, policy: str) -> torch.Tensor:
    """[B, S] float mask of the prompt positions `policy` steers, from a left-padded [B, S] attention mask.

    With left padding the last column holds every row's last prompt token.
    """
    real = attention_mask.to(torch.float32)
    if policy == "all":
        return real
    if policy == "last":
        last = torch.zeros_like(real)
        last[:, -1] = 1.0
        return last * real
    if policy == "generated":
        return torch.zeros_like(real)
    raise ValueError(f"position policy must be one of {POLICIES}, got {policy!r}")


class SteeringState:
    """Tensors the hooks read: a unit direction [H], one [B, 1, 1] coefficient per layer, a [B, S, 1] mask.

    `coef[layer][b]` is the multiplier applied to the unit direction in row b at that layer (0 = not
    steered). `mask` says which positions of the current forward are steered (1) or not (0).
    """

    def __init__(self, direction: torch.Tensor, layers: Sequence[int], batch: int, device=None,
                 dtype: torch.dtype = torch.float32):
        device = direction.device if device is None else device
        self.layers = list(layers)
        self.direction = direction.detach().to(device=device, dtype=dtype).reshape(-1)
        self.coef = {layer: torch.zeros(batch, 1, 1, device=device, dtype=dtype) for layer in self.layers}
        # Decode steps steer every row's one position. A persistent buffer that is never written, so a
        # CUDA graph captured while `mask` is this tensor stays valid after prefills swap `mask` out.
        self.decode_mask = torch.ones(batch, 1, 1, device=device, dtype=dtype)
        self.mask = self.decode_mask
        self.cur = dict(self.coef)  # what the hooks read: the full buffers, or row views during a chunked prefill
        self.enabled = True  # a Python flag (not a tensor): False runs the model unsteered (shared prefills)

    @property
    def batch(self) -> int:
        return self.decode_mask.shape[0]

    def set_coefficients(self, coef: dict[int, Sequence[float] | torch.Tensor]) -> None:
        """Per layer, one coefficient per row (layers left out get 0), written in place."""
        for layer, buf in self.coef.items():
            values = coef.get(layer)
            if values is None:
                buf.zero_()
            else:
                buf.copy_(torch.as_tensor(values, dtype=buf.dtype).reshape(-1, 1, 1).to(buf.device))

    def set_mask(self, mask: torch.Tensor) -> None:
        """Position mask for the next forward: [B, S] or [B, S, 1]; replaces the buffer (shape may change)."""
        mask = mask.to(device=self.mask.device, dtype=self.mask.dtype)
        self.mask = mask.unsqueeze(-1) if mask.dim() == 2 else mask

    def use_rows(self, start: int, stop: int, mask: torch.Tensor) -> None:
        """A forward over rows [start, stop) only (a chunked prefill) with this [n, S] position mask."""
        self.cur = {layer: buf[start:stop] for layer, buf in self.coef.items()}
        self.set_mask(mask)

    def use_all_rows(self) -> None:
        self.cur = dict(self.coef)
        self.mask = self.decode_mask

    def steer_all_positions(self) -> None:
        """Decode steps: every position of the forward is a generated token, so all are steered."""
        self.mask = self.decode_mask


def add_steering(hidden: torch.Tensor, coef: torch.Tensor, mask: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """hidden [B, S, H] + (coef [B,1,1] * mask [B,S,1]) * direction [H], in hidden's dtype.

    A row with coefficient 0 (or a masked position) gets exactly `hidden + 0`, i.e. itself.
    """
    delta = (coef * mask) * direction  # [B, S, H], float32
    return hidden + delta.to(hidden.dtype)


def make_hook(state: SteeringState, layer: int):
    """Forward hook for one decoder layer; handles bare-tensor and tuple outputs."""

    def hook(module, args, output):
        if not state.enabled:
            return output
        if isinstance(output, tuple):
            return (add_steering(output[0], state.cur[layer], state.mask, state.direction),) + tuple(output[1:])
        return add_steering(output, state.cur[layer], state.mask, state.direction)

    return hook


def make_mask_prehook(state: SteeringState, policy: str):
    """Forward pre-hook on the whole model for HF `generate`: sets the position mask from the call's inputs.

    A forward with more than one new position is the prefill (mask from the 2-D attention mask and the
    policy); a single-position forward is a decode step (steered). Branches only on shapes.
    """

    def prehook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        seq = ids.shape[1] if ids is not None else kwargs["inputs_embeds"].shape[1]
        if seq > 1:
            attn = kwargs.get("attention_mask")
            if attn is None:
                attn = torch.ones(ids.shape, device=ids.device)
            state.set_mask(prompt_position_mask(attn[:, -seq:], policy))
        else:
            state.steer_all_positions()

    return prehook


@contextlib.contextmanager
def steering(model, state: SteeringState, policy: str | None = None) -> Iterator[SteeringState]:
    """Register one hook per layer of `state` (and, with `policy`, the mask pre-hook for HF generate).

    Hooks are registered before the `try` and always removed in `finally`, so an exception inside the
    block never leaves a model steered.
    """
    layers = decoder_layers(model)
    handles = [layers[layer].register_forward_hook(make_hook(state, layer)) for layer in state.layers]
    if policy is not None:
        handles.append(model.register_forward_pre_hook(make_mask_prehook(state, policy), with_kwargs=True))
    try:
        yield state
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def capture_residuals(model, layers: Sequence[int]) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Record each listed decoder layer's output (the residual stream after it) on every forward.

    Yields {layer: [tensor [B, S, H] per forward]}, detached; hooks removed on exit.
    """
    store: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    all_layers = decoder_layers(model)

    def make(layer):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            store[layer].append(hidden.detach())

        return hook

    handles = [all_layers[layer].register_forward_hook(make(layer)) for layer in layers]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()
