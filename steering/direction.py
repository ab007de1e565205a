"""Steering directions: load and validate one, or derive one for the organism itself.

The directions of one run (`direction_names`: the file's, its negation, the in-run derived one, seeded
random controls) are `Direction`s: a unit vector per steered layer.

A derived direction is the difference of mean residuals (the output of one decoder layer) between two
sets of prompts, rendered the way Task 3 renders them (the organism's chat template, the same system
prompts):
  monitoring  each scenario under the MONITORED minus under the UNMONITORED system prompt
  label       AF-labelled scenarios minus the others (paths config `af_labels`), in one context
It is saved as `<name>.npy` (float32, shape (hidden_size,), not normalised) with `<name>.json` beside it
saying how it was made. Steering adds `alpha * unit(direction)`: with the monitoring contrast, a positive
alpha pushes an unmonitored prompt toward the monitored behaviour.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from lm import chat
from lm.batching import left_pad, pad_token_id
from records.errors import InputError
from records.jsonl import write_atomic
from records.schema import Scenario
from steering.config import DeriveConfig, SteerConfig

log = logging.getLogger(__name__)

CONTRASTS = ("monitoring", "label")
DERIVE_HINT = "derive one for this model with `af-introspect steer --derive-direction --layer N --out DIR`"


def direction_id(path: str | Path) -> str:
    """sha256 prefix of the file's bytes: which direction a record was made with."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def load_direction(path: str | Path, hidden_size: int, model: str = "the model") -> tuple[np.ndarray, dict]:
    """The unit direction (float32, (hidden_size,)) and {"path", "id", "norm"}; every problem is one line.

    Accepts shape (hidden_size,) or (1, hidden_size). Refuses: a missing or non-.npy file, a 0-d array,
    a size other than the model's hidden size, NaN/inf values, a zero norm.
    """
    from records.assets import npy_header

    path = Path(path)
    if not path.is_file():
        raise InputError(f"direction {path}: file not found; {DERIVE_HINT}")
    shape, dtype = npy_header(path)
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise InputError(f"direction {path}: dtype {dtype} is not a real number type")
    if len(shape) == 0:
        raise InputError(f"direction {path}: a 0-d array (a single number), expected shape ({hidden_size},)")
    if len(shape) > 2 or (len(shape) == 2 and shape[0] != 1):
        raise InputError(f"direction {path}: shape {shape}, expected ({hidden_size},) — one vector")
    size = shape[-1]
    if size != hidden_size:
        raise InputError(f"direction {path}: has {size} values but {model} has hidden size {hidden_size}; "
                         f"{DERIVE_HINT}")
    try:
        vec = np.load(path, allow_pickle=False).astype(np.float64).reshape(-1)
    except (ValueError, EOFError, OSError) as e:  # the header promised more data than the file holds
        raise InputError(f"direction {path}: truncated or unreadable .npy ({' '.join(str(e).split())[:120]})") from None
    bad = np.flatnonzero(~np.isfinite(vec))
    if bad.size:
        raise InputError(f"direction {path}: {bad.size} non-finite value(s) (NaN or inf), first at index {bad[0]}")
    with np.errstate(over="ignore"):
        norm = float(np.linalg.norm(vec))
    if not np.isfinite(norm):
        raise InputError(f"direction {path}: its norm overflows (largest |value| {np.abs(vec).max():.3g}); "
                         "rescale the vector")
    if norm == 0.0:
        raise InputError(f"direction {path}: zero norm (all zeros); cannot normalise it to a unit vector")
    return (vec / norm).astype(np.float32), {"path": str(path), "id": direction_id(path), "norm": norm}


def _write_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    write_atomic(path, buf.getvalue())


def save_direction(out: str | Path, vector: np.ndarray, meta: dict) -> Path:
    """Write `<out>` (.npy) or `<out>/<default name>.npy`, plus the .json metadata beside it."""
    out = Path(out)
    path = out if out.suffix == ".npy" else out / f"direction_{meta['contrast']}_L{meta['layer']}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_npy(path, np.asarray(vector, dtype=np.float32))
    meta = dict(meta, direction_id=direction_id(path), file=path.name)
    write_atomic(path.with_suffix(".json"), (json.dumps(meta, indent=2) + "\n").encode())
    return path


@torch.inference_mode()
def mean_residual(model, prompts: Sequence[Sequence[int]], layer: int, pad_id: int, positions: str = "last",
                  batch_size: int = 16) -> np.ndarray:
    """Mean over prompts of the residual after `layer`: at the last prompt token, or averaged over its
    real tokens after BOS (`positions="mean"`)."""
    from lm.hooks import capture_residuals

    device = next(model.parameters()).device
    total, count = None, 0
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids, mask = left_pad(chunk, pad_id)  # [batch, width]
        width = ids.shape[1]
        with capture_residuals(model, [layer]) as store:
            model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, logits_to_keep=1)
        hidden = store[layer][0].float()  # [B, S, H]
        if positions == "last":
            per_prompt = hidden[:, -1]
        else:
            keep = mask.to(device).bool().clone()
            first = width - torch.tensor([len(p) for p in chunk], device=device)
            keep[torch.arange(len(chunk), device=device), first] = False  # drop BOS
            weights = keep.float().unsqueeze(-1)
            per_prompt = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        total = per_prompt.sum(0) if total is None else total + per_prompt.sum(0)
        count += len(chunk)
    return (total / count).cpu().numpy()


def derive(model, tokenizer, job: DeriveJob, layer: int, how: DeriveConfig, templates,
           batch_size: int = 16) -> tuple[np.ndarray, dict]:
    """(direction, metadata) as the module docstring describes, from `job`'s scenarios at `layer`, with `how`'s
    contrast, context, positions and af_only (which restricts the monitoring contrast to AF-labelled
    scenarios); `how.layer` is not read. Raises InputError when a side is empty."""
    contrast, context, positions, af_only = how.contrast, how.context, how.positions, how.af_only
    scenarios, af_labels, rendering = job
    pad = pad_token_id(tokenizer)
    if af_only:
        if contrast != "monitoring":
            raise InputError("derive.af_only restricts the monitoring contrast; the label contrast needs both sides")
        scenarios = [s for s in scenarios if s.label in af_labels]
    if contrast == "monitoring":
        pos = [chat.render(tokenizer, templates.system("monitored"), s.text, rendering).token_ids for s in scenarios]
        neg = [chat.render(tokenizer, templates.system("unmonitored"), s.text, rendering).token_ids for s in scenarios]
        sides = ("monitored", "unmonitored")
    elif contrast == "label":
        pos = [chat.render(tokenizer, templates.system(context), s.text, rendering).token_ids
               for s in scenarios if s.label in af_labels]
        neg = [chat.render(tokenizer, templates.system(context), s.text, rendering).token_ids
               for s in scenarios if s.label not in af_labels]
        sides = (f"AF labels {list(af_labels)}", "other labels")
    else:
        raise InputError(f"contrast {contrast!r}: must be one of {', '.join(CONTRASTS)}")
    if not pos or not neg:
        raise InputError(f"derive direction: no scenarios on the {sides[0] if not pos else sides[1]} side of the "
                         f"{contrast} contrast ({len(pos)} vs {len(neg)})")
    vec = mean_residual(model, pos, layer, pad, positions, batch_size) - \
        mean_residual(model, neg, layer, pad, positions, batch_size)
    norm = float(np.linalg.norm(vec))
    if not np.isfinite(norm) or norm == 0.0:
        raise InputError(f"derive direction: the two sides have the same mean residual at layer {layer} "
                         "(zero difference); try another layer or contrast")
    meta = {
        "contrast": contrast, "layer": layer, "positions": positions, "sign": f"{sides[0]} minus {sides[1]}",
        "context": context if contrast == "label" else "both", "n_positive": len(pos), "n_negative": len(neg),
        "norm": norm, "hidden_size": int(vec.shape[0]), "rendering": rendering, "af_only": af_only,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    return vec.astype(np.float32), meta


class Direction(NamedTuple):
    """One direction a run steers along: a unit vector per steered layer (the same one unless derived)."""

    name: str  # "file", "derived", "-file", "random0", ...
    kind: str  # "file" | "derived" | "negated" | "random"
    ids: dict[int, str]  # layer -> id of the vector steered there
    norms: dict[int, float]  # layer -> norm of the raw vector before normalising (random: 1)
    vectors: dict[int, np.ndarray]  # layer -> unit vector (float32, (hidden,))

    @property
    def per_layer(self) -> bool:
        """Derived at each steered layer (and its negation): one vector per layer, even with one layer."""
        return self.name.lstrip("-") == "derived"


def same_everywhere(name: str, kind: str, vid: str, norm: float, unit: np.ndarray, layers) -> Direction:
    return Direction(name, kind, {k: vid for k in layers}, {k: norm for k in layers}, {k: unit for k in layers})


def negated(d: Direction) -> Direction:
    return Direction(f"-{d.name}", "negated", {k: f"-{v}" for k, v in d.ids.items()}, dict(d.norms),
                     {k: -v for k, v in d.vectors.items()})


def random_directions(count: int, hidden: int, seed: int, layers) -> list[Direction]:
    """`count` seeded Gaussian directions, normalised: controls that share nothing with the model."""
    out = []
    for k in range(count):
        vec = np.random.default_rng([seed, k]).standard_normal(hidden)
        unit = (vec / np.linalg.norm(vec)).astype(np.float32)
        out.append(same_everywhere(f"random{k}", "random", f"random-s{seed}-{k}", 1.0, unit, layers))
    return out


def from_vectors(name: str, raw: dict[int, np.ndarray]) -> Direction:
    """The derived direction from its raw (unnormalised) vector at each layer."""
    units = {k: (v / np.linalg.norm(v)).astype(np.float32) for k, v in sorted(raw.items())}
    ids = {k: hashlib.sha256(u.tobytes()).hexdigest()[:16] for k, u in units.items()}
    return Direction(name, "derived", ids, {k: float(np.linalg.norm(v)) for k, v in raw.items()}, units)


# ------------------------------------------------------------------------------------------ a run's directions

class DeriveJob(NamedTuple):
    """What the in-run derived direction is computed from: the TRAINING scenarios only."""

    scenarios: list[Scenario]
    af_labels: list[str]
    rendering: str


def direction_names(cfg: SteerConfig) -> list[tuple[str, bool]]:
    """(name, differs per layer) of every direction of the run, the file direction first."""
    names = [("file", False)] + ([("derived", True)] if cfg.derived else [])
    if cfg.negate:
        names += [(f"-{n}", per_layer) for n, per_layer in names]
    return names + [(f"random{k}", False) for k in range(cfg.random_directions)]


def fixed_directions(cfg: SteerConfig, unit: np.ndarray, dir_info: dict) -> list[Direction]:
    """The directions that need no model: the file's, its negation, the random controls."""
    layers = sorted(set(cfg.layers))
    file = same_everywhere("file", "file", dir_info["id"], dir_info["norm"], unit, layers)
    out = [file] + ([negated(file)] if cfg.negate else [])
    return out + random_directions(cfg.random_directions, unit.shape[0], cfg.seed, layers)


def derived_directions(cfg: SteerConfig, work: Path, model=None, tokenizer=None,
                       job: DeriveJob | None = None) -> list[Direction]:
    """The derived direction at each steered layer (and its negation): computed once per run into
    `_work/derived_L<layer>.npy`, then read back (resume, records)."""
    if not cfg.derived:
        return []
    raw = {}
    for layer in sorted(set(cfg.layers)):
        path = work / f"derived_L{layer}.npy"
        if not path.exists():
            vec, _ = derive(model, tokenizer, job, layer, cfg.derive, cfg.prompts)
            _write_npy(path, vec)
        raw[layer] = np.load(path).astype(np.float64)
    derived = from_vectors("derived", raw)
    return [derived] + ([negated(derived)] if cfg.negate else [])


def sort_directions(cfg: SteerConfig, directions: list[Direction]) -> list[Direction]:
    order = [n for n, _ in direction_names(cfg)]
    return sorted(directions, key=lambda d: order.index(d.name))


def direction_file(d: Direction, layer: int) -> str:
    """Where a record's direction lies, relative to the records folder."""
    if d.name == "file":
        return "direction.npy"
    return f"directions/{d.name}_L{layer}.npy" if d.per_layer else f"directions/{d.name}.npy"


def save_directions(out: Path, directions: list[Direction]) -> None:
    """Every direction but the file's (direction.npy) as the unit vectors the records point at."""
    for d in directions:
        if d.name == "file":
            continue
        for layer in sorted(d.vectors) if d.per_layer else [next(iter(d.vectors))]:
            path = out / direction_file(d, layer)
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_npy(path, d.vectors[layer])
