"""Vector controls are scored only on question types whose prompt carries a vector (issue #28: the NOTE
"zeroed_vectors reaches self" was printed for Task 2's orig_match, whose prompt has no vector)."""

from __future__ import annotations

import numpy as np

from training.evaluate import skip_control
from training.examples import Example


def _ex(q, vector):
    return Example(task="act_patch", question_type=q, sample_id=q, messages=[], target="x", vector=vector)


def test_controls_skip_a_question_without_a_vector_and_keep_the_others():
    exs = [_ex("orig_match", None), _ex("generative_explanation", np.ones(4, np.float32))]
    assert skip_control("zeroed_vectors", "orig_match", exs) and skip_control("shuffled_vectors", "orig_match", exs)
    assert not skip_control("zeroed_vectors", "generative_explanation", exs)
    assert not skip_control("lookup", "orig_match", exs)  # not a vector control: scored everywhere
