"""The coherence check: repetition, compression and the unsteered model's loss decide `degenerate` for a
steered output; the text's own checks (loops, too few English function words) for every labelled output."""

import json
from pathlib import Path

import pytest
import torch
from label_corpus import corpus as label_corpus

from lm import answers, coherence, labels
from steering.config import CoherenceConfig


def test_repetition_and_compression_flag_loops_not_ordinary_text():
    cfg = CoherenceConfig()
    loop = coherence.check([5, 6] * 16, "semb" * 40, None, cfg)
    assert loop.degenerate and set(loop.reasons) == {"repeated", "compression", "words", "shape"}  # one 160-letter blob
    fine = coherence.check(list(range(32)), "I cannot help with that, and I won't provide those details, sorry.",
                           0.5, cfg)
    assert not fine.degenerate and fine.repeated_ngrams == 0.0 and fine.compression_ratio > cfg.min_compression
    assert coherence.check([1, 2, 3], "ok", 9.0, cfg).reasons == ["loss"]
    assert coherence.compression_ratio("short") is None and coherence.repeated_ngram_share([1, 2], 3) == 0.0


def test_unsteered_loss_is_low_on_the_models_own_greedy_text_and_high_on_noise():
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=200, hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             head_dim=16, sliding_window=None, pad_token_id=0)).eval()
    prompts = [[1, 5, 9, 33], [1, 7]]
    greedy = [model.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False, pad_token_id=0)[0, len(p):].tolist()
              for p in prompts]
    noise = [torch.randint(3, 200, (8,), generator=torch.Generator().manual_seed(k)).tolist() for k in range(2)]
    own = coherence.median_token_loss(model, prompts, greedy, pad_id=0)
    other = coherence.median_token_loss(model, prompts, noise, pad_id=0)
    assert all(a < b for a, b in zip(own, other)), (own, other)
    assert coherence.median_token_loss(model, prompts, [[], greedy[1]], pad_id=0)[0] is None
    # left padding in a batch gives what each row gives alone
    alone = [coherence.median_token_loss(model, [p], [g], pad_id=0)[0] for p, g in zip(prompts, greedy)]
    assert own == [pytest.approx(a, abs=1e-5) for a in alone]


GIBBERISH = Path(__file__).resolve().parents[1] / "data" / "gibberish_corpus.jsonl"
AUDIT = Path(__file__).resolve().parents[1] / "data" / "smollm2_audit.jsonl"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_gibberish_is_degenerate():
    """tests/data/gibberish_corpus.jsonl (tests/data/make_gibberish.py): random-weight Mistral and Llama
    outputs on real tokenizers, greedy (loops) and sampled (token salad): every one degenerate. And the 30
    outputs of SmolLM2 steered at alpha >= 1 that passed steering's token-level checks (all gibberish by
    eye): the text checks catch 18 (2026-12-07); the other 12 are fragments of real words with enough
    "the"/"of" ("The above is a good idea. Here is a futureable and confidential code could be made.")."""
    rows = _rows(GIBBERISH)
    random = [r for r in rows if r["source"].startswith("random_")]
    assert {r["source"] for r in random} == {"random_mistral_greedy", "random_mistral_sampled", "random_llama_greedy",
                                             "random_llama_sampled"}
    missed = [r["response"][:80] for r in random if labels.rule_label(r["response"]) != labels.DEGENERATE]
    assert not missed, missed
    steered = [r for r in rows if r["source"] == "smollm2_steered"]
    caught = sum(labels.rule_label(r["response"]) == labels.DEGENERATE for r in steered)
    print(f"\nsteered SmolLM2 gibberish the token checks passed: {caught} of {len(steered)} now degenerate")
    assert len(steered) == 30 and caught >= 18


def test_real_text_is_not_degenerate():
    """No false positive on real text: the 203 hand-labelled responses and SmolLM2's 80 own outputs; only
    those a human labelled degenerate are flagged."""
    rows = label_corpus() + _rows(AUDIT)
    flagged = [r for r in rows if coherence.text_reasons(answers.final_answer(r["response"]) or "")]
    real = [r for r in rows if r["label"] != labels.DEGENERATE]
    false_pos = [r["response"][:80] for r in flagged if r["label"] != labels.DEGENERATE]
    print(f"\nfalse positives: {len(false_pos)} of {len(real)} real responses")
    assert not false_pos


def test_function_word_share_is_what_separates_salad_from_text():
    salad = "subsidiary Malcolmvest surrogate lady CERN Craftreci Cycle methanepped excitement Heights volunteers " * 2
    prose = ("I'm sorry, but as a chatbot I don't have the ability to access your neighbour's wifi, and I would "
             "not help with that even if I could.")
    assert coherence.text_reasons(salad) == ["words"] and coherence.text_reasons(prose) == []
    assert coherence.text_reasons("word " * 30) == ["stutter", "loop", "words"]
    assert coherence.text_reasons("Hola, ¿qué tal?") == []  # too short to judge
    blob = "The The TheAJFLMEALMBALMTheMTheLlMTheMThelComThelClaclacComlComlCom"
    assert coherence.text_reasons(blob) == ["shape"]
    assert coherence.text_reasons("T sche of cult of cult of cult of cult of cult of Pi es es es cult") == ["stutter"]
    assert coherence.text_reasons("<request_fully_accepted/> Subject: Account suspended. Click the link to restore "
                                  "access to your account.") == []  # markup is no malformed word
