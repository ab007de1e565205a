"""The coherence check: repetition, compression and the unsteered model's loss decide `degenerate`."""

import pytest
import torch

from steering import coherence
from steering.config import CoherenceConfig


def test_repetition_and_compression_flag_loops_not_ordinary_text():
    cfg = CoherenceConfig()
    loop = coherence.check([5, 6] * 16, "semb" * 40, None, cfg)
    assert loop.degenerate and set(loop.reasons) == {"repeated", "compression"}
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
