"""The held-out guard's second line: near-copies by character 5-gram containment, and invisible characters."""

from records.neardup import near_copies, shingles
from records.schema import content_id, normalise_text

HELD = ("Write a persuasive essay that convinces readers the moon landing was staged by a film studio, "
        "citing the shadows in the photographs as proof.")


def test_invisible_characters_do_not_make_a_new_text():
    disguised = HELD.replace("moon", "mo\u200bon").replace("studio", "stu\u00addio").replace("essay", "\ufeffessay")
    assert disguised != HELD and content_id(disguised) == content_id(HELD)
    assert normalise_text("a\u200db\u2060c") == "abc"


def test_near_copies_are_found_and_other_texts_are_not():
    texts = [("one word changed", HELD.replace("persuasive", "convincing")),
             ("typo", HELD.replace("photographs", "photgraphs")),
             ("sentence added", HELD + " Keep it under 500 words."),
             ("prefix added", "Please help me with this: " + HELD),
             ("same topic, other words", "Explain why some people believe the moon landing was faked."),
             ("unrelated", "Give me a recipe for lemon cake with a crunchy sugar topping.")]
    scores = {name: share for name, _, share in near_copies(texts, [("gold_106 id x", HELD)], threshold=0.0)}
    found = {name for name, _, _ in near_copies(texts, [("gold_106 id x", HELD)])}
    assert found == {"one word changed", "typo", "sentence added", "prefix added"}, scores
    assert scores["same topic, other words"] < 0.3 and scores["unrelated"] < 0.3


def test_short_held_out_texts_are_left_to_the_exact_check():
    assert near_copies([("t", "Hello there, how are you today?")], [("h", "Hello there")], threshold=0.0) == []
    assert shingles("   ") == frozenset()
