"""introspective-interp's reading of our export, restated in our words from its documented behaviour.

Each reader takes the exported files (or files in today's layout) and returns the examples the reference
would train on, or raises ContractError naming the mismatch where the reference would crash or silently
yield nothing. What the reference does (its dataloaders/ at TransluceAI b0203a4):

- A split is a Hugging Face dataset folder loaded by split name; every row is one intervention.
- Task 3: the prompt takes `hint_user_prompt` (`original_user_prompt` for change_match) and
  `system_prompt`; the answer is "Answer: X" inside the change sentence (generative_explanation) or
  " X" (orig_match, change_match); it asserts `changed_pred_bc_hint` == "the two answers differ".
- Task 2: the vector `patch_position.intervention_vector` becomes a [1, hidden] tensor (None cannot);
  the answer is the continuation tokens turned to text inside the change sentence, or that text alone.
- Tasks 2 and 3: an example whose rendered prompt with its answer is over 500 explainer tokens is
  skipped, silently.
- Task 1: `split_explanations_data` is a path template formatted with split=...; each split file is a
  pickled list of ((layer, feature_idx), {chosen_label, all_labels, all_label_scores}); the vector of a
  feature is column feature_idx of features/layer_<layer>.pkl, a [dim, W] tensor.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import yaml

LIMIT = 500
UNCHANGED = "The output would remain unchanged from <<<{}>>>."
CHANGED = "The most likely output would change to <<<{}>>>."
HINT_FIELDS = {"ablation_prompt": str, "hint_prompt_full": str, "original_prompt_full": str, "system_prompt": str,
               "hint": str, "hint_user_prompt": str, "original_user_prompt": str, "random_hint_prediction": str,
               "zeroshot_prediction": str, "changed_pred_bc_hint": bool}
ACT_FIELDS = {"layer": list, "input_tokens": list, "original_continuation": list, "ablated_continuation": list,
              "is_different": bool, "patch_position": dict, "counterfactual_text": str, "gt_original_target": str,
              "gt_counterfactual_target": str}
POSITION_FIELDS = {"orig_pos": int, "orig_text_token": str, "counterfact_pos": int, "counterfact_text_token": str}


class ContractError(AssertionError):
    """Where the reference would fail, or silently train on nothing, with this data."""


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def load_config(path: Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def question_prompts(config: dict, task: str) -> dict[str, list[dict]]:
    """question type -> the first prompt's messages (the export writes one prompt per question type)."""
    qs = config["train"]["tasks"][task]["question_types"]
    return {q: spec["prompts"][0]["messages"] for q, spec in qs.items()}


def _check_fields(row: dict, fields: dict, where: str) -> None:
    for name, kind in fields.items():
        if name not in row:
            raise ContractError(f"{where}: no `{name}`")
        if not isinstance(row[name], kind):
            raise ContractError(f"{where}: `{name}` is {type(row[name]).__name__}, not {kind.__name__}")


def change(original: str, new: str) -> str:
    return UNCHANGED.format(original) if original == new else CHANGED.format(new)


def fill(messages: list[dict], slots: dict[str, str], answer: str) -> list[dict]:
    """The reference's filling: each slot it knows replaced; the answer appended to the final turn."""
    out = []
    for m in messages:
        content = m.get("content", "")
        used = {k: v for k, v in slots.items() if "{" + k + "}" in content}
        out.append({"role": m["role"], "content": content.format(**used) if used else content})
    out[-1]["content"] += answer
    return out


def n_tokens(tokenizer, chat: list[dict]) -> int:
    return len(tokenizer.tokenize(tokenizer.apply_chat_template(chat, tokenize=False)))


def hint_examples(split_rows: list[dict], prompts: dict[str, list[dict]], tokenizer) -> tuple[list[dict], int]:
    """(examples the reference yields, examples it skips for length) for Task 3 rows."""
    examples, skipped = [], 0
    for i, row in enumerate(split_rows):
        _check_fields(row, HINT_FIELDS, f"row {i}")
        x, y = row["random_hint_prediction"], row["zeroshot_prediction"]
        for q, messages in prompts.items():
            if q == "generative_explanation":
                original, new = "Answer: " + x, "Answer: " + y
                answer = change(original, new)
            else:
                original, new = " " + x.strip(), " " + y.strip()
                answer = original if q == "orig_match" else new
            if row["changed_pred_bc_hint"] != (original != new):
                raise ContractError(f"row {i} ({q}): changed_pred_bc_hint={row['changed_pred_bc_hint']} but the "
                                    f"answers {original!r} / {new!r} say otherwise: the reference's assertion fails")
            user = row["original_user_prompt"] if q == "change_match" else row["hint_user_prompt"]
            chat = fill(messages, {"user_prompt": user, "system_prompt": row["system_prompt"]}, answer)
            if n_tokens(tokenizer, chat) > LIMIT:
                skipped += 1
                continue
            examples.append({"row": i, "question_type": q, "chat": chat, "answer": answer})
    return examples, skipped


def act_patch_examples(split_rows: list[dict], prompts: dict[str, list[dict]], tokenizer, target_tokenizer,
                       markers: dict[str, str]) -> tuple[list[dict], int]:
    """(examples, skipped for length) for Task 2 rows; each example carries its [1, hidden] vector."""
    import torch

    examples, skipped = [], 0
    for i, row in enumerate(split_rows):
        _check_fields(row, ACT_FIELDS, f"row {i}")
        _check_fields(row["patch_position"], POSITION_FIELDS, f"row {i} patch_position")
        vector = row["patch_position"].get("intervention_vector")
        if vector is None:
            raise ContractError(f"row {i}: patch_position.intervention_vector is null: torch.tensor(None) fails")
        token = target_tokenizer.convert_tokens_to_string([row["patch_position"]["orig_text_token"]])
        slots = {"begin_continuous": markers["begin_continuous"], "end_continuous": markers["end_continuous"],
                 "feature": markers["continuous_rep"], "tokens": f"<{token}>",
                 "layer": ", ".join(str(layer) for layer in row["layer"]),
                 "input": tokenizer.convert_tokens_to_string(row["input_tokens"])}
        x = tokenizer.convert_tokens_to_string(row["original_continuation"])
        y = tokenizer.convert_tokens_to_string(row["ablated_continuation"])
        for q, messages in prompts.items():
            answer = change(x, y) if q == "generative_explanation" else (x if q == "orig_match" else y)
            chat = fill(messages, slots, answer)
            if n_tokens(tokenizer, chat) > LIMIT:
                skipped += 1
                continue
            examples.append({"row": i, "question_type": q, "answer": answer, "input": slots["input"],
                             "vector": torch.tensor(vector).unsqueeze(0)})  # [1, hidden]
    return examples, skipped


def feature_examples(config: dict, split: str) -> list[dict]:
    """Task 1 examples of `split`: the feature's vector and its description."""
    train = config["train"]
    template = train["split_explanations_data"]
    if not isinstance(template, str) or "{split}" not in template:
        raise ContractError(f"split_explanations_data is {template!r}: the reference formats a string with {{split}}")
    root = Path(train["explanation_dir"])
    with open(root / template.format(split=split), "rb") as f:
        pairs = pickle.load(f)
    weights = {}
    for layer in train["layers"]:
        with open(root / train["sae_save_path"] / f"layer_{layer}.pkl", "rb") as f:
            weights[layer] = pickle.load(f)  # [dim, W]
    out = []
    for (layer, feature_idx), label in pairs:
        for key in ("chosen_label", "all_labels", "all_label_scores"):
            if key not in label:
                raise ContractError(f"feature {layer}/{feature_idx}: label has no `{key}`")
        out.append({"layer": layer, "feature_idx": feature_idx, "vector": weights[layer][:, feature_idx],
                    "target": label["chosen_label"]})
    return out


def vector_positions(tokenizer, chat: list[dict], markers: dict[str, str]) -> int:
    """Positions of `chat` where the reference writes a vector: its tokenized prompt (chat template, default
    special tokens) holding the id `convert_tokens_to_ids(continuous_rep)` (its train.py's lookup)."""
    rep = tokenizer.convert_tokens_to_ids(markers["continuous_rep"])
    if rep is None or rep == tokenizer.unk_token_id:
        return 0  # the reference matches the unknown id, which no marker text in the prompt produced
    ids = tokenizer(tokenizer.apply_chat_template(chat, tokenize=False))["input_ids"]
    return ids.count(rep)
