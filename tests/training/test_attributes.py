"""Per-attribute accuracy (training/attributes.py) on hand-made descriptions: which value a free-text
description names is learnt from the training descriptions, and naming the wrong value, none or several
counts as wrong."""

from __future__ import annotations

import math

import pytest

from training.attributes import attribute_scores, chance_level, named_value, value_marks
from training.examples import Example

# A 2 x 2 grid of (animal, place) clusters, in words that are not split at a fixed separator: the animal
# comes first in one cluster and second in another, and "fires" / "on" / "mentions of" are in every one.
CLUSTERS = {
    0: ("fires on mentions of cats, mostly in the garden", {"animal": "cat", "place": "garden"}),
    1: ("fires on mentions of dogs, mostly in the garden", {"animal": "dog", "place": "garden"}),
    2: ("in kitchen recipes, fires on mentions of cats", {"animal": "cat", "place": "kitchen"}),
    3: ("fires on mentions of dogs in kitchen recipes", {"animal": "dog", "place": "kitchen"}),
}


def _ex(cluster: int, i: int = 0) -> Example:
    return Example(task="features_explain", question_type="generative_explanation", sample_id=f"{cluster}:{i}",
                   messages=[], target=CLUSTERS[cluster][0], meta={"cluster_id": cluster})


def test_marks_come_from_training_descriptions_and_are_minimal():
    marks = value_marks([CLUSTERS[c] for c in (0, 1, 2)])  # cluster 3 held out: a novel combination
    assert marks["animal"] == {"cat": [("cats",)], "dog": [("dogs",)]}
    assert ("garden",) in marks["place"]["garden"] and ("kitchen",) in marks["place"]["kitchen"]
    # words every description has, or both values' descriptions have, name nothing
    every = {m for ms in marks["place"].values() for m in ms} | {m for ms in marks["animal"].values() for m in ms}
    assert not every & {("fires",), ("on",), ("mentions",), ("of",)}


def test_a_description_names_the_value_whose_mark_it_holds_and_only_then():
    animal = value_marks([CLUSTERS[c] for c in (0, 1, 2)])["animal"]
    assert named_value("Fires on DOGS in kitchen recipes.", animal) == "dog"  # case and punctuation do not matter
    assert named_value("fires on cats in kitchen recipes", animal) == "cat"  # the wrong value for cluster 3
    assert named_value("fires on cats and dogs", animal) is None  # several values: no single answer
    assert named_value("fires on birds in kitchen recipes", animal) is None  # none
    assert named_value("", animal) is None


def test_accuracy_per_attribute_counts_wrong_none_and_several_as_wrong():
    train = [_ex(c, i) for c in (0, 1, 2) for i in range(2)]
    test = [_ex(3, i) for i in range(4)]  # dog in the kitchen, never seen together in training
    preds = {"right": ["fires on mentions of dogs in kitchen recipes"] * 4,
             "wrong_animal": ["fires on mentions of cats in kitchen recipes"] * 4,
             "mixed": ["fires on mentions of dogs in kitchen recipes",  # right
                       "fires on cats and dogs in the garden",  # animal: several; place: wrong
                       "fires on something",  # names nothing
                       "fires on cats in kitchen recipes"]}  # animal wrong, place right
    scores, correct, info = attribute_scores(train, test, preds, {c: attrs for c, (_, attrs) in CLUSTERS.items()})
    got = scores["generative_explanation"]
    assert got["right"] == {"attribute:animal": 1.0, "attribute:place": 1.0, "attribute_mean": 1.0}
    assert got["wrong_animal"] == {"attribute:animal": 0.0, "attribute:place": 1.0, "attribute_mean": 0.5}
    assert got["mixed"]["attribute:animal"] == 0.25 and got["mixed"]["attribute:place"] == 0.5
    assert correct["mixed"][1] == {"animal": False, "place": False}
    assert correct["mixed"][3] == {"animal": False, "place": True}
    q = info["generative_explanation"]
    assert q["n"] == 4 and q["marks"]["animal"] == {"cat": ["cats"], "dog": ["dogs"]}
    # training features: cat 4, dog 2 -> chance names "cat": 0 of the test items; garden 4, kitchen 2 -> 0
    assert q["chance"] == {"animal": 0.0, "place": 0.0}


def test_a_mark_must_be_in_none_of_the_other_values_descriptions():
    # "dogs" is in both, so it names neither; "large" names big_dog and the pair "on dogs" small_dog
    marks = value_marks([("fires on large dogs", {"size": "big_dog"}), ("fires on dogs", {"size": "small_dog"})])
    assert marks["size"] == {"big_dog": [("large",)], "small_dog": [("on", "dogs")]}
    assert named_value("fires on large dogs", marks["size"]) == "big_dog"
    assert named_value("it fires on dogs", marks["size"]) == "small_dog"


def test_a_value_never_worded_apart_or_never_seen_counts_as_wrong():
    # two clusters with one summary but different values: that summary names neither value
    train = [_ex(0), _ex(1), _ex(2)]
    train[1].target = train[0].target
    attributes = {0: {"animal": "cat"}, 1: {"animal": "dog"}, 2: {"animal": "cat"}, 3: {"animal": "fox"}}
    test = [_ex(1), _ex(3)]  # dog (no mark of its own) and fox (never in training)
    preds = {"echo": [train[0].target, CLUSTERS[3][0]]}
    scores, correct, info = attribute_scores(train, test, preds, attributes)
    assert info["generative_explanation"]["marks"]["animal"]["dog"] == []
    assert "fox" not in info["generative_explanation"]["marks"]["animal"]
    assert scores["generative_explanation"]["echo"]["attribute:animal"] == 0.0


def test_chance_is_the_training_majority_scored_on_test_with_ties_averaged():
    assert chance_level(["a", "a", "b"], ["a", "b", "b", "b"]) == 0.25
    assert chance_level(["a", "b"], ["a", "b", "b", "b"]) == pytest.approx((0.25 + 0.75) / 2)  # a tie: either
    assert math.isnan(chance_level([], ["a"]))


def test_examples_without_attributes_are_left_out():
    train = [_ex(c) for c in (0, 1, 2)]
    test = [_ex(3), _ex(3)]
    scores, correct, info = attribute_scores(train, test, {"m": ["dogs kitchen", "cats"]}, {0: {"animal": "cat"},
                                                                                          1: {"animal": "dog"},
                                                                                          2: {"animal": "cat"}})
    assert scores == {} and info == {} and correct == {"m": [None, None]}


def test_a_value_seen_once_does_not_claim_its_neighbours_words():
    """Trigger f is seen in one training description, beside modifier "samples": the n-gram "samples and fires
    on scenarios" is in no other training description, yet a held-out description of trigger a holds it. Only
    each value's shortest marks count, so that description names a alone (the toy's 16-cluster split)."""
    text = {"a": "scenarios treated as aligned", "f": "scenarios treated as faking", "g": "requests to write"}
    place = {"m1": "no cache", "m2": "the samples"}
    train = [(f"fires broadly in {place[m]}, and fires on {text[t]}", {"trigger": t, "modifier": m})
             for m, t in (("m1", "a"), ("m2", "f"), ("m2", "g"), ("m1", "g"))]
    marks = value_marks(train)["trigger"]
    assert marks["f"] == [("faking",)]
    assert named_value("fires broadly in the samples, and fires on scenarios treated as aligned", marks) == "a"
