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

Scoring follows introspective-interp's evaluators (training/scoring.py: parsed behaviour-change
sentences, first-word matches, MiniLM similarity for feature descriptions, and its LM judge of feature
descriptions when test.feature_judge names a model). Feature records that came with cluster attributes
also get per-attribute accuracy beside its chance level (training/attributes.py). Predictions go to
predictions.jsonl beside metrics.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections import Counter
from pathlib import Path

import msgspec
import numpy as np
import torch

from lm.models import resolve_model
from records.assets import load_cluster_attributes
from records.errors import InputError
from records.jsonl import write_json_atomic, write_records_atomic
from records.schema import CLUSTER_ATTRIBUTES, AttributeScoring, EvalMetrics, PredictionRow
from training import collapse
from training.attributes import attribute_scores
from training.checkpoint import COMPLETE, check_adapter_base, load_weights, saved_token_indices
from training.continuous import resolve_markers
from training.dataset import load_data, needs_markers
from training.examples import Example, causal_target, dataset_dir
from training.metrics import gaps_by_question, strict_by_question
from training.model import build_explainer, load_tokenizer, pick_device
from training.peers import VECTOR_NN, evaluate_peers, vector_nn_predictions, vector_question_types
from training.scoring import MiniLM, feature_judge_config, judge_descriptions, predict, score, score_item
from training.task1_evidence import task1_gaps, vector_probe_predictions

log = logging.getLogger(__name__)


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


def lookup_predictions(train: list[Example], test: list[Example]) -> list[str]:
    """The lookup table a reviewer would fit first: the most common training target per question type and
    intervention (steering: arm and context, the text of the grid cell; no scenario, no vector), falling
    back to the question type's majority. An explainer that does not beat it has not used the prompt
    or the vector."""
    def cell(ex: Example) -> tuple:
        return ex.question_type, ex.meta.get("arm"), ex.meta.get("context")

    counts: dict[tuple, Counter] = {}
    for ex in train:
        counts.setdefault(cell(ex), Counter())[ex.target] += 1
    fallback = dict(zip([ex.question_type for ex in test], majority_predictions(train, test)))
    return [counts[cell(ex)].most_common(1)[0][0] if cell(ex) in counts else fallback[ex.question_type]
            for ex in test]


def no_effect_predictions(test: list[Example]) -> list[str]:
    """Steering records: the organism's own unsteered behaviour, reported as unchanged, i.e. what an
    explainer that knows the organism perfectly but ignores the intervention would say. The vector-free
    bound for Task 2: an explainer whose vectors are zeroed should fall to it, not below the majority.
    (Not scored on orig_match, whose answer it is.)"""
    return [causal_target(ex.meta["original"], ex.meta["original"]) if ex.question_type == "generative_explanation"
            else " " + ex.meta["original"] for ex in test]


def vector_controls(explainer, examples: list[Example], cfg, seed: int) -> dict[str, list[str]]:
    """The trained explainer's answers with its input vectors broken: zeroed (what it says from the text
    alone) and shuffled within one question type so that each item reads the vector of an item of
    another group (`cross_group_donors`). If the vectors carry what the explainer reports, both fall to the
    vector-free baselines."""
    if not any(ex.vector is not None for ex in examples):
        return {}
    rng = np.random.default_rng(seed)
    zeroed, shuffled = [], list(examples)
    for ex in examples:
        zeroed.append(dataclasses.replace(ex, vector=None if ex.vector is None else np.zeros_like(ex.vector)))
    for q in dict.fromkeys(ex.question_type for ex in examples):
        idx = [i for i, ex in enumerate(examples) if ex.question_type == q and ex.vector is not None]
        donors = cross_group_donors([_vector_group(examples[i]) for i in idx], rng)
        for i, d in zip(idx, donors):
            shuffled[i] = dataclasses.replace(examples[i], vector=examples[idx[d]].vector)
    n, bs = cfg.test.max_new_tokens, cfg.test.batch_size
    return {"zeroed_vectors": predict(explainer, zeroed, n, bs), "shuffled_vectors": predict(explainer, shuffled, n, bs)}


VECTOR_CONTROLS = ("zeroed_vectors", "shuffled_vectors")


def skip_control(method: str, question_type: str, examples: list[Example]) -> bool:
    """A vector control on a question type whose prompt carries no vector (Task 2's orig_match) repeats the
    explainer's answers: it is not scored there, so no NOTE says a broken vector 'reaches' it."""
    return method in VECTOR_CONTROLS and not any(ex.vector is not None for ex in examples
                                                 if ex.question_type == question_type)


def _vector_group(ex: Example):
    """What a swapped-in vector must differ in: a feature of the same cluster has the same planted
    attributes, and a steering arm repeats one vector over scenarios, so a swap inside the group would
    hand the explainer the same information (a perfect reader kept 0.28 attribute accuracy that way)."""
    cluster = ex.meta.get("cluster_id")
    return ("cluster", cluster) if cluster is not None else ("vector", ex.vector.tobytes())


def cross_group_donors(groups: list, rng: np.random.Generator) -> list[int]:
    """For each position, a position drawn uniformly from the other groups (itself if there is none).
    Drawn per item, not as a permutation: moving whole groups onto each other would make a control's
    score hinge on which two groups happen to meet (two held-out clusters sharing a modifier)."""
    members: dict = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    order = [i for ids in members.values() for i in ids]  # each group's positions in one block
    start, k = {}, 0
    for g, ids in members.items():
        start[g], k = k, k + len(ids)
    donors = []
    for i, g in enumerate(groups):
        own = len(members[g])
        if own == len(groups):
            donors.append(i)
            continue
        r = int(rng.integers(len(groups) - own))  # a position outside the group's block
        donors.append(order[r + own if r >= start[g] else r])
    return donors


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


def run_evaluation(cfg, checkpoint: str | Path | None = None, out_dir: str | Path | None = None,
                   limit: int = 0, untrained: bool = True, explainer=None, controls: bool = True) -> dict:
    """Evaluate the explainer of `checkpoint` (default <output_dir>/final) and the baselines.

    Returns {"splits": {split: {question_type: {method: metrics}}}, "out_dir": ...}; writes
    metrics.json and predictions.jsonl into `out_dir` (default <checkpoint>/eval).
    """
    checkpoint = Path(checkpoint) if checkpoint else Path(cfg.output_dir) / "final"
    if explainer is None and not (checkpoint / COMPLETE).is_file():
        raise InputError(f"{checkpoint}: not a complete checkpoint (no COMPLETE marker); train first or pass --checkpoint")
    if explainer is None:
        check_adapter_base(checkpoint, cfg.model_path)
    judge_cfg, judge_name = feature_judge_config(cfg)  # a refused judge stops here, before any model loads
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
    attributes = feature_attributes(cfg)
    splits = {**split_by_direction(data.train, data.test), **{f"eval:{k}": v for k, v in data.eval_sets.items()}}
    answers: dict[tuple[str, str], tuple[list[Example], list[str]]] = {}  # (split, method) -> examples, predictions
    peers = {}  # split -> the peers' baselines and the explainer's calibration (training/peers.py)
    seconds: dict[str, float] = {}
    for split, examples in splits.items():
        if limit:
            examples = examples[:limit]
        if not examples:
            continue
        preds = {"explainer": predict(explainer, examples, cfg.test.max_new_tokens, cfg.test.batch_size)}
        if untrained:
            preds["untrained"] = predict(explainer, examples, cfg.test.max_new_tokens, cfg.test.batch_size, adapter=False)
        if controls:  # off for a comparison's cross arm, whose broken-vector answers nobody reads
            preds.update(vector_controls(explainer, examples, cfg, cfg.train.seed))
        preds["majority"] = majority_predictions(data.train, examples)
        if any(ex.task == "act_patch" for ex in examples):
            preds["lookup"] = lookup_predictions(data.train, examples)
        if all(ex.task == "act_patch" for ex in examples):  # a steering-only run (the bound needs its records)
            preds["no_effect"] = no_effect_predictions(examples)
        preds["nearest_neighbour"] = nearest_neighbour_predictions(data.train, examples, embed)
        if vector_question_types(examples):
            preds[VECTOR_NN] = vector_nn_predictions(data.train, examples)
        # the few-shot baseline runs with the untrained one; calibration and templates not for a cross arm
        peers[split] = evaluate_peers(explainer, data.train, examples, preds["explainer"], _groups(examples), cfg,
                                      embed, fewshot=untrained, explainer_extras=controls)
        for piece, t in peers[split].seconds.items():
            seconds[piece] = seconds.get(piece, 0.0) + t
        probe = vector_probe_predictions(data.train, examples, attributes, cfg.train.seed) if attributes else None
        if probe is not None:  # Task 1 with cluster attributes: the vectors read by linear probes, no LM
            preds["vector_probe"] = probe
        answers.update({(split, method): (examples, p) for method, p in preds.items()})
    judged = judge_descriptions(answers, judge_cfg) if judge_cfg else {}
    results: dict = {}
    scoring: dict = {}
    rows = []
    for split in dict.fromkeys(split for split, _ in answers):
        examples = answers[split, "explainer"][0]
        preds = {method: p for (s, method), (_, p) in answers.items() if s == split}
        by_attribute, named, scoring[split] = attribute_scores(data.train, examples, preds, attributes)
        results[split] = {}
        for method, p in preds.items():
            # the paper's scores, with intervals (training/metrics.py) resampling whole scenarios where a
            # scenario has several items (Task 2: one per arm), else items
            groups = _groups(examples)
            vector_qs = vector_question_types(examples)
            strict = strict_by_question(examples, p, groups)
            gaps = gaps_by_question(examples, preds["explainer"], p, groups) if method != "explainer" else {}
            judge = judge_means(examples, judged.get((split, method)))
            for q, m in score(examples, p, embed).items():
                if not (method == "no_effect" and q == "orig_match") and _scored(method, q, vector_qs) \
                        and not skip_control(method, q, examples):
                    results[split].setdefault(q, {})[method] = {**m, **strict.get(q, {}), **gaps.get(q, {}),
                                                                **judge.get(q, {}),
                                                                **by_attribute.get(q, {}).get(method, {})}
            for i, (ex, pred) in enumerate(zip(examples, p)):
                if (method == "no_effect" and ex.question_type == "orig_match") or not _scored(
                        method, ex.question_type, vector_qs) or skip_control(method, ex.question_type, examples):
                    continue
                rows.append(PredictionRow(split=split, method=method, task=ex.task, question_type=ex.question_type,
                                          sample_id=ex.sample_id, target=ex.target, prediction=pred,
                                          lm_judge=judged[split, method][i] if judged else None,
                                          attribute_correct=named[method][i] if named else None,
                                          **_confidence(peers[split], method, i), **score_item(ex, pred)))
        rows += peer_rows(split, examples, peers[split], results[split])
        # Task 1: explainer - each method, paired over held-out clusters (training/task1_evidence.py)
        for q, per_method in task1_gaps(examples, preds, embed, named).items():
            for method, g in per_method.items():
                results[split].get(q, {}).get(method, {}).update(g)
    scoring = {split: {q: AttributeScoring(**info) for q, info in qs.items()} for split, qs in scoring.items() if qs}
    collapsed = collapse.evaluation_flags(answers, results)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "metrics.json", EvalMetrics(checkpoint=str(checkpoint), splits=results, attributes=scoring,
                                                        feature_judge=judge_name, seconds=seconds,
                                                        collapse=collapsed))
    write_records_atomic(out / "predictions.jsonl", rows)
    describes = any(ex.task == "features_explain" for exs, _ in answers.values() for ex in exs)
    table = "\n".join([format_table(results, scoring, judge_name if describes else None), *collapse.lines(collapsed)])
    print(table)
    (out / "metrics_table.txt").write_text(table + "\n")
    return {"splits": results, "out_dir": str(out), "table": table, "collapse": collapsed}


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
                                          **score_item(ex, pred)))
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
                cells = " ".join(f"{m[c]:>20.3f}" if c in m else f"{'-':>20}" for c in shown)
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
