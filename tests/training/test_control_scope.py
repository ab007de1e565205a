"""Vector controls are scored only on question types whose prompt carries a vector (issue #28: the NOTE
"zeroed_vectors reaches self" was printed for Task 2's orig_match, whose prompt has no vector)."""

from __future__ import annotations

import numpy as np
import pytest

from training.eval_baselines import skip_control
from training.examples import Example


def _ex(q, vector):
    return Example(task="act_patch", question_type=q, sample_id=q, messages=[], target="x", vector=vector)


def test_controls_skip_a_question_without_a_vector_and_keep_the_others():
    exs = [_ex("orig_match", None), _ex("generative_explanation", np.ones(4, np.float32))]
    assert skip_control("zeroed_vectors", "orig_match", exs) and skip_control("shuffled_vectors", "orig_match", exs)
    assert not skip_control("zeroed_vectors", "generative_explanation", exs)
    assert not skip_control("lookup", "orig_match", exs)  # not a vector control: scored everywhere


def test_compare_scores_a_method_only_where_it_answered_every_item():
    """compare reads each method's answers from evaluate's rows: none for a question type means not scored
    there (a vector control on a prompt without a vector), some missing is a broken arm, never a wrong answer."""
    from records.errors import StageFailure
    from training.compare import answered

    assert answered("zeroed_vectors", "generative_explanation", ["a", "b"])
    assert not answered("zeroed_vectors", "orig_match", [None, None])
    with pytest.raises(StageFailure, match="answered 1 of 2"):
        answered("zeroed_vectors", "generative_explanation", ["a", None])
