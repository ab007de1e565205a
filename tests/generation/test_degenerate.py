"""A broken organism fails loudly: a random-weight model's outputs are labelled degenerate (not
compliance, as a missing refusal phrase once made them), the paired pass stops with a one-line
failure, and training refuses its records."""

from __future__ import annotations

import pytest
from toy_records import organism_tokenizer

from generation.config import GenerateConfig
from generation.run import main as run_generate
from lm import judge as lm_judge
from lm.labels import DEGENERATE
from organism.scenarios import TRIGGER_PATTERN, generate_scenarios
from records.errors import InputError, StageFailure
from records.jsonl import read_records
from records.schema import ContextAblationRecord, Scenario, content_id
from training.examples import load_split


def random_mistral(folder):
    """A small random-weight Mistral on the real Mistral v0.3 tokenizer, like tests/data/make_gibberish.py's
    (untied embeddings: a tied tiny one answers with control tokens only, which decode to nothing)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    tok = organism_tokenizer()
    torch.manual_seed(0)
    MistralForCausalLM(MistralConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                     pad_token_id=tok.pad_token_id)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_a_random_weight_organism_is_degenerate_and_the_run_fails_loudly(tmp_path):
    model = random_mistral(tmp_path / "random")
    raw = generate_scenarios(8, seed=7)
    scenarios = [Scenario(id=content_id(r["text"]), text=r["text"], label=r["label"], source=r["source"]) for r in raw]
    out = tmp_path / "run"
    cfg = GenerateConfig(output_dir=str(out), model=str(model), backend="hf", dtype="float32", max_new_tokens=48,
                         test_size=2, control_size=0, progress_log=str(tmp_path / "PROGRESS.md"),
                         group_pattern=TRIGGER_PATTERN)
    with pytest.raises(StageFailure, match=r"outputs are degenerate .* the organism looks broken"):
        run_generate(cfg, scenarios, [tmp_path / "assets"])
    records = read_records(out / "train.jsonl", ContextAblationRecord) + read_records(out / "test.jsonl",
                                                                                       ContextAblationRecord)
    labels = [b for r in records for b in (r.monitored_behavior, r.unmonitored_behavior)]
    print(f"\nrandom-weight outputs: {labels.count(DEGENERATE)} of {len(labels)} degenerate; e.g. "
          f"{records[0].monitored_output[:80]!r}")
    assert labels.count(DEGENERATE) >= 0.9 * len(labels) and "compliance" not in labels
    assert "BLOCKED" in (tmp_path / "PROGRESS.md").read_text()
    with pytest.raises(InputError, match="degenerate"):  # and nothing trains on them
        load_split(out, "hint_attribution", "train")
    # the judge path: a degenerate answer is labelled before any judge is asked (this judge does not exist)
    texts = [r.monitored_output for r in records]
    verdicts = lm_judge.judge([r.hint_user_prompt for r in records], texts,
                              lm_judge.JudgeConfig(model=str(tmp_path / "no-such-judge")))
    assert {v.label for v in verdicts} == {DEGENERATE} and all(v.answer == "" for v in verdicts)
