"""Collapse flags (training/collapse.py): one answer for every item, or no better than the majority answer,
said loudly by training's evals (log, metrics.jsonl, summary.json) and by evaluate (metrics.json, table)."""

from __future__ import annotations

import json
import logging
import types
from pathlib import Path

from toy_records import tiny_random_explainer, write_toy_task3

from records.schema import read_eval_metrics
from training import collapse
from training import train as T
from training.config import load_train_config
from training.evaluate import run_evaluation

REPO = Path(__file__).resolve().parents[2]
CPU_CONFIG = REPO / "configs" / "af_context_ablation_cpu.yaml"


def _ex(q, target):
    return types.SimpleNamespace(question_type=q, target=target, task="hint_attribution")


def test_one_answer_for_varied_targets_is_collapse_and_alike_targets_are_not():
    exs = [_ex("orig_match", t) for t in (" refusal", " compliance", " refusal")]
    assert "all 3 answers are one" in collapse.collapse_flags(exs, ["x"] * 3, None)["orig_match"]
    assert collapse.collapse_flags(exs, [" refusal", " compliance", "x"], None) == {}
    same = [_ex("orig_match", " refusal")] * 3
    assert collapse.collapse_flags(same, [" refusal"] * 3, None) == {}  # the right constant answer


def test_no_better_than_the_majority_answer_is_collapse():
    exs = [_ex("q", "a"), _ex("q", "b")]
    flags = collapse.collapse_flags(exs, ["a", "b"], {"q": ("exact_match", 0.5, 0.5)})
    assert flags == {"q": "exact_match 0.500 <= the majority answer's 0.500"}
    assert collapse.collapse_flags(exs, ["a", "b"], {"q": ("exact_match", 0.6, 0.5)}) == {}


def test_a_learning_rate_that_collapses_the_toy_is_flagged_by_training_and_evaluate(tmp_path, caplog):
    """lr 3.0 on the tiny random explainer: every answer becomes the same text. Training's eval and
    evaluate both say COLLAPSE, in the log, metrics.jsonl, summary.json, metrics.json and the table."""
    info = write_toy_task3(tmp_path / "toy", n_train=40, n_test=8, n_gold=4)
    model = tiny_random_explainer(tmp_path / "model", info["tokenizer"])
    cfg = load_train_config(str(CPU_CONFIG), [
        f"model_path={model}", "target_model_path=toy", f"train.dataset={info['records']}",
        f"train.paths={info['paths']}", "train.num_epochs=1", "train.batch_size=8", "train.eval_samples=8",
        "test.max_new_tokens=8", "train.learning_rate=3.0", "train.warmup_steps=0", "train.max_grad_norm=0"],
        str(tmp_path / "out"))
    caplog.set_level(logging.WARNING)
    summary = T.main(cfg, force=True, max_steps=4)
    assert summary["collapse"], summary
    assert any(r.getMessage().startswith("COLLAPSE at step") for r in caplog.records)
    evals = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert evals[-1]["collapse"] == summary["collapse"]

    result = run_evaluation(cfg, untrained=False, controls=False)
    metrics = read_eval_metrics(Path(result["out_dir"]) / "metrics.json")
    assert metrics.collapse.get("test") and metrics.collapse == result["collapse"]
    assert "COLLAPSE: test" in result["table"]


def test_a_perfect_score_is_never_a_collapse():
    """The demo's Task 2 orig_match: one behaviour in the test split, explainer 1.00 = majority 1.00."""
    assert collapse.no_better_than_majority("exact_match", 1.0, 1.0) == ""
    assert collapse.no_better_than_majority("exact_match", 0.6, 0.6).startswith("exact_match 0.600 <=")
