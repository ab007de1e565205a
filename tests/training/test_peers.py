"""training/peers.py and training/templates.py: the peers' baselines and prompt paraphrases, without a model."""

from __future__ import annotations

import numpy as np
import pytest

from training.config import Message, Prompt
from training.examples import Example, causal_target
from training.peers import (
    draw_shots,
    fewshot_messages,
    fewshot_metrics,
    fewshot_subset,
    vector_nn_predictions,
    vector_question_types,
)

CHANGED, SAME = causal_target("refusal", "compliance"), causal_target("refusal", "refusal")


def _steer(sid: str, arm_vec, target: str, q: str = "generative_explanation", group: str = "") -> Example:
    return Example(task="act_patch", question_type=q, sample_id=sid, target=target,
                   messages=[{"role": "user", "content": f"steer [REP] {sid}"}],
                   vector=None if arm_vec is None else np.array(arm_vec, np.float32), meta={"group": group or sid})


def test_vector_nearest_neighbour_knows_the_arm_and_nothing_else():
    """Every scenario of an arm reads the same vector: the neighbour answers the arm's most common training
    answer, whatever the scenario's family."""
    train = [_steer(f"a{i}", [1, 0], CHANGED if i < 3 else SAME) for i in range(4)]  # arm a: mostly changed
    train += [_steer(f"b{i}", [0, 2], SAME) for i in range(3)]
    test = [_steer("x", [2, 0.1], SAME), _steer("y", [0, 1], CHANGED), _steer("z", None, " refusal", "orig_match")]
    assert vector_nn_predictions(train, test) == [CHANGED, SAME, ""]
    assert vector_question_types(test) == {"generative_explanation"}


def test_few_shot_prompt_holds_solved_training_examples_and_their_vectors_in_order():
    train = [_steer(f"t{i}", [i, 1], CHANGED if i % 2 else SAME) for i in range(10)]
    train.append(_steer("other", [9, 9], " refusal", "orig_match"))
    shots = draw_shots(train, "generative_explanation", "act_patch", 4, seed=0, draw=0)
    assert len(shots) == 4 and all(s in train and s.question_type == "generative_explanation" for s in shots)
    assert draw_shots(train, "generative_explanation", "act_patch", 4, 0, 0) == shots  # seeded
    assert any(draw_shots(train, "generative_explanation", "act_patch", 4, 0, d) != shots for d in (1, 2))
    item = Example(task="act_patch", question_type="generative_explanation", sample_id="q", target=SAME,
                   messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "ask [REP]"}],
                   vector=np.array([7, 7], np.float32))
    messages, vectors = fewshot_messages(shots, item)
    assert [m["role"] for m in messages] == ["user", "assistant"] * 4 + ["user"]
    assert [m["content"] for m in messages[1:8:2]] == [s.target for s in shots]  # answers of training items
    assert messages[-1]["content"] == "sys\n\nask [REP]"  # the system text folded in: the chat alternates
    assert vectors.shape == (5, 2) and vectors[-1].tolist() == [7, 7]
    assert vectors[:4].tolist() == [s.vector.tolist() for s in shots]


def test_few_shot_scores_pool_the_draws_and_pair_with_the_explainer():
    test = [_steer(f"s{i}", [1, 0], CHANGED if i % 2 else SAME) for i in range(8)]
    right = [ex.target for ex in test]
    wrong = ["garbage"] * 8
    rows = fewshot_metrics(test, right, [right, wrong, right], groups=None)["generative_explanation"]
    assert rows["n"] == 8 and rows["draws"] == 3
    assert rows["strict_exact_match"].value == pytest.approx(2 / 3)
    assert rows["strict_exact_match_draw_min"] == 0 and rows["strict_exact_match_draw_max"] == 1
    assert rows["gap"].value == pytest.approx(1 / 3) and rows["gap"].lo <= rows["gap"].value <= rows["gap"].hi
    assert fewshot_subset(100, 0, 0) == list(range(100))
    sub = fewshot_subset(100, 10, 0)
    assert len(sub) == 10 and sub == sorted(sub) and sub == fewshot_subset(100, 10, 0)


def test_each_item_records_its_drawn_template_and_can_be_asked_under_another(monkeypatch):
    from types import SimpleNamespace

    from training import examples as E
    from training import templates as T
    from training.config import QuestionType, TaskConfig

    prompts = [Prompt(messages=[Message("user", f"v{i}: {{user_prompt}}"), Message("assistant", "")]) for i in range(5)]
    tc = TaskConfig(question_types={"orig_match": QuestionType(prompts=prompts)})
    recs = [SimpleNamespace(sample_id=f"s{i}") for i in range(40)]
    monkeypatch.setattr(E, "_task_fields", lambda task, q, r, *a: ({"user_prompt": f"scenario {r.sample_id[1:]}"},
                                                                     " refusal", None, {}, ""))
    exs = E.build_examples(recs, "hint_attribution", tc, {}, seed=0)
    drawn = [ex.meta["template"] for ex in exs]
    assert set(drawn) == set(range(5))  # 40 items: every paraphrase drawn
    assert all(ex.messages[0]["content"] == f"v{t}: {ex.slots['user_prompt']}" for ex, t in zip(exs, drawn))
    assert [ex.meta["template"] for ex in E.build_examples(recs, "hint_attribution", tc, {}, seed=0)] == drawn
    other = T.under_template(exs[0], prompts[3], 3)
    assert other.messages == [{"role": "user", "content": "v3: scenario 0"}] and other.meta["template"] == 3

    # template 2 is the one the (fake) explainer cannot read: its score falls, and the spread shows it
    def fake_predict(explainer, examples, test):
        return ["?" if ex.meta["template"] == 2 else ex.target for ex in examples]

    class Cfg:
        class train:
            tasks = {"hint_attribution": tc}

        class test:
            max_new_tokens, batch_size = 8, 4

    monkeypatch.setattr(T, "predict", fake_predict)
    row = T.template_scores(None, exs, Cfg)["orig_match"]
    assert [row[f"template:{i}"] for i in range(5)] == [1, 1, 0, 1, 1] and row["template_spread"] == 1

    # the explainer's own answers (each item under its drawn template) are reused, not generated again: the
    # passes ask only the other items, and a reused answer counts where it was asked
    asked = []
    monkeypatch.setattr(T, "predict", lambda e, exs_, t: asked.extend(exs_) or fake_predict(e, exs_, t))
    own = ["?" if ex.meta["template"] == 4 else ex.target for ex in exs]  # wrong only where asked under template 4
    row = T.template_scores(None, exs, Cfg, answers=own)["orig_match"]
    assert len(asked) == 4 * len(exs)  # 5 passes over 40 items, minus the 40 already answered
    assert row["template:4"] == pytest.approx(1 - drawn.count(4) / len(exs))
    assert row["template:2"] == pytest.approx(drawn.count(2) / len(exs))  # its own items were answered right


@pytest.mark.parametrize("stem", ["af_context_ablation", "af_steering", "af_feature_descriptions"])
def test_gpu_configs_ship_five_paraphrases_per_question_and_the_toy_keeps_the_first(stem):
    from pathlib import Path

    from training.config import load_train_config

    repo = Path(__file__).resolve().parents[2]
    gpu = load_train_config(str(repo / "configs" / f"{stem}.yaml"))
    cpu = load_train_config(str(repo / "configs" / f"{stem}_cpu.yaml"))
    for task, tc in gpu.train.tasks.items():
        for q, qt in tc.question_types.items():
            texts = [" ".join(m.content for m in p.messages) for p in qt.prompts]
            assert len(texts) == 5 and len(set(texts)) == 5, (task, q)
            shows_vector = {"{feature}" in t for t in texts}
            assert len(shows_vector) == 1, (task, q)  # every wording shows the vector, or none does
            assert cpu.train.tasks[task].question_types[q].prompts == qt.prompts[:1], (task, q)
