"""Scores as introspective-interp's evaluators compute them, each with a seeded bootstrap 95% interval.

Beside our lenient scores (training/scoring.py, `lenient_*`: label inside <<<>>> plus flag; lowercased
first words; unparsable answers counted as "not changed"), these (`strict_*`) are the ones the paper reports:
- generative_explanation: strict exact match = the whole normalised sentence equals the target's
  (strip, lowercase, trailing "." removed, whitespace collapsed) and its changed flag parses equal;
- has-changed F1 and has-unchanged F1 over ALL items, where an unparsable answer counts as wrong (the
  flag opposite to the target's), never as a free "not changed";
- orig_match / change_match: the first token, split on whitespace and punctuation, case-sensitive.

Intervals resample items with replacement (or whole groups, e.g. every item of one trigger, when
`groups` is given, since items of a group are not independent); a gap between two methods resamples
the same indices for both (paired). A score with its interval is a records.schema.Interval, the shape
metrics.json and compare.json share.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from records.schema import Interval

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


def point_value(score: float | Interval) -> float:
    """A metrics row's number: a score with an interval gives its value, any other number itself."""
    return score.value if isinstance(score, Interval) else score


def normalise_sentence(text: str) -> str:
    return " ".join(text.strip().lower().rstrip(".").split())


def changed_flag(text: str) -> bool | None:
    """True for "... change to <<<Y>>>", False for "... remain unchanged from <<<X>>>", else None."""
    norm = normalise_sentence(text)
    if _UNCHANGED.search(norm):
        return False
    return True if _CHANGED.search(norm) else None


def strict_first_token(text: str) -> str:
    """First token, split on whitespace and punctuation, case kept (scoring.lenient_first_word lowercases)."""
    tokens = [t for t in _FIRST_TOKEN_SPLIT.split(text.strip()) if t]
    return tokens[0] if tokens else ""


def strict_item(question_type: str, prediction: str, target: str) -> ItemScore:
    """The paper's score of one answer (scoring.lenient_item is ours, lenient)."""
    if question_type in ("orig_match", "change_match"):
        return ItemScore(strict=strict_first_token(prediction) == strict_first_token(target))
    flag, want = changed_flag(prediction), changed_flag(target)
    if want is None:
        raise ValueError(f"target does not parse: {target!r}")
    strict = flag == want and normalise_sentence(prediction) == normalise_sentence(target)
    return ItemScore(strict=strict, pred_changed=flag, target_changed=want)


def strict_items(question_type: str, predictions: Sequence[str], targets: Sequence[str]) -> list[ItemScore]:
    return [strict_item(question_type, p, t) for p, t in zip(predictions, targets, strict=True)]


def _arrays(items: Sequence[ItemScore]) -> dict[str, np.ndarray]:
    """Per-item columns: strict [n] bool; for generative items also the flag read for F1 [n] and target [n]."""
    cols = {"strict": np.array([i.strict for i in items], dtype=bool)}
    if items and items[0].target_changed is not None:
        target = np.array([i.target_changed for i in items], dtype=bool)
        # an unparsable answer is read as the flag opposite to the target's: a miss or a false alarm
        pred = np.array([i.pred_changed if i.pred_changed is not None else not i.target_changed for i in items])
        cols.update(target=target, pred=pred, valid=np.array([i.pred_changed is not None for i in items]))
    return cols


def _metrics(cols: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric for each row of resampled indices `idx` [n_boot, n] at once: {name: [n_boot]}."""
    out = {"strict_exact_match": cols["strict"][idx].mean(axis=1)}
    if "target" in cols:
        t, p = cols["target"][idx], cols["pred"][idx]  # [n_boot, n]
        for name, positive in (("changed_f1", True), ("unchanged_f1", False)):
            tp = ((p == positive) & (t == positive)).sum(axis=1)
            wrong = (p != t).sum(axis=1)  # every error is a false positive of one class, a miss of the other
            out[name] = np.where(tp > 0, 2 * tp / np.maximum(2 * tp + wrong, 1), 0.0)
        out["valid"] = cols["valid"][idx].mean(axis=1)
    return out


def point_metrics(items: Sequence[ItemScore]) -> dict[str, float]:
    """strict_exact_match, and for generative items changed_f1 / unchanged_f1 / valid."""
    if not items:
        return {"strict_exact_match": float("nan")}
    return {k: float(v[0]) for k, v in _metrics(_arrays(items), np.arange(len(items))[None]).items()}


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


def _resampled(cols: dict[str, np.ndarray], n: int, groups, n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """{metric: [n_boot] values}; group resamples differ in length, so they are scored one by one."""
    idx = bootstrap_indices(n, groups, n_boot, seed)
    if groups is None:
        return _metrics(cols, np.stack(idx))
    per = [_metrics(cols, i[None]) for i in idx]
    return {k: np.concatenate([p[k] for p in per]) for k in per[0]}


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def metrics_with_intervals(items: Sequence[ItemScore], groups: Sequence | None = None,
                           n_boot: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> dict[str, Interval]:
    """{metric: Interval} for every point metric of `items` (percentile 95% intervals)."""
    point = point_metrics(items)
    if not items:
        return {k: Interval(value=v, lo=v, hi=v) for k, v in point.items()}
    boot = _resampled(_arrays(items), len(items), groups, n_boot, seed)
    return {k: Interval(v, *_percentiles(boot[k])) for k, v in point.items()}


def paired_gap(a: Sequence[ItemScore], b: Sequence[ItemScore], metric: str = "strict_exact_match",
               groups: Sequence | None = None, n_boot: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> Interval:
    """metric(a) - metric(b) on the same items, with a paired bootstrap 95% interval (same resamples)."""
    if len(a) != len(b):
        raise ValueError(f"paired gap needs the same items: {len(a)} vs {len(b)}")
    boot_a = _resampled(_arrays(a), len(a), groups, n_boot, seed)[metric]
    boot_b = _resampled(_arrays(b), len(b), groups, n_boot, seed)[metric]
    lo, hi = _percentiles(boot_a - boot_b)
    return Interval(point_metrics(a)[metric] - point_metrics(b)[metric], lo, hi)


def baseline_reaches(explainer: float, baseline_hi: float, gap_lo: float | None) -> bool:
    """Whether a baseline reaches the explainer's strict score, so that the score does not show the explainer
    reads the organism: the paired interval of explainer - baseline reaches 0, or, where no paired gap was
    computed, the baseline's own interval reaches the explainer's score."""
    return gap_lo <= 0 if gap_lo is not None else baseline_hi >= explainer


def _behaviour_questions(examples: Sequence) -> dict[str, list[int]]:
    """Item positions per question type of the behaviour tasks (feature descriptions are scored apart)."""
    by_q: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        if ex.task != "features_explain":
            by_q.setdefault(ex.question_type, []).append(i)
    return by_q


def gaps_by_question(examples: Sequence, explainer: Sequence[str], other: Sequence[str], groups: Sequence | None = None,
                     n_boot: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> dict[str, dict[str, Interval]]:
    """Per question type of behaviour tasks: the explainer's strict exact match minus another method's on
    the same items, with a paired bootstrap interval, as the field `gap` of a metrics row. Paired,
    the between-scenario spread both share cancels: this, not two overlapping marginal intervals, says
    whether the explainer beats the method."""
    out = {}
    for q, idx in _behaviour_questions(examples).items():
        targets = [examples[i].target for i in idx]
        g = paired_gap(strict_items(q, [explainer[i] for i in idx], targets),
                       strict_items(q, [other[i] for i in idx], targets),
                       groups=[groups[i] for i in idx] if groups is not None else None, n_boot=n_boot, seed=seed)
        out[q] = {"gap": g}
    return out


def chance_rate(targets: Sequence[str]) -> float:
    """Share of the most common target: what the best constant answer scores by strict exact match."""
    if not targets:
        return float("nan")
    _, counts = np.unique(np.asarray(targets), return_counts=True)
    return float(counts.max() / len(targets))


def rate_with_interval(flags: Sequence[bool], n_boot: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> Interval:
    """A rate (e.g. behaviour changed, or the noise floor) with its bootstrap 95% interval."""
    x = np.asarray(flags, dtype=float)
    if not len(x):
        return Interval(float("nan"), float("nan"), float("nan"))
    lo, hi = _percentiles(x[np.stack(bootstrap_indices(len(x), None, n_boot, seed))].mean(axis=1))
    return Interval(float(x.mean()), lo, hi)


def strict_by_question(examples: Sequence, predictions: Sequence[str], groups: Sequence | None = None,
                       n_boot: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> dict[str, dict[str, Interval]]:
    """Per question type of behaviour tasks, fields of a metrics row, each an Interval: strict_exact_match,
    strict_changed_f1, strict_unchanged_f1, strict_valid (feature descriptions are skipped)."""
    out = {}
    for q, idx in _behaviour_questions(examples).items():
        items = strict_items(q, [predictions[i] for i in idx], [examples[i].target for i in idx])
        ci = metrics_with_intervals(items, [groups[i] for i in idx] if groups is not None else None, n_boot, seed)
        out[q] = {name if name == "strict_exact_match" else f"strict_{name}": v for name, v in ci.items()}
    return out
