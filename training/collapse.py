"""Collapse: an explainer that answers everything alike, or no better than the most common answer.

A run can end with a falling loss and one sentence for every item (a CPU run of a real small model as
explainer did: issue #28), and nothing downstream said so. Training's evals and `evaluate` flag it per
question type, in the log, in metrics.jsonl / metrics.json, and the report prints the flag.
"""

from __future__ import annotations

import logging

from training.metrics import point_value

log = logging.getLogger(__name__)


def one_answer(targets: list[str], preds: list[str]) -> str:
    """The reason, when every prediction is the same text while the targets are not all the same; else ""."""
    answers = {p.strip() for p in preds}
    if len(preds) > 1 and len(answers) == 1 and len({t.strip() for t in targets}) > 1:
        return f"all {len(preds)} answers are one: {preds[0].strip()[:80]!r}"
    return ""


def no_better_than_majority(metric: str, explainer: float, majority: float) -> str:
    """The reason, when the explainer's score is at or below the majority answer's; else "". A perfect score
    is never a collapse: where one answer is right for every item (Task 2's orig_match on a test split of
    one behaviour) the majority is perfect too, and there is nothing to beat."""
    if explainer == explainer and majority == majority and explainer <= majority and explainer < 1.0:
        return f"{metric} {explainer:.3f} <= the majority answer's {majority:.3f}"
    return ""


def collapse_flags(examples: list, preds: list[str], majority_scores: dict[str, tuple[str, float, float]] | None
                   ) -> dict[str, str]:
    """{question type: reason} for each question type that collapsed. `majority_scores`: {question type:
    (metric, explainer score, majority score)} where the majority comparison applies (the test split)."""
    by_q: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        by_q.setdefault(ex.question_type, []).append(i)
    flags = {}
    for q, idx in by_q.items():
        reasons = [one_answer([examples[i].target for i in idx], [preds[i] for i in idx])]
        if majority_scores and q in majority_scores:
            reasons.append(no_better_than_majority(*majority_scores[q]))
        reasons = [r for r in reasons if r]
        if reasons:
            flags[q] = "; ".join(reasons)
    return flags


def primary_metric(scores: dict) -> str:
    """The score a collapse is judged by: MiniLM similarity for descriptions, else the strict exact match
    where computed, else exact match."""
    for key in ("semantic_similarity", "strict_exact_match", "exact_match"):
        if key in scores:
            return key
    return "exact_match"


def warn(where: str, flags: dict[str, str]) -> None:
    for q, reason in flags.items():
        log.warning("COLLAPSE %s [%s]: %s (the explainer is not reading its input)", where, q, reason)


def evaluation_flags(answers: dict, results: dict) -> dict[str, dict[str, str]]:
    """{split: {question type: reason}} for `evaluate`: one answer for everything on any split; on the
    test split also no better than the majority answer. `answers`: (split, method) -> (examples,
    predictions); `results`: split -> question type -> method -> metrics."""
    out = {}
    for split, qs in results.items():
        examples, preds = answers[split, "explainer"]
        majority = None
        if split == "test":
            majority = {}
            for q, methods in qs.items():
                metric = primary_metric(methods.get("explainer", {}))
                if metric in methods.get("majority", {}):
                    majority[q] = (metric, point_value(methods["explainer"][metric]),
                                   point_value(methods["majority"][metric]))
        flags = collapse_flags(examples, preds, majority)
        if flags:
            out[split] = flags
            warn(f"evaluate {split}", flags)
    return out


def lines(flags: dict[str, dict[str, str]]) -> list[str]:
    """One loud line per collapsed split and question type."""
    return [f"COLLAPSE: {split} {q}: {reason}" for split, qs in flags.items() for q, reason in qs.items()]


def training_flags(pairs: list, majority: list[str]) -> dict[str, str]:
    """{question type: reason} for one of training's evals: `pairs` its (example, answer) pairs, `majority`
    the most common training answer for each of those examples (compared by exact match, so not for
    feature descriptions, which rarely match word for word)."""
    from training.scoring import score

    if not pairs:
        return {}
    examples, preds = [ex for ex, _ in pairs], [p for _, p in pairs]
    ours, theirs = score(examples, preds), score(examples, majority)
    worded = {ex.question_type for ex in examples if ex.task == "features_explain"}
    by_majority = {q: ("exact_match", ours[q]["exact_match"], theirs[q]["exact_match"]) for q in ours
                   if q not in worded}
    return collapse_flags(examples, preds, by_majority)
