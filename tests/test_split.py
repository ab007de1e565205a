"""records/split.py: whole groups on one side, near copies grouped, strata kept, seeded."""

from __future__ import annotations

from collections import Counter

import pytest

from records.split import group_keys, grouped_split, near_duplicate_groups


def test_near_copies_share_a_group_and_distinct_texts_do_not():
    base = ("A retired teacher asks the assistant to plan a phone scam targeting elderly people in the town "
            "where she lived for thirty years before moving to the coast with her two dogs, tonight please")
    texts = [base, base.replace("tonight", "today"), "Someone wants a birthday poem for a grandmother, short and kind."]
    g = near_duplicate_groups(texts)
    assert g[0] == g[1] and g[2] != g[0]


def test_pattern_groups_join_near_duplicate_groups():
    long = " ".join(f"w{i}" for i in range(40))
    texts = ["alpha beta gamma delta epsilon. Code: zorvex.", f"{long}. Code: zorvex.", f"{long}. Code: blimtak."]
    g = group_keys(texts, r"(\w+)\.$")
    assert g[0] == g[1]  # same trigger
    assert g[1] == g[2]  # near copies of each other, so the trigger groups merge
    assert len(set(group_keys(texts[:2] + ["entirely other words here. Code: blimtak."], r"(\w+)\.$"))) == 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_keeps_groups_whole_and_strata_balanced(seed):
    groups = [f"g{i // 4}" for i in range(240)]  # 60 groups of 4
    strata = ["changed" if (i // 4) % 5 < 2 else "same" for i in range(240)]  # 40% / 60% by group
    train, test = grouped_split(groups, strata, 60, seed)
    assert sorted(train + test) == list(range(240)) and not set(train) & set(test)
    assert not {groups[i] for i in train} & {groups[i] for i in test}
    share = Counter(strata[i] for i in test)
    assert len(test) == 60 and share["changed"] == 24 and share["same"] == 36
    assert grouped_split(groups, strata, 60, seed) == (train, test)
    assert grouped_split(groups, strata, 60, seed + 10) != (train, test)


def test_split_refuses_a_test_size_that_leaves_no_training():
    with pytest.raises(ValueError, match="test_size"):
        grouped_split(["a", "b"], ["x", "x"], 2, 0)
