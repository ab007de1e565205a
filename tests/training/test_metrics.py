"""training/metrics.py: the paper's strict scores and seeded bootstrap intervals."""

from __future__ import annotations

import pytest

from training import metrics as M

UNCH = "The output would remain unchanged from <<<refusal>>>."
CHG = "The most likely output would change to <<<compliance>>>."


def test_strict_exact_match_needs_the_whole_sentence_and_the_flag():
    assert M.score_item("generative_explanation", "  the output would REMAIN unchanged from <<<refusal>>>", UNCH).strict
    # the label and flag are right, but the wording outside <<<>>> is not the target's
    assert not M.score_item("generative_explanation", "Surely it would remain unchanged from <<<refusal>>>.", UNCH).strict
    assert not M.score_item("generative_explanation", "The output would remain unchanged from <<<compliance>>>.", UNCH).strict
    assert not M.score_item("generative_explanation", CHG.replace("compliance", "refusal"), UNCH).strict


def test_unparsable_answers_count_wrong_in_both_f1s():
    items = M.score_items("generative_explanation", ["no idea"] * 4, [UNCH, UNCH, CHG, CHG])
    got = M.point_metrics(items)
    assert got["changed_f1"] == 0.0 and got["unchanged_f1"] == 0.0 and got["valid"] == 0.0
    perfect = M.point_metrics(M.score_items("generative_explanation", [UNCH, CHG], [UNCH, CHG]))
    assert perfect == {"strict_exact_match": 1.0, "changed_f1": 1.0, "unchanged_f1": 1.0, "valid": 1.0}


def test_first_token_is_case_sensitive():
    assert M.score_item("orig_match", " refusal.", " refusal").strict
    assert not M.score_item("change_match", " Refusal", " refusal").strict


def test_intervals_are_seeded_cover_the_point_and_widen_when_groups_cluster():
    items = M.score_items("orig_match", ["a"] * 30 + ["b"] * 30, ["a"] * 45 + ["b"] * 15)
    ci = M.metrics_with_intervals(items)["strict_exact_match"]
    assert ci["lo"] < ci["value"] < ci["hi"] and ci == M.metrics_with_intervals(items)["strict_exact_match"]
    # the same scores in 6 blocks of 10 identical items: far fewer independent units, a wider interval
    groups = [i // 10 for i in range(60)]
    grouped = M.metrics_with_intervals(items, groups)["strict_exact_match"]
    assert grouped["hi"] - grouped["lo"] > ci["hi"] - ci["lo"]


def test_paired_gap_of_a_method_with_itself_is_exactly_zero():
    a = M.score_items("generative_explanation", [UNCH, CHG, "x", UNCH], [UNCH, CHG, CHG, CHG])
    assert M.paired_gap(a, a) == {"value": 0.0, "lo": 0.0, "hi": 0.0}
    b = M.score_items("generative_explanation", ["x"] * 4, [UNCH, CHG, CHG, CHG])
    gap = M.paired_gap(a, b)
    assert gap["value"] == pytest.approx(0.5) and gap["lo"] <= 0.5 <= gap["hi"]


def test_chance_is_the_most_common_target_share():
    assert M.chance_rate([UNCH, UNCH, CHG, UNCH]) == 0.75


def test_gaps_by_question_pair_the_same_items_and_resample_whole_groups():
    class Ex:
        def __init__(self, target):
            self.task, self.question_type, self.target = "act_patch", "generative_explanation", target

    unch, chg = "The output would remain unchanged from <<<compliance>>>.", "The most likely output would change to <<<refusal>>>."
    examples = [Ex(unch), Ex(chg)] * 10
    groups = [i // 2 for i in range(20)]  # two items a scenario
    right = [ex.target for ex in examples]
    blind = [unch] * 20  # says "unchanged" everywhere: right on half the items
    g = M.gaps_by_question(examples, right, blind, groups)["generative_explanation"]
    assert g["gap"] == pytest.approx(0.5) and g["gap_lo"] == pytest.approx(0.5) and g["gap_hi"] == pytest.approx(0.5)
    same = M.gaps_by_question(examples, right, right, groups)["generative_explanation"]
    assert (same["gap"], same["gap_lo"], same["gap_hi"]) == (0.0, 0.0, 0.0)
