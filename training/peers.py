"""The baselines the peers report (introspective-interp's forks, Activation Oracles, LatentQA follow-ups).

- Few-shot in context: the UNTRAINED explainer (adapter off) given k solved training examples of the same
  question type before the question, greedy. k in test.fewshot_k, test.fewshot_draws seeded draws of the
  examples, from the training split only; each draw is one fixed set of k examples for every item. Scores
  pool the draws (the mean over draws), with intervals that resample each item with all its draws, and the
  paired gap to the trained explainer on the same items. test.fewshot_items > 0 scores a seeded subset of
  the items (the paired gap then uses the explainer's answers on that subset).
- Vector nearest neighbour: the answer of the training item whose input vector has the highest cosine
  with the item's (same question type); ties (every scenario of a steering arm reads the same vector) are
  broken by the most common answer among the tied items. It tells whether the vector alone carries the
  answer: on Task 2 it knows the arm, never the scenario's trigger.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from training import data as D
from training.examples import Example
from training.metrics import gaps_by_question, strict_by_question
from training.scoring import score

VECTOR_NN = "vector_nearest_neighbour"


def fewshot_method(k: int) -> str:
    return f"fewshot_k{k}"


# ---------------------------------------------------------------------------------------------------
# Vector nearest neighbour


def vector_nn_predictions(train: list[Example], test: list[Example]) -> list[str]:
    """Per test item with a vector: the most common target among the training items (same question type)
    whose vectors are the most cosine-similar to its own; "" for items without a vector."""
    pools: dict[str, tuple[np.ndarray, list[str]]] = {}
    for q in {ex.question_type for ex in test}:
        exs = [ex for ex in train if ex.question_type == q and ex.vector is not None]
        if exs:
            pools[q] = (_unit(np.stack([np.asarray(ex.vector, np.float32) for ex in exs])), [ex.target for ex in exs])
    preds = []
    for ex in test:
        if ex.vector is None or ex.question_type not in pools:
            preds.append("")
            continue
        rows, targets = pools[ex.question_type]
        sims = rows @ _unit(np.asarray(ex.vector, np.float32)[None])[0]  # [n_train]
        tied = np.flatnonzero(sims >= sims.max() - 1e-6)
        preds.append(Counter(targets[i] for i in tied).most_common(1)[0][0])
    return preds


def vector_question_types(examples: list[Example]) -> set[str]:
    """Question types whose every item reads a vector: where the vector nearest neighbour is scored."""
    qs: dict[str, bool] = {}
    for ex in examples:
        qs[ex.question_type] = qs.get(ex.question_type, True) and ex.vector is not None
    return {q for q, every in qs.items() if every}


def _unit(m: np.ndarray) -> np.ndarray:
    return m / (np.linalg.norm(m, axis=1, keepdims=True) + 1e-12)


# ---------------------------------------------------------------------------------------------------
# Few-shot in context


def draw_shots(train: list[Example], question_type: str, task: str, k: int, seed: int, draw: int) -> list[Example]:
    """k training examples of one task and question type, drawn without replacement (seed, k, draw)."""
    pool = [ex for ex in train if ex.question_type == question_type and ex.task == task]
    rng = np.random.default_rng([seed, k, draw])
    return [pool[i] for i in sorted(rng.choice(len(pool), size=min(k, len(pool)), replace=False))] if pool else []


def fewshot_messages(shots: list[Example], ex: Example) -> tuple[list[dict], np.ndarray | None]:
    """The chat the untrained explainer answers: each solved example as a user turn (its system text folded
    in, so the chat alternates) and its answer as the assistant turn, then the question. Vectors: one row
    per placeholder, in prompt order ([n, dim]), or None."""
    messages, vectors = [], []
    for shot in shots:
        messages += [{"role": "user", "content": _folded(shot.messages)}, {"role": "assistant", "content": shot.target}]
        if shot.vector is not None:
            vectors.append(np.asarray(shot.vector, np.float32))
    messages.append({"role": "user", "content": _folded(ex.messages)})
    if ex.vector is not None:
        vectors.append(np.asarray(ex.vector, np.float32))
    return messages, np.stack(vectors) if vectors else None


def _folded(messages: list[dict]) -> str:
    return "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "user") and m["content"])


def fewshot_subset(n: int, items: int, seed: int) -> list[int]:
    """Positions scored by the few-shot baseline: all, or a seeded subset of `items` (kept in order)."""
    if not items or items >= n:
        return list(range(n))
    return sorted(int(i) for i in np.random.default_rng([seed, 7]).choice(n, size=items, replace=False))


def fewshot_predictions(explainer, train: list[Example], examples: list[Example], k: int, draws: int, seed: int,
                        max_new_tokens: int, batch_size: int) -> list[list[str]]:
    """The untrained explainer's greedy answers with k solved training examples in its prompt, per draw.
    (Running the shared examples once and reusing their cache gave the same answers but no speed-up on the
    toy: decoding over the long cache, not the prompt, dominates; docs/peers.md.)"""
    out = []
    for draw in range(draws):
        shots = {key: draw_shots(train, key[1], key[0], k, seed, draw)
                 for key in {(ex.task, ex.question_type) for ex in examples}}
        chats = [fewshot_messages(shots[ex.task, ex.question_type], ex) for ex in examples]
        prompts = [D.encode_prompt(explainer.tokenizer, m) for m, _ in chats]
        with explainer.model.disable_adapter():
            out.append(explainer.generate(prompts, [v for _, v in chats], max_new_tokens, batch_size))
    return out


def fewshot_metrics(examples: list[Example], explainer: list[str], draws: list[list[str]], groups: list | None,
                    embed=None) -> dict[str, dict[str, float]]:
    """Per question type, a metrics row for the few-shot baseline: lenient and strict scores pooled over the
    draws (n = items; `draws` = how many), the strict score's interval resampling each item (or its group)
    with all its draws, the paired gap explainer - few-shot on the same items, and the lowest and highest
    single draw's strict exact match."""
    d = len(draws)
    pooled_ex = examples * d
    pooled = [p for preds in draws for p in preds]
    units = (groups if groups is not None else list(range(len(examples)))) * d
    rows = score(pooled_ex, pooled, embed)
    strict = strict_by_question(pooled_ex, pooled, units)
    gaps = gaps_by_question(pooled_ex, explainer * d, pooled, units)
    per_draw = [strict_by_question(examples, preds, groups, n_boot=1) for preds in draws]
    out = {}
    for q, row in rows.items():
        row = {**row, **strict.get(q, {}), **gaps.get(q, {}), "n": row["n"] // d, "draws": d}
        if q in per_draw[0]:
            ems = [p[q]["strict_exact_match"].value for p in per_draw]
            row.update(strict_exact_match_draw_min=min(ems), strict_exact_match_draw_max=max(ems))
        out[q] = row
    return out



# ---------------------------------------------------------------------------------------------------
# Everything above, for one split


@dataclass
class PeerResults:
    """One split's peer baselines and the explainer's extra fields."""

    rows: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # q -> few-shot method -> metrics
    explainer: dict[str, dict[str, float]] = field(default_factory=dict)  # q -> calibration / per-template fields
    fewshot: dict[str, list[list[str]]] = field(default_factory=dict)  # method -> per draw, answers at `positions`
    positions: list[int] = field(default_factory=list)  # the items the few-shot baseline answered
    confidence: list[float] | None = None  # the explainer's probability of each of its answers
    p_changed: list[float | None] | None = None  # P(changed) of each behaviour-change explanation
    seconds: dict[str, float] = field(default_factory=dict)  # wall and CPU time of each piece


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _lap(seconds: dict[str, float], piece: str, start: tuple[float, float]) -> None:
    """Wall time of a piece, and its CPU time (`<piece>_cpu`: on a shared machine, the better measure of cost)."""
    wall, cpu = _clocks()
    seconds[piece], seconds[f"{piece}_cpu"] = wall - start[0], cpu - start[1]


def evaluate_peers(explainer, train: list[Example], examples: list[Example], answers: list[str], groups: list | None,
                   cfg, embed, fewshot: bool = True, explainer_extras: bool = True) -> PeerResults:
    """Few-shot baselines (when `fewshot`) and, when `explainer_extras`, the explainer's calibration and its
    per-template scores on one split."""
    from training.calibration import answer_confidence, calibration_by_question, changed_probability
    from training.metrics import strict_item
    from training.scoring import lenient_item
    from training.templates import template_scores

    t, out = cfg.test, PeerResults()
    if fewshot and t.fewshot_k:
        start = _clocks()
        out.positions = fewshot_subset(len(examples), t.fewshot_items, cfg.train.seed)
        shown = [examples[i] for i in out.positions]
        shown_groups = [groups[i] for i in out.positions] if groups is not None else None
        for k in t.fewshot_k:
            draws = fewshot_predictions(explainer, train, shown, k, t.fewshot_draws, cfg.train.seed,
                                        t.max_new_tokens, t.batch_size)
            out.fewshot[fewshot_method(k)] = draws
            for q, row in fewshot_metrics(shown, [answers[i] for i in out.positions], draws, shown_groups,
                                          embed).items():
                out.rows.setdefault(q, {})[fewshot_method(k)] = row
        _lap(out.seconds, "fewshot", start)
    if explainer_extras and t.calibration:
        start = _clocks()
        out.confidence = answer_confidence(explainer, examples, answers, t.batch_size)
        out.p_changed = changed_probability(explainer, examples, t.batch_size)
        correct = [lenient_item(ex, a)["exact_match"] if ex.task == "features_explain"
                   else strict_item(ex.question_type, a, ex.target).strict for ex, a in zip(examples, answers)]
        for q, fields in calibration_by_question(examples, correct, out.confidence, out.p_changed, groups).items():
            out.explainer.setdefault(q, {}).update(fields)
        _lap(out.seconds, "calibration", start)
    if explainer_extras:
        start = _clocks()
        for q, fields in template_scores(explainer, examples, cfg, embed).items():
            out.explainer.setdefault(q, {}).update(fields)
        _lap(out.seconds, "templates", start)
    return out
