"""Token-budgeted batches (lm/batching.py): wide batches of short prompts, narrow ones of long prompts."""

from __future__ import annotations

from lm.batching import token_budget_batches


def test_without_a_budget_batches_are_batch_size_rows_in_order():
    assert token_budget_batches([4, 2, 0, 1, 3], [1] * 5, batch_size=2) == [[4, 2], [0, 1], [3]]


def test_a_budget_bounds_rows_times_the_widest_length_plus_new_tokens():
    lengths = [100, 90, 40, 30, 10, 10, 10, 500]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches = token_budget_batches(order, lengths, batch_size=4, batch_tokens=240, extra=20)
    assert [i for b in batches for i in b] == order  # every position once, in order
    assert batches[0] == [7]  # longer than the budget alone: goes alone, never dropped
    for b in batches:
        assert len(b) <= 4 and (len(b) == 1 or len(b) * max(lengths[i] + 20 for i in b) <= 240)
    assert batches[1:] == [[0, 1], [2, 3, 4, 5], [6]]  # 2 x 120; 4 x 60 (the row cap, not the budget)


def test_the_budget_counts_the_widest_row_in_either_order():
    lengths = [10, 10, 10, 70]  # shortest first (scoring): the last row widens the whole batch
    assert token_budget_batches(range(4), lengths, batch_size=8, batch_tokens=100) == [[0, 1, 2], [3]]
