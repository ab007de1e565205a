"""Evaluation outputs: <checkpoint>/eval/metrics.json, predictions.jsonl and compare.json, read by the
report and the demo."""

from __future__ import annotations

from pathlib import Path

import msgspec

from records.errors import InputError
from records.schema.summaries import Interval, read_summary

# ---------------------------------------------------------------------------------------------------
# Evaluation outputs: <checkpoint>/eval/metrics.json and predictions.jsonl, read by the report and the demo.


class AttributeScoring(msgspec.Struct, forbid_unknown_fields=True):
    """How per-attribute accuracy of feature descriptions was decided on one split and question type
    (training/attributes.py): the chance level of each attribute and the word n-grams ("marks") that name
    each value, learnt from the training descriptions."""

    n: int  # items whose cluster has attributes
    chance: dict[str, float]  # attribute -> the training majority value's share of the items
    marks: dict[str, dict[str, list[str]]]  # attribute -> value -> the n-grams that name it ([]: never named)


# metrics.json's shape: 2 = every score with a 95% interval is an Interval (strict_*, gap, brier, ...);
# 1 (files without `version`) = flat `<key>`, `<key>_lo`, `<key>_hi` floats, refused by read_eval_metrics.
EVAL_METRICS_VERSION = 2


class EvalMetrics(msgspec.Struct, forbid_unknown_fields=True):
    """metrics.json: split -> question type -> method -> metric -> a number (n, exact_match, ...; NaN
    where a metric has no items) or, for a score with a bootstrap 95% interval (strict_*, gap, ...), an
    Interval. Feature descriptions also carry semantic_similarity (MiniLM), lm_judge (the paper's 1-5
    judge as (s-1)/4, when configured) and, when the records came with cluster attributes,
    attribute:<name> and attribute_mean (share of items whose description names the right value)."""

    checkpoint: str
    splits: dict[str, dict[str, dict[str, dict[str, float | Interval]]]]
    attributes: dict[str, dict[str, AttributeScoring]] = {}  # split -> question type -> how it was scored
    feature_judge: str = ""  # the LM judge of feature descriptions; "" = not configured
    seconds: dict[str, float] = {}  # wall time of evaluate's pieces (few-shot, calibration, templates, ...)
    # split -> question type -> why the explainer counts as collapsed (one answer for all; on the test
    # split also no better than the majority answer): training/collapse.py
    collapse: dict[str, dict[str, str]] = {}
    version: int = 1  # EVAL_METRICS_VERSION of the writer; files written before the field are version 1


def read_eval_metrics(path: str | Path) -> EvalMetrics:
    """metrics.json of the current shape; an older one is one InputError line, never read as numbers."""
    metrics = read_summary(path, EvalMetrics)
    if metrics.version != EVAL_METRICS_VERSION:
        raise InputError(f"{path}: metrics.json of an older format (version {metrics.version}, this code reads "
                         f"{EVAL_METRICS_VERSION}): rerun `af-introspect evaluate` on that checkpoint")
    return metrics




class QuestionComparison(msgspec.Struct, forbid_unknown_fields=True):
    """One question type of a self-vs-cross comparison: every method's strict scores, and the gaps."""

    n: int
    n_groups: int  # resampled together by the bootstrap (e.g. every item of one held-out trigger)
    chance: float  # the most common target's share: what a constant answer scores
    methods: dict[str, dict[str, Interval]]  # method -> metric -> score
    gaps: dict[str, Interval] = {}  # "self-<method>" -> paired gap in strict exact match


class CompareVerdict(msgspec.Struct, forbid_unknown_fields=True):
    question_type: str
    gap: Interval  # self - cross
    min_gap: float
    privileged_access: bool  # gap >= min_gap and its interval above 0


class CompareResult(msgspec.Struct, forbid_unknown_fields=True):
    """compare.json (af-introspect compare): self vs cross explainer beside text-only baselines."""

    train_config: str
    models: dict[str, str]  # arm -> the model it started from
    group_pattern: str
    scores: dict[str, QuestionComparison]
    verdict: CompareVerdict
    # arm -> what it was trained from and on (training/compare.py arm_fingerprint); {} before they were kept
    arms: dict[str, dict[str, str]] = {}


class PredictionRow(msgspec.Struct, forbid_unknown_fields=True):
    """One held-out item's answer by one method, with its lenient scores (predictions.jsonl)."""

    split: str
    method: str
    task: str
    question_type: str
    sample_id: str
    target: str
    prediction: str
    exact_match: bool
    content_match: bool | None = None
    valid: bool | None = None
    pred_changed: bool | None = None
    target_changed: bool | None = None
    lm_judge: float | None = None  # feature descriptions with a judge configured: (rating - 1) / 4
    attribute_correct: dict[str, bool] | None = None  # attribute -> the description names the right value
    confidence: float | None = None  # the explainer's probability of this answer (training/calibration.py)
    p_changed: float | None = None  # the explainer's P(changed) (behaviour-change explanations)
    draw: int | None = None  # few-shot baselines: which draw of solved examples (training/peers.py)
