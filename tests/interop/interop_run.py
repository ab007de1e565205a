"""A small run folder with all three tasks, in the stages' formats, for the export tests.

Task 3 holds the cases the reference trips on: a pair whose raw outputs differ while both labels agree
(the reference's assertion fails on it unless `changed_pred_bc_hint` is the label change) and a scenario
long enough to pass the reference's 500-token limit. Task 2 holds a two-layer arm with different
per-layer multipliers, a two-layer arm with equal ones and single-layer arms. Task 1 holds two split modes
over the same vectors.
"""

from __future__ import annotations

import msgspec
import numpy as np
from toy_records import context_records

from lm import chat
from organism.scenarios import SYSTEM_PROMPTS, generate_scenarios
from records.jsonl import write_json_atomic, write_records_atomic
from records.provenance import make_manifest
from records.schema import EngineInfo, FeatureRecord, PatchPosition, SteeringRecord

HIDDEN = 128
LONG_WORDS = 700  # a scenario of this many words renders far past 500 tokens


def write_run(root, tokenizer) -> dict:
    """<root>/task3, task2, task1 as the demo lays them out; returns what the tests compare against."""
    pool = generate_scenarios(12, seed=3)
    pool[-1] = {**pool[-1], "text": pool[-1]["text"] + " " + " ".join(["detail"] * LONG_WORDS)}
    records = context_records(pool, tokenizer)
    same = next(i for i, r in enumerate(records) if not r.behavior_changed)
    # raw outputs differ, labels agree: ordinary for 256-token outputs
    records[same] = msgspec.structs.replace(
        records[same], unmonitored_output=records[same].monitored_output + " Also, one more thing.",
        changed_pred_bc_hint=True, output_changed=True)
    task3 = root / "task3"
    write_records_atomic(task3 / "train.jsonl", records[:8])
    write_records_atomic(task3 / "test.jsonl", records[8:])
    write_json_atomic(task3 / "manifest.json", make_manifest("generate", {}, "toy"))

    task2 = root / "task2"
    direction = np.random.default_rng(0).standard_normal(HIDDEN).astype(np.float32) * 3.0
    task2.mkdir(parents=True)
    np.save(task2 / "direction.npy", direction)
    arms = [("L1@a1", [1], [1.0]), ("L1+L2@a2", [1, 2], [0.5, 0.8]), ("L2+L3@a1", [2, 3], [1.0, 1.0])]
    steer = [steering_record(tokenizer, s, i, name, layers, eff)
             for i, s in enumerate(pool[:4]) for name, layers, eff in arms]
    write_records_atomic(task2 / "train.jsonl", [r for r in steer if r.index < 3])
    write_records_atomic(task2 / "test.jsonl", [r for r in steer if r.index >= 3])
    write_json_atomic(task2 / "manifest.json", make_manifest("steer", {}, "toy"))

    task1 = root / "task1"
    vectors = np.random.default_rng(1).standard_normal((6, 40)).astype(np.float32)  # [K, dim]
    features = [7, 3, 19, 11, 2, 30]  # original SAE indices, row r = r-th selected
    for mode, test_rows in (("cluster", {4, 5}), ("feature", {0, 3})):
        sub = task1 / f"by_{mode}"
        sub.mkdir(parents=True)
        np.save(sub / "vectors.npy", vectors)
        recs = [FeatureRecord(layer=40, feature_idx=f, row=r, vectors_path="vectors.npy",
                              representation="activation_profile", description=f"cluster text {r % 3}",
                              cluster_id=r % 3, selectivity=1.0 - r / 10, split_by=mode)
                for r, f in enumerate(features)]
        write_records_atomic(sub / "train.jsonl", [x for x in recs if x.row not in test_rows])
        write_records_atomic(sub / "test.jsonl", [x for x in recs if x.row in test_rows])
    write_json_atomic(task1 / "manifest.json", make_manifest("features all", {}))
    return {"task3": records, "task2": steer, "direction": direction, "vectors": vectors, "features": features,
            "same_label_raw_changed": records[same].sample_id, "long": records[-1].sample_id}


def steering_record(tokenizer, scenario, index, arm, layers, eff) -> SteeringRecord:
    rendering = chat.detect_chat_rendering(tokenizer)
    rendered = chat.render(tokenizer, SYSTEM_PROMPTS["unmonitored"], scenario["text"], rendering)
    base, steered = ("refusal", "compliance") if index % 2 else ("compliance", "compliance")
    tok = tokenizer.convert_ids_to_tokens(rendered.token_ids[-1:])[0]
    return SteeringRecord(
        layer=layers, input_tokens=tokenizer.convert_ids_to_tokens(rendered.token_ids),
        original_continuation=["▁I"], ablated_continuation=["▁Sure"], is_different=True,
        patch_position=PatchPosition(orig_pos=len(rendered.token_ids) - 1, orig_text_token=tok,
                                     counterfact_pos=len(rendered.token_ids) - 1, counterfact_text_token=tok),
        counterfactual_text=f"steered at {layers}", gt_original_target=base, gt_counterfactual_target=steered,
        sample_id=f"s{index}", index=index, arm=arm, label=scenario["label"], source="toy", context="unmonitored",
        alpha=eff[0], alpha_effective=eff, scale_mode="residual_norm", position_policy="last", direction_id="d",
        direction_path="direction.npy", direction_norm=1.0, input_token_ids=list(rendered.token_ids),
        prompt_text=rendered.text, baseline_output="I", steered_output="Sure", baseline_behavior=base,
        steered_behavior=steered, behavior_changed=base != steered, baseline_output_tokens=1,
        steered_output_tokens=1, baseline_finish_reason="stop", steered_finish_reason="stop", labeller="rules",
        engine=EngineInfo(backend="hf", model="toy", dtype="float32", max_tokens=8))
