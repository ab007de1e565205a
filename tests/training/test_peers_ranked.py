"""The few-shot baseline by ranked choice (training/peers.py): the untrained explainer's most likely answer
among the training answers after the k-shot prompt, on a tiny random-weight explainer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_records import tiny_random_explainer

from app.report_scores import ranked_lines
from records.schema import Interval
from training import data as D
from training import peers as P
from training.examples import Example

REPO = Path(__file__).resolve().parents[2]
ANSWERS = (" refusal", " compliance", " degenerate")


@pytest.fixture(scope="module")
def explainer(tmp_path_factory):
    from training.config import load_train_config
    from training.model import build_explainer

    model = tiny_random_explainer(tmp_path_factory.mktemp("ranked") / "model")
    cfg = load_train_config(str(REPO / "configs" / "af_context_ablation_cpu.yaml"),
                            [f"model_path={model}", f"target_model_path={model}"])
    explainer = build_explainer(cfg, None, torch.device("cpu"), torch.float32)
    torch.manual_seed(0)
    for name, p in explainer.causal_lm.get_decoder().layers.named_parameters():
        if p.dim() == 2 and "lora_" not in name:  # weights large enough that an answer's likelihood hangs on the prompt
            torch.nn.init.normal_(p, std=0.5)
    return explainer


def _item(i: int, target: str) -> Example:
    words = ("ledger", "harbour", "violet", "granite", "orchid", "tundra", "saffron", "quartz")
    return Example(task="hint_attribution", question_type="orig_match", sample_id=f"s{i}", target=target,
                   messages=[{"role": "user", "content": f"Scenario {i}: {words[i % 8]} {words[(3 * i) % 8]}. "
                                                         "What did the model do?"}])


@torch.no_grad()
def _reference(explainer, messages: list[dict], answer: str) -> float:
    """Log-likelihood of `answer` after `messages` by one uncached forward over prompt + answer."""
    tok = explainer.tokenizer
    prompt = D.encode_prompt(tok, messages)
    ids = prompt + P.answer_ids(tok, messages, prompt, answer)
    with explainer.model.disable_adapter():
        logits = explainer.causal_lm(input_ids=torch.tensor([ids])).logits[0].float()  # [seq, vocab]
    logp = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
    return float(logp.gather(1, torch.tensor(ids[len(prompt):])[:, None]).sum())


def _planted(explainer, train: list[Example], n: int, k: int, draws: int) -> list[Example]:
    """Test items whose target is, in every draw, the answer the reference ranks first (items where the draws
    disagree are left out): the right answer must win."""
    items = []
    for i in range(n):
        ex = _item(100 + i, "")
        best = {max(ANSWERS, key=lambda a: _reference(explainer, m, a))
                for m, _ in (P._draw_chats(train, [ex], k, 0, d)[0] for d in range(draws))}
        if len(best) == 1:
            items.append(dataclasses.replace(ex, target=best.pop()))
    return items


def test_closed_answer_sets_are_the_distinct_training_answers():
    train = [_item(i, ANSWERS[i % 3]) for i in range(9)]
    wide = [Example(task="features_explain", question_type="generative_explanation", sample_id=f"f{i}",
                    messages=[], target=f"description {i}") for i in range(P.RANKED_MAX_CHOICES + 1)]
    one = [Example(task="act_patch", question_type="orig_match", sample_id="a", messages=[], target=" refusal")]
    assert P.answer_sets(train + wide + one) == {("hint_attribution", "orig_match"): sorted(ANSWERS)}


def test_ranked_choice_scores_each_candidate_by_its_log_likelihood(explainer):
    train = [_item(i, ANSWERS[i % 3]) for i in range(9)]
    messages, vectors = P._draw_chats(train, [_item(50, "")], 4, 0, 0)[0]
    prompt = D.encode_prompt(explainer.tokenizer, messages)
    with explainer.model.disable_adapter():
        cached = P.candidate_logliks(explainer, prompt, vectors, [P.answer_ids(explainer.tokenizer, messages, prompt, a)
                                                                  for a in ANSWERS])
    assert cached == pytest.approx([_reference(explainer, messages, a) for a in ANSWERS], abs=1e-4)


def test_the_right_answer_wins_and_misaligned_candidates_lose_it(explainer, monkeypatch):
    """Planted: each item's target is the candidate the model itself finds most likely. Ranked choice must
    name all of them; bug injection: candidate scores shifted by one against the candidate list (the
    shuffled-candidates bug) must lose them all."""
    train = [_item(i, ANSWERS[i % 3]) for i in range(9)]
    items = _planted(explainer, train, 10, k=2, draws=2)
    assert len(items) >= 6 and len({ex.target for ex in items}) >= 2  # the plant is not one constant answer
    picks = P.ranked_predictions(explainer, train, items, 2, 2, seed=0)
    rows = P.fewshot_metrics(items, [ex.target for ex in items], picks, groups=None)["orig_match"]
    assert rows["strict_exact_match"].value == 1.0 and rows["draws"] == 2

    right = P.candidate_logliks
    monkeypatch.setattr(P, "candidate_logliks", lambda *a: np.roll(right(*a), 1))
    broken = P.ranked_predictions(explainer, train, items, 2, 2, seed=0)
    assert P.fewshot_metrics(items, [ex.target for ex in items], broken, groups=None)["orig_match"][
        "strict_exact_match"].value == 0.0


def test_ranked_scores_sit_beside_chance_in_the_report_line():
    methods = {"explainer": {"strict_exact_match": Interval(0.98, 0.95, 1.0)},
               "majority": {"strict_exact_match": Interval(0.42, 0.31, 0.55)},
               "fewshot_k4_ranked": {"strict_exact_match": Interval(0.45, 0.30, 0.60), "choices": 3.0},
               "fewshot_k8_ranked": {"strict_exact_match": Interval(0.70, 0.55, 0.85), "choices": 3.0}}
    (line,) = ranked_lines(methods)
    assert "of the 3 training answers" in line and "chance (the most common training answer) 0.42" in line
    assert "fewshot_k4_ranked 0.45 [0.30, 0.60] (near chance)" in line
    assert "fewshot_k8_ranked 0.70 [0.55, 0.85] (above chance)" in line
    for row in methods.values():  # chance on the few-shot items themselves; one answer for all of them
        row.update(chance_same_items=0.20, distinct_answers=1.0)
    (line,) = ranked_lines(methods)
    assert "chance (the most common training answer on these items) 0.20" in line
    # a constant is never "above chance", even where its answer happens to be common among these items
    assert "fewshot_k8_ranked 0.70 [0.55, 0.85] (one answer for every item: a constant" in line
    assert "above chance" not in line and "near chance" not in line
    assert P.PeerResults(positions=[1, 2, 3], ranked_positions=[2]).positions_of("fewshot_k4_ranked") == [2]


def test_a_token_budget_keeps_every_answer_and_bounds_each_batch(explainer, monkeypatch):
    """test.batch_tokens changes how prompts are batched, never what is answered; bug injection: a budget
    that is not applied lets a batch past it."""
    prompts = [D.encode_prompt(explainer.tokenizer, P._draw_chats([_item(j, " refusal") for j in range(9)],
                                                                  [_item(i, "")], k, 0, 0)[0][0])
               for i, k in enumerate([0, 1, 2, 4, 0, 3, 1, 2])]
    assert len({len(p) for p in prompts}) > 3  # prompts of several lengths
    budget, new = 2 * max(len(p) for p in prompts) + 2 * 6, 6
    seen = []
    generate = type(explainer.model).generate
    monkeypatch.setattr(type(explainer.model), "generate",
                        lambda self, **kw: seen.append(kw["inputs_embeds"].shape[:2]) or generate(self, **kw))
    plain = explainer.generate(prompts, [None] * len(prompts), new, batch_size=8)
    assert seen == [(8, max(len(p) for p in prompts))]
    seen.clear()
    budgeted = explainer.generate(prompts, [None] * len(prompts), new, batch_size=8, batch_tokens=budget)
    assert budgeted == plain and len(seen) > 1 and all(rows * (width + new) <= budget for rows, width in seen)
