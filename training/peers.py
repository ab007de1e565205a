"""The baselines the peers report (introspective-interp's forks, Activation Oracles, LatentQA follow-ups).

- Few-shot in context: the UNTRAINED explainer (adapter off) given k solved training examples of the same
  question type before the question, greedy. k in test.fewshot_k, test.fewshot_draws seeded draws of the
  examples, from the training split only; each draw is one fixed set of k examples for every item. Scores
  pool the draws (the mean over draws), with intervals that resample each item with all its draws, and the
  paired gap to the trained explainer on the same items. test.fewshot_items > 0 scores a seeded subset of
  the items (the paired gap then uses the explainer's answers on that subset).
- Few-shot ranked choice (`fewshot_k<k>_ranked`, at the smallest k), beside the strict free generation: on
  question types with a closed answer set (at most RANKED_MAX_CHOICES distinct training answers), the same
  k-shot prompt, and the base's answer is the candidate (every distinct training answer) with the highest
  log-likelihood. A base that does not take up the answer format scores 0 free-running; ranked, it must
  pick a format-correct answer, so its score says whether the examples carry the answer (near chance on
  held-out triggers).
- Vector nearest neighbour: the answer of the training item whose input vector has the highest cosine
  with the item's (same question type); ties (every scenario of a steering arm reads the same vector) are
  broken by the most common answer among the tied items. It tells whether the vector alone carries the
  answer: on Task 2 it knows the arm, never the scenario's trigger.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from training import data as D
from training.config import TestSection
from training.examples import Example
from training.metrics import gaps_by_question, strict_by_question
from training.scoring import generate_as, score

VECTOR_NN = "vector_nearest_neighbour"
# A question type's answer set is closed (ranked choice is scored) when training holds at most this many
# distinct answers: the toy's behaviour answers have 2-6, its feature descriptions one per cluster (open).
RANKED_MAX_CHOICES = 8

log = logging.getLogger(__name__)


def fewshot_method(k: int, ranked: bool = False) -> str:
    return f"fewshot_k{k}_ranked" if ranked else f"fewshot_k{k}"


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


def _draw_chats(train: list[Example], examples: list[Example], k: int, seed: int, draw: int):
    """One draw's k-shot chats (messages, vectors) for `examples`."""
    shots = {key: draw_shots(train, key[1], key[0], k, seed, draw) for key in {(ex.task, ex.question_type)
                                                                                for ex in examples}}
    return [fewshot_messages(shots[ex.task, ex.question_type], ex) for ex in examples]


def fewshot_predictions(explainer, train: list[Example], examples: list[Example], k: int, draws: int, seed: int,
                        test: TestSection) -> list[list[str]]:
    """The untrained explainer's greedy answers with k solved training examples in its prompt, per draw.
    (Running the shared examples once and reusing their cache gave the same answers but no speed-up on the
    toy: decoding over the long cache, not the prompt, dominates; docs/peers.md.)"""
    out = []
    for draw in range(draws):
        chats = _draw_chats(train, examples, k, seed, draw)
        prompts = [D.encode_prompt(explainer.tokenizer, m) for m, _ in chats]
        out.append(generate_as(explainer, prompts, [v for _, v in chats], test, adapter=False))
    return out


def answer_sets(train: list[Example]) -> dict[tuple[str, str], list[str]]:
    """(task, question type) -> its closed answer set: the distinct training answers, sorted, where there are
    2 to RANKED_MAX_CHOICES of them (question types with more are open: no ranked choice)."""
    seen: dict[tuple[str, str], set[str]] = {}
    for ex in train:
        seen.setdefault((ex.task, ex.question_type), set()).add(ex.target)
    return {key: sorted(v) for key, v in seen.items() if 2 <= len(v) <= RANKED_MAX_CHOICES}


def answer_ids(tokenizer, messages: list[dict], prompt: list[int], answer: str) -> list[int]:
    """The token ids of `answer` as the assistant turn after `messages` (end of turn included), as training
    encodes an answer (training/data.py: encode_example)."""
    full = tokenizer(tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": answer}],
                                                   tokenize=False), add_special_tokens=False)["input_ids"]
    if list(full[:len(prompt)]) != prompt or len(full) <= len(prompt):
        raise ValueError("the chat template renders the prompt differently once an answer follows")
    return list(full[len(prompt):])


@torch.no_grad()
def candidate_logliks(explainer, prompt: list[int], vectors: np.ndarray | None,
                      answers: list[list[int]]) -> np.ndarray:
    """Per candidate answer (token ids), the sum of its tokens' log-probabilities after `prompt` [n_answers].
    The prompt runs once; the candidates continue together from its key/value cache, one row each. Call with
    the adapter in the state to be scored (the few-shot baseline: off)."""
    lm, dev = explainer.causal_lm, explainer.device
    decoder, head = lm.get_decoder(), lm.get_output_embeddings()
    vt = torch.from_numpy(np.atleast_2d(vectors)).to(dev) if vectors is not None else None
    out = decoder(inputs_embeds=explainer.embed(torch.tensor([prompt], device=dev), vt), use_cache=True)
    first = torch.log_softmax(head(out.last_hidden_state[0, -1]).float(), dim=-1)  # [vocab]
    scores = np.array([float(first[ids[0]]) for ids in answers])
    width = max(len(ids) for ids in answers) - 1
    if width == 0:
        return scores
    # tokens 0..n-2 of each candidate predict its tokens 1..n-1; right padding is never read, and causal
    # attention keeps a real token from seeing a later pad
    rows = torch.full((len(answers), width), answers[0][0], dtype=torch.long)  # [n_answers, width]
    for r, ids in enumerate(answers):
        rows[r, :len(ids) - 1] = torch.tensor(ids[:-1])
    cache = copy.deepcopy(out.past_key_values)
    cache.batch_repeat_interleave(len(answers))
    hidden = decoder(inputs_embeds=explainer.embed(rows.to(dev), None), past_key_values=cache,
                     use_cache=True).last_hidden_state  # [n_answers, width, hidden]
    logp = torch.log_softmax(head(hidden).float(), dim=-1)  # [n_answers, width, vocab]
    for r, ids in enumerate(answers):
        scores[r] += float(logp[r, torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
    return scores


def ranked_predictions(explainer, train: list[Example], examples: list[Example], k: int, draws: int,
                       seed: int) -> list[list[str]]:
    """Per draw, the untrained explainer's ranked choice for each item (every item's question type closed):
    the candidate of answer_sets with the highest log-likelihood after the same k-shot prompt as
    fewshot_predictions."""
    sets, tok = answer_sets(train), explainer.tokenizer
    explainer.model.eval()
    out = []
    for draw in range(draws):
        picks = []
        for ex, (messages, vectors) in zip(examples, _draw_chats(train, examples, k, seed, draw)):
            candidates = sets[ex.task, ex.question_type]
            prompt = D.encode_prompt(tok, messages)
            with explainer.model.disable_adapter():
                scores = candidate_logliks(explainer, prompt, vectors,
                                           [answer_ids(tok, messages, prompt, c) for c in candidates])
            picks.append(candidates[int(np.argmax(scores))])
        out.append(picks)
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
    ranked_positions: list[int] = field(default_factory=list)  # those of them with a closed answer set
    confidence: list[float] | None = None  # the explainer's probability of each of its answers
    p_changed: list[float | None] | None = None  # P(changed) of each behaviour-change explanation
    seconds: dict[str, float] = field(default_factory=dict)  # wall and CPU time of each piece

    def positions_of(self, method: str) -> list[int]:
        """The items a few-shot method's answers (each draw's list) belong to."""
        return self.ranked_positions if method.endswith("_ranked") else self.positions


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _lap(seconds: dict[str, float], piece: str, start: tuple[float, float], split: str) -> None:
    """Wall time of a piece, and its CPU time (`<piece>_cpu`: on a shared machine, the better measure of cost),
    logged as the piece ends (a long evaluation shows where it is)."""
    wall, cpu = _clocks()
    seconds[piece], seconds[f"{piece}_cpu"] = wall - start[0], cpu - start[1]
    log.info("evaluate %s: %s in %.1f s", split, piece, seconds[piece])


def _ranked(out: PeerResults, explainer, train: list[Example], examples: list[Example], answers: list[str],
            groups: list | None, cfg, embed) -> None:
    """The few-shot baseline by ranked choice, on the few-shot items whose question type is closed."""
    sets = answer_sets(train)
    out.ranked_positions = [i for i in out.positions if (examples[i].task, examples[i].question_type) in sets]
    if not out.ranked_positions:
        return
    shown = [examples[i] for i in out.ranked_positions]
    shown_groups = [groups[i] for i in out.ranked_positions] if groups is not None else None
    # chance on these same items: the most common training answer of each question type, strictly scored
    common = {key: Counter(ex.target for ex in train if (ex.task, ex.question_type) == key).most_common(1)[0][0]
              for key in sets}
    chance = {q: row["strict_exact_match"].value for q, row in strict_by_question(
        shown, [common[ex.task, ex.question_type] for ex in shown], shown_groups, n_boot=1).items()}
    # at the smallest k only: on the toy's Task 3 k = 4 and 8 ranked alike (0.33 / 1.00 / 0.33 on the three
    # question types, docs/peers.md) and k = 8's prompts cost twice the CPU
    for k in sorted(cfg.test.fewshot_k)[:1]:
        draws = ranked_predictions(explainer, train, shown, k, cfg.test.fewshot_draws, cfg.train.seed)
        out.fewshot[fewshot_method(k, ranked=True)] = draws
        for q, row in fewshot_metrics(shown, [answers[i] for i in out.ranked_positions], draws, shown_groups,
                                      embed).items():
            row.update(choices=float(len(sets[next(ex.task for ex in shown if ex.question_type == q), q])),
                       distinct_answers=float(len({p for d in draws for p, ex in zip(d, shown)
                                                   if ex.question_type == q})))
            if q in chance:
                row["chance_same_items"] = chance[q]
            out.rows.setdefault(q, {})[fewshot_method(k, ranked=True)] = row


def evaluate_peers(explainer, train: list[Example], examples: list[Example], answers: list[str], groups: list | None,
                   cfg, embed, fewshot: bool = True, explainer_extras: bool = True, split: str = "test"
                   ) -> PeerResults:
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
            draws = fewshot_predictions(explainer, train, shown, k, t.fewshot_draws, cfg.train.seed, t)
            out.fewshot[fewshot_method(k)] = draws
            for q, row in fewshot_metrics(shown, [answers[i] for i in out.positions], draws, shown_groups,
                                          embed).items():
                out.rows.setdefault(q, {})[fewshot_method(k)] = row
        _lap(out.seconds, "fewshot", start, split)
        start = _clocks()
        _ranked(out, explainer, train, examples, answers, groups, cfg, embed)
        _lap(out.seconds, "fewshot_ranked", start, split)
    if explainer_extras and t.calibration:
        start = _clocks()
        out.confidence = answer_confidence(explainer, examples, answers, t.batch_size, t.batch_tokens)
        out.p_changed = changed_probability(explainer, examples, t.batch_size, t.batch_tokens)
        correct = [lenient_item(ex, a)["exact_match"] if ex.task == "features_explain"
                   else strict_item(ex.question_type, a, ex.target).strict for ex, a in zip(examples, answers)]
        for q, fields in calibration_by_question(examples, correct, out.confidence, out.p_changed, groups).items():
            out.explainer.setdefault(q, {}).update(fields)
        _lap(out.seconds, "calibration", start, split)
    if explainer_extras:
        start = _clocks()
        for q, fields in template_scores(explainer, examples, cfg, embed, answers).items():
            out.explainer.setdefault(q, {}).update(fields)
        _lap(out.seconds, "templates", start, split)
    return out
