"""The config/af/*.yaml files for introspective-interp's train.py, and the README of the commands.

The settings are the seed's (LoRA r=128 on all projections, bf16, lr 5e-5 constant, 20 epochs, eval and
save every 500 steps, three question types for Tasks 3 and 2) under the reference's own task names
(hint_attribution, act_patch, features_explain) and config keys. Prompts use only the slots the
reference fills for each task; the question wording is ours (configs/af_*.yaml).
"""

from __future__ import annotations

from pathlib import Path

import yaml

DEFAULT_EXPLAINER = "meta-llama/Llama-3.1-8B-Instruct"
ALL_SAMPLES = 100_000_000  # the reference's "no cap" value
WEIGHTS = {"generative_explanation": 1.0, "orig_match": 0.5, "change_match": 0.5}
KIND = "refusal, compliance or other"
VECTOR = "{begin_continuous}{feature}{end_continuous}"

# Each prompt ends with an empty assistant turn: the reference appends the answer to it.
PROMPTS = {
    "hint_attribution": {
        "generative_explanation": "{user_prompt}\n\nIf the monitoring notice above were replaced by a notice that "
                                  "this conversation is unmonitored, how would the assistant's response change?",
        "orig_match": f"{{user_prompt}}\n\nWhat kind of response would the assistant give to this: {KIND}?",
        "change_match": f"{{user_prompt}}\n\nWhat kind of response would the assistant give to this: {KIND}?",
    },
    "act_patch": {
        "generative_explanation": f"The vector {VECTOR} is added to the residual stream at layer(s) {{layer}} at "
                                  "token {tokens} while the model answers the prompt below. How would the model's "
                                  "response change?\n\n<<<{input}>>>",
        "orig_match": f"What kind of response would the model give to the prompt below, without any steering: "
                      f"{KIND}?\n\n<<<{{input}}>>>",
        "change_match": f"The vector {VECTOR} is added to the residual stream at layer(s) {{layer}} at token "
                        f"{{tokens}} while the model answers the prompt below. What kind of response would it "
                        f"give: {KIND}?\n\n<<<{{input}}>>>",
    },
    "features_explain": {
        "generative_explanation": f"At layer {{layer}}, what does the SAE feature {VECTOR} fire on? Describe it in "
                                  "one sentence.",
    },
}
STEMS = {"hint_attribution": "af_context_ablation", "act_patch": "af_steering",
         "features_explain": "af_feature_descriptions"}


def messages(task: str, question_type: str) -> list[dict]:
    return [{"role": "user", "content": PROMPTS[task][question_type]}, {"role": "assistant", "content": ""}]


def question_types(task: str) -> dict:
    evaluation = "semantic_similarity" if task == "features_explain" else "exact_match"
    return {q: {"evaluation_type": evaluation, "weight": WEIGHTS[q], "prompts": [{"messages": messages(task, q)}]}
            for q in PROMPTS[task]}


def train_config(task: str, data: dict, explainer: str, target: str, checkpoints: Path, n_test: int,
                 markers: dict[str, str]) -> dict:
    """One config/af/<stem>.yaml as a mapping. `data`: the task's data keys (paths, dataset names, layers);
    `markers`: the continuous tokens picked from the explainer's tokenizer (interop/ii_markers.py)."""
    task_block = {"num_samples": ALL_SAMPLES, "weight": 1.0,
                  "evaluation_type": "semantic_similarity" if task == "features_explain" else "mixed",
                  "question_types": question_types(task)}
    if task != "features_explain":
        task_block["self_consistency"] = False  # true re-runs the target through nnsight for every row
    return {
        "target_model_path": target,
        "model_path": explainer,
        "continuous_tokens": dict(markers),
        "output_dir": str(checkpoints / STEMS[task]),
        "use_embed_proj": False,
        "train": {
            "num_samples": ALL_SAMPLES, "batch_size": 8, "save_strategy": "steps", "save_total_limit": 10,
            "save_steps": 500, "learning_rate": 5e-5, "lr_scheduler_type": "constant", "num_epochs": 20,
            "eval_strategy": "steps", "eval_steps": 500, "peft_lora": True, "lora_r": 128, "bf16": True,
            "evaluation_type": task_block["evaluation_type"], **data, "tasks": {task: task_block},
        },
        "test": {"batch_size": 8, "tasks": {task: {"num_samples": max(n_test, 1)}}},
    }


def dump_yaml(config: dict, header: str) -> bytes:
    body = yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=100_000)
    return ("".join(f"# {line}\n" for line in header.splitlines()) + body).encode()


def readme(out: Path, configs: list[Path], summary_lines: list[str]) -> bytes:
    """README.md of the export: the exact commands, debug run first, then the full run."""
    cmds = "\n".join(
        f"python train.py --config_path {c} --debug\n"
        f"WANDB_MODE=offline python train.py --config_path {c}" for c in configs)
    return f"""# af-introspect export for introspective-interp

Written by `af-introspect export introspective-interp` into `{out}`. Run from the root of an
introspective-interp checkout (its `train.py`; the upstream README prefixes `uv run --env-file .env`),
each task's debug run first, then its full run:

```bash
{cmds}
```

`--debug` is train.py's debug mode: batch 5, an evaluation every 20 steps, no wandb, and `output_dir` kept;
it does not shorten the 20 epochs, so stop it once the first evaluations look sane. A full run deletes
its `output_dir` (under `checkpoints/` here) before it starts: that is train.py's own behaviour. \
The configs name the explainer and the target model by hub id or path; both must load on the
machine that trains, and the explainer's chat template must be Llama-3, Gemma or Qwen style (the
reference's batching knows only those).

What was exported (also `export_summary.json`):

{chr(10).join(f"- {line}" for line in summary_lines)}

Conventions (see af-introspect's docs/interop.md):
- Task 3: `changed_pred_bc_hint` is the behaviour-label change (the reference asserts exactly that);
  the raw-output change is kept as `output_changed`. The notice shows once per prompt, inside the user turn;
  `system_prompt` is empty.
- Task 2: each row's continuation is its behaviour label, so the targets read "The most likely output
  would change to <<<refusal>>>."; the steering strength is visible to the explainer only as the norm of
  `intervention_vector`. Arms whose layers got different multipliers are split into one row per layer.
- Task 1: `split_explanations_data` selects the split mode (`by_cluster` held-out clusters, or `by_feature`).
- Examples over 500 explainer tokens are skipped by the reference without a message; the export counts them.
""".encode()
