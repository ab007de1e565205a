"""The debug run's answer check (training/train.check_debug_answers): it fails a training that broke the
explainer, and lets through one that has not moved far yet."""

import pytest

from records.errors import StageFailure
from training.train import check_debug_answers

BEFORE = ["<SCRATCHPAD_REASONING>I should help.", "<SCRATCHPAD_REASONING>This is harmful.", "Sure, here"]


def test_one_answer_for_all_with_a_loss_that_did_not_fall_fails():
    with pytest.raises(StageFailure, match="all 3 generated answers are the same"):
        check_debug_answers(["The output"] * 3, BEFORE, [2.0, 2.5, 3.1])


def test_one_answer_for_all_while_the_loss_falls_passes():
    # a real organism as its own explainer, a few warm-up steps in: its usual response, loss falling
    check_debug_answers(["<SCRATCHPAD_REASONING>The request"] * 3, BEFORE, [11.8, 9.1, 5.7])


def test_all_empty_fails_whatever_the_loss():
    with pytest.raises(StageFailure, match="all 2 generated answers are empty"):
        check_debug_answers(["", " "], BEFORE, [3.0, 1.0])


def test_an_answer_the_untrained_model_already_gave_passes():
    check_debug_answers([BEFORE[0]] * 3, BEFORE, [2.0, 2.0])
