"""The grid and its batch plan: arms (baseline + each (layer set, alpha) per direction), the alpha scale, and
the rows (scenario x context x arm) sorted by prompt length and cut into batches of one direction each.

Layers are checked against the model's depth (read from its config.json) before any weights load; an empty
grid and alphas that are not finite numbers are refused by the config's types (steering/config.py).
`SteerPlan` holds a run's resolved inputs: what every step after the setup reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from lm.batching import left_pad
from lm.chat import RenderedPrompt
from lm.judge_config import JudgeConfig
from records.errors import InputError
from records.schema import ResidualNorm, Scenario, SteeringRecord
from steering.config import SteerConfig
from steering.direction import DeriveJob, Direction, direction_names

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
        example = "20,30" if integer else "0.125,0.25,0.5,1"
        raise InputError(f"{what} {text!r}: empty; give a comma-separated list, e.g. {example}")
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


def check_depth(layers: Sequence[int], depth: int, model: str = "model") -> None:
    """A one-line InputError for a layer outside [0, depth) of the model."""
    for layer in layers:
        if not 0 <= layer < depth:
            raise InputError(f"layers: layer {layer} does not exist in {model}, which has {depth} layers "
                             f"(valid: 0..{depth - 1})")


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
    """The noise floor's alpha-0 arm that runs in batches of its own (plan_direction_batches),
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
        out[layer] = ResidualNorm(mean=float(values.mean()), median=float(values.median()),
                                  n_tokens=int(values.numel()))
    return out


def effective_alphas(arm: Arm, scale: str, norms: dict[int, ResidualNorm] | None) -> list[float]:
    """Per layer of the arm, the multiplier applied to the unit direction."""
    if scale == "raw":
        return [arm.alpha for _ in arm.layers]
    return [arm.alpha * norms[layer].mean for layer in arm.layers]


# ------------------------------------------------------------------------------------------ the run's plan

class SteerPlan(NamedTuple):
    """A run's resolved inputs (steering/run.py resolves them once): what generation and the records read."""

    cfg: SteerConfig
    model_dir: str
    scenarios: list[Scenario]  # training scenarios first (whole groups, records/split.py), then the test ones
    n_train: int  # how many of `scenarios` are training scenarios
    af_labels: list[str]
    rendered: dict[tuple[int, str], RenderedPrompt]  # (scenario index, context) -> its prompt
    arms: list[Arm]  # grid_arms(cfg): the baseline first
    unit: np.ndarray  # the file direction, unit length, float32 (hidden,)
    dir_info: dict  # the file direction's {"path", "id", "norm"} (steering/direction.py load_direction)
    fixed: list[Direction]  # the directions that need no model (steering/direction.py fixed_directions)
    job: DeriveJob | None  # what the in-run derived direction comes from (None: no derived direction)
    work: Path  # the output folder's _work/ (shards, residual norms, derived vectors)
    rendering: str  # how the model's chat template took the system prompt (lm/chat.py)
    judge: JudgeConfig  # the behaviour labeller's settings, resolved for this stage (lm/judge_config.py)
    labeller: str  # what records store as `labeller` (lm/judge.py labeller_name)

    @property
    def groups(self) -> list[tuple[int, str, list[int]]]:
        """(scenario index, context, prompt token ids) of every prompt, scenario-major."""
        return [(i, c, self.rendered[(i, c)].token_ids) for i in range(len(self.scenarios)) for c in self.cfg.contexts]


def row_key(index: int, context: str, arm: str, digest: str) -> str:
    """`<scenario index>:<context>:<arm>:<prompt digest>`: a completion is reused only for exactly its prompt.
    The arm's name carries its direction ("random0/L2@a1"; the file direction's arms are plain)."""
    return f"{index}:{context}:{arm}:{digest}"


def grid_arms(cfg: SteerConfig) -> list[Arm]:
    """Every arm of the run: the grid's, its alpha-0 arms (alpha_zero or the noise floor) and the noise
    floor's alpha-0 arm at another batch position (last: its batches run at the plan's end)."""
    arms = build_direction_arms(direction_names(cfg), cfg.layers, cfg.alphas, cfg.layers_together,
                                cfg.alpha_zero or cfg.noise_floor)
    return arms + ([other_position_arm(cfg.layers)] if cfg.noise_floor else [])


def control_only(cfg: SteerConfig, arm: Arm) -> bool:
    """An arm that exists for the noise floor only: its rows go to noise_control.jsonl, never to train/test."""
    return arm.other_position or (bool(arm.layers) and arm.alpha == 0.0 and arm.direction == "file"
                                  and not cfg.alpha_zero and 0.0 not in cfg.alphas)


def in_training(r: SteeringRecord, n_train_scenarios: int) -> bool:
    """Training split: the first scenarios; the test scenarios follow (steering/run.py orders them so: whole
    groups per side, records/split.py)."""
    return r.index < n_train_scenarios


def held_out_row(cfg: SteerConfig, n_train_scenarios: int, index: int, arm: Arm) -> bool:
    """A held-out direction (test_directions) steers the test scenarios only: no row of it is ever in the
    training split, and none is generated that no split would hold."""
    return arm.direction in cfg.test_directions and index < n_train_scenarios


def norm_sample(cfg: SteerConfig, groups) -> list[list[int]]:
    """The prompts the residual norms are measured on: the first norm_prompts scenarios of every context."""
    return [ids for i, _, ids in groups if i < cfg.norm_prompts]


def plan_batches(groups: list[tuple[int, str, list[int]]], arms: list[Arm], batch_size: int,
                 skip=lambda index, arm: False):
    """Rows (index, context, arm) sorted by prompt length (then input order), cut into batches; `skip`
    leaves out rows that are not steered (a held-out direction on a training scenario)."""
    order = sorted(groups, key=lambda g: (len(g[2]), g[0], g[1]))
    rows = [(i, ctx, arm) for i, ctx, _ in order for arm in arms if not skip(i, arm)]
    return [rows[k:k + batch_size] for k in range(0, len(rows), batch_size)]


def plan_direction_batches(groups, arms: list[Arm], directions: list[Direction], batch_size: int,
                           skip=lambda index, arm: False):
    """(direction, layer for a per-layer direction or None, batch) in plan order: every batch steers along
    one unit vector. The baseline rides with the file direction (its coefficients are 0)."""
    by_name = {d.name: d for d in directions}
    parts: dict[tuple[str, int | None, bool], list[Arm]] = {}
    for arm in arms:  # the noise floor's other-position arm: batches of its own
        d = by_name[arm.direction]
        parts.setdefault((d.name, arm.layers[0] if d.per_layer and arm.layers else None, arm.other_position),
                         []).append(arm)
    return [(by_name[name], layer, b) for (name, layer, _), own in parts.items()
            for b in plan_batches(groups, own, batch_size, skip)]
