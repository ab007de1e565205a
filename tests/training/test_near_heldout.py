"""Training warns, naming the pair, when a training scenario is a near-copy of a held-out one."""

import logging

from toy_records import context_records, organism_tokenizer

from organism.scenarios import generate_scenarios
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


def test_a_degenerate_steering_outcome_is_trainable_and_an_unknown_label_is_not():
    """steer marks outputs its steering broke `degenerate`: training must take them (the explainer learns
    that the arm breaks the output), while a label nobody writes is still refused."""
    from pathlib import Path

    import msgspec
    import pytest

    from records.errors import InputError
    from records.schema import EngineInfo, PatchPosition, SteeringRecord
    from training.examples import validate_records

    pos = PatchPosition(orig_pos=0, orig_text_token="x", counterfact_pos=0, counterfact_text_token="x")
    base = SteeringRecord(
        layer=[2], input_tokens=[], original_continuation=[], ablated_continuation=[], is_different=True,
        patch_position=pos, counterfactual_text="", gt_original_target="compliance",
        gt_counterfactual_target="degenerate", sample_id="s", index=0, arm="L2@a8", label="aligned", source="",
        context="unmonitored", alpha=8.0, alpha_effective=[8.0], scale_mode="raw", position_policy="last",
        direction_id="d", direction_path="direction.npy", direction_norm=1.0, input_token_ids=[], prompt_text="",
        baseline_output="", steered_output="I I I", baseline_behavior="compliance", steered_behavior="degenerate",
        behavior_changed=False, baseline_output_tokens=0, steered_output_tokens=3, baseline_finish_reason="stop",
        steered_finish_reason="length", labeller="rules",
        engine=EngineInfo(backend="hf", model="m", dtype="float32", max_tokens=8))
    validate_records([base], Path("train.jsonl"))
    with pytest.raises(InputError, match="'sneaky' is not a behaviour label"):
        validate_records([msgspec.structs.replace(base, steered_behavior="sneaky")], Path("train.jsonl"))
