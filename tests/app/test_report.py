"""`af-introspect report`: on a damaged run folder, one line naming the file, exit 2, no traceback; Task 1's
section shows the LM judge and per-attribute accuracy beside similarity, and calls out an SAE layer the
organism does not have."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main as cli
from app.report import build_report
from records.jsonl import write_json_atomic
from records.schema import (
    EVAL_METRICS_VERSION,
    AttributeScoring,
    EvalMetrics,
    FeaturesIndex,
    Interval,
    RunManifest,
    SelectionStats,
)


@pytest.mark.parametrize("name,content,needle", [
    ("task2/summary.json", b'{"n_records": 3, "scale"', "not a valid SteeringSummary"),
    ("task3/summary.json", b"[1, 2]", "not a valid ContextAblationSummary"),
    ("task3/train.jsonl", b'{"sample_id": "a", "ind', "train.jsonl"),
])
def test_a_corrupt_summary_or_torn_split_is_one_line(tmp_path, capsys, name, content, needle):
    run = tmp_path / "run"
    (run / name).parent.mkdir(parents=True)
    if name.startswith("task3"):  # a Task 3 folder: both splits (empty), the damaged file replaces one
        for split in ("train.jsonl", "test.jsonl"):
            (run / "task3" / split).write_bytes(b"")
    (run / name).write_bytes(content)
    assert cli(["report", str(run), "--progress-log", str(tmp_path / "P.md")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


def test_an_old_shape_metrics_json_is_refused_in_one_line_that_says_to_rerun_evaluate(tmp_path, capsys):
    """metrics.json written before scores carried an Interval (flat strict_exact_match_lo / _hi, no version)
    is never read as numbers: report (and the demo's table, through read_eval_metrics) refuse it."""
    run = tmp_path / "run"
    eval_dir = run / "explainer_task3" / "final" / "eval"
    eval_dir.mkdir(parents=True)
    (eval_dir / "metrics.json").write_text('{"checkpoint": "final", "splits": {"test": {"generative_explanation": '
                                           '{"explainer": {"n": 8.0, "strict_exact_match": 0.9, '
                                           '"strict_exact_match_lo": 0.8, "strict_exact_match_hi": 1.0}}}}}')
    (eval_dir / "predictions.jsonl").write_text("")
    assert cli(["report", str(run), "--progress-log", str(tmp_path / "P.md")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "metrics.json of an older format (version 1" in err[0], err
    assert "rerun `af-introspect evaluate`" in err[0] and not (run / "report.md").exists()


def _task1_run(tmp_path: Path, layer: int) -> Path:
    """A run folder with a Task 1 features index at `layer`, an explainer of a 32-layer organism, and its
    evaluation (metrics with attribute scores, no LM judge)."""
    run = tmp_path / "run"
    organism = tmp_path / "organism"
    organism.mkdir()
    (organism / "config.json").write_text('{"num_hidden_layers": 32}')
    stats = dict.fromkeys(("selectivity_min", "selectivity_max", "selectivity_median", "selectivity_all_min",
                           "selectivity_all_max"), 0.0)
    (run / "task1" / "by_cluster").mkdir(parents=True)
    write_json_atomic(run / "task1" / "features_index.json", FeaturesIndex(
        layer=layer, representation="decoder_direction", width=16, top_k=1, rank_by="value", selectivity_path="s.npy",
        normalisation="unit", n_zero_vectors=0, probe_weights_path="", dim=4, stats=SelectionStats(**stats),
        features=[]))
    ex = run / "explainer_task1"
    write_json_atomic(ex / "manifest.json", RunManifest(
        stage="train", created="2026-12-03T00:00:00+00:00", code_version="test", model=str(organism),
        config={"target_model_path": str(organism)}, inputs={"features_explain": str(run / "task1" / "by_cluster")}))
    m = {"n": 4.0, "semantic_similarity": 0.8, "attribute:modifier": 0.5, "attribute:trigger": 0.75,
         "attribute_mean": 0.625}
    write_json_atomic(ex / "final" / "eval" / "metrics.json", EvalMetrics(
        checkpoint="final", splits={"test": {"generative_explanation": {
            "explainer": m, "shuffled_vectors": {**m, "attribute:trigger": 0.25, "attribute_mean": 0.375}}}},
        attributes={"test": {"generative_explanation": AttributeScoring(
            n=4, chance={"modifier": 0.25, "trigger": 0.0},
            marks={"trigger": {"a": ["x"]}, "modifier": {"b": ["y"]}})}}, version=EVAL_METRICS_VERSION))
    (ex / "final" / "eval" / "predictions.jsonl").write_text("")
    return run


def test_report_flags_an_sae_layer_the_organism_lacks_and_shows_task1_scores(tmp_path):
    report = build_report(_task1_run(tmp_path, layer=40)).read_text()
    assert "> **WARNING: SAE layer 40 is not a layer of the organism" in report
    assert "(32 layers, 0-31)" in report
    assert "| method | n | MiniLM similarity | LM judge | modifier | trigger | mean of attributes |" in report
    assert "| explainer | 4 | 0.800 | - | 0.500 | 0.750 | 0.625 |" in report
    assert "| shuffled_vectors | 4 | 0.800 | - | 0.500 | 0.250 | 0.375 |" in report
    assert "| chance | 4 | - | - | 0.250 | 0.000 | 0.125 |" in report
    assert "LM judge: not configured" in report


def test_report_is_quiet_when_the_sae_layer_fits(tmp_path):
    report = build_report(_task1_run(tmp_path, layer=20)).read_text()
    assert "WARNING" not in report and "SAE layer 20 is a layer of the organism" in report


def test_peer_lines_show_few_shot_draws_calibration_and_templates():
    from app.report import peer_lines

    methods = {
        "explainer": {"strict_exact_match": Interval(0.9, 0.8, 1.0), "confidence_mean": 0.8, "ece_bins": 10,
                      "brier": Interval(0.05, 0.02, 0.08), "ece": Interval(0.1, 0.08, 0.14),
                      "auroc_changed": Interval(0.98, 0.96, 0.99), "template:0": 0.9, "template:1": 0.7,
                      "template_spread": 0.2},
        "majority": {"strict_exact_match": Interval(0.47, 0.2, 0.7)},
        "fewshot_k4": {"n": 24, "draws": 3, "strict_exact_match": Interval(0.0, 0.0, 0.0),
                       "strict_exact_match_draw_min": 0.0, "strict_exact_match_draw_max": 0.0},
        "fewshot_k4_ranked": {"n": 24, "draws": 3, "choices": 2, "strict_exact_match": Interval(0.5, 0.3, 0.7),
                              "strict_exact_match_draw_min": 0.4, "strict_exact_match_draw_max": 0.6},
    }
    text = "\n".join(peer_lines(methods))
    assert "fewshot_k4 0.00-0.00 over 3 draws, n 24" in text and "below the majority answer's 0.47" in text
    # the "below the majority" clause is about the free-running draws: the ranked score has its own line
    draws = next(line for line in text.splitlines() if line.startswith("few-shot in context"))
    assert "fewshot_k4_ranked" not in draws
    assert "fewshot_k4_ranked 0.50 [0.30, 0.70] (near chance)" in text
    assert "Brier 0.050 [0.020, 0.080]" in text and "ECE (10 bins) 0.100" in text and "AUROC of 'changed'" in text
    assert "0: 0.90, 1: 0.70; spread 0.20" in text
    # feature descriptions: similarity, no strict score
    features = {"explainer": {"semantic_similarity": 0.9},
                "fewshot_k4": {"semantic_similarity": 0.3, "n": 5, "draws": 3},
                "vector_nearest_neighbour": {"semantic_similarity": 0.8}}
    assert peer_lines(features) == ["peers' baselines, similarity: fewshot_k4 0.30, vector_nearest_neighbour 0.80; "
                                    "explainer 0.90"]
