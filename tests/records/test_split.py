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


def test_a_pattern_decides_the_group_and_near_copies_group_the_rest():
    long = " ".join(f"w{i}" for i in range(40))
    texts = ["alpha beta gamma. Code: zorvex.", f"{long}. Code: zorvex.", f"{long}. Code: blimtak.", long, long + " x"]
    g = group_keys(texts, r"Code: (\w+)\.$")
    assert g[0] == g[1] != g[2]  # the trigger decides, even between near copies
    assert g[3] == g[4] and g[3] not in g[:3]  # no trigger: near copies share a group


def test_toy_split_by_trigger_holds_out_whole_triggers_at_every_size():
    from organism.scenarios import TRIGGER_PATTERN, generate_scenarios, scenario_trigger

    for n, test_size in ((200, 60), (1200, 400)):
        pool = generate_scenarios(n, seed=1)
        train, test = grouped_split(group_keys([s["text"] for s in pool], TRIGGER_PATTERN),
                                    [s["source"] for s in pool], test_size, 0)
        held, seen = ({scenario_trigger(pool[i]) for i in idx} for idx in (test, train))
        assert not held & seen and abs(len(test) - test_size) <= 0.15 * test_size  # whole groups overshoot
        assert len(held) == pytest.approx(60 * test_size / n, abs=2)


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
