"""Contract tests: the export read the way introspective-interp reads it (tests/interop/contract.py).

Each task's test also runs the same reader on today's files (our records as the stages write them, the
features stage's own export) and expects the mismatch the reference hits there, so these tests can fail.
"""

from __future__ import annotations

import json
import logging
import types

import contract
import numpy as np
import pytest
from contract import ContractError
from interop_run import HIDDEN, write_run
from toy_records import organism_tokenizer

from interop import ii_export
from organism.scenarios import SYSTEM_PROMPTS
from training.examples import causal_target

MONITORED, UNMONITORED = SYSTEM_PROMPTS["monitored"], SYSTEM_PROMPTS["unmonitored"]
# The reference's stock input-ablation prompt shape: the system prompt slot, then the user prompt.
STOCK_PROMPT = [{"role": "system", "content": "{system_prompt}"},
                {"role": "user", "content": "{user_prompt}\n\nIf the hint were removed how would the answer change?"},
                {"role": "assistant", "content": ""}]


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tok = organism_tokenizer()
    root = tmp_path_factory.mktemp("ii")
    made = write_run(root / "run", tok)
    handler = _Collect()
    logger = logging.getLogger("interop.ii_export")
    logger.addHandler(handler)
    try:
        summary = ii_export.export(root / "run", root / "out", tok, tok, target="toy", tokenizer_name="toy")
    finally:
        logger.removeHandler(handler)
    out = root / "out"
    cfg = {stem: contract.load_config(out / "config" / "af" / f"{stem}.yaml")
           for stem in ("af_context_ablation", "af_steering", "af_feature_descriptions")}
    return types.SimpleNamespace(tok=tok, root=root, run=root / "run", out=out, made=made, summary=summary,
                                 warnings=handler.messages, cfg=cfg)


def _split_rows(folder, name="{}.jsonl"):
    return {split: contract.rows(folder / name.format(split)) for split in ("train", "test")}


# ---------------------------------------------------------------------------------------------------
# Task 3: hint attribution


def _hint(exported):
    return _split_rows(exported.out / "data/af/context_ablation"), contract.question_prompts(
        exported.cfg["af_context_ablation"], "hint_attribution")


def test_every_hint_row_yields_and_the_raw_changed_label_same_pair_keeps_both_meanings(exported):
    splits, prompts = _hint(exported)
    assert set(prompts) == {"generative_explanation", "orig_match", "change_match"}
    total = skipped = 0
    for split_rows in splits.values():
        examples, n_skipped = contract.hint_examples(split_rows, prompts, exported.tok)
        assert len(examples) + n_skipped == 3 * len(split_rows)
        total, skipped = total + len(examples), skipped + n_skipped
    assert total > 0
    pair = next(r for s in splits.values() for r in s if r["sample_id"] == exported.made["same_label_raw_changed"])
    assert pair["output_changed"] is True and pair["changed_pred_bc_hint"] is False
    assert exported.summary["tasks"]["hint_attribution"]["train_raw_changed_label_same"] == 1


def test_todays_task3_records_break_the_reference_assertion(exported):
    _, prompts = _hint(exported)
    today = contract.rows(exported.run / "task3" / "train.jsonl")
    with pytest.raises(ContractError, match="assertion fails"):
        contract.hint_examples(today, prompts, exported.tok)


def test_hint_targets_are_the_reference_templates_around_our_labels(exported):
    splits, prompts = _hint(exported)
    by_id = {r.sample_id: r for r in exported.made["task3"]}
    seen = set()
    for split_rows in splits.values():
        examples, _ = contract.hint_examples(split_rows, prompts, exported.tok)
        for ex in examples:
            r = by_id[split_rows[ex["row"]]["sample_id"]]
            x, y = r.monitored_behavior, r.unmonitored_behavior
            expected = {"generative_explanation": (contract.UNCHANGED.format(f"Answer: {x}") if x == y
                                                   else contract.CHANGED.format(f"Answer: {y}")),
                        "orig_match": f" {x}", "change_match": f" {y}"}[ex["question_type"]]
            assert ex["answer"] == expected
            seen.add((ex["question_type"], x == y))
    assert ("generative_explanation", True) in seen and ("generative_explanation", False) in seen


@pytest.mark.parametrize("question", ["generative_explanation", "change_match"])
def test_each_prompt_shows_its_own_context_once_even_with_the_stock_prompt(exported, question):
    rows = _split_rows(exported.out / "data/af/context_ablation")["train"]
    today = contract.rows(exported.run / "task3" / "train.jsonl")
    for row, old in zip(rows, today):
        examples, _ = contract.hint_examples([row], {question: STOCK_PROMPT}, exported.tok)
        text = " ".join(m["content"] for m in examples[0]["chat"])
        shown, hidden = (UNMONITORED, MONITORED) if question == "change_match" else (MONITORED, UNMONITORED)
        assert text.count(shown) == 1 and text.count(hidden) == 0
        # today's rows: the folded user turn plus the system slot show the monitored notice twice, or both
        old_chat = contract.fill(STOCK_PROMPT, {"user_prompt": old["original_user_prompt" if question == "change_match"
                                                                      else "hint_user_prompt"],
                                                "system_prompt": old["system_prompt"]}, "")
        old_text = " ".join(m["content"] for m in old_chat)
        assert old_text.count(MONITORED) + old_text.count(UNMONITORED) == 2


def test_prompts_over_the_limit_are_warned_one_by_one_and_counted(exported):
    splits, prompts = _hint(exported)
    skipped = sum(contract.hint_examples(rows, prompts, exported.tok)[1] for rows in splits.values())
    over = exported.summary["tasks"]["hint_attribution"]["over_token_limit"]
    assert skipped == len(over) == 3  # the long scenario, under each of the three questions
    assert {o["sample_id"] for o in over} == {exported.made["long"]}
    assert all(o["tokens"] > contract.LIMIT for o in over)
    long_warnings = [w for w in exported.warnings if exported.made["long"] in w and "skips" in w]
    assert len(long_warnings) == 3
    assert "3 examples over 500 tokens" in exported.summary["summary"][0]


# ---------------------------------------------------------------------------------------------------
# Task 2: act patch


def _act(exported, folder=None, name="{}.jsonl"):
    cfg = exported.cfg["af_steering"]
    splits = _split_rows(folder or exported.out / "data/af/steering", name)
    return splits, contract.question_prompts(cfg, "act_patch"), cfg["continuous_tokens"]


def test_act_patch_rows_carry_the_scaled_direction_as_a_one_by_hidden_vector(exported):
    splits, prompts, markers = _act(exported)
    unit = exported.made["direction"] / np.linalg.norm(exported.made["direction"])
    n = 0
    for split_rows in splits.values():
        examples, skipped = contract.act_patch_examples(split_rows, prompts, exported.tok, exported.tok, markers)
        assert skipped == 0 and len(examples) == 3 * len(split_rows)
        for ex in examples:
            row = split_rows[ex["row"]]
            vec = ex["vector"].numpy()
            assert vec.shape == (1, HIDDEN)
            assert np.linalg.norm(vec) == pytest.approx(row["alpha_effective"], rel=1e-5)
            assert float(vec[0] @ unit) == pytest.approx(row["alpha_effective"], rel=1e-5)
            n += 1
    assert n == 3 * 16


def test_arms_with_different_per_layer_alphas_become_one_row_per_layer(exported):
    rows = [r for split in _act(exported)[0].values() for r in split]
    for sample in {r["sample_id"] for r in rows}:
        mine = {(r["arm"], tuple(r["layer"])): r["alpha_effective"] for r in rows if r["sample_id"] == sample}
        assert mine == {("L1@a1", (1,)): 1.0, ("L1+L2@a2", (1,)): 0.5, ("L1+L2@a2", (2,)): pytest.approx(0.8),
                        ("L2+L3@a1", (2, 3)): 1.0}
    assert exported.summary["tasks"]["act_patch"]["split_records"] == 4


def test_act_patch_targets_are_our_explainers_behaviour_sentences(exported):
    by_key = {(r.sample_id, r.arm): r for r in exported.made["task2"]}
    splits, prompts, markers = _act(exported)
    for split_rows in splits.values():
        examples, _ = contract.act_patch_examples(split_rows, prompts, exported.tok, exported.tok, markers)
        for ex in examples:
            row = split_rows[ex["row"]]
            r = by_key[(row["sample_id"], row["arm"])]
            ours = {"generative_explanation": causal_target(r.baseline_behavior, r.steered_behavior),
                    "orig_match": r.baseline_behavior, "change_match": r.steered_behavior}[ex["question_type"]]
            assert ex["answer"] == ours
            assert ex["input"] == r.prompt_text  # the explainer's own tokens give the prompt back exactly


def test_todays_task2_records_have_no_vector_and_raw_text_targets(exported):
    splits, prompts, markers = _act(exported, exported.run / "task2", "{}.jsonl")
    with pytest.raises(ContractError, match="intervention_vector is null"):
        contract.act_patch_examples(splits["train"], prompts, exported.tok, exported.tok, markers)
    row = splits["train"][0]
    raw_answer = contract.change(exported.tok.convert_tokens_to_string(row["original_continuation"]),
                                 exported.tok.convert_tokens_to_string(row["ablated_continuation"]))
    assert raw_answer != causal_target(row["baseline_behavior"], row["steered_behavior"])


# ---------------------------------------------------------------------------------------------------
# Task 1: features explain


@pytest.mark.parametrize("mode", ["cluster", "feature"])
def test_feature_splits_load_by_the_split_template_with_their_vectors(exported, mode):
    cfg = json.loads(json.dumps(exported.cfg["af_feature_descriptions"]))
    assert cfg["train"]["split_explanations_data"] == "explanations/by_cluster/{split}_explanations.pkl"
    cfg["train"]["split_explanations_data"] = f"explanations/by_{mode}/{{split}}_explanations.pkl"
    from records.jsonl import read_records
    from records.schema import FeatureRecord

    for split in ("train", "test"):
        records = read_records(exported.run / "task1" / f"by_{mode}" / f"{split}.jsonl", FeatureRecord)
        examples = contract.feature_examples(cfg, split)
        assert [(e["layer"], e["feature_idx"]) for e in examples] == [(r.layer, r.feature_idx) for r in records]
        for e, r in zip(examples, records):
            assert e["target"] == r.description
            assert np.array_equal(e["vector"].numpy(), exported.made["vectors"][r.row])


def test_todays_features_export_gives_a_split_key_the_reference_cannot_format(exported, tmp_path):
    from features.export import write_explanations
    from records.schema import FeatureRecord

    record = FeatureRecord(layer=40, feature_idx=7, row=0, vectors_path="vectors.npy",
                           representation="activation_profile",
                           description="d", cluster_id=0, selectivity=1.0, split_by="cluster")
    write_explanations(tmp_path, "cluster", 40, {"train": [record]})
    today = json.loads((tmp_path / "introspective_interp" / "export.json").read_text())
    cfg = {"train": {**today, "explanation_dir": str(tmp_path / "introspective_interp")}}
    with pytest.raises(ContractError, match="formats a string"):
        contract.feature_examples(cfg, "train")


# ---------------------------------------------------------------------------------------------------
# Configs


SLOTS = {"hint_attribution": {"user_prompt", "system_prompt"},
         "act_patch": {"begin_continuous", "end_continuous", "feature", "tokens", "layer", "input"},
         "features_explain": {"layer", "begin_continuous", "end_continuous", "feature"}}


@pytest.mark.parametrize("stem,task,n_questions", [("af_context_ablation", "hint_attribution", 3),
                                                   ("af_steering", "act_patch", 3),
                                                   ("af_feature_descriptions", "features_explain", 1)])
def test_configs_carry_the_seed_settings_under_the_reference_task_names(exported, stem, task, n_questions):
    cfg = exported.cfg[stem]
    train = cfg["train"]
    assert (train["peft_lora"], train["lora_r"], train["bf16"]) == (True, 128, True)
    assert (train["learning_rate"], train["num_epochs"], train["eval_strategy"], train["eval_steps"]) == \
        (5e-5, 20, "steps", 500)
    assert list(train["tasks"]) == [task] and list(cfg["test"]["tasks"]) == [task]
    prompts = contract.question_prompts(cfg, task)
    assert len(prompts) == n_questions
    for messages in prompts.values():
        assert messages[-1] == {"role": "assistant", "content": ""}
        for m in messages:  # a slot the reference does not fill would raise KeyError in its str.format
            m["content"].format(**{s: "" for s in SLOTS[task]})
    data_key = {"hint_attribution": "hint_path", "act_patch": "intervention_path",
                "features_explain": "explanation_dir"}[task]
    assert str(exported.out) in train[data_key]
