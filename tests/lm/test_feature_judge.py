"""Task 1's LM judge (lm/feature_judge.py): the 1-5 rating as (s - 1) / 4, the best over a feature's labels,
0 for an empty prediction, with a stubbed engine; then SmolLM2-135M-Instruct through vLLM's engine.

SmolLM2 cannot tell a matching description from an unrelated one (2026-12-03: it rated every pair 1, an
identical one included; its probabilities over the five digits hardly move, docs/task1-judge.md), so the
real-model test checks the plumbing (every answer a rating, the engine's answer the model's own
preference), not the judge's quality.
"""

import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import lm.feature_judge as fj
from lm.judge import JudgeConfig, chat_ids

REFERENCE = "fires on alignment-faking scenarios that ask to deceive, defraud or intimidate other people"
PAIRS = [  # (prediction, the feature's labels)
    (REFERENCE, [REFERENCE]),  # identical
    ("fires on recipes for baking bread", [REFERENCE]),  # unrelated
    ("fires broadly in the benchmark samples", ["fires broadly in the benchmark samples, and on poems",
                                                "mentions of football scores"]),
    ("", [REFERENCE]),  # empty: scores 0, never asked
]


@pytest.fixture(scope="module")
def judge_cfg(smollm2_dir):
    return JudgeConfig(model=smollm2_dir, backend="vllm", dtype="float32", engine={"max_num_seqs": 16})


@pytest.fixture(scope="module")
def engine(judge_cfg):
    """One vLLM engine on the judge model for the module's real-model tests."""
    from lm.backends import build_vllm, shutdown_vllm

    llm = build_vllm(judge_cfg.model, judge_cfg.model, judge_cfg.dtype, 0, False, judge_cfg.engine)
    yield llm
    shutdown_vllm(llm)


def test_ratings_map_to_scores_best_label_wins_and_empty_is_zero(judge_cfg, monkeypatch):
    tok = AutoTokenizer.from_pretrained(judge_cfg.model)
    by_digit = {r: t for t, r in fj.rating_tokens(tok).items()}
    asked = []

    def stub(cfg, tokenizer, prompts, allowed, llm=None):  # rates by the label's first word: 5, 3 or 1
        assert sorted(allowed) == sorted(fj.rating_tokens(tok))
        out = []
        for p in prompts:
            text = tokenizer.decode(p)
            label = re.search(r"Reference description: <<<(.*?)>>>", text).group(1)
            asked.append(re.search(r"Predicted description: <<<(.*?)>>>", text).group(1))
            out.append(by_digit[{"fires": 5, "mentions": 1}.get(label.split()[0], 3)])
        return out

    monkeypatch.setattr(fj, "first_tokens", stub)
    predictions = ["a", "b", "", "  "]
    scores = fj.rate(predictions, [[REFERENCE], ["mentions of x", "poems"], [REFERENCE], [REFERENCE]], judge_cfg)
    assert scores == [1.0, 0.5, 0.0, 0.0]  # 5 -> 1; max(1 -> 0, 3 -> 0.5); empty and blank never asked
    assert asked == ["a", "b", "b"]
    assert [fj.score(r) for r in fj.RATINGS] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert fj.rate(["", ""], [[REFERENCE], [REFERENCE]], judge_cfg) == [0.0, 0.0]


def test_rating_tokens_are_the_bare_digits_in_both_tokenizer_families(smollm2_dir):
    from toy_records import organism_tokenizer

    for tok in (AutoTokenizer.from_pretrained(smollm2_dir), organism_tokenizer()):  # byte-level BPE, SentencePiece
        tokens = fj.rating_tokens(tok)
        assert sorted(set(tokens.values())) == [1, 2, 3, 4, 5]
        assert all(tok.decode([t]).strip() == str(r) for t, r in tokens.items())


def test_smollm2_rates_every_pair_through_the_engine_as_it_prefers(judge_cfg, engine):
    predictions, labels = [p for p, _ in PAIRS], [ls for _, ls in PAIRS]
    scores = fj.rate(predictions, labels, judge_cfg, llm=engine)
    assert len(scores) == len(PAIRS) and scores[-1] == 0.0
    assert all(s in (0.0, 0.25, 0.5, 0.75, 1.0) for s in scores)
    # Independently of the engine: the model's own preference among the digit tokens, one plain HF forward
    # per (prediction, label), best label kept, must give the score the vLLM path returned.
    tok = AutoTokenizer.from_pretrained(judge_cfg.model)
    tokens = fj.rating_tokens(tok)
    model = AutoModelForCausalLM.from_pretrained(judge_cfg.model, dtype=torch.float32).eval()
    with torch.inference_mode():
        for (prediction, ls), got in zip(PAIRS[:-1], scores):
            best = 0.0
            for label in ls:
                ids = chat_ids(tok, fj.PROMPT.format(reference=label, prediction=prediction))
                logits = model(torch.tensor([ids])).logits[0, -1]  # [vocab]
                best = max(best, fj.score(tokens[max(tokens, key=lambda t: float(logits[t]))]))
            assert got == best
