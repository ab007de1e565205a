"""Training warns, naming the pair, when a training scenario is a near-copy of a held-out one."""

import logging

from organism.scenarios import generate_scenarios
from toy_records import context_records, organism_tokenizer
from training.examples import HeldOut, check_no_heldout


def test_a_near_copy_of_a_held_out_scenario_is_named_in_a_warning(caplog):
    held_text, other = generate_scenarios(2, seed=41)
    words = held_text["text"].split()
    words[len(words) // 2] = "zebra"  # one word changed: no content id, no substring matches any more
    train = [dict(held_text, text=" ".join(words)), other]
    held = HeldOut()
    held.add("gold_106", "abc", held_text["text"])
    caplog.set_level(logging.WARNING)
    check_no_heldout(context_records(train, organism_tokenizer()), held, where="train.jsonl")  # no exact match
    warned = [r.getMessage() for r in caplog.records if "near-copy" in r.getMessage()]
    assert len(warned) == 1 and "training record index 0" in warned[0] and "gold_106 id abc" in warned[0]
