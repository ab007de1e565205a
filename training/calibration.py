"""How far to trust one explanation: the explainer's probability of its own answer, and how well it is calibrated.

Per item, two numbers read from the trained explainer under teacher forcing (no sampling):
- `confidence`: the probability of its own greedy answer, the product of its answer tokens' probabilities
  (end of sequence included, as training scores it), i.e. the chance the explainer gives to saying exactly
  this, which is what strict exact match asks;
- `p_changed` (behaviour-change explanations only): the probability of "changed" against "unchanged", read
  at the first answer token where the two sentence forms of the target (training/examples.py) part, after
  teacher forcing their common start, and normalised over those two tokens.

Scored against the truth, with seeded bootstrap 95% intervals resampling the same units as the strict
scores (whole groups when given):
- Brier score of `confidence` against the item being right (strict exact match; feature descriptions:
  exact match), lower is better;
- expected calibration error over ECE_BINS fixed, equal-width confidence bins: sum over bins of
  (share of items in the bin) x |mean confidence - accuracy|, lower is better;
- AUROC of `p_changed` for the target's changed flag (0.5 = no information, ties count half).
Shuffling the confidences across items (the bug injection in the tests) keeps their distribution but
breaks the pairing: ECE and Brier rise, AUROC falls toward 0.5.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from lm.batching import token_budget_batches
from records.schema import Interval
from training import data as D
from training.examples import CHANGED, UNCHANGED, Example
from training.metrics import BOOTSTRAP_SEED, N_BOOTSTRAP, bootstrap_indices, changed_flag

ECE_BINS = 10


def brier(confidence: Sequence[float], correct: Sequence[bool]) -> float:
    """Mean squared gap between the confidence and the 0/1 outcome."""
    c, y = np.asarray(confidence, float), np.asarray(correct, float)
    return float(np.mean((c - y) ** 2)) if len(c) else float("nan")


def ece(confidence: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS) -> float:
    """Expected calibration error over `bins` equal-width bins of [0, 1] (a confidence of 1 falls in the last)."""
    c, y = np.asarray(confidence, float), np.asarray(correct, float)
    if not len(c):
        return float("nan")
    which = np.minimum((c * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(which):
        m = which == b
        total += m.mean() * abs(c[m].mean() - y[m].mean())
    return float(total)


def auroc(score: Sequence[float], label: Sequence[bool]) -> float:
    """Area under the ROC curve: the chance a positive item scores above a negative one (ties: half).
    NaN when one class is absent."""
    s, y = np.asarray(score, float), np.asarray(label, bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(s)  # average ranks for ties: the Mann-Whitney U form
    u = ranks[y].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def calibration_metrics(confidence: Sequence[float], correct: Sequence[bool], p_changed: Sequence[float] | None = None,
                        target_changed: Sequence[bool] | None = None, groups: Sequence | None = None,
                        n_boot: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> dict[str, float | Interval]:
    """Fields for a metrics row: confidence_mean, brier, ece (each an Interval), ece_bins, and, with
    `p_changed`, auroc_changed (an Interval; left out when one class is absent)."""
    c, y = np.asarray(confidence, float), np.asarray(correct, bool)
    stats = {"brier": lambda i: brier(c[i], y[i]), "ece": lambda i: ece(c[i], y[i])}
    if p_changed is not None:
        p, t = np.asarray(p_changed, float), np.asarray(target_changed, bool)
        if t.any() and not t.all():
            stats["auroc_changed"] = lambda i: auroc(p[i], t[i])
    out: dict[str, float | Interval] = {"confidence_mean": float(c.mean()) if len(c) else float("nan"),
                             "ece_bins": float(ECE_BINS)}
    every = np.arange(len(c))
    boots = bootstrap_indices(len(c), groups, n_boot, seed) if len(c) else []
    for name, f in stats.items():
        values = np.array([f(i) for i in boots])
        lo, hi = np.nanpercentile(values, [2.5, 97.5]) if np.isfinite(values).any() else (np.nan, np.nan)
        out[name] = Interval(f(every), float(lo), float(hi))
    # strict JSON: no NaN (a score whose interval has a NaN bound is left out whole)
    return {k: v for k, v in out.items() if np.isfinite([v.value, v.lo, v.hi] if isinstance(v, Interval) else v).all()}


# ---------------------------------------------------------------------------------------------------
# Reading the explainer's probabilities


@torch.no_grad()
def _answer_logprobs(explainer, items: list[D.Encoded], batch_size: int, extra: list[list[int]] | None = None,
                     batch_tokens: int = 0):
    """Per item: the log-probabilities of its answer tokens [n_answer] and, with `extra`, of those token ids
    at its first answer position [len(extra[i])]."""
    explainer.model.eval()
    scored, picked = [None] * len(items), [None] * len(items)
    lengths = [len(item.ids) for item in items]
    order = sorted(range(len(items)), key=lambda i: lengths[i])
    for idx in token_budget_batches(order, lengths, batch_size, batch_tokens):
        batch = D.collate([items[i] for i in idx], explainer.tokenizer.pad_token_id).to(explainer.device)
        embeds = explainer.embed(batch.input_ids, batch.vectors)  # [batch, seq, hidden]
        hidden = explainer.causal_lm.get_decoder()(inputs_embeds=embeds, use_cache=False).last_hidden_state
        logits = explainer.causal_lm.get_output_embeddings()(hidden[batch.rows, batch.cols]).float()  # [n_answer, V]
        logp = torch.log_softmax(logits, dim=-1)
        own = logp.gather(1, batch.targets[:, None])[:, 0].cpu().numpy()  # [n_answer]
        rows = batch.rows.cpu().numpy()
        for r, i in enumerate(idx):
            at = np.flatnonzero(rows == r)
            scored[i] = own[at]
            if extra is not None:
                picked[i] = logp[at[0], extra[i]].cpu().numpy()
    return scored, picked


def answer_confidence(explainer, examples: list[Example], answers: list[str], batch_size: int,
                      batch_tokens: int = 0) -> list[float]:
    """The explainer's probability of each of its answers (product of its token probabilities under teacher
    forcing of the answer as training encodes it, end of sequence included)."""
    items = [D.encode_example(explainer.tokenizer, dataclasses.replace(ex, target=a), i)
             for i, (ex, a) in enumerate(zip(examples, answers))]
    scored, _ = _answer_logprobs(explainer, items, batch_size, batch_tokens=batch_tokens)
    return [float(np.exp(s.sum())) for s in scored]


def changed_probability(explainer, examples: list[Example], batch_size: int,
                        batch_tokens: int = 0) -> list[float | None]:
    """P(changed) of each behaviour-change explanation item (None for the other items): the two sentence
    forms' common start is teacher-forced, then the probabilities of their first differing tokens are
    normalised to one."""
    where = [i for i, ex in enumerate(examples)
             if ex.question_type == "generative_explanation" and ex.task != "features_explain"]
    items, extra = [], []
    for i in where:
        ex = examples[i]
        same = D.encode_example(explainer.tokenizer, dataclasses.replace(ex, target=UNCHANGED.format("x")), i)
        other = D.encode_example(explainer.tokenizer, dataclasses.replace(ex, target=CHANGED.format("x")), i)
        d = next(j for j, (a, b) in enumerate(zip(same.ids, other.ids)) if a != b)
        # score one token: the first differing position, with the common start as the prompt
        items.append(dataclasses.replace(same, ids=same.ids[:d + 1], prompt_len=d))
        extra.append([same.ids[d], other.ids[d]])
    out: list[float | None] = [None] * len(examples)
    if not items:
        return out
    _, picked = _answer_logprobs(explainer, items, batch_size, extra, batch_tokens)
    for i, lp in zip(where, picked):
        p = np.exp(lp - lp.max())
        out[i] = float(p[1] / p.sum())
    return out


def calibration_by_question(examples: list[Example], correct: Sequence[bool], confidence: Sequence[float],
                            p_changed: Sequence[float | None], groups: Sequence | None = None) -> dict[str, dict]:
    """Per question type: calibration_metrics of the explainer's items."""
    by_q: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        by_q.setdefault(ex.question_type, []).append(i)
    out = {}
    for q, idx in by_q.items():
        pc = [p_changed[i] for i in idx]
        has_pc = all(p is not None for p in pc)
        out[q] = calibration_metrics([confidence[i] for i in idx], [correct[i] for i in idx],
                                     pc if has_pc else None,
                                     [bool(changed_flag(examples[i].target)) for i in idx] if has_pc else None,
                                     [groups[i] for i in idx] if groups is not None else None)
    return out
