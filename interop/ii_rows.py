"""Our records -> the rows introspective-interp's dataset classes read, and the targets they build from them.

What the reference's loaders do with a row, in brief (learnt from its dataloaders/ at TransluceAI b0203a4):

- Task 3 (HintAttributionDataset): reads a Hugging Face dataset folder per split; fills its prompt from
  `hint_user_prompt` (or `original_user_prompt` for change_match) and `system_prompt`; its targets are
  "Answer: <prediction>" inside the change sentence (generative_explanation) or " <prediction>"
  (orig_match / change_match); and it asserts that `changed_pred_bc_hint` equals "the two formatted
  predictions differ". So our label-level change goes there, not the raw-output change.
- Task 2 (ActPatchDataset): one row per intervention; `patch_position.intervention_vector` is the one
  vector it injects at every layer of `layer`; its targets wrap the continuation tokens turned back into
  text with the explainer's tokenizer. We put the behaviour label in as the continuation (one token
  string), so its targets name the behaviour change, the same sentences our own explainer learns.
- Both skip, without a message, any example whose prompt with its answer is over 500 explainer tokens.
"""

from __future__ import annotations

import math

import numpy as np

from records.schema import ContextAblationRecord, SteeringRecord

REFERENCE_TOKEN_LIMIT = 500  # the reference drops longer examples (prompt + answer, explainer tokens)
QUESTION_TYPES = ("generative_explanation", "orig_match", "change_match")
UNCHANGED = "The output would remain unchanged from <<<{}>>>."
CHANGED = "The most likely output would change to <<<{}>>>."


def change_sentence(original: str, new: str) -> str:
    """The reference's causal target: the unchanged sentence when both sides are equal, else the changed one."""
    return UNCHANGED.format(original) if original == new else CHANGED.format(new)


def with_context(context: str, user: str) -> str:
    """The user turn carrying its context once: as sent when the template folded it in, else prefixed."""
    return user if user.startswith(context) else f"{context}\n\n{user}"


def hint_row(r: ContextAblationRecord) -> dict:
    """One Task 3 record as a hint-attribution row.

    The notice lives in the user turns (each prompt shows its own context once) and `system_prompt` is
    empty: the reference's stock prompts add `{system_prompt}` as a system turn, which would show the
    monitored notice a second time, and beside the unmonitored one in change_match.
    """
    x, y = r.random_hint_prediction.strip(), r.zeroshot_prediction.strip()
    return {
        "ablation_prompt": r.ablation_prompt,
        "hint_prompt_full": r.hint_prompt_full,
        "original_prompt_full": r.original_prompt_full,
        "system_prompt": "",
        "hint_user_prompt": with_context(r.system_prompt, r.hint_user_prompt),
        "original_user_prompt": with_context(r.hint, r.original_user_prompt),
        "hint": r.hint,
        "random_hint_prediction": x,
        "zeroshot_prediction": y,
        "changed_pred_bc_hint": x != y,  # the label change: what the reference asserts
        # ours, carried along (the reference ignores extra columns)
        "output_changed": r.changed_pred_bc_hint if r.output_changed is None else r.output_changed,
        "monitored_context": r.system_prompt,
        "sample_id": r.sample_id,
        "index": r.index,
        "label": r.label,
    }


def hint_target(row: dict, question_type: str, chat_template: bool = True) -> str:
    """The answer the reference trains on for a hint row (a leading space without a chat template)."""
    x, y = row["random_hint_prediction"], row["zeroshot_prediction"]
    if question_type == "generative_explanation":
        sentence = change_sentence("Answer: " + x, "Answer: " + y)
        return sentence if chat_template else " " + sentence
    return " " + (x if question_type == "orig_match" else y).strip()


def unit_direction(direction: np.ndarray) -> np.ndarray:
    """The unit vector the steering stage scales by alpha_effective (float32, [hidden])."""
    direction = np.asarray(direction, dtype=np.float32).reshape(-1)
    return direction / np.linalg.norm(direction)


def alphas_agree(alphas: list[float]) -> bool:
    return all(math.isclose(a, alphas[0], rel_tol=1e-6, abs_tol=1e-12) for a in alphas)


def act_patch_rows(r: SteeringRecord, unit: np.ndarray, input_tokens: list[str]) -> list[dict]:
    """One Task 2 record as act-patch rows: one row, or one per layer when the layers' alphas differ.

    The reference injects a row's single vector at every layer it lists, so an arm whose layers got
    different multipliers (residual_norm scaling) becomes one row per layer, each with its own vector;
    every such row carries the whole arm's outcome (`arm`, `arm_layers` say which). `input_tokens` are
    the prompt in the EXPLAINER's tokens: the reference turns them back into text with that tokenizer.
    """
    x, y = r.gt_original_target.strip(), r.gt_counterfactual_target.strip()
    eff = list(r.alpha_effective)
    parts = [(list(r.layer), eff[0])] if alphas_agree(eff) else [([layer], a) for layer, a in zip(r.layer, eff)]
    rows = []
    for layers, alpha in parts:
        pos = r.patch_position
        rows.append({
            "layer": layers,
            "input_tokens": input_tokens,
            "original_continuation": [x],  # the behaviour label as the one continuation token
            "ablated_continuation": [y],
            "is_different": x != y,
            "patch_position": {"orig_pos": pos.orig_pos, "orig_text_token": pos.orig_text_token,
                               "counterfact_pos": pos.counterfact_pos,
                               "counterfact_text_token": pos.counterfact_text_token,
                               "intervention_vector": (np.float32(alpha) * unit).tolist()},  # [hidden]
            "counterfactual_text": r.counterfactual_text,
            "gt_original_target": x,
            "gt_counterfactual_target": y,
            # ours, carried along
            "arm": r.arm,
            "arm_layers": list(r.layer),
            "alpha": r.alpha,
            "alpha_effective": float(alpha),
            "context": r.context,
            "output_changed": r.is_different,
            "sample_id": r.sample_id,
            "index": r.index,
            "label": r.label,
        })
    return rows


def act_patch_target(row: dict, question_type: str, to_text) -> str:
    """The answer the reference trains on for an act-patch row; `to_text` = convert_tokens_to_string."""
    x, y = to_text(row["original_continuation"]), to_text(row["ablated_continuation"])
    if question_type == "generative_explanation":
        return change_sentence(x, y)
    return x if question_type == "orig_match" else y


def feature_label(description: str) -> dict:
    """The label dict the reference's feature loader reads (cluster summaries carry no score: 1.0)."""
    return {"chosen_label": description, "all_labels": [description], "all_label_scores": {description: 1.0}}


def prompt_length(tokenizer, messages: list[dict], slots: dict[str, str], answer: str) -> int:
    """Explainer tokens of a filled prompt with its answer, counted the way the reference does before
    its 500-token skip: the chat rendered to text, then tokenized (special tokens count once)."""
    filled = [{"role": m["role"], "content": m["content"].format_map(slots)} for m in messages]
    filled[-1] = {"role": filled[-1]["role"], "content": filled[-1]["content"] + answer}  # the answer turn
    return len(tokenizer.tokenize(tokenizer.apply_chat_template(filled, tokenize=False)))
