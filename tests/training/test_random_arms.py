"""train.tasks.act_patch.random_arms: fewer "no change" rows of the random control directions in training."""

from __future__ import annotations

import collections
from pathlib import Path

import msgspec
import pytest

from records.errors import InputError
from records.schema import EngineInfo, PatchPosition, SteeringRecord
from training.config import load_train_config
from training.examples import thin_random_arms

REPO = Path(__file__).resolve().parents[2]
ARMS = [f"L{layer}@a{alpha:g}" for layer in (1, 2) for alpha in (1, 1.5, 2)]


def _records() -> list[SteeringRecord]:
    proto = SteeringRecord(
        layer=[1], input_tokens=[], original_continuation=[], ablated_continuation=[], is_different=False,
        patch_position=PatchPosition(0, "", 0, ""), counterfactual_text="", gt_original_target="compliance",
        gt_counterfactual_target="compliance", sample_id="", index=0, arm="", label="aligned", source="",
        context="unmonitored", alpha=1.0, alpha_effective=[1.0], scale_mode="residual_norm", position_policy="last",
        direction_id="d", direction_path="direction.npy", direction_norm=1.0, input_token_ids=[], prompt_text="",
        baseline_output="", steered_output="", baseline_behavior="compliance", steered_behavior="compliance",
        behavior_changed=False, baseline_output_tokens=0, steered_output_tokens=0, baseline_finish_reason="stop",
        steered_finish_reason="stop", labeller="rules", engine=EngineInfo("hf", "toy", "float32", 8))
    kinds = {"file": "file", "-file": "negated", "random0": "random", "random1": "random"}
    return [msgspec.structs.replace(proto, sample_id=f"s{i}", index=i, direction_name=name, direction_kind=kind,
                                    arm=arm if name == "file" else f"{name}/{arm}")
            for i in range(20) for name, kind in kinds.items() for arm in ARMS]


def test_each_random_direction_keeps_its_share_of_arms_per_scenario_and_nothing_else_is_dropped():
    records = _records()
    kept = thin_random_arms(records, 2, seed=0)
    per = collections.Counter((r.sample_id, r.direction_name) for r in kept)
    assert all(per[(f"s{i}", d)] == 2 for i in range(20) for d in ("random0", "random1"))
    assert all(per[(f"s{i}", d)] == 6 for i in range(20) for d in ("file", "-file"))
    assert [r for r in kept if r.direction_kind != "random"] == [r for r in records if r.direction_kind != "random"]
    # seeded: the same draw on a rerun, another on another seed; and every arm is still seen across scenarios
    assert thin_random_arms(records, 2, seed=0) == kept
    assert thin_random_arms(records, 2, seed=1) != kept
    assert {r.arm.split("/")[1] for r in kept if r.direction_kind == "random"} == set(ARMS)
    assert thin_random_arms(records, 0, seed=0) == records
    assert len(thin_random_arms(records, 9, seed=0)) == len(records)  # more than a direction has: all of them


def test_random_arms_is_refused_where_there_are_no_random_directions():
    cfg = str(REPO / "configs/af_context_ablation_cpu.yaml")
    with pytest.raises(InputError, match="hint_attribution.random_arms: only act_patch"):
        load_train_config(cfg, ["train.tasks.hint_attribution.random_arms=2"])
    with pytest.raises(InputError, match=r">= 0.*random_arms"):
        load_train_config(cfg, ["train.tasks.hint_attribution.random_arms=-1"])
