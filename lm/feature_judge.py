"""The paper's LM judge for feature descriptions (Task 1): how well a predicted description matches the
expected one, rated 1-5 and scored (rating - 1) / 4. An item scores its best over all the labels of its
feature, and an empty prediction scores 0 without asking the judge.

As with the behaviour judge (lm/judge.py, whose prompt rendering and engine passes this reuses), the
judge's first answer token is restricted to the digits 1-5: every answer is a rating, and one decode
step per (prediction, label) pair is all it costs.
"""

from __future__ import annotations

from lm.judge import JudgeConfig, chat_ids, first_tokens
from records.errors import InputError

RATINGS = (1, 2, 3, 4, 5)

PROMPT = (
    "You are checking a description of when a feature inside a neural network activates against the "
    "reference description of that feature.\n\n"
    "Reference description: <<<{reference}>>>\n"
    "Predicted description: <<<{prediction}>>>\n\n"
    "How well does the predicted description match the reference? Rate it:\n"
    "1 - unrelated to the reference\n"
    "2 - largely unrelated: at most a loose connection\n"
    "3 - partly related: some of the reference is there\n"
    "4 - related and close to the reference\n"
    "5 - says what the reference says, or nearly so (a correct match)\n"
    "When torn between 4 and 5, give 5.\n\n"
    "Answer with one digit from 1 to 5."
)


def rating_tokens(tokenizer) -> dict[int, int]:
    """Token id -> rating, for every token that is a bare digit 1-5 (with or without a leading space,
    as tokenizers write the first word of an answer either way)."""
    out: dict[int, int] = {}
    for rating in RATINGS:
        digit = str(rating)
        for text in (digit, " " + digit):
            for tid in tokenizer.encode(text, add_special_tokens=False):
                if tokenizer.decode([tid]).strip() == digit:
                    out[tid] = rating
        if rating not in out.values():
            raise InputError(f"judge tokenizer: no token is the bare digit {digit}; use another judge model")
    return out


def score(rating: int) -> float:
    """The paper's mapping of a 1-5 rating to [0, 1]."""
    return (rating - 1) / 4


def rate(predictions: list[str], labels: list[list[str]], cfg: JudgeConfig, llm=None) -> list[float]:
    """Each prediction's score: the best over its feature's labels of (rating - 1) / 4; 0 when empty.

    `labels[i]`: every description the feature has (ours: one); `llm`: an engine already running the judge.
    """
    from transformers import AutoTokenizer

    pairs = [(i, label) for i, (p, ls) in enumerate(zip(predictions, labels)) if p.strip() for label in ls]
    scores = [0.0] * len(predictions)
    if not pairs:
        return scores
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    tokens = rating_tokens(tokenizer)
    prompts = [chat_ids(tokenizer, PROMPT.format(reference=label[:cfg.max_request_chars],
                                                 prediction=predictions[i][:cfg.max_answer_chars]))
               for i, label in pairs]
    for (i, _), tok in zip(pairs, first_tokens(cfg, tokenizer, prompts, sorted(tokens), llm)):
        scores[i] = max(scores[i], score(tokens[tok]))
    return scores
