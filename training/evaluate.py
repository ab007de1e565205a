"""`af-introspect evaluate`: score an explainer on held-out records, next to its baselines.

For each split (the test split, then every configured gold_106-derived eval set) and question type:
- the trained explainer (greedy),
- the untrained explainer (the same model with the LoRA adapter disabled),
- the majority class (the most common training target of that question type),
- the nearest neighbour (the training target of the most similar training input: MiniLM embedding of
  the input text, or cosine of the input vector for feature records);
- steering records: the lookup table (the most common training target of each arm and context), and the
  no-effect bound (the true unsteered behaviour reported as unchanged: an explainer that ignores the
  intervention);
- tasks that feed vectors: the trained explainer with its vectors zeroed, and shuffled so that each item
  gets the vector of an item of another group (another feature cluster; another vector for steering)
  (bug injections: if the vector carries what the explainer says, both fall to the vector-free baselines);
  and the vector nearest neighbour (the most common answer of the training items with the most similar vector);
- the peers' baselines and checks (training/peers.py): few-shot in context (the untrained explainer given k
  solved training examples, test.fewshot_k, over seeded draws), the explainer's calibrated confidence (its
  probability of its own answer and P(changed): Brier, ECE, AUROC of "changed"; training/calibration.py),
  and, where a question type has several prompt templates, the explainer's score under each
  (training/templates.py).
The baselines and vector controls themselves are training/eval_baselines.py.

Scoring: ours, lenient (training/scoring.py: parsed behaviour-change sentences, first-word matches,
MiniLM similarity for feature descriptions, and the paper's LM judge of feature descriptions when
test.feature_judge names a model), and the paper's strict scores with bootstrap 95% intervals
(training/metrics.py; each an Interval in metrics.json). Feature records that came with cluster attributes
also get per-attribute accuracy beside its chance level (training/attributes.py). Predictions go to
predictions.jsonl beside metrics.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import msgspec
import numpy as np
import torch

from lm.models import resolve_model
from records.assets import load_cluster_attributes
from records.errors import InputError
from records.jsonl import write_json_atomic, write_records_atomic
from records.schema import (
    CLUSTER_ATTRIBUTES,
    EVAL_METRICS_VERSION,
    AttributeScoring,
    EvalMetrics,
    PredictionRow,
)
from training import collapse
from training.attributes import attribute_scores
from training.checkpoint import COMPLETE, check_adapter_base, load_weights, saved_token_indices
from training.continuous import resolve_markers
from training.dataset import load_data, needs_markers
from training.eval_baselines import (
    lookup_predictions,
    majority_predictions,
    nearest_neighbour_predictions,
    no_effect_predictions,
    skip_control,
    vector_control_examples,
)
from training.examples import Example, dataset_dir
from training.metrics import gaps_by_question, point_value, strict_by_question
from training.model import build_explainer, load_tokenizer, pick_device
from training.peers import VECTOR_NN, evaluate_peers, vector_nn_predictions, vector_question_types
from training.scoring import MiniLM, feature_judge_config, judge_descriptions, lenient_item, predict, score
from training.task1_evidence import task1_gaps, vector_probe_predictions

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# Running


def run_evaluation(cfg, checkpoint: str | Path | None = None, out_dir: str | Path | None = None,
                   limit: int = 0, untrained: bool = True, explainer=None, controls: bool = True) -> dict:
    """Evaluate the explainer of `checkpoint` (default <output_dir>/final) and the baselines.

    Returns {"splits": {split: {question_type: {method: metrics}}}, "out_dir": ...}; writes
    metrics.json and predictions.jsonl into `out_dir` (default <checkpoint>/eval).
    """
    checkpoint = Path(checkpoint) if checkpoint else Path(cfg.output_dir) / "final"
    if explainer is None and not (checkpoint / COMPLETE).is_file():
        raise InputError(f"{checkpoint}: not a complete checkpoint (no COMPLETE marker); train first or pass "
                         "--checkpoint")
    if explainer is None:
        check_adapter_base(checkpoint, cfg.model_path)
    judge_cfg, judge_name = feature_judge_config(cfg)  # a refused judge stops here, before any model loads
    out = Path(out_dir) if out_dir else checkpoint / "eval"
    explainer, data, device = load_explainer(cfg, checkpoint, explainer)
    embed = MiniLM("cuda" if device.type == "cuda" else "cpu")
    attributes = feature_attributes(cfg)
    splits = {**split_by_direction(data.train, data.test), **{f"eval:{k}": v for k, v in data.eval_sets.items()}}
    answers: dict[tuple[str, str], tuple[list[Example], list[str]]] = {}  # (split, method) -> examples, predictions
    peers = {}  # split -> the peers' baselines and the explainer's calibration (training/peers.py)
    seconds: dict[str, float] = {}
    sizes = {split: min(len(v), limit) if limit else len(v) for split, v in splits.items()}
    log.info("evaluate: %s (each method's time is logged as it finishes)",
             ", ".join(f"{split} {n} items" for split, n in sizes.items() if n))
    for split, examples in splits.items():
        examples = examples[:limit] if limit else examples
        if not examples:
            continue
        preds, peers[split] = answer_split(explainer, data.train, examples, cfg, embed, attributes, untrained,
                                           controls, split)
        for piece, t in peers[split].seconds.items():
            seconds[piece] = seconds.get(piece, 0.0) + t
        answers.update({(split, method): (examples, p) for method, p in preds.items()})
    judged = judge_descriptions(answers, judge_cfg) if judge_cfg else {}
    results: dict = {}
    scoring: dict = {}
    rows = []
    for split in dict.fromkeys(split for split, _ in answers):
        examples = answers[split, "explainer"][0]
        preds = {method: p for (s, method), (_, p) in answers.items() if s == split}
        by_attribute, named, scoring[split] = attribute_scores(data.train, examples, preds, attributes)
        results[split], split_rows = score_split(split, examples, preds, embed, judged, by_attribute, named,
                                                 peers[split])
        rows += split_rows
        # Task 1: explainer - each method, paired over held-out clusters (training/task1_evidence.py)
        for q, per_method in task1_gaps(examples, preds, embed, named).items():
            for method, g in per_method.items():
                results[split].get(q, {}).get(method, {}).update(g)
    scoring = {split: {q: AttributeScoring(**info) for q, info in qs.items()} for split, qs in scoring.items() if qs}
    collapsed = collapse.evaluation_flags(answers, results)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "metrics.json", EvalMetrics(checkpoint=str(checkpoint), splits=results, attributes=scoring,
                                                        feature_judge=judge_name, seconds=seconds,
                                                        collapse=collapsed, version=EVAL_METRICS_VERSION))
    write_records_atomic(out / "predictions.jsonl", rows)
    describes = any(ex.task == "features_explain" for exs, _ in answers.values() for ex in exs)
    table = "\n".join([format_table(results, scoring, judge_name if describes else None), *collapse.lines(collapsed)])
    print(table)
    (out / "metrics_table.txt").write_text(table + "\n")
    return {"splits": results, "out_dir": str(out), "table": table, "collapse": collapsed}


def load_explainer(cfg, checkpoint: Path, explainer=None) -> tuple:
    """(explainer, data, device): the checkpoint's explainer (or the one given, already in memory) and the
    run's data, held-out sets included (evaluation reads them on purpose: no held-out guard)."""
    device, dtype = pick_device(cfg)
    if explainer is not None:
        return explainer, load_data(cfg, explainer.tokenizer, explainer.markers, paths=None), device
    tokenizer = load_tokenizer(resolve_model(cfg.model_path, "model_path"))
    markers = {}
    if needs_markers(cfg):
        saved = checkpoint / "markers.json"
        markers = (json.loads(saved.read_text()) if saved.is_file()
                   else resolve_markers(tokenizer, msgspec.structs.asdict(cfg.continuous_tokens)))
    data = load_data(cfg, tokenizer, markers, paths=None)
    explainer = build_explainer(cfg, data.vector_dim, device, dtype, tokenizer, markers,
                                saved_token_indices(checkpoint))
    load_weights(checkpoint, explainer)
    return explainer, data, device


def vector_controls(explainer, examples: list[Example], cfg, seed: int) -> dict[str, list[str]]:
    """The trained explainer's answers with its input vectors broken (eval_baselines.vector_control_examples)."""
    return {name: predict(explainer, exs, cfg.test) for name, exs in vector_control_examples(examples, seed).items()}


def answer_split(explainer, train: list[Example], examples: list[Example], cfg, embed, attributes: dict,
                 untrained: bool, controls: bool, split: str = "test") -> tuple[dict[str, list[str]], object]:
    """Every method's answers to one split's examples (method -> predictions), and the peers' results."""
    def timed(method: str, answer):
        start = time.perf_counter()
        result = answer()
        if result:  # a text task has no vector controls: nothing to say
            log.info("evaluate %s: %s on %d items in %.1f s", split, method, len(examples), time.perf_counter() - start)
        return result

    preds = {"explainer": timed("explainer", lambda: predict(explainer, examples, cfg.test))}
    if untrained:
        preds["untrained"] = timed("untrained", lambda: predict(explainer, examples, cfg.test, adapter=False))
    if controls:  # off for a comparison's cross arm, whose broken-vector answers nobody reads
        preds.update(timed("vector controls", lambda: vector_controls(explainer, examples, cfg, cfg.train.seed)))
    preds["majority"] = majority_predictions(train, examples)
    if any(ex.task == "act_patch" for ex in examples):
        preds["lookup"] = lookup_predictions(train, examples)
    if all(ex.task == "act_patch" for ex in examples):  # a steering-only run (the bound needs its records)
        preds["no_effect"] = no_effect_predictions(examples)
    preds["nearest_neighbour"] = nearest_neighbour_predictions(train, examples, embed)
    if vector_question_types(examples):
        preds[VECTOR_NN] = vector_nn_predictions(train, examples)
    # the few-shot baseline runs with the untrained one; calibration and templates not for a cross arm
    peer = evaluate_peers(explainer, train, examples, preds["explainer"], _groups(examples), cfg, embed,
                          fewshot=untrained, explainer_extras=controls, split=split)
    probe = vector_probe_predictions(train, examples, attributes, cfg.train.seed) if attributes else None
    if probe is not None:  # Task 1 with cluster attributes: the vectors read by linear probes, no LM
        preds["vector_probe"] = probe
    return preds, peer


def score_split(split: str, examples: list[Example], preds: dict[str, list[str]], embed, judged: dict,
                by_attribute: dict, named: dict, peer) -> tuple[dict, list[PredictionRow]]:
    """One split's metrics (question type -> method -> metrics) and its prediction rows."""
    results: dict = {}
    rows = []
    # the paper's scores, with intervals (training/metrics.py) resampling whole scenarios where a scenario
    # has several items (Task 2: one per arm), else items
    groups = _groups(examples)
    vector_qs = vector_question_types(examples)
    for method, p in preds.items():
        strict = strict_by_question(examples, p, groups)
        gaps = gaps_by_question(examples, preds["explainer"], p, groups) if method != "explainer" else {}
        judge = judge_means(examples, judged.get((split, method)))
        for q, m in score(examples, p, embed).items():
            if _shown(method, q, examples, vector_qs):
                results.setdefault(q, {})[method] = {**m, **strict.get(q, {}), **gaps.get(q, {}), **judge.get(q, {}),
                                                     **by_attribute.get(q, {}).get(method, {})}
        for i, (ex, pred) in enumerate(zip(examples, p)):
            if not _shown(method, ex.question_type, examples, vector_qs):
                continue
            rows.append(PredictionRow(split=split, method=method, task=ex.task, question_type=ex.question_type,
                                      sample_id=ex.sample_id, target=ex.target, prediction=pred,
                                      lm_judge=judged[split, method][i] if judged else None,
                                      attribute_correct=named[method][i] if named else None,
                                      **_confidence(peer, method, i), **lenient_item(ex, pred)))
    return results, rows + peer_rows(split, examples, peer, results)


def _shown(method: str, question_type: str, examples: list[Example], vector_qs: set[str]) -> bool:
    """Whether a method is scored on a question type: not the no-effect bound on orig_match (its answer there
    is the truth), the vector nearest neighbour only where every item reads a vector, no vector control
    where the prompt has no vector."""
    return not (method == "no_effect" and question_type == "orig_match") and _scored(method, question_type, vector_qs) \
        and not skip_control(method, question_type, examples)


def _groups(examples: list[Example]) -> list | None:
    """The bootstrap's units: whole scenarios where a scenario has several items (Task 2: one per arm), else items."""
    return [ex.meta["group"] for ex in examples] if all("group" in ex.meta for ex in examples) else None


def _scored(method: str, question_type: str, vector_qs: set[str]) -> bool:
    """The vector nearest neighbour is scored only on question types whose items all read a vector."""
    return method != VECTOR_NN or question_type in vector_qs


def _confidence(peer, method: str, i: int) -> dict:
    """The explainer's probability of its answer and P(changed), for its prediction rows."""
    if method != "explainer" or peer.confidence is None:
        return {}
    return {"confidence": peer.confidence[i], "p_changed": peer.p_changed[i]}


def peer_rows(split: str, examples: list[Example], peer, results: dict) -> list[PredictionRow]:
    """Put the split's few-shot scores and the explainer's calibration and per-template fields into `results`
    (question type -> method -> metrics); return the few-shot baselines' prediction rows (one per draw)."""
    for q, methods in peer.rows.items():
        results.setdefault(q, {}).update(methods)
    for q, fields in peer.explainer.items():
        results.get(q, {}).get("explainer", {}).update(fields)
    rows = []
    for method, draws in peer.fewshot.items():
        for draw, preds in enumerate(draws):
            for i, pred in zip(peer.positions_of(method), preds):
                ex = examples[i]
                rows.append(PredictionRow(split=split, method=method, task=ex.task, question_type=ex.question_type,
                                          sample_id=ex.sample_id, target=ex.target, prediction=pred, draw=draw,
                                          **lenient_item(ex, pred)))
    return rows


HELD_OUT_DIRECTION = "test:held_out_direction"


def split_by_direction(train: list[Example], test: list[Example]) -> dict[str, list[Example]]:
    """{"test": ...} and, when some steering test items add a direction no training item added (steer's
    `test_directions`), those items apart as HELD_OUT_DIRECTION: "test" then holds the held-out scenarios
    under the trained directions, the other split asks whether the explainer generalises to a new one."""
    seen = {ex.meta.get("direction") for ex in train}
    new = {id(ex) for ex in test if ex.task == "act_patch" and ex.meta.get("direction") not in seen}
    if not new:
        return {"test": test}
    return {"test": [ex for ex in test if id(ex) not in new],
            HELD_OUT_DIRECTION: [ex for ex in test if id(ex) in new]}


def feature_attributes(cfg) -> dict[int, dict[str, str]]:
    """Cluster id -> {attribute: value} beside the Task 1 records (the features stage copies the
    cluster_attributes it was given there); {} when there are none."""
    if "features_explain" not in cfg.train.tasks:
        return {}
    path = dataset_dir(cfg, "features_explain") / CLUSTER_ATTRIBUTES
    return load_cluster_attributes(path) if path.is_file() else {}


def judge_means(examples: list[Example], scores: list[float | None] | None) -> dict[str, dict[str, float]]:
    """{question type: {"lm_judge": mean judge score}} over the judged examples."""
    by_q: dict[str, list[float]] = {}
    for ex, s in zip(examples, scores or []):
        if s is not None:
            by_q.setdefault(ex.question_type, []).append(s)
    return {q: {"lm_judge": float(np.mean(v))} for q, v in by_q.items()}


def format_table(results: dict, scoring: dict | None = None, judge: str | None = None) -> str:
    """One row per split, question type and method; columns present for any row are shown. With
    attribute scoring, a `chance` row per question type; with `judge` (not None: feature descriptions
    were scored) a last line naming the LM judge or saying it was not configured."""
    cols = ["exact_match", "strict_exact_match", "content_match", "changed_f1", "strict_changed_f1",
            "changed_exact_match", "semantic_similarity", "lm_judge"]
    every = [m for qs in results.values() for ms in qs.values() for m in ms.values()]
    cols += sorted({k for m in every for k in m if k.startswith("attribute:")}) + ["attribute_mean"]
    shown = [c for c in cols if any(c in m for m in every)]
    header = f"{'split':<14} {'question_type':<24} {'method':<18} {'n':>5} " + " ".join(f"{c:>20}" for c in shown)
    lines = [header, "-" * len(header)]
    for split, qs in results.items():
        for q, methods in qs.items():
            for method, m in methods.items():
                cells = " ".join(f"{point_value(m[c]):>20.3f}" if c in m else f"{'-':>20}" for c in shown)
                lines.append(f"{split:<14} {q:<24} {method:<18} {m['n']:>5} {cells}")
            info = (scoring or {}).get(split, {}).get(q)
            if info:
                chance = {f"attribute:{a}": v for a, v in info.chance.items()}
                chance["attribute_mean"] = float(np.mean(list(info.chance.values())))
                cells = " ".join(f"{chance[c]:>20.3f}" if c in chance else f"{'-':>20}" for c in shown)
                lines.append(f"{split:<14} {q:<24} {'chance':<18} {info.n:>5} {cells}")
    if judge is not None:
        lines.append(f"LM judge: {judge or 'not configured (test.feature_judge.model)'}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Greedy answers of the trained explainer on the test split (and configured gold_106-derived "
                     "eval sets), scored per question type against the untrained explainer, the majority class and "
                     "the nearest neighbour; steering records also against the arm-and-context lookup table and "
                     "the no-effect bound, on the held-out scenarios and apart on any held-out direction (steer's "
                     "test_directions); vector tasks also with the vectors zeroed and shuffled and against the vector "
                     "nearest neighbour; every task against the few-shot untrained explainer (test.fewshot_k), with "
                     "the explainer's calibration (Brier, ECE, AUROC of changed) and, with several prompt templates, "
                     "its score under each; feature "
                     "descriptions also by the LM judge (test.feature_judge) and, with cluster attributes, per "
                     "attribute beside chance. Writes metrics.json, metrics_table.txt and predictions.jsonl.")
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
