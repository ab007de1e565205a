"""Task 1's vector-probe baseline and paired tests over clusters (training/task1_evidence.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from organism.assets import MODIFIERS, TRIGGERS
from records.schema import Interval
from training.examples import Example
from training.task1_evidence import (
    fill_description,
    gap_lines,
    paired_group_gap,
    sign_flip_p,
    slot_texts,
    vector_probe_predictions,
)


def _summary(mod: str, trig: str) -> str:  # the toy's description template (organism/assets.py)
    m = {name: phrase for name, _, phrase in MODIFIERS}[mod]
    t = {name: phrase for name, _, _, phrase in TRIGGERS}[trig]
    return f"{m}, and {t}"


def _clusters():
    mods, trigs = [m[0] for m in MODIFIERS], [t[0] for t in TRIGGERS]
    return [{"modifier": m, "trigger": t} for m, t in itertools.product(mods, trigs)]


def test_the_template_is_filled_for_a_combination_no_training_description_has():
    clusters = _clusters()
    held = {"modifier": "benchmark", "trigger": "af_intrusion"}
    pairs = [(_summary(c["modifier"], c["trigger"]), c) for c in clusters if c != held]
    assert fill_description(held, pairs, slot_texts(pairs)) == _summary("benchmark", "af_intrusion")


def _example(cid, attrs, vec, split_target):
    return Example(task="features_explain", question_type="generative_explanation", sample_id=f"f{cid}-{vec[0]:.3f}",
                   messages=[], target=split_target, weight=1.0, input_text="", vector=vec, meta={"cluster_id": cid})


def test_probes_on_the_vectors_name_held_out_combinations_without_a_language_model():
    rng = np.random.default_rng(0)
    clusters = _clusters()
    axes = {v: rng.standard_normal(32) for c in clusters for v in c.values()}  # one direction per value
    held = {5, 11, 18}
    train, test = [], []
    for cid, c in enumerate(clusters):
        for _ in range(4):
            vec = (axes[c["modifier"]] + axes[c["trigger"]] + 0.1 * rng.standard_normal(32)).astype(np.float32)
            ex = _example(cid, c, vec, _summary(c["modifier"], c["trigger"]))
            (test if cid in held else train).append(ex)
    preds = vector_probe_predictions(train, test, dict(enumerate(clusters)))
    assert preds == [ex.target for ex in test]
    assert vector_probe_predictions(train, test, {}) is None  # no attributes: no probe


def test_sign_flip_is_exact_over_groups_and_the_gap_resamples_clusters():
    diffs = np.array([1.0, 1.0, 1.0, 1.0])
    assert sign_flip_p(diffs, ["a", "b", "c", "d"]) == pytest.approx(2 / 16)  # all + or all -
    assert sign_flip_p(diffs, ["a", "a", "b", "b"]) == pytest.approx(2 / 4)  # two clusters: no evidence
    gap = paired_group_gap(np.array([1.0, 1, 0, 0]), np.zeros(4), ["a", "a", "b", "b"], n_boot=200)
    assert gap["value"] == 0.5 and gap["lo"] == 0.0 and gap["hi"] == 1.0 and gap["p"] == 1.0


def test_gap_lines_note_a_baseline_whose_interval_reaches_zero():
    m = {"n_clusters": 5.0, "similarity_gap": Interval(0.048, -0.07, 0.16), "similarity_sign_p": 0.25,
         "attribute_gap": Interval(0.3, 0.1, 0.5), "attribute_sign_p": 0.03}
    note, *lines = gap_lines({"nearest_neighbour": m})
    assert note.startswith("NOTE: only 5 held-out clusters (fewer than 15): one cluster moves a mean by up to 0.20")
    assert "similarity +0.048 [-0.070, +0.160] p=0.250" in lines[0] and "over 5 held-out clusters" in lines[0]
    assert lines[1].startswith("NOTE: the nearest_neighbour baseline reaches the explainer on similarity (")
    ok = {**m, "similarity_gap": Interval(0.048, 0.01, 0.16), "n_clusters": 16.0}
    assert len(gap_lines({"vector_probe": ok})) == 1
