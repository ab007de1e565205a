"""The report's evidence lines (issue #28): collapse flags and Task 2's held-out direction beside the
no-effect bound, with its paired interval and a NOTE when the explainer falls below it."""

from __future__ import annotations

from app.report import build_report, held_out_direction_lines
from records.jsonl import write_json_atomic
from records.schema import EVAL_METRICS_VERSION, EvalMetrics, Interval
from training.evaluate import HELD_OUT_DIRECTION


def _strict(x, lo, hi, **gap):
    return {"n": 60.0, "strict_exact_match": Interval(x, lo, hi), **gap}


def _splits(gap, lo, hi):
    return {HELD_OUT_DIRECTION: {"generative_explanation": {
        "explainer": _strict(1.0 + gap, 0.6, 0.9), "no_effect": _strict(1.0, 1.0, 1.0, gap=Interval(gap, lo, hi))}}}


def test_the_held_out_direction_shows_its_paired_gap_and_a_note_below_the_bound():
    lines = held_out_direction_lines(_splits(-0.25, -0.43, -0.08))
    assert "explainer 0.75 [0.60, 0.90]; no_effect 1.00 [1.00, 1.00]" in lines[0]
    assert "explainer - no-effect bound = -0.25 [-0.43, -0.08]" in lines[1]
    assert lines[2].startswith("NOTE: on the held-out direction the explainer falls below the no-effect bound")
    assert not any("NOTE" in x for x in held_out_direction_lines(_splits(0.0, 0.0, 0.0)))
    assert held_out_direction_lines({}) == []


def test_the_report_summary_says_collapse_and_the_held_out_direction(tmp_path):
    run = tmp_path / "run"
    splits = {"test": {"generative_explanation": {"explainer": _strict(0.5, 0.4, 0.6)}}, **_splits(-0.25, -0.43, -0.08)}
    write_json_atomic(run / "explainer_task2" / "final" / "eval" / "metrics.json", EvalMetrics(
        checkpoint="x", splits=splits, collapse={"test": {"orig_match": "all 8 answers are one: 'x'"}},
        version=EVAL_METRICS_VERSION))
    (run / "explainer_task2" / "final" / "eval" / "predictions.jsonl").write_text("")
    summary = build_report(run).read_text().split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "**COLLAPSE: test orig_match: all 8 answers are one: 'x'**" in summary
    assert "NOTE: on the held-out direction the explainer falls below the no-effect bound" in summary


def test_the_report_summary_gives_task1_paired_gaps_over_clusters_and_a_note(tmp_path):
    run = tmp_path / "run"
    gap = {"n_clusters": 5.0, "similarity_gap": Interval(0.048, -0.07, 0.16), "similarity_sign_p": 0.25}
    methods = {"explainer": {"n": 20.0, "semantic_similarity": 0.8},
               "nearest_neighbour": {"n": 20.0, "semantic_similarity": 0.75, **gap},
               "vector_probe": {"n": 20.0, "semantic_similarity": 0.8, **gap}}
    write_json_atomic(run / "explainer_task1" / "final" / "eval" / "metrics.json",
                      EvalMetrics(checkpoint="x", splits={"test": {"generative_explanation": methods}},
                                  version=EVAL_METRICS_VERSION))
    (run / "explainer_task1" / "final" / "eval" / "predictions.jsonl").write_text("")
    text = build_report(run).read_text()
    summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "explainer - vector_probe over 5 held-out clusters: similarity +0.048 [-0.070, +0.160] p=0.250" in summary
    assert "NOTE: the nearest_neighbour baseline reaches the explainer on similarity" in summary
    assert "| vector_probe | 20 |" in text  # beside the explainer in Task 1's table
