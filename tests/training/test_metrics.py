"""training/metrics.py: the paper's strict scores and seeded bootstrap intervals."""

from __future__ import annotations

import pytest

from records.schema import Interval
from training import metrics as M

UNCH = "The output would remain unchanged from <<<refusal>>>."
CHG = "The most likely output would change to <<<compliance>>>."


def test_strict_exact_match_needs_the_whole_sentence_and_the_flag():
    def strict(answer: str) -> bool:
        return M.strict_item("generative_explanation", answer, UNCH).strict

    assert strict("  the output would REMAIN unchanged from <<<refusal>>>")
    # the label and flag are right, but the wording outside <<<>>> is not the target's
    assert not strict("Surely it would remain unchanged from <<<refusal>>>.")
    assert not strict("The output would remain unchanged from <<<compliance>>>.")
    assert not strict(CHG.replace("compliance", "refusal"))


def test_unparsable_answers_count_wrong_in_both_f1s():
    items = M.strict_items("generative_explanation", ["no idea"] * 4, [UNCH, UNCH, CHG, CHG])
    got = M.point_metrics(items)
    assert got["changed_f1"] == 0.0 and got["unchanged_f1"] == 0.0 and got["valid"] == 0.0
    perfect = M.point_metrics(M.strict_items("generative_explanation", [UNCH, CHG], [UNCH, CHG]))
    assert perfect == {"strict_exact_match": 1.0, "changed_f1": 1.0, "unchanged_f1": 1.0, "valid": 1.0}


def test_first_token_is_case_sensitive():
    assert M.strict_item("orig_match", " refusal.", " refusal").strict
    assert not M.strict_item("change_match", " Refusal", " refusal").strict


def test_intervals_are_seeded_cover_the_point_and_widen_when_groups_cluster():
    items = M.strict_items("orig_match", ["a"] * 30 + ["b"] * 30, ["a"] * 45 + ["b"] * 15)
    ci = M.metrics_with_intervals(items)["strict_exact_match"]
    assert ci.lo < ci.value < ci.hi and ci == M.metrics_with_intervals(items)["strict_exact_match"]
    # the same scores in 6 blocks of 10 identical items: far fewer independent units, a wider interval
    groups = [i // 10 for i in range(60)]
    grouped = M.metrics_with_intervals(items, groups)["strict_exact_match"]
    assert grouped.hi - grouped.lo > ci.hi - ci.lo


def test_paired_gap_of_a_method_with_itself_is_exactly_zero():
    a = M.strict_items("generative_explanation", [UNCH, CHG, "x", UNCH], [UNCH, CHG, CHG, CHG])
    assert M.paired_gap(a, a) == Interval(value=0.0, lo=0.0, hi=0.0)
    b = M.strict_items("generative_explanation", ["x"] * 4, [UNCH, CHG, CHG, CHG])
    gap = M.paired_gap(a, b)
    assert gap.value == pytest.approx(0.5) and gap.lo <= 0.5 <= gap.hi


def test_chance_is_the_most_common_target_share():
    assert M.chance_rate([UNCH, UNCH, CHG, UNCH]) == 0.75


def test_gaps_by_question_pair_the_same_items_and_resample_whole_groups():
    class Ex:
        def __init__(self, target):
            self.task, self.question_type, self.target = "act_patch", "generative_explanation", target

    unch = "The output would remain unchanged from <<<compliance>>>."
    chg = "The most likely output would change to <<<refusal>>>."
    examples = [Ex(unch), Ex(chg)] * 10
    groups = [i // 2 for i in range(20)]  # two items a scenario
    right = [ex.target for ex in examples]
    blind = [unch] * 20  # says "unchanged" everywhere: right on half the items
    g = M.gaps_by_question(examples, right, blind, groups)["generative_explanation"]
    assert g["gap"].value == pytest.approx(0.5) and g["gap"].lo == pytest.approx(0.5)
    assert g["gap"].hi == pytest.approx(0.5)
    same = M.gaps_by_question(examples, right, right, groups)["generative_explanation"]
    assert same["gap"] == Interval(0.0, 0.0, 0.0)


def test_the_strict_and_lenient_scorers_are_named_apart_and_differ_on_case():
    """One rule per name: the paper's first token keeps case (metrics.strict_*), ours lowercases
    (scoring.lenient_*); neither module offers the other's name."""
    from training import scoring as S
    from training.examples import Example

    assert M.strict_first_token(" Refusal.") == "Refusal" and S.lenient_first_word(" Refusal.") == "refusal"
    ex = Example(task="act_patch", question_type="orig_match", sample_id="a", messages=[], target=" refusal")
    assert S.lenient_item(ex, " Refusal")["exact_match"]
    assert not M.strict_item("orig_match", " Refusal", " refusal").strict
    shared = {"first_token", "score_item", "score_items"}
    assert not shared & set(vars(M)) and not shared & set(vars(S))
