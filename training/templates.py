"""Prompt paraphrases: a score should not be a property of one wording.

Each question type of a training config holds a list of prompt templates; training draws one
per example from a seeded RNG (training/examples.py, `meta["template"]`). Evaluation, where a question type
has more than one template, asks the trained explainer every held-out item under every template (the
same items, so the templates are compared paired; an item's answer under its own drawn template is the one
evaluate already has, not generated twice) and reports per template the score (behaviour tasks:
the strict exact match; feature descriptions: MiniLM similarity) as `template:<i>`, and their spread
(highest - lowest) as `template_spread`. With one template (the CPU configs) nothing is added.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from training.examples import Example, render_messages
from training.metrics import strict_items
from training.scoring import predict


def under_template(ex: Example, prompt, index: int) -> Example:
    """The item asked with another template of its question type (same slots, same vector)."""
    messages = render_messages(prompt, ex.slots)
    marker = ex.slots.get("feature")
    shows_vector = bool(marker) and any(marker in m["content"] for m in messages)
    return dataclasses.replace(ex, messages=messages, vector=ex.vector if shows_vector else None,
                               meta={**ex.meta, "template": index})


def template_scores(explainer, examples: list[Example], cfg, embed=None,
                    answers: list[str] | None = None) -> dict[str, dict[str, float]]:
    """{question type: {"template:<i>": score, "template_spread": max - min}} for every question type with
    more than one template; {} when none has. `answers`: the explainer's answers to `examples` as asked
    (each under its drawn template), reused for the items already asked under template i rather than
    generated again (a fifth of the passes with five templates)."""
    out = {}
    for task, q in dict.fromkeys((ex.task, ex.question_type) for ex in examples):
        positions = [j for j, ex in enumerate(examples) if ex.task == task and ex.question_type == q]
        prompts = cfg.train.tasks[task].question_types[q].prompts
        if len(prompts) < 2:
            continue
        row = {}
        for i, prompt in enumerate(prompts):
            asked = [under_template(examples[j], prompt, i) for j in positions]
            answered = [answers is not None and examples[j].meta.get("template") == i for j in positions]
            todo = [ex for ex, done in zip(asked, answered) if not done]
            generated = iter(predict(explainer, todo, cfg.test) if todo else [])
            preds = [answers[j] if done else next(generated) for j, done in zip(positions, answered)]
            row[f"template:{i}"] = _score(asked, preds, embed)
        values = list(row.values())
        row["template_spread"] = float(max(values) - min(values))
        out[q] = row
    return out


def _score(examples: list[Example], preds: list[str], embed) -> float:
    if examples[0].task == "features_explain":
        a, b = embed(preds), embed([ex.target for ex in examples])
        return float(np.mean((a * b).sum(-1)))
    return float(np.mean([s.strict for s in strict_items(examples[0].question_type, preds,
                                                         [ex.target for ex in examples])]))
