"""Scores as introspective-interp's evaluators compute them, each with a seeded bootstrap 95% interval.

Beside training/evaluate.py's lenient scores (label inside <<<>>> plus flag; lowercased first words;
unparsable answers counted as "not changed"), these are the strict ones the paper reports:
- generative_explanation: strict exact match = the whole normalised sentence equals the target's
  (strip, lowercase, trailing "." removed, whitespace collapsed) and its changed flag parses equal;
- has-changed F1 and has-unchanged F1 over ALL items, where an unparsable answer counts as wrong (the
  flag opposite to the target's), never as a free "not changed";
- orig_match / change_match: the first token, split on whitespace and punctuation, case-sensitive.

Intervals resample items with replacement (or whole groups, e.g. every item of one trigger, when
`groups` is given, since items of a group are not independent); a gap between two methods resamples
the same indices for both (paired).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

_CHANGED = re.compile(r"change\s+to\s+<<<[^<>]*>>>")
_UNCHANGED = re.compile(r"remain\s+unchanged\s+from\s+<<<[^<>]*>>>")
_FIRST_TOKEN_SPLIT = re.compile(r"[\s\.\,\!\?\-\;\:\(\)\[\]\{\}\"\'\/\\\>]+")
N_BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class ItemScore:
    """One test item under one method."""

    strict: bool  # strict exact match (generative) or case-sensitive first-token match (orig/change)
    pred_changed: bool | None = None  # parsed flag of the answer; None = unparsable or not generative
    target_changed: bool | None = None  # the target's flag (generative only)


def normalise_sentence(text: str) -> str:
    return " ".join(text.strip().lower().rstrip(".").split())


def changed_flag(text: str) -> bool | None:
    """True for "... change to <<<Y>>>", False for "... remain unchanged from <<<X>>>", else None."""
    norm = normalise_sentence(text)
    if _UNCHANGED.search(norm):
        return False
    return True if _CHANGED.search(norm) else None


def first_token(text: str) -> str:
    """First token, split on whitespace and punctuation, case kept."""
    tokens = [t for t in _FIRST_TOKEN_SPLIT.split(text.strip()) if t]
    return tokens[0] if tokens else ""


def score_item(question_type: str, prediction: str, target: str) -> ItemScore:
    if question_type in ("orig_match", "change_match"):
        return ItemScore(strict=first_token(prediction) == first_token(target))
    flag, want = changed_flag(prediction), changed_flag(target)
    if want is None:
        raise ValueError(f"target does not parse: {target!r}")
    strict = flag == want and normalise_sentence(prediction) == normalise_sentence(target)
    return ItemScore(strict=strict, pred_changed=flag, target_changed=want)


def score_items(question_type: str, predictions: Sequence[str], targets: Sequence[str]) -> list[ItemScore]:
    return [score_item(question_type, p, t) for p, t in zip(predictions, targets, strict=True)]


def _f1(items: Sequence[ItemScore], positive: bool) -> float:
    """F1 of the class `changed == positive` over every item; unparsable answers are wrong."""
    # an unparsable answer is read as the flag opposite to the target's: a miss or a false alarm
    pred = [i.pred_changed if i.pred_changed is not None else not i.target_changed for i in items]
    tp = sum(p == positive and i.target_changed == positive for p, i in zip(pred, items))
    fp = sum(p == positive and i.target_changed != positive for p, i in zip(pred, items))
    fn = sum(p != positive and i.target_changed == positive for p, i in zip(pred, items))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def point_metrics(items: Sequence[ItemScore]) -> dict[str, float]:
    """strict_exact_match, and for generative items changed_f1 / unchanged_f1 / valid."""
    out = {"strict_exact_match": float(np.mean([i.strict for i in items])) if items else float("nan")}
    if items and items[0].target_changed is not None:
        out["changed_f1"] = _f1(items, True)
        out["unchanged_f1"] = _f1(items, False)
        out["valid"] = float(np.mean([i.pred_changed is not None for i in items]))
    return out


def bootstrap_indices(n: int, groups: Sequence | None, n_boot: int, seed: int) -> list[np.ndarray]:
    """`n_boot` resamples of item indices: items, or whole groups when `groups` labels each item."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return [rng.integers(0, n, n) for _ in range(n_boot)]
    members: dict = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    blocks = [np.array(v) for v in members.values()]
    return [np.concatenate([blocks[j] for j in rng.integers(0, len(blocks), len(blocks))]) for _ in range(n_boot)]


def interval(stat: Callable[[np.ndarray], float], n: int, groups: Sequence | None = None,
             n_boot: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile 95% interval of `stat(indices)` over bootstrap resamples."""
    values = [stat(idx) for idx in bootstrap_indices(n, groups, n_boot, seed)]
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def metrics_with_intervals(items: Sequence[ItemScore], groups: Sequence | None = None,
                           n_boot: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> dict[str, dict]:
    """{metric: {"value", "lo", "hi"}} for every point metric of `items`."""
    point = point_metrics(items)
    out = {}
    for name, value in point.items():
        lo, hi = interval(lambda idx: point_metrics([items[i] for i in idx])[name], len(items), groups, n_boot, seed)
        out[name] = {"value": value, "lo": lo, "hi": hi}
    return out


def paired_gap(a: Sequence[ItemScore], b: Sequence[ItemScore], metric: str = "strict_exact_match",
               groups: Sequence | None = None, n_boot: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> dict:
    """metric(a) - metric(b) on the same items, with a paired bootstrap 95% interval."""
    if len(a) != len(b):
        raise ValueError(f"paired gap needs the same items: {len(a)} vs {len(b)}")

    def gap(idx) -> float:
        return point_metrics([a[i] for i in idx])[metric] - point_metrics([b[i] for i in idx])[metric]

    lo, hi = interval(gap, len(a), groups, n_boot, seed)
    return {"value": gap(np.arange(len(a))), "lo": lo, "hi": hi}


def chance_rate(targets: Sequence[str]) -> float:
    """Share of the most common target: what the best constant answer scores by strict exact match."""
    if not targets:
        return float("nan")
    _, counts = np.unique(np.asarray(targets), return_counts=True)
    return float(counts.max() / len(targets))


def rate_with_interval(flags: Sequence[bool], n_boot: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> dict:
    """A rate (e.g. behaviour changed, or the noise floor) with its bootstrap 95% interval."""
    x = np.asarray(flags, dtype=float)
    if not len(x):
        return {"value": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    lo, hi = interval(lambda idx: float(x[idx].mean()), len(x), None, n_boot, seed)
    return {"value": float(x.mean()), "lo": lo, "hi": hi, "n": len(x)}


def strict_by_question(examples: Sequence, predictions: Sequence[str], groups: Sequence | None = None,
                       n_boot: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> dict[str, dict[str, float]]:
    """Per question type of behaviour tasks, flat fields for a metrics row: strict_exact_match,
    strict_changed_f1, strict_unchanged_f1, each with `_lo` / `_hi` (feature descriptions are skipped)."""
    by_q: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        if ex.task != "features_explain":
            by_q.setdefault(ex.question_type, []).append(i)
    out = {}
    for q, idx in by_q.items():
        items = score_items(q, [predictions[i] for i in idx], [examples[i].target for i in idx])
        ci = metrics_with_intervals(items, [groups[i] for i in idx] if groups is not None else None, n_boot, seed)
        row = {}
        for name, v in ci.items():
            key = name if name == "strict_exact_match" else f"strict_{name}"
            row.update({key: v["value"], f"{key}_lo": v["lo"], f"{key}_hi": v["hi"]})
        out[q] = row
    return out
