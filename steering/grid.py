"""The grid: arms (baseline + each (layer set, alpha)), their validation, and the alpha scale.

Everything here is checked before any model weights are loaded: layers against the model's depth (read
from its config.json), an empty grid, alphas that are not finite numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from lm.batching import left_pad
from records.errors import InputError
from records.schema import ResidualNorm

BASELINE = "baseline"


class Arm(NamedTuple):
    name: str  # "baseline", "L20@a0.5", "L20+L30@a2"; other directions than the file: "random0/L20@a2"
    layers: tuple[int, ...]  # () for the baseline
    alpha: float
    direction: str = "file"  # the Direction.name this arm adds
    other_position: bool = False  # the noise floor's alpha-0 row planned apart, at another batch position


def arm_name(layers: Sequence[int], alpha: float) -> str:
    return "+".join(f"L{layer}" for layer in layers) + f"@a{alpha:g}"


def parse_number_list(text: str, what: str, integer: bool = False) -> list:
    """"0.5,1,2" -> [0.5, 1.0, 2.0]; a non-number names itself in a one-line InputError."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise InputError(f"{what} {text!r}: empty; give a comma-separated list, e.g. {'20,30' if integer else '0.5,1,2,5'}")
    out = []
    for item in items:
        try:
            value = int(item) if integer else float(item)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise InputError(f"{what} {text!r}: {item!r} is not {kind}") from None
        if not integer and not math.isfinite(value):
            raise InputError(f"{what} {text!r}: {item!r} is not a finite number")
        out.append(value)
    return out


def validate_grid(layers: Sequence[int], alphas: Sequence[float], depth: int, model: str = "model") -> None:
    """One-line InputErrors for an empty grid, a layer outside [0, depth), a non-finite or non-numeric alpha."""
    if not layers:
        raise InputError("layers: empty grid; give at least one layer, e.g. --layers 20,30")
    if not alphas:
        raise InputError("alphas: empty grid; give at least one alpha, e.g. --alphas 0.5,1,2,5")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise InputError(f"layers: {layer!r} is not an integer layer index")
        if not 0 <= layer < depth:
            raise InputError(f"layers: layer {layer} does not exist in {model}, which has {depth} layers "
                             f"(valid: 0..{depth - 1})")
    for alpha in alphas:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise InputError(f"alphas: {alpha!r} is not a number")
        if not math.isfinite(alpha):
            raise InputError(f"alphas: {alpha!r} is not a finite number")


def build_arms(layers: Sequence[int], alphas: Sequence[float], together: bool = False) -> list[Arm]:
    """Baseline first, then each layer alone (and all together if asked) at each alpha; duplicates dropped."""
    layers = list(dict.fromkeys(layers))
    alphas = list(dict.fromkeys(float(a) for a in alphas))
    sets = [(layer,) for layer in layers]
    if together and len(layers) > 1:
        sets.append(tuple(layers))
    arms = [Arm(BASELINE, (), 0.0)]
    arms += [Arm(arm_name(s, a), s, a) for s in sets for a in alphas]
    return arms


def build_direction_arms(directions, layers: Sequence[int], alphas: Sequence[float], together: bool = False,
                         alpha_zero: bool = False) -> list[Arm]:
    """build_arms for every direction (`directions`: (name, per_layer) pairs, the file direction first),
    plus an alpha-0 arm per layer set of the first one. A per-layer direction (derived at each layer)
    gets no layers-together arm: the engine adds one direction per batch at every steered layer."""
    base = build_arms(layers, alphas, together)
    zero = [Arm(arm_name(a.layers, 0.0), a.layers, 0.0) for a in build_arms(layers, [0.0], together)[1:]]
    arms = [base[0]]
    for k, (name, per_layer) in enumerate(directions):
        prefix = "" if name == "file" else f"{name}/"
        own = [a for a in base[1:] if not (per_layer and len(a.layers) > 1)]
        if k == 0 and alpha_zero:
            own = [a for a in zero if 0.0 not in alphas] + own
        arms += [Arm(prefix + a.name, a.layers, a.alpha, name) for a in own]
    return arms


def other_position_arm(layers: Sequence[int]) -> Arm:
    """The noise floor's alpha-0 arm that runs in batches of its own (steering/run.plan_direction_batches),
    not beside its scenario's other arms. Alpha 0 adds nothing at any layer: the first one stands for all."""
    return Arm(arm_name(layers[:1], 0.0) + "~other-batch", tuple(layers[:1]), 0.0, "file", True)


def model_depth(model_dir: str) -> tuple[int, int]:
    """(num_hidden_layers, hidden_size) from the model's config.json, without loading weights."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise InputError(f"{model_dir}: cannot read the model config: {str(e).splitlines()[0]}") from None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.num_hidden_layers), int(text.hidden_size)


@torch.inference_mode()
def measure_residual_norms(model, prompts: Sequence[Sequence[int]], layers: Sequence[int], pad_id: int,
                           batch_size: int = 16) -> dict[int, ResidualNorm]:
    """Mean L2 norm of the residual stream after each layer, over the real tokens of `prompts`.

    Each prompt's first token (BOS) is left out: its residual carries the "massive activation" of
    Mistral-family models, orders of magnitude above the rest, and would dominate the mean.
    Returns {layer: ResidualNorm}.
    """
    from lm.hooks import capture_residuals

    device = next(model.parameters()).device
    norms: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids, mask = left_pad(chunk, pad_id)  # [batch, width]
        keep = mask.bool() & (mask.cumsum(1) > 1)  # real tokens after the first (BOS)
        with capture_residuals(model, layers) as store:
            model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, logits_to_keep=1)
        for layer in layers:
            hidden = store[layer][0].float()  # [B, S, H]
            norms[layer].append(hidden.norm(dim=-1)[keep.to(device)].cpu())
    out = {}
    for layer in layers:
        values = torch.cat(norms[layer])
        if values.numel() == 0:
            raise InputError("residual_norm scale: the prompts have no tokens after BOS to measure")
        out[layer] = ResidualNorm(mean=float(values.mean()), median=float(values.median()), n_tokens=int(values.numel()))
    return out


def effective_alphas(arm: Arm, scale: str, norms: dict[int, ResidualNorm] | None) -> list[float]:
    """Per layer of the arm, the multiplier applied to the unit direction."""
    if scale == "raw":
        return [arm.alpha for _ in arm.layers]
    return [arm.alpha * norms[layer].mean for layer in arm.layers]
