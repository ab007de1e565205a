"""training/calibration.py: Brier, ECE and AUROC on cases whose truth is known, and the bug injection that
shuffles the confidences across items."""

from __future__ import annotations

import numpy as np
import pytest

from training.calibration import auroc, brier, calibration_by_question, calibration_metrics, ece
from training.examples import Example, causal_target


def _calibrated(n: int, seed: int):
    """Confidences drawn uniformly, outcomes drawn with exactly that probability: calibrated by construction;
    P(changed) informative of the changed flag."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0, 1, n)
    correct = rng.uniform(0, 1, n) < conf
    changed = rng.uniform(0, 1, n) < 0.5
    p_changed = np.clip(np.where(changed, 0.7, 0.3) + rng.normal(0, 0.15, n), 0, 1)
    return conf, correct, p_changed, changed


def test_the_metrics_on_hand_worked_cases():
    assert brier([1.0, 0.0], [True, False]) == 0.0 and brier([1.0, 0.0], [False, True]) == 1.0
    assert brier([0.5] * 4, [True, False, True, False]) == pytest.approx(0.25)
    # two bins: 0.2 (accuracy 0.5) and 0.9 (accuracy 1.0): ECE = 0.5 * 0.3 + 0.5 * 0.1
    assert ece([0.2, 0.2, 0.9, 0.9], [True, False, True, True]) == pytest.approx(0.2)
    assert ece([1.0, 1.0], [True, True]) == 0.0  # a confidence of 1 falls in the last bin
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert auroc([0.5, 0.5], [False, True]) == 0.5  # ties count half
    assert np.isnan(auroc([0.1, 0.2], [True, True]))


def test_auroc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    s, y = rng.integers(0, 5, 200) / 4, rng.uniform(size=200) < 0.4  # many ties
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s))


def test_shuffled_confidences_worsen_ece_and_brier_and_bring_auroc_to_chance():
    """Bug injection: the same confidences, paired with the wrong items."""
    conf, correct, p_changed, changed = _calibrated(2000, 0)
    good = calibration_metrics(conf, correct, p_changed, changed, n_boot=50)
    rng = np.random.default_rng(1)
    bad = calibration_metrics(rng.permutation(conf), correct, rng.permutation(p_changed), changed, n_boot=50)
    assert good["ece"].value < 0.05 and bad["ece"].value > good["ece"].value + 0.1, (good, bad)
    assert bad["brier"].value > good["brier"].value + 0.1 and bad["brier"].lo > good["brier"].hi, (good, bad)
    assert good["auroc_changed"].value > 0.9 and abs(bad["auroc_changed"].value - 0.5) < 0.05, (good, bad)
    assert good["ece"].lo <= good["ece"].value <= good["ece"].hi
    assert good["confidence_mean"] == pytest.approx(bad["confidence_mean"])  # same distribution, other pairing


def test_calibration_per_question_type_reads_the_changed_flag_from_the_target():
    exs = [Example(task="hint_attribution", question_type="generative_explanation", sample_id=str(i), messages=[],
                   target=causal_target("refusal", "compliance" if i % 2 else "refusal")) for i in range(6)]
    exs += [Example(task="hint_attribution", question_type="orig_match", sample_id=f"o{i}", messages=[],
                    target=" refusal") for i in range(3)]
    p_changed = [0.9 if i % 2 else 0.1 for i in range(6)] + [None] * 3
    out = calibration_by_question(exs, [True] * 9, [0.9] * 9, p_changed)
    assert out["generative_explanation"]["auroc_changed"].value == 1.0
    assert "auroc_changed" not in out["orig_match"]  # no "changed" to rank
    assert out["orig_match"]["brier"].value == pytest.approx(0.01)
    assert out["orig_match"]["ece"].value == pytest.approx(0.1)
